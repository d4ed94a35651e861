"""The hyperparameter-prediction stage: splits, labels, the per-architecture permutation
augmentation, and the tiny zoo through both predictors and the report (in process)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metamodels.backdoor import cnn
from metamodels.core import shards as S
from metamodels.hparams import stage as ST
from metamodels.hparams import zoo as Z
from tests.tiny import tiny_params


def test_split_is_seeded_disjoint_and_complete():
    cfg = {"seed": 3, "split": {"val": 0.2, "test": 0.3}}
    parts = ST.split(50, cfg)
    rows = np.concatenate([parts[r] for r in ST.ROLES])
    assert sorted(rows.tolist()) == list(range(50))
    assert (len(parts["test"]), len(parts["val"])) == (15, 10)
    assert all(np.array_equal(parts[r], ST.split(50, cfg)[r]) for r in ST.ROLES)
    with pytest.raises(ValueError, match="hparams.split"):
        ST.split(3, {"seed": 0, "split": {"val": 0.4, "test": 0.4}})


def test_permutation_augment_keeps_every_architecture_s_function():
    """Two architectures padded into one batch: each row is permuted with its own layout, so
    each model computes the same logits after augmentation (and its weights did move)."""
    shape = (8, 8, 1)
    archs = [(2,), (3, 6)]
    layouts = [(ch, cnn.layout_for(shape, {"channels": list(ch)})) for ch in archs]
    width = max(cnn.num_params(lay) for _, lay in layouts)
    flats, groups, params = [], [], []
    for g, (ch, lay) in enumerate(layouts):
        for seed in range(2):
            p = Z.init_params("glorot_normal", seed, shape, ch, 10, {})
            params.append(p)
            f = cnn.flatten(p)
            flats.append(np.pad(f, (0, width - len(f))))
            groups.append(g)
    flat, groups = jnp.asarray(np.stack(flats)), jnp.asarray(groups, jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), len(flats))
    out = np.asarray(ST.permutation_augment(layouts, width)(flat, keys, groups))
    x = jnp.asarray(np.random.default_rng(0).random((5, *shape)), jnp.float32)
    for row, g, p, before in zip(out, np.asarray(groups), params, flats):
        lay = layouts[g][1]
        n = cnn.num_params(lay)
        assert np.all(row[n:] == 0) and not np.array_equal(row, before)
        moved = cnn.unflatten(jnp.asarray(row[:n]), lay)
        np.testing.assert_allclose(
            cnn.forward(moved, x), cnn.forward(jax.tree_util.tree_map(jnp.asarray, p), x),
            rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_tiny_zoo_through_both_predictors_and_the_report(built):
    """The tiny pipeline's hparams target (built by Snakemake with the rest of `everything`):
    every test model gets a prediction per method, accuracies are the fraction of correct
    predictions, and the zoo shards read back without our code."""
    params = tiny_params()
    zoo_paths = sorted(built.glob("data/hparam_zoo/shard_*.npz"))
    assert len(zoo_paths) == params["hparam_zoo"]["shards"] == 2
    with np.load(zoo_paths[0], allow_pickle=False) as z:
        assert z["weights"].dtype == np.float32 and z["weights"].shape[0] == 4
        assert set(z["activation"].astype(str)) <= {"relu", "tanh"}
        assert np.all((z["test_acc"] >= 0) & (z["test_acc"] <= 1))
        n = z["n_weights"]
        assert all(np.all(row[k:] == 0) for row, k in zip(z["weights"], n))
    for target in params["hparams"]["targets"]:
        s = S.read_json(built / f"results/hparams/predictions_{target}.json")
        label = np.asarray(s["label"])
        assert len(label) == s["n"]["test"] == 2
        for m in ST.METHODS:
            pred = np.asarray(s["predicted"][m])
            assert pred.shape == label.shape and set(pred.tolist()) <= {0, 1}
            assert s["accuracy"][m] == float(np.mean(pred == label))
        assert len(set(s["predicted"]["majority"])) == 1
    m = json.loads((built / "results/metrics/hparams.json").read_text())
    assert m["target_order"] == params["hparams"]["targets"] == ["activation", "optimizer"]
    assert set(m["targets"]) == set(m["target_order"])
    assert m["zoo"]["models"] == 8 and "seconds" not in json.dumps(m)
    assert m["targets"]["activation"]["chance"] == 0.5
    assert (built / "results/figure4.pdf").read_bytes().startswith(b"%PDF")
