# Backdoor detection (seed 000 §3.1): a zoo of clean and poisoned CNNs, detector meta-models
# and a weight-statistics baseline per setting, AUC per trigger type, figure 2.


rule cnn_zoo_shard:
    input:
        images_exist,
    output:
        "data/cnn_zoo/shard_{cnn_shard}.npz",
    threads: threads_of("cnn_zoo")
    params:
        cfg=section_params(threads=["cnn_zoo"], images=True, cnn_zoo=True),
    resources:
        **resources_of("cnn_zoo_shard"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/cnn_zoo/shard_{cnn_shard}.log",
    benchmark:
        "logs/benchmarks/cnn_zoo/shard_{cnn_shard}.tsv"
    shell:
        "python -m metamodels cnn-zoo-shard --config {params.cfg:q} --shard {wildcards.cnn_shard}"
        " --out {output} 2> {log}"


rule detect_backdoors:
    input:
        cnn_zoo_shards(),
    output:
        scores="results/backdoor/scores_{setting}.json",
        history="results/backdoor/history_{setting}.json",
    threads: threads_of("train")
    params:
        cfg=section_params(threads=["train"], detector=True),
    resources:
        **resources_of("detect_backdoors"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/backdoor/detect_{setting}.log",
        timing="logs/backdoor/detect_{setting}.timing.json",
    benchmark:
        "logs/benchmarks/backdoor/detect_{setting}.tsv"
    shell:
        "python -m metamodels detect-backdoors --config {params.cfg:q} --setting {wildcards.setting}"
        " --zoo {input} --scores {output.scores} --history {output.history}"
        " --timing {log.timing} 2> {log.stderr}"


rule backdoor_report:
    input:
        scores=expand("results/backdoor/scores_{setting}.json", setting=DETECTION_SETTINGS),
        zoo=cnn_zoo_shards(),
    output:
        metrics=report(
            "results/metrics/backdoor.json",
            caption="../report/backdoor_metrics.rst",
            category="Backdoor detection",
            subcategory="Metrics",
        ),
        roc=report(
            "results/backdoor/roc.csv",
            caption="../report/backdoor_roc.rst",
            category="Backdoor detection",
            subcategory="Tables",
        ),
    threads: 1
    params:
        cfg=section_params(cnn_zoo=["asr_threshold"]),
    resources:
        **resources_of("backdoor_report"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/backdoor/report.log",
    shell:
        "python -m metamodels backdoor-report --config {params.cfg:q} --scores {input.scores}"
        " --zoo {input.zoo} --metrics {output.metrics} --roc {output.roc} 2> {log}"


rule figure2:
    input:
        metrics="results/metrics/backdoor.json",
        roc="results/backdoor/roc.csv",
    output:
        report(
            "results/figure2.pdf",
            caption="../report/figure2.rst",
            category="Backdoor detection",
            subcategory="Figures",
        ),
    threads: 1
    resources:
        **resources_of("figure2"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/figure2.log",
    shell:
        "python -m metamodels figure2 --metrics {input.metrics} --roc {input.roc} --out {output}"
        " 2> {log}"
