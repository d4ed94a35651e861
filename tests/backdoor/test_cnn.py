"""CNN base models: parameter layout, neuron permutations, vmapped zoo training, evaluation.

Everything runs on 8x8x1 random images with channels (4, 4, 4) so each test takes seconds.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metamodels.backdoor import cnn

SHAPE = (8, 8, 1)
forward = jax.jit(cnn.forward)
TINY = {"channels": [4, 4, 4], "epochs": 1, "batch_size": 16, "lr": 0.01, "wd": 0.0001,
        "eval_batch_size": 16}


def tiny_images(n_train: int = 64, n_test: int = 24) -> types.SimpleNamespace:
    rng = np.random.default_rng(0)
    return types.SimpleNamespace(
        train_x=rng.integers(0, 256, (n_train, *SHAPE), dtype=np.uint8),
        train_y=rng.integers(0, 10, n_train),
        test_x=rng.integers(0, 256, (n_test, *SHAPE), dtype=np.uint8),
        test_y=rng.integers(0, 10, n_test))


def tiny_specs() -> list[dict]:
    mask = np.zeros(SHAPE, np.float32)
    mask[-2:, -2:] = 1.0
    pattern = np.ones(SHAPE, np.float32)
    clean = {"seed": 11, "mask": np.zeros(SHAPE, np.float32),
             "pattern": np.zeros(SHAPE, np.float32), "poison_idx": np.zeros(0, np.int64),
             "target": 0}
    return [clean,
            {"seed": 12, "mask": mask, "pattern": pattern, "poison_idx": [1, 5, 9, 30],
             "target": 3},
            {"seed": 13, "mask": np.full(SHAPE, 0.1, np.float32),
             "pattern": np.random.default_rng(1).random(SHAPE, dtype=np.float32),
             "poison_idx": [0, 2, 40], "target": 7}]


def random_params(seed: int) -> dict:
    """Tiny params with non-trivial LayerNorm scales and biases everywhere."""
    p = cnn.init_params(jax.random.PRNGKey(seed), SHAPE, TINY)
    lay = cnn.layout(p)
    flat = cnn.flatten(p)
    noise = np.random.default_rng(seed).normal(size=flat.shape).astype(np.float32)
    return cnn.unflatten(jnp.asarray(flat + 0.3 * noise), lay)


@pytest.fixture(scope="module")
def images():
    return tiny_images()


@pytest.fixture(scope="module")
def trained(images):
    """The three tiny specs trained in groups of 2 (the second group padded)."""
    return cnn.train_models(images, tiny_specs(), dict(TINY, vmap_group=2), backend="jax")


def test_default_param_count_and_layout():
    lay = cnn.layout_for((32, 32, 3))
    # conv 3x3: 9*Cin*Cout + Cout; each LayerNorm: 2*C (scale, bias).
    # block 16: (9*3*16 + 16) + 32 + (9*16*16 + 16) + 32 =   448 + 32 +  2320 + 32 =  2832
    # block 32: (9*16*32 + 32) + 64 + (9*32*32 + 32) + 64 =  4640 + 64 +  9248 + 64 = 14016
    # block 64: (9*32*64 + 64) + 128 + (9*64*64 + 64) + 128 = 18496 + 128 + 36928 + 128 = 55680
    # dense: 64*10 + 10 = 650;  total 2832 + 14016 + 55680 + 650 = 73178 (paper: ~70,000)
    assert cnn.num_params(lay) == 73178
    assert [n for n, _ in lay[:4]] == ["conv_0/kernel", "conv_0/bias", "norm_0/scale",
                                       "norm_0/bias"]
    assert lay[-2:] == [("dense/kernel", (64, 10)), ("dense/bias", (10,))]
    logits = jax.eval_shape(cnn.forward, cnn.unflatten(np.zeros(73178, np.float32), lay),
                            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert logits.shape == (2, 10)


def test_flatten_unflatten_round_trip():
    p = random_params(0)
    lay = cnn.layout(p)
    flat = cnn.flatten(p)
    assert flat.dtype == np.float32 and flat.shape == (cnn.num_params(lay),)
    back = cnn.unflatten(flat, lay)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(p)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(p)):
        np.testing.assert_array_equal(a, np.asarray(b))
    # batched: leading axes are kept both ways, and layout ignores them
    batch = cnn._stack([p, random_params(1)])
    assert cnn.layout(batch) == lay
    flats = cnn.flatten(batch)
    np.testing.assert_array_equal(flats[0], flat)
    np.testing.assert_array_equal(cnn.flatten(cnn.unflatten(flats, lay)), flats)


def test_init_is_lecun_scaled_and_seeded():
    p = cnn.init_params(jax.random.PRNGKey(3), (32, 32, 3))
    k = np.asarray(p["conv_5"]["kernel"])                  # fan_in 9*64
    assert abs(k.std() * np.sqrt(9 * 64) - 1.0) < 0.05 and np.abs(k).max() <= 2 / 0.8796 / 24
    assert np.all(np.asarray(p["norm_3"]["scale"]) == 1)
    assert np.all(np.asarray(p["conv_1"]["bias"]) == 0)
    q = cnn.init_params(jax.random.PRNGKey(3), (32, 32, 3))
    np.testing.assert_array_equal(cnn.flatten(p), cnn.flatten(q))
    assert not np.array_equal(cnn.flatten(p),
                              cnn.flatten(cnn.init_params(jax.random.PRNGKey(4), (32, 32, 3))))


def test_permute_keeps_the_function_and_changes_the_weights():
    x = jnp.asarray(np.random.default_rng(5).random((6, *SHAPE)), jnp.float32)
    params = cnn._stack([random_params(0), random_params(1)])
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    permuted = jax.jit(jax.vmap(cnn.permute))(params, keys)
    for m in range(2):
        one = jax.tree_util.tree_map(lambda a: a[m], params)
        perm = jax.tree_util.tree_map(lambda a: a[m], permuted)
        np.testing.assert_allclose(forward(perm, x), forward(one, x),
                                   rtol=1e-5, atol=1e-5)
        assert not np.array_equal(cnn.flatten(perm), cnn.flatten(one))
        # a permutation moves values, never changes them; the logits' layer stays put
        np.testing.assert_array_equal(np.sort(cnn.flatten(perm)), np.sort(cnn.flatten(one)))
        np.testing.assert_array_equal(perm["dense"]["bias"], one["dense"]["bias"])


def test_permute_flat_matches_permute_and_vmaps():
    lay = cnn.layout(random_params(0))
    flats = jnp.asarray(cnn.flatten(cnn._stack([random_params(0), random_params(1)])))
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    out = jax.jit(jax.vmap(lambda f, k: cnn.permute_flat(f, k, lay)))(flats, keys)
    assert out.shape == flats.shape and out.dtype == jnp.float32
    x = jnp.asarray(np.random.default_rng(6).random((4, *SHAPE)), jnp.float32)
    for m in range(2):
        expect = cnn.flatten(cnn.permute(cnn.unflatten(flats[m], lay), keys[m]))
        np.testing.assert_array_equal(np.asarray(out[m]), expect)
        assert not np.array_equal(np.asarray(out[m]), np.asarray(flats[m]))
        np.testing.assert_allclose(forward(cnn.unflatten(out[m], lay), x),
                                   forward(cnn.unflatten(flats[m], lay), x),
                                   rtol=1e-5, atol=1e-5)
    # different keys give different permutations of the same model
    again = cnn.permute_flat(flats[0], keys[1], lay)
    assert not np.array_equal(np.asarray(again), np.asarray(out[0]))


def test_canonical_maps_every_permutation_to_one_point_and_keeps_the_function():
    lay = cnn.layout(random_params(0))
    flat = cnn.flatten(random_params(0))
    keys = [jax.random.PRNGKey(k) for k in range(4)]
    perms = np.stack([flat] + [np.asarray(cnn.permute_flat(flat, k, lay)) for k in keys])
    assert len({p.tobytes() for p in perms}) == 5
    canon = cnn.canonical_flat(perms, lay)
    for c in canon:
        np.testing.assert_array_equal(c, canon[0])
    np.testing.assert_array_equal(canon[0], cnn.canonical_flat(flat, lay))   # [P] in, [P] out
    x = jnp.asarray(np.random.default_rng(6).random((4, *SHAPE)), jnp.float32)
    c = cnn.unflatten(jnp.asarray(canon[0]), lay)
    np.testing.assert_allclose(forward(c, x), forward(random_params(0), x), rtol=1e-5, atol=1e-5)
    for i, conv in enumerate(cnn._conv_names(c)):   # channels by incoming norm, largest first
        norms = np.sqrt(np.square(np.asarray(c[conv]["kernel"])).sum(axis=(0, 1, 2)))
        assert np.all(np.diff(norms) <= 0), conv
    # another model stays another point
    assert not np.array_equal(cnn.canonical_flat(cnn.flatten(random_params(1)), lay), canon[0])


def test_make_batch_triggers_and_relabels_poisoned_examples():
    rng = np.random.default_rng(2)
    train_x = rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    train_y = np.arange(10, dtype=np.int32) % 3
    poisoned = np.zeros(10, bool)
    poisoned[[2, 7]] = True
    mask = np.zeros((4, 4, 1), np.float32)
    mask[0, 0] = 1.0
    mask[1, 1] = 0.25
    pattern = np.full((4, 4, 1), 0.5, np.float32)
    idx = np.array([7, 0, 2, 5], np.int32)
    x, y = cnn.make_batch(jnp.asarray(train_x), jnp.asarray(train_y), jnp.asarray(idx),
                          jnp.asarray(poisoned), jnp.asarray(mask), jnp.asarray(pattern), 9)
    x, y = np.asarray(x), np.asarray(y)
    base = train_x[idx].astype(np.float32) / 255
    np.testing.assert_array_equal(y, [9, train_y[0], 9, train_y[5]])
    np.testing.assert_allclose(x[[1, 3]], base[[1, 3]], rtol=1e-6)      # clean: untouched
    np.testing.assert_allclose(x[[0, 2]], base[[0, 2]] * (1 - mask) + mask * pattern, rtol=1e-6)
    assert np.all(x[[0, 2], 0, 0, 0] == 0.5)
    # the same images as the poisons/images helpers make
    from metamodels.backdoor import images as I
    from metamodels.backdoor import poisons as P
    np.testing.assert_allclose(x[0], P.apply(I.to_float(train_x[7]), mask, pattern), rtol=1e-6)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_epoch_order_is_seeded_per_model_and_epoch():
    a = cnn.epoch_order(4, 0, 70, 16)
    assert a.shape == (4, 16) and len(np.unique(a)) == 64
    np.testing.assert_array_equal(a, cnn.epoch_order(4, 0, 70, 16))
    assert not np.array_equal(a, cnn.epoch_order(4, 1, 70, 16))
    assert not np.array_equal(a, cnn.epoch_order(5, 0, 70, 16))


def test_training_outputs(trained):
    m = 3
    p = cnn.num_params(cnn.layout_for(SHAPE, TINY))
    assert trained["weights"].shape == (m, p) and trained["weights"].dtype == np.float32
    assert trained["train_loss"].shape == (m, 1) and np.all(np.isfinite(trained["train_loss"]))
    assert np.all((trained["clean_acc"] >= 0) & (trained["clean_acc"] <= 1))
    assert np.isnan(trained["asr"][0]) and np.all(np.isfinite(trained["asr"][1:]))
    # every model starts from its own seed and moves away from its init
    init = cnn.flatten(cnn.init_params(jax.random.PRNGKey(12), SHAPE, TINY))
    assert not np.allclose(trained["weights"][1], init)
    assert len({w.tobytes() for w in trained["weights"]}) == m


def test_group_size_does_not_change_a_model(images, trained):
    """Groups of 1 (each model alone) vs groups of 2 (models 0, 1 together; 2 padded).

    Not bitwise: vmap turns each convolution into one grouped convolution whose float
    summation order differs from a single model's, so results agree to float rounding
    (measured ~1e-6 after 4 steps), not to the bit.
    """
    specs = tiny_specs()
    alone = cnn.train_models(images, specs, dict(TINY, vmap_group=1), backend="jax")
    np.testing.assert_allclose(alone["weights"], trained["weights"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(alone["train_loss"], trained["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(alone["clean_acc"], trained["clean_acc"])
    np.testing.assert_allclose(alone["asr"], trained["asr"])


def test_determinism_same_bytes(images, trained):
    again = cnn.train_models(images, tiny_specs(), dict(TINY, vmap_group=2), backend="jax")
    for k in ("weights", "train_loss", "clean_acc", "asr"):
        assert np.asarray(again[k]).tobytes() == np.asarray(trained[k]).tobytes(), k


def test_init_seed_sets_the_initial_weights_and_only_them(images, trained):
    """``init_seed`` (cnn_zoo.init: shared) replaces the seed's init; data order stays the seed's."""
    specs = tiny_specs()
    own = [{**specs[0], "init_seed": specs[0]["seed"]}]
    same = cnn.train_models(images, own, dict(TINY, vmap_group=2), backend="jax")
    assert same["weights"][0].tobytes() == trained["weights"][0].tobytes()
    # model 0 started from model 1's weights: a different model, but not model 1 (other data)
    other = cnn.train_models(images, [{**specs[0], "init_seed": specs[1]["seed"]}],
                             dict(TINY, vmap_group=2), backend="jax")
    assert not np.array_equal(other["weights"][0], trained["weights"][0])
    assert not np.array_equal(other["weights"][0], trained["weights"][1])


def test_evaluate_flat_weights_matches_training(images, trained):
    acc, asr = cnn.evaluate(trained["weights"], images, tiny_specs(), dict(TINY, vmap_group=2))
    np.testing.assert_array_equal(acc, trained["clean_acc"])
    np.testing.assert_array_equal(asr, trained["asr"])


def test_evaluate_accuracy_and_attack_success_definitions(images):
    """Constant classifiers: zero weights except the Dense bias (one-hot on class c)."""
    lay = cnn.layout_for(SHAPE, TINY)
    off = cnn.num_params(lay) - 10                       # dense/bias is last
    flats = np.zeros((3, cnn.num_params(lay)), np.float32)
    flats[0, off + 3] = flats[1, off + 5] = flats[2, off + 3] = 1.0
    specs = tiny_specs()
    specs = [dict(specs[1], target=3), dict(specs[1], target=3), dict(specs[0], target=3)]
    acc, asr = cnn.evaluate(flats, images, specs, dict(TINY, vmap_group=2))
    y = np.asarray(images.test_y)
    np.testing.assert_allclose(acc, [np.mean(y == 3), np.mean(y == 5), np.mean(y == 3)])
    assert asr[0] == 1.0 and asr[1] == 0.0 and np.isnan(asr[2])   # clean mask -> NaN
