# Shared setup: configuration, validation, and path helpers for every stage.

from metamodels import config as params_schema
from metamodels.backdoor import setting_names as detection_settings


configfile: "params.yaml"


# Fail at once, naming the key, before any job is scheduled.
params_schema.validate(config, "params (params.yaml + --config/--configfile)")

SHARDS = [f"{k:05d}" for k in range(config["zoo"]["shards"])]


wildcard_constraints:
    shard=r"\d{5}",
    split="train|val|test",
    cnn_shard=r"\d{3}",
    setting=r"iid|iid_noaug|ood_\w+",
    task=r"clean|mod\d+",


def section_params(**wanted):
    """JSON of the params sections/keys a rule uses (its rerun trigger)."""
    return params_schema.sections(config, **wanted)


def dataset_shards():
    return [
        f"data/dataset/{split}/shard_{j:03d}.npz"
        for split, n in config["dataset"]["shards"].items()
        for j in range(n)
    ]


def split_shards(split):
    n = config["dataset"]["shards"][split]
    return [f"data/dataset/{split}/shard_{j:03d}.npz" for j in range(n)]


CNN_ZOO_SHARDS = [f"{k:03d}" for k in range(config["cnn_zoo"]["shards"])]
DETECTION_SETTINGS = detection_settings(config["detector"])


def cnn_zoo_shards():
    return [f"data/cnn_zoo/shard_{k}.npz" for k in CNN_ZOO_SHARDS]


MODADD_TASKS = list(config["modadd"]["runs"])


def modadd_task_params(wildcards):
    """JSON of what one modadd task trains with: its rerun trigger ignores the other tasks."""
    m = config["modadd"]
    one_task = {"seed": m["seed"], "train": m["train"],
                "runs": {wildcards.task: m["runs"][wildcards.task]}}
    return params_schema.sections({"modadd": one_task}, modadd=True)
