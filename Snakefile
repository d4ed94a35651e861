# metamodels: the papers' pipeline as a DAG.
#
#   vocab ─┐
#   sample (per shard) ─> compile_shard (per shard) ─> split ─> data/dataset/{train,val,test}
#                                                           └─> train_decompiler ─> evaluate_decompiler ─> figure3
#
# Each rule calls one verb of `python -m metamodels`; the logic lives in
# src/metamodels/. params.yaml is validated before any job runs. Use another
# params file with `--configfile FILE` (see README).

include: "rules/common.smk"
include: "rules/zoo.smk"
include: "rules/decompiler.smk"


rule all:
    input:
        dataset_shards(),
        "data/dataset/summary.json",
        "results/figure3.pdf",
    default_target: True
