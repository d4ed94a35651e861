# metamodels: the papers' pipeline as a DAG.
#
#   vocab ─┐
#   sample (per shard) ─> compile_shard (per shard) ─> split ─> data/dataset/{train,val,test}
#       ─> tokenize (per split shard) ─> train_decompiler ─> evaluate_decompiler ─> figure3
#
#   data/dataset ─> variant_shard (per variant, split, shard) ─> tokenize ─> train_variant_decompiler
#                   ─> evaluate_variant_decompiler (per variant) ─> variants_report ─> figure_variants
#
#   cnn_zoo_shard (per shard) ─> detect_backdoors (per setting) ─> backdoor_report ─> figure2
#
#   hparam_zoo_shard (per shard) ─> predict_hparam (per hyperparameter) ─> hparam_report ─> figure4
#
#   train_modadd (per task) ─> analyse_modadd ─> figure_backdoor_heads
#
# Each rule calls one verb of `python -m metamodels`; the logic lives in
# src/metamodels/. params.yaml is validated before any job runs. Use another
# params file with `--configfile FILE` (see README).

report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/zoo.smk"
include: "rules/decompiler.smk"
include: "rules/variants.smk"
include: "rules/backdoor.smk"
include: "rules/hparams.smk"
include: "rules/modadd.smk"


rule all:
    input:
        dataset_shards(),
        "data/dataset/summary.json",
        "results/figure3.pdf",
    default_target: True


rule variants:  # seed 001 §3.2 + thesis ch. 6-7: the decompiler on de-sparsified and distilled zoos
    input:
        "results/figure_variants.pdf",
        "results/variants.csv",


rule backdoors:  # seed 000: CNN zoo, backdoor detection, figure 2
    input:
        "results/figure2.pdf",
        "results/metrics/backdoor.json",


rule hparams:  # seed 000 §3.2: training hyperparameters from weights, figure 4
    input:
        "results/figure4.pdf",
        "results/metrics/hparams.json",


rule modadd:  # seed 002: modular-addition backdoor heads
    input:
        "results/backdoor_heads.pdf",
        "results/backdoor_patching.csv",
        "results/metrics/modadd.json",


rule everything:  # every paper's results (what dvc.yaml versions)
    input:
        rules.all.input,
        rules.variants.input,
        rules.backdoors.input,
        rules.hparams.input,
        rules.modadd.input,
