"""Backdoor triggers: exact pixel footprints, blends, determinism and poison indices."""

from __future__ import annotations

import numpy as np
import pytest

from metamodels.backdoor import poisons as P

SHAPES = [(32, 32, 3), (28, 28, 1)]
FOOTPRINT = {"patch4": 4, "pixel1": 1, "ood_square": 9, "ood_cross": 9, "ood_lines": 15,
             "ood_frame": 12}
PATCHES = tuple(FOOTPRINT)


def _images(shape, n=3, seed=0):
    # strictly inside (0.25, 0.75): every extreme (0/1) trigger value changes the pixel
    return np.random.default_rng(seed).uniform(0.25, 0.75, (n, *shape)).astype(np.float32)


def test_attack_sets():
    assert set(P.TRAIN_ATTACKS).isdisjoint(P.OOD_ATTACKS)
    assert {"patch4", "pixel1", "noise_blend", "checker_blend"} <= set(P.TRAIN_ATTACKS)
    assert len(P.OOD_ATTACKS) >= 3
    assert set(PATCHES) | set(P.BLEND_ATTACKS) == set(P.ATTACKS)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("attack", PATCHES)
def test_patch_changes_exactly_its_pixels(attack, shape):
    for seed in range(5):
        mask, pattern = P.trigger(attack, np.random.default_rng(seed), shape, 0.1)
        assert mask.dtype == pattern.dtype == np.float32 and mask.shape == pattern.shape == shape
        assert set(np.unique(mask)) <= {0.0, 1.0}
        # mask is the same on every channel, covers exactly the footprint
        assert np.array_equal(mask, np.repeat(mask[..., :1], shape[2], axis=2))
        assert int(mask[..., 0].sum()) == FOOTPRINT[attack]
        x = _images(shape, seed=seed)
        xp = P.apply(x, mask, pattern)
        changed = (xp != x)
        # exactly the masked pixels change, in every channel; they take the pattern value
        assert np.array_equal(changed, np.broadcast_to(mask == 1, changed.shape))
        assert np.array_equal(xp[:, mask == 1], np.broadcast_to(pattern[mask == 1],
                                                                  xp[:, mask == 1].shape))
        assert set(np.unique(pattern[mask == 1])) <= {0.0, 1.0}
        assert np.all(pattern[mask == 0] == 0)


def test_pixel1_and_patch4_footprints_are_one_pixel_and_2x2():
    shape = (32, 32, 3)
    m1, _ = P.trigger("pixel1", np.random.default_rng(3), shape)
    ys, xs = np.nonzero(m1[..., 0])
    assert len(ys) == 1
    m4, _ = P.trigger("patch4", np.random.default_rng(3), shape)
    ys, xs = np.nonzero(m4[..., 0])
    assert len(ys) == 4 and np.ptp(ys) == 1 and np.ptp(xs) == 1


@pytest.mark.parametrize("attack", P.BLEND_ATTACKS)
@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_blend_is_exact_convex_combination(attack, alpha):
    shape = (32, 32, 3)
    mask, pattern = P.trigger(attack, np.random.default_rng(1), shape, alpha)
    a = np.float32(alpha)
    assert np.all(mask == a)
    assert pattern.min() >= 0 and pattern.max() <= 1
    x = _images(shape)
    assert np.array_equal(P.apply(x, mask, pattern), (1 - a) * x + a * pattern)


def test_checkerboard_has_stride_cells():
    mask, pattern = P.trigger("checker_blend", np.random.default_rng(0), (16, 16, 1))
    p = pattern[..., 0]
    assert set(np.unique(p)) == {0.0, 1.0}
    c = P.CHECKER_CELL
    # constant within each aligned-to-phase cell: neighbours differ exactly at cell borders
    row_changes = np.nonzero(np.diff(p[:, 0]))[0]
    assert np.all(np.diff(row_changes) == c)
    assert np.array_equal(p[:, 1:] != p[:, :-1], np.broadcast_to(p[:1, 1:] != p[:1, :-1], (16, 15)))


@pytest.mark.parametrize("attack", P.ATTACKS)
def test_triggers_deterministic_and_seed_dependent(attack):
    shape = (32, 32, 3)
    a = P.trigger(attack, np.random.default_rng([7, 1]), shape, 0.1)
    b = P.trigger(attack, np.random.default_rng([7, 1]), shape, 0.1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    others = [P.trigger(attack, np.random.default_rng([7, i]), shape, 0.1) for i in range(2, 8)]
    assert any(not (np.array_equal(a[0], m) and np.array_equal(a[1], p)) for m, p in others)


@pytest.mark.parametrize("attack", PATCHES)
def test_positions_stay_in_bounds_and_vary(attack):
    shape = (8, 9, 1)  # small image: the 5x5 shapes touch the borders often
    corners = set()
    for seed in range(200):
        mask, _ = P.trigger(attack, np.random.default_rng(seed), shape)
        assert int(mask.sum()) == FOOTPRINT[attack]  # nothing clipped at the border
        ys, xs = np.nonzero(mask[..., 0])
        corners.add((int(ys.min()), int(xs.min())))
    assert len(corners) > 5
    assert min(c[0] for c in corners) == 0 and min(c[1] for c in corners) == 0


def test_trigger_too_small_image_and_unknown_name():
    with pytest.raises(ValueError, match="at least 5x5"):
        P.trigger("ood_cross", np.random.default_rng(0), (4, 4, 1))
    with pytest.raises(ValueError, match="patch4.*ood_frame"):
        P.trigger("badnets", np.random.default_rng(0), (32, 32, 3))
    with pytest.raises(ValueError, match="alpha"):
        P.trigger("noise_blend", np.random.default_rng(0), (32, 32, 3), 1.5)


def test_apply_rejects_uint8_and_broadcasts_batches():
    mask, pattern = P.trigger("patch4", np.random.default_rng(0), (4, 4, 1))
    with pytest.raises(TypeError, match="float"):
        P.apply(np.zeros((4, 4, 1), np.uint8), mask, pattern)
    x = _images((4, 4, 1), n=5)
    assert np.array_equal(P.apply(x, mask, pattern)[2], P.apply(x[2], mask, pattern))


def test_apply_with_jax_vmap_matches_numpy():
    jax = pytest.importorskip("jax")
    shape = (8, 8, 3)
    trig = [P.trigger(a, np.random.default_rng(i), shape) for i, a in enumerate(P.ATTACKS)]
    masks = np.stack([t[0] for t in trig])
    patterns = np.stack([t[1] for t in trig])
    x = _images(shape, n=2)
    out = jax.vmap(P.apply, in_axes=(None, 0, 0))(x, masks, patterns)
    ref = np.stack([P.apply(x, m, p) for m, p in trig])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n, rate, k", [(50000, 0.01, 500), (60000, 0.01, 600), (30, 0.01, 1),
                                        (10, 0.0, 0), (7, 1.0, 7), (1000, 0.0125, 13)])
def test_poison_indices_size_unique_sorted(n, rate, k):
    idx = P.poison_indices(n, rate, np.random.default_rng(0))
    assert idx.dtype == np.int64 and len(idx) == k
    assert len(np.unique(idx)) == k and np.all(np.diff(idx) > 0)
    assert k == 0 or (idx.min() >= 0 and idx.max() < n)
    again = P.poison_indices(n, rate, np.random.default_rng(0))
    assert np.array_equal(idx, again)


def test_poison_indices_rejects_bad_rate_and_varies_with_seed():
    with pytest.raises(ValueError, match="rate"):
        P.poison_indices(100, 1.5, np.random.default_rng(0))
    a = P.poison_indices(5000, 0.01, np.random.default_rng(0))
    b = P.poison_indices(5000, 0.01, np.random.default_rng(1))
    assert not np.array_equal(a, b)


def test_poison_set_and_sample_attack():
    shape = (6, 6, 1)
    rng = np.random.default_rng(4)
    att = P.sample_attack({"alpha": 0.2}, "noise_blend", rng, shape, n_classes=10)
    assert 0 <= att["target"] < 10 and np.all(att["mask"] == np.float32(0.2))
    x = _images(shape, n=10)
    y = np.arange(10) % 3
    idx = np.array([1, 6])
    xp, yp = P.poison_set(x, y, idx, att["mask"], att["pattern"], att["target"])
    assert np.array_equal(yp[idx], [att["target"]] * 2)
    keep = np.setdiff1d(np.arange(10), idx)
    assert np.array_equal(xp[keep], x[keep]) and np.array_equal(yp[keep], y[keep])
    assert np.array_equal(xp[idx], P.apply(x[idx], att["mask"], att["pattern"]))
    assert np.array_equal(y, np.arange(10) % 3)  # inputs untouched


@pytest.mark.parametrize("attack", PATCHES)
def test_trigger_scale_draws_each_pixel_as_a_block(attack):
    """Scale s: the footprint grows s*s times, every cell is an s x s block of one value, and
    the rng is left where scale 1 leaves it (what is drawn next does not move)."""
    shape = (28, 28, 1)
    r1, r2 = np.random.default_rng([5, 1]), np.random.default_rng([5, 1])
    m1, _ = P.trigger(attack, r1, shape)
    m2, p2 = P.trigger(attack, r2, shape, scale=2)
    assert m2.sum() == 4 * m1.sum() == 4 * FOOTPRINT[attack]
    ys, xs = np.nonzero(m2[..., 0])
    y0, x0 = ys.min(), xs.min()
    block = p2[y0:ys.max() + 1, x0:xs.max() + 1, 0]
    assert np.array_equal(block, np.kron(block[::2, ::2], np.ones((2, 2))))
    assert r1.integers(1 << 30) == r2.integers(1 << 30)
    with pytest.raises(ValueError, match="positive integer"):
        P.trigger(attack, np.random.default_rng(0), shape, scale=0)


@pytest.mark.parametrize("attack", PATCHES)
def test_corner_placement_puts_the_patch_in_a_corner(attack):
    shape = (14, 14, 1)
    corners = set()
    for seed in range(24):
        mask, _ = P.trigger(attack, np.random.default_rng(seed), shape, scale=2,
                            placement="corners")
        ys, xs = np.nonzero(mask[..., 0])
        assert ys.min() == 0 or ys.max() == shape[0] - 1
        assert xs.min() == 0 or xs.max() == shape[1] - 1
        corners.add((ys.min() == 0, xs.min() == 0))
    assert len(corners) == 4                    # all four corners are drawn
    with pytest.raises(ValueError, match="placement 'middle'"):
        P.trigger(attack, np.random.default_rng(0), shape, placement="middle")


def test_sample_attack_reads_scale_and_placement():
    shape = (14, 14, 1)
    cfg = {"alpha": 0.1, "trigger_scale": 2, "trigger_placement": "corners"}
    att = P.sample_attack(cfg, "pixel1", np.random.default_rng(0), shape, n_classes=10)
    ys, xs = np.nonzero(att["mask"][..., 0])
    assert len(ys) == 4 and (ys.min() in (0, 12)) and (xs.min() in (0, 12))
