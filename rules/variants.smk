# De-sparsified and distilled zoos (seed 001 §3.2, thesis ch. 6-7) and the decompiler on each.


rule variant_shard:
    input:
        "data/dataset/{split}/shard_{vshard}.npz",
    output:
        "data/variants/{variant}/{split}/shard_{vshard}.npz",
    threads: threads_of("variants")
    params:
        cfg=variant_params,
    resources:
        **resources_of("variant_shard"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/variants/{variant}/{split}_{vshard}.log",
        timing="logs/variants/{variant}/{split}_{vshard}.timing.json",
    benchmark:
        "logs/benchmarks/variants/{variant}/{split}_{vshard}.tsv"
    shell:
        "python -m metamodels make-variant --config {params.cfg:q} --variant {wildcards.variant}"
        " --split {wildcards.split} --shard {wildcards.vshard} --input {input} --out {output}"
        " --timing {log.timing} 2> {log.stderr}"


rule train_variant_decompiler:
    input:
        train=lambda w: token_shards("train", f"variants/{w.variant}"),
        val=lambda w: token_shards("val", f"variants/{w.variant}"),
        vocab="data/vocab.json",
    output:
        model="models/variants/{variant}/decompiler.npz",
        history="results/variants/{variant}/history.json",
        curve="results/variants/{variant}/learning_curve.csv",
    threads: threads_of("train")
    params:
        cfg=variant_decompiler_params(),
        workdir="work/variants/{variant}",  # Orbax checkpoints; a rerun resumes from them
    resources:
        **resources_of("train_variant_decompiler"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/variants/{variant}/train.log",
        timing="logs/variants/{variant}/train.timing.json",
    benchmark:
        "logs/benchmarks/variants/{variant}/train.tsv"
    shell:
        "python -m metamodels train-decompiler --config {params.cfg:q} --train {input.train}"
        " --val {input.val} --vocab {input.vocab} --model {output.model} --history {output.history}"
        " --curve {output.curve} --workdir {params.workdir} --timing {log.timing} 2> {log.stderr}"


rule evaluate_variant_decompiler:
    input:
        model="models/variants/{variant}/decompiler.npz",
        test=lambda w: token_shards("test", f"variants/{w.variant}"),
        models=lambda w: variant_shards(w.variant, "test"),
    output:
        metrics="results/variants/{variant}/metrics.json",
        predictions="results/variants/{variant}/test_predictions.json",
        reference="results/variants/{variant}/reference_programs.csv",
    threads: threads_of("evaluate")
    params:
        cfg=section_params(
            threads=["evaluate"],
            zoo=["seed", "vocab", "max_seq_len"],
            sampler=["map_constants"],
            compile=["mlp_exactness"],
            verify=["exhaustive_limit", "samples", "atol", "min_compared"],
            decompiler=["evaluate", "search"],
        ),
    resources:
        **resources_of("evaluate_variant_decompiler"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/variants/{variant}/evaluate.log",
        timing="logs/variants/{variant}/evaluate.timing.json",
    benchmark:
        "logs/benchmarks/variants/{variant}/evaluate.tsv"
    shell:
        "python -m metamodels evaluate-decompiler --config {params.cfg:q} --model {input.model}"
        " --test {input.test} --models {input.models} --metrics {output.metrics}"
        " --predictions {output.predictions}"
        " --reference {output.reference} --timing {log.timing} 2> {log.stderr}"


rule variants_report:
    input:
        shards=[p for v in VARIANTS for s in ("train", "val", "test") for p in variant_shards(v, s)],
        metrics=expand("results/variants/{variant}/metrics.json", variant=VARIANTS),
        histories=expand("results/variants/{variant}/history.json", variant=VARIANTS),
    output:
        csv=report(
            "results/variants.csv",
            caption="../report/variants_table.rst",
            category="Variants",
            subcategory="Tables",
        ),
        metrics=report(
            "results/metrics/variants.json",
            caption="../report/variants_metrics.rst",
            category="Variants",
            subcategory="Metrics",
        ),
    threads: 1
    params:
        names=VARIANTS,
    resources:
        **resources_of("variants_report"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/variants/report.log",
    shell:
        "python -m metamodels variants-report --names {params.names} --shards {input.shards}"
        " --metrics {input.metrics} --histories {input.histories} --csv {output.csv}"
        " --out {output.metrics} 2> {log}"


rule figure_variants:
    input:
        "results/metrics/variants.json",
    output:
        report(
            "results/figure_variants.pdf",
            caption="../report/figure_variants.rst",
            category="Variants",
            subcategory="Figures",
        ),
    threads: 1
    resources:
        **resources_of("figure_variants"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/figure_variants.log",
    shell:
        "python -m metamodels figure-variants --metrics {input} --out {output} 2> {log}"
