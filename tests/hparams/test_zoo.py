"""The hyperparameter zoo: every drawn choice really changes what is trained."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from metamodels.backdoor import cnn
from metamodels.backdoor.images import Images
from metamodels.hparams import zoo as Z
from tests.tiny import ROOT

ZOO = yaml.safe_load((ROOT / "params.yaml").read_text())["hparam_zoo"]
SHAPE = (8, 8, 1)


def tiny_images(n=64, seed=0) -> Images:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, *SHAPE)) * 60 + y[:, None, None, None] * 19).astype(np.uint8)
    return Images(train_x=x, train_y=y, test_x=x[:20], test_y=y[:20], name="toy",
                  classes=[str(k) for k in range(10)])


def hp(**over):
    base = {"dataset": "toy", "batch_size": 16, "augmentation": "none", "optimizer": "adam",
            "activation": "relu", "initialization": "glorot_uniform", "width": 2, "depth": 1}
    return {**base, **over}


def test_draws_cover_every_choice_and_are_seeded():
    zoo = copy.deepcopy(ZOO)
    plans = [m for s in range(6) for m in Z.shard_plan({**zoo, "models_per_shard": 20}, s)]
    for name in Z.HPARAMS + Z.ARCHITECTURE:
        assert {m[name] for m in plans} == set(zoo["choices"][name]), name
    assert Z.shard_plan(zoo, 3) == Z.shard_plan(zoo, 3)
    assert Z.shard_plan(zoo, 3) != Z.shard_plan(zoo, 4)
    assert len({m["model_index"] for m in plans}) == len(plans)


@pytest.mark.parametrize("name", Z.ACTIVATIONS)
def test_activation_is_the_one_in_the_network(name):
    """The network's output equals a hand computation with that activation (and no other)."""
    params = Z.init_params("glorot_normal", 0, SHAPE, (3,), 10, ZOO)
    x = jnp.asarray(np.random.default_rng(1).random((4, *SHAPE)), jnp.float32)
    got = Z.HparamCNN(channels=(3,)).apply({"params": params}, x, Z.ACTIVATIONS.index(name))
    fns = {"relu": jax.nn.relu, "elu": jax.nn.elu, "gelu": jax.nn.gelu, "tanh": jnp.tanh,
           "sigmoid": jax.nn.sigmoid}

    def by_hand(act):
        def ln(h, p):
            mu = h.mean(-1, keepdims=True)
            var = ((h - mu) ** 2).mean(-1, keepdims=True)
            return (h - mu) / jnp.sqrt(var + 1e-6) * p["scale"] + p["bias"]

        def conv(h, p):
            out = jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return out + p["bias"]
        h = act(ln(conv(x, params["conv_0"]), params["norm_0"]))
        h = cnn.max_pool_2x2(conv(h, params["conv_1"]))
        h = act(ln(h, params["norm_1"])).max(axis=(1, 2))
        return h @ params["dense"]["kernel"] + params["dense"]["bias"]

    np.testing.assert_allclose(got, by_hand(fns[name]), rtol=1e-4, atol=1e-5)
    for other in fns:
        if other != name:
            assert not np.allclose(got, by_hand(fns[other]), atol=1e-3), other


def test_optimizer_state_type_follows_the_choice():
    params = Z.init_params("glorot_uniform", 0, SHAPE, (2,), 10, ZOO)
    kinds = {}
    for name in Z.OPTIMIZERS:
        state = Z.make_optimizer(name, ZOO).init(params)
        kinds[name] = {type(s).__name__ for s in jax.tree_util.tree_leaves(
            state, is_leaf=lambda s: isinstance(s, tuple) and hasattr(s, "_fields"))}
    assert "TraceState" in kinds["sgd"]
    assert "ScaleByAdamState" in kinds["adam"] and "ScaleByAdamState" in kinds["adamw"]
    assert "ScaleByRmsState" in kinds["rmsprop"]
    # AdamW differs from Adam by its decoupled weight decay: one step from the same gradient
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    step = {n: optax.apply_updates(params, Z.make_optimizer(n, ZOO).update(
        grads, Z.make_optimizer(n, ZOO).init(params), params)[0]) for n in ("adam", "adamw")}
    assert not np.array_equal(cnn.flatten(step["adam"]), cnn.flatten(step["adamw"]))


def test_initialization_schemes_have_their_statistics():
    shape, ch = (14, 14, 1), (32, 64)
    fan = {"conv_3": (9 * 64, 9 * 64)}
    stds = {}
    for scheme in Z.INITIALIZATIONS:
        p = Z.init_params(scheme, 5, shape, ch, 10, ZOO)
        k = np.asarray(p["conv_3"]["kernel"], np.float64)
        stds[scheme] = k.std()
        assert np.all(np.asarray(p["conv_3"]["bias"]) == 0)
        assert np.all(np.asarray(p["norm_3"]["scale"]) == 1)
    fi, fo = fan["conv_3"]
    assert stds["constant"] == 0
    np.testing.assert_allclose(stds["random_normal"], ZOO["init_normal_std"], rtol=0.05)
    np.testing.assert_allclose(stds["glorot_uniform"], np.sqrt(2 / (fi + fo)), rtol=0.05)
    np.testing.assert_allclose(stds["glorot_normal"], np.sqrt(2 / (fi + fo)), rtol=0.05)
    np.testing.assert_allclose(stds["he_normal"], np.sqrt(2 / fi), rtol=0.05)
    np.testing.assert_allclose(stds["lecun_normal"], np.sqrt(1 / fi), rtol=0.05)
    k = np.asarray(Z.init_params("glorot_uniform", 5, shape, ch, 10, ZOO)["conv_3"]["kernel"])
    assert np.abs(k).max() <= np.sqrt(6 / (fi + fo))
    assert np.all(np.asarray(Z.init_params("constant", 5, shape, ch, 10, ZOO)["conv_3"]["kernel"])
                  == np.float32(ZOO["init_constant"]))


def test_augmentations_change_the_batch_as_documented():
    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 1)).astype(np.float32)
    assert Z.augment(x, "none", rng, ZOO) is x
    noisy = Z.augment(x, "noise", np.random.default_rng(1), ZOO)
    assert noisy.min() >= 0 and noisy.max() <= 1
    np.testing.assert_allclose((noisy - x)[(noisy > 0) & (noisy < 1)].std(), ZOO["noise_std"],
                               rtol=0.15)
    fc = Z.augment(x, "flip_crop", np.random.default_rng(2), {**ZOO, "crop_pad": 0})
    flipped = np.all(fc == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(fc == x, axis=(1, 2, 3))
    assert np.all(flipped | kept) and 5 < flipped.sum() < 27
    shifted = Z.augment(x, "flip_crop", np.random.default_rng(2), ZOO)
    assert shifted.shape == x.shape and not np.array_equal(shifted, fc)
    with pytest.raises(ValueError, match="augmentation"):
        Z.augment(x, "mixup", rng, ZOO)


def test_training_follows_each_choice_and_is_bitwise_reproducible():
    images = tiny_images()
    zoo = {**ZOO, "epochs": 1}
    base = Z.train_one(hp(), 7, images, zoo)
    again = Z.train_one(hp(), 7, images, zoo)
    assert np.array_equal(base["weights"], again["weights"])
    assert base["weights"].shape == (cnn.num_params(base["layout"]),)
    for name, value in [("batch_size", 32), ("augmentation", "noise"), ("optimizer", "rmsprop"),
                        ("activation", "tanh"), ("initialization", "random_normal")]:
        other = Z.train_one(hp(**{name: value}), 7, images, zoo)
        assert not np.array_equal(other["weights"], base["weights"]), name


def test_zoo_rows_are_zero_padded_to_the_largest_architecture():
    zoo = {**ZOO, "epochs": 1, "models_per_shard": 3,
           "choices": {**ZOO["choices"], "width": [2], "depth": [1, 2], "batch_size": [16],
                       "optimizer": ["adam"]}}
    plan = [{**m, "depth": d} for m, d in zip(Z.shard_plan(zoo, 0), (1, 2, 1))]
    out = Z.train_models(plan, {"fashion_mnist": tiny_images(), "digits": tiny_images(seed=1)},
                         zoo)
    assert out["weights"].shape[1] == Z.max_params(zoo, SHAPE)
    for row, n, lay in zip(out["weights"], out["n_weights"], out["layout"]):
        assert n == cnn.num_params(lay) and np.all(row[n:] == 0) and np.any(row[:n] != 0)
    deep = out["layout"][[m["depth"] for m in plan].index(2)]
    assert [sh for name, sh in deep if name == "conv_3/kernel"] == [(3, 3, 4, 4)]
