# Shared setup: configuration, validation, and path helpers for every stage.

from metamodels import config as params_schema


configfile: "params.yaml"


# Fail at once, naming the key, before any job is scheduled.
params_schema.validate(config, "params (params.yaml + --config/--configfile)")

SHARDS = [f"{k:05d}" for k in range(config["zoo"]["shards"])]


wildcard_constraints:
    shard=r"\d{5}",
    split="train|val|test",


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
