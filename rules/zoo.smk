# Program zoo: sample RASP programs, compile them with tracr, verify, split.

import os


rule vocab:
    output:
        "data/vocab.json",
    threads: threads_of("zoo")
    params:
        cfg=section_params(threads=["zoo"], sampler=["map_constants", "max_length"]),
    resources:
        **resources_of("vocab"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/vocab.log",
    benchmark:
        "logs/benchmarks/vocab.tsv"
    shell:
        "python -m metamodels vocab --config {params.cfg:q} --out {output} 2> {log}"


rule sample:
    output:
        "data/programs/shard_{shard}.json",
    threads: threads_of("zoo")
    params:
        cfg=section_params(
            threads=["zoo"], zoo=True, sampler=True, verify=["exhaustive_limit", "samples"]
        ),
    resources:
        **resources_of("sample"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/sample/shard_{shard}.log",
    benchmark:
        "logs/benchmarks/sample/shard_{shard}.tsv"
    shell:
        "python -m metamodels sample --config {params.cfg:q} --shard {wildcards.shard} --out {output} 2> {log}"


rule compile_shard:
    input:
        programs="data/programs/shard_{shard}.json",
        vocab="data/vocab.json",
    output:
        "data/compiled/shard_{shard}.npz",
    threads: threads_of("zoo")
    params:
        cfg=section_params(
            threads=["zoo"],
            zoo=["seed", "vocab", "max_seq_len"],
            sampler=["map_constants"],
            compile=True,
            verify=True,
        ),
    resources:
        **resources_of("compile_shard"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/compile/shard_{shard}.log",
        timing="logs/compile/shard_{shard}.timing.json",
    benchmark:
        "logs/benchmarks/compile/shard_{shard}.tsv"
    shell:
        "python -m metamodels compile-shard --config {params.cfg:q} --programs {input.programs}"
        " --vocab {input.vocab} --out {output} --timing {log.timing} 2> {log.stderr}"


rule split:
    input:
        shards=expand("data/compiled/shard_{shard}.npz", shard=SHARDS),
        vocab="data/vocab.json",
    output:
        shards=dataset_shards(),
        summary=report(
            "data/dataset/summary.json",
            caption="../report/dataset_summary.rst",
            category="Decompiler",
            subcategory="Program zoo",
        ),
    threads: threads_of("zoo")
    params:
        cfg=section_params(
            threads=["zoo"],
            zoo=["vocab", "max_seq_len"],
            sampler=["map_constants", "max_length"],
            dataset=True,
        ),
        outdir=lambda wildcards, output: os.path.dirname(output.summary),
    resources:
        **resources_of("split"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv"
    shell:
        "python -m metamodels split --config {params.cfg:q} --inputs {input.shards} --vocab {input.vocab}"
        " --outdir {params.outdir} 2> {log}"
