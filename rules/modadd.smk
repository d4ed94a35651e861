# Modular-addition backdoor (seed 002): train small transformers with and without a
# backdoor, attribute the backdoor to attention heads, patch them, draw the figure.


rule train_modadd:
    output:
        model="models/modadd/{task}.npz",
        history="results/modadd/{task}_history.csv",
    threads: threads_of("train")
    params:
        cfg=modadd_task_params,
    resources:
        **resources_of("train_modadd"),
    conda:
        "../envs/metamodels.yaml"
    log:
        stderr="logs/modadd/train_{task}.log",
        timing="logs/modadd/train_{task}.timing.json",
    benchmark:
        "logs/benchmarks/modadd/train_{task}.tsv"
    shell:
        "python -m metamodels modadd-train --config {params.cfg:q} --task {wildcards.task}"
        " --model {output.model} --history {output.history} --timing {log.timing}"
        " 2> {log.stderr}"


rule analyse_modadd:
    input:
        models=expand("models/modadd/{task}.npz", task=MODADD_TASKS),
    output:
        patching=report(
            "results/backdoor_patching.csv",
            caption="../report/backdoor_patching.rst",
            category="Modular addition",
            subcategory="Tables",
        ),
        attribution=report(
            "results/modadd/attribution.json",
            caption="../report/modadd_attribution.rst",
            category="Modular addition",
            subcategory="Metrics",
        ),
        metrics=report(
            "results/metrics/modadd.json",
            caption="../report/modadd_metrics.rst",
            category="Modular addition",
            subcategory="Metrics",
        ),
    threads: threads_of("evaluate")
    params:
        cfg=section_params(threads=["evaluate"], modadd=["patching_task"]),
    resources:
        **resources_of("analyse_modadd"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/modadd/analyse.log",
    shell:
        "python -m metamodels modadd-analyse --config {params.cfg:q} --models {input.models}"
        " --patching {output.patching} --attribution {output.attribution}"
        " --metrics {output.metrics} 2> {log}"


rule figure_backdoor_heads:
    input:
        histories=expand("results/modadd/{task}_history.csv", task=MODADD_TASKS),
        attribution="results/modadd/attribution.json",
        patching="results/backdoor_patching.csv",
    output:
        report(
            "results/backdoor_heads.pdf",
            caption="../report/backdoor_heads.rst",
            category="Modular addition",
            subcategory="Figures",
        ),
    threads: 1
    resources:
        **resources_of("figure_backdoor_heads"),
    conda:
        "../envs/metamodels.yaml"
    log:
        "logs/figure_backdoor_heads.log",
    shell:
        "python -m metamodels figure-backdoor-heads --histories {input.histories}"
        " --attribution {input.attribution} --patching {input.patching} --out {output} 2> {log}"
