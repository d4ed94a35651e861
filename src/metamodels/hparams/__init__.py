"""Hyperparameter prediction from weights (seed 000 §3.2 and App. A.1.1, Figure 4).

The stages, in DAG order (rules/hparams.smk, one verb each, :mod:`.stage`):

1. ``hparam-zoo-shard``: :mod:`.zoo` trains CNNs of the backdoor zoo's family with variable
   width and depth, each with a data set (:mod:`.data`), batch size, augmentation, optimizer,
   activation and initialization drawn at random.
2. ``predict-hparam``: per hyperparameter, the chunked-weights meta-model
   (:mod:`metamodels.backdoor.detector` with a K-way head), Eilertsen et al.'s 1-D CNN over
   random weight segments (:mod:`.baseline`) and the majority class, on one split.
3. ``hparam-report`` and ``figure4`` (:mod:`.figure`): accuracy per hyperparameter and method.
"""

HPARAMS = ("dataset", "batch_size", "augmentation", "optimizer", "activation", "initialization")
"""The targets seed 000 App. A.1.1 predicts, in its order (here so the CLI can list them
without loading JAX)."""


def split_sizes(n: int, split) -> tuple[int, int, int]:
    """(train, val, test) model counts of a zoo of ``n`` under ``hparams.split`` (``val``,
    ``test`` fractions; at least one test model): what :func:`.stage.split` cuts, and what the
    params check (:mod:`metamodels.core.config`) tests before any job runs."""
    n_test = max(1, int(round(n * float(split["test"]))))
    n_val = int(round(n * float(split["val"])))
    return n - n_test - n_val, n_val, n_test
