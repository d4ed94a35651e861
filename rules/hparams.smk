# Hyperparameter prediction (seed 000 §3.2, App. A.1.1): a zoo of CNNs trained with random
# hyperparameters, three predictors per hyperparameter, figure 4.


rule hparam_zoo_shard:
    input:
        hparam_images_exist,
    output:
        "data/hparam_zoo/shard_{hparam_shard}.npz",
    threads: threads_of("cnn_zoo")
    params:
        cfg=section_params(threads=["cnn_zoo"], images=["fashion_mnist_root"], hparam_zoo=True),
    resources:
        **resources_of("hparam_zoo_shard"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/hparam_zoo/shard_{hparam_shard}.log",
    benchmark:
        "logs/benchmarks/hparam_zoo/shard_{hparam_shard}.tsv"
    shell:
        "python -m metamodels hparam-zoo-shard --config {params.cfg:q}"
        " --shard {wildcards.hparam_shard} --out {output} 2> {log}"


rule predict_hparam:
    input:
        hparam_zoo_shards(),
    output:
        scores="results/hparams/predictions_{target}.json",
        history="results/hparams/history_{target}.json",
    threads: threads_of("train")
    params:
        cfg=section_params(threads=["train"], hparams=True),
    resources:
        **resources_of("predict_hparam"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/hparams/predict_{target}.log",
    benchmark:
        "logs/benchmarks/hparams/predict_{target}.tsv"
    shell:
        "python -m metamodels predict-hparam --config {params.cfg:q} --target {wildcards.target}"
        " --zoo {input} --scores {output.scores} --history {output.history} 2> {log}"


rule hparam_report:
    input:
        scores=expand("results/hparams/predictions_{target}.json", target=HPARAM_TARGETS),
        zoo=hparam_zoo_shards(),
    output:
        report(
            "results/metrics/hparams.json",
            caption="../report/hparams_metrics.rst",
            category="Hyperparameter prediction",
            subcategory="Metrics",
        ),
    threads: 1
    params:
        cfg=section_params(hparams=["targets"]),
    resources:
        **resources_of("hparam_report"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/hparams/report.log",
    shell:
        "python -m metamodels hparam-report --config {params.cfg:q} --scores {input.scores}"
        " --zoo {input.zoo} --metrics {output} 2> {log}"


rule figure4:
    input:
        "results/metrics/hparams.json",
    output:
        report(
            "results/figure4.pdf",
            caption="../report/figure4.rst",
            category="Hyperparameter prediction",
            subcategory="Figures",
        ),
    threads: 1
    resources:
        **resources_of("figure4"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/figure4.log",
    shell:
        "python -m metamodels figure4 --metrics {input} --out {output} 2> {log}"
