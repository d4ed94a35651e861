# Decompiler meta-model (seed 001): weights -> RASP program, scored on test, figure 3.


rule tokenize:  # one dataset or variant shard -> its weight tokens, read on demand by training
    input:
        "data/{source}/{split}/shard_{vshard}.npz",
    output:
        "data/tokens/{source}/{split}/shard_{vshard}.npz",
    threads: threads_of("zoo")
    params:
        cfg=section_params(threads=["zoo"], decompiler=["input", "max_program_tokens"]),
    resources:
        **resources_of("tokenize"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/tokens/{source}/{split}_{vshard}.log",
    benchmark:
        "logs/benchmarks/tokens/{source}/{split}_{vshard}.tsv"
    shell:
        "python -m metamodels tokenize --config {params.cfg:q} --input {input} --out {output}"
        " 2> {log}"


rule train_decompiler:
    input:
        train=token_shards("train"),
        val=token_shards("val"),
        vocab="data/vocab.json",
    output:
        model="models/decompiler.npz",
        history="results/decompiler/history.json",
        curve=report(
            "results/decompiler/learning_curve.csv",
            caption="../report/learning_curve.rst",
            category="Decompiler",
            subcategory="Tables",
        ),
    threads: threads_of("train")
    params:
        cfg=section_params(
            threads=["train"],
            zoo=["vocab", "max_seq_len"],
            decompiler=["seed", "max_program_tokens", "input", "model", "train"],
        ),
        workdir="work/decompiler",  # Orbax checkpoints; a rerun resumes from them
    resources:
        **resources_of("train_decompiler"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/decompiler/train.log",
        timing="logs/decompiler/train.timing.json",
    benchmark:
        "logs/benchmarks/decompiler/train.tsv"
    shell:
        "python -m metamodels train-decompiler --config {params.cfg:q} --train {input.train}"
        " --val {input.val} --vocab {input.vocab} --model {output.model} --history {output.history}"
        " --curve {output.curve} --workdir {params.workdir} --timing {log.timing} 2> {log.stderr}"


rule evaluate_decompiler:
    input:
        model="models/decompiler.npz",
        test=token_shards("test"),
        models=zoo_shards("test"),
    output:
        metrics=report(
            "results/metrics/decompiler.json",
            caption="../report/decompiler_metrics.rst",
            category="Decompiler",
            subcategory="Metrics",
        ),
        predictions="results/decompiler/test_predictions.json",
        reference=report(
            "results/decompiler/reference_programs.csv",
            caption="../report/reference_programs.rst",
            category="Decompiler",
            subcategory="Tables",
        ),
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
        **resources_of("evaluate_decompiler"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/decompiler/evaluate.log",
        timing="logs/decompiler/evaluate.timing.json",
    benchmark:
        "logs/benchmarks/decompiler/evaluate.tsv"
    shell:
        "python -m metamodels evaluate-decompiler --config {params.cfg:q} --model {input.model}"
        " --test {input.test} --models {input.models} --metrics {output.metrics}"
        " --predictions {output.predictions}"
        " --reference {output.reference} --timing {log.timing} 2> {log.stderr}"


rule figure3:
    input:
        history="results/decompiler/history.json",
        metrics="results/metrics/decompiler.json",
    output:
        report(
            "results/figure3.pdf",
            caption="../report/figure3.rst",
            category="Decompiler",
            subcategory="Figures",
        ),
    threads: 1
    resources:
        **resources_of("figure3"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/figure3.log",
    shell:
        "python -m metamodels figure3 --history {input.history} --metrics {input.metrics}"
        " --out {output} 2> {log}"


# Not part of `all` (nor of the report): drawn from the records of
# benchmarks/decompiler_scaling.py, a benchmark run by hand (hours on 2 cores), not a pipeline
# stage. What it shows: src/metamodels/decompiler/scaling.py, docs/decompiler.md.
rule decompiler_scaling_figure:
    input:
        records="benchmarks/results/decompiler_scaling.cpu.jsonl",
    output:
        "results/decompiler_scaling.pdf",
    threads: 1
    resources:
        **resources_of("decompiler_scaling_figure"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/decompiler_scaling_figure.log",
    shell:
        "python -m metamodels decompiler-scaling-figure --records {input.records}"
        " --out {output} 2> {log}"
