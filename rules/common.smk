# Shared setup: configuration, validation, and path helpers for every stage.

import os

from metamodels.core import config as params_schema
from metamodels.core import resources as cluster_resources
from metamodels.core.config import detection_settings, distill_ratio


configfile: "params.yaml"


# Fail at once, naming the key, before any job is scheduled. Input paths (the images) are
# checked by images_exist, only for targets whose DAG trains CNNs.
params_schema.validate(config, "params (params.yaml + --config/--configfile)", check_paths=False)


def images_exist(wildcards):
    """No input files: raises ParamsError naming the key (images.fashion_mnist_root or
    images.cifar10_root) while the DAG is built, before any job starts, when the images that
    the CNN-zoo jobs read are missing and cannot be downloaded."""
    params_schema.check_input_paths(config, "params (params.yaml + --config/--configfile)")
    return []

SHARDS = [f"{k:05d}" for k in range(config["zoo"]["shards"])]


wildcard_constraints:
    shard=r"\d{5}",
    split="train|val|test",
    cnn_shard=r"\d{3}",
    hparam_shard=r"\d{3}",
    target=r"[a-z_]+",
    setting=r"iid|iid_noaug|iid_aug|ood_\w+",
    task=r"clean|mod\d+",
    variant="standard|orthogonal|pca|compressed|natural",
    source=r"dataset|variants/(standard|orthogonal|pca|compressed|natural)",
    vshard=r"\d{3}",


def threads_of(group):
    """A rule's `threads:` (params.yaml `threads.GROUP`); pass the same group to its verb with
    section_params(threads=[GROUP], ...), whose process then keeps to that many threads."""
    return config["threads"][group]


def resources_of(name_of_rule):
    """A rule's `resources:` for a cluster: mem_mb, runtime (minutes), cpus_per_task and gpu,
    computed from the params per job (its wildcards) and doubled on a retry. The formulas, and
    the measurements they are based on, are in src/metamodels/core/resources.py.

    METAMODELS_GPUS=N in the environment caps every job's GPUs (0: a CPU-only cluster; jobs
    are then timed at CPU rates). An environment variable, not `--resources gpu=0`: a cluster
    job re-evaluates its resources in its own Snakemake process, which gets the environment
    (sbatch --export=ALL) but not `--resources`, and would ask srun for the GPU again."""
    cap = os.environ.get("METAMODELS_GPUS", "").strip()
    gpus = int(cap) if cap else None

    def one(name):
        def value(wildcards, attempt):
            return cluster_resources.job_resources(
                name_of_rule, config, dict(wildcards.items()), attempt, gpus=gpus)[name]
        return value

    return {name: one(name) for name in ("mem_mb", "runtime", "cpus_per_task", "gpu")}


def section_params(**wanted):
    """JSON of the params sections/keys a rule uses (its rerun trigger)."""
    return params_schema.sections(config, **wanted)


def dataset_shards():
    return [
        f"data/dataset/{split}/shard_{j:03d}.npz"
        for split, n in config["dataset"]["shards"].items()
        for j in range(n)
    ]


def zoo_shards(split):
    """The dataset's zoo-format shards of one split (weights, layouts, programs)."""
    n = config["dataset"]["shards"][split]
    return [f"data/dataset/{split}/shard_{j:03d}.npz" for j in range(n)]


def token_shards(split, source="dataset"):
    """The decompiler's token shards of one split of the dataset (or of variants/VARIANT)."""
    n = config["dataset"]["shards"][split]
    return [f"data/tokens/{source}/{split}/shard_{j:03d}.npz" for j in range(n)]


CNN_ZOO_SHARDS = [f"{k:03d}" for k in range(config["cnn_zoo"]["shards"])]
DETECTION_SETTINGS = detection_settings(config["detector"])


def cnn_zoo_shards():
    return [f"data/cnn_zoo/shard_{k}.npz" for k in CNN_ZOO_SHARDS]


HPARAM_ZOO_SHARDS = [f"{k:03d}" for k in range(config["hparam_zoo"]["shards"])]
HPARAM_TARGETS = config["hparams"]["targets"]


def hparam_zoo_shards():
    return [f"data/hparam_zoo/shard_{k}.npz" for k in HPARAM_ZOO_SHARDS]


def hparam_images_exist(wildcards):
    """No input files: raises ParamsError naming images.fashion_mnist_root while the DAG is
    built when hparam_zoo.choices.dataset lists fashion_mnist and its files are missing."""
    if "fashion_mnist" in config["hparam_zoo"]["choices"]["dataset"]:
        params_schema.check_input_paths(
            config, "params (params.yaml + --config/--configfile)", dataset="fashion_mnist",
            needed_by="hparam_zoo.choices.dataset")
    return []


MODADD_TASKS = list(config["modadd"]["runs"])


def modadd_task_params(wildcards):
    """JSON of what one modadd task trains with: its rerun trigger ignores the other tasks."""
    m = config["modadd"]
    one_task = {"seed": m["seed"], "train": m["train"],
                "runs": {wildcards.task: m["runs"][wildcards.task]}}
    return params_schema.sections({"modadd": one_task, "threads": config["threads"]},
                                  modadd=True, threads=["train"])


VARIANTS = config["variants"]["decompile"]


def variant_shards(variant, split):
    n = config["dataset"]["shards"][split]
    return [f"data/variants/{variant}/{split}/shard_{j:03d}.npz" for j in range(n)]


def variant_params(wildcards):
    """JSON of what one variant's shards are made with: editing the PCA params does not
    rerun the distilled variants, and editing distillation does not rerun PCA."""
    v = config["variants"]
    mine = {"seed": v["seed"], "programs_per_shard": v["programs_per_shard"]}
    if wildcards.variant == "pca":
        mine["pca"] = v["pca"]
    elif wildcards.variant in ("compressed", "natural"):
        # a number, or one per kind: pass this kind's
        mine["distill"] = dict(v["distill"], ratio=distill_ratio(v["distill"], wildcards.variant))
    return params_schema.sections(
        {"zoo": config["zoo"], "verify": config["verify"], "variants": mine,
         "threads": config["threads"]},
        zoo=["seed", "vocab", "max_seq_len"], verify=True, variants=True, threads=["variants"])


def variant_decompiler_params():
    """The decompiler's params with variants.decompiler's overrides of its training."""
    d = dict(config["decompiler"])
    d["train"] = {**d["train"], **config["variants"]["decompiler"]}
    return params_schema.sections(
        {"zoo": config["zoo"], "decompiler": d, "threads": config["threads"]},
        zoo=["vocab", "max_seq_len"],
        decompiler=["seed", "max_program_tokens", "input", "model", "train"],
        threads=["train"])
