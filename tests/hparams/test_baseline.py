"""Segment-CNN baseline (Eilertsen et al. 2020): windows, training, prediction, files."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from metamodels.hparams import baseline as B

# One static cfg (and K) for every training test, so the step compiles once per session.
K = 3
TINY = {"seed": 0, "segment": 50, "channels": [4, 4], "kernel": 5, "pool": 4, "dense": 8,
        "steps": 200, "batch_size": 16, "learning_rate": 3e-2, "weight_decay": 1e-4,
        "test_segments": 4, "eval_batch_size": 64}
N, P = 64, 300


def zoo(kind: str, seed: int, n: int = N, p: int = P, junk: float = 0.0):
    """``n`` rows of width ``p`` with true lengths p/2..p and labels 0..K-1 in turn.

    kind "scale": class k has i.i.d. N(0, ((k + 1) / 2)^2) weights. kind "smooth": unit-std
    moving averages of width 1, 3, 9 (scale-free; only the conv trunk can see it).
    The padding holds ``junk``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    lengths = rng.integers(p // 2, p + 1, n)
    x = np.full((n, p), junk, np.float32)
    for i in range(n):
        m = lengths[i]
        if kind == "scale":
            x[i, :m] = rng.normal(0.0, (y[i] + 1) * 0.5, m)
        else:
            w = (1, 3, 9)[y[i]]
            z = np.convolve(rng.normal(0.0, 1.0, m + w - 1), np.ones(w), "valid")
            x[i, :m] = z / z.std()
    return x, lengths, y


@pytest.fixture(scope="module")
def trained():
    x, lengths, y = zoo("scale", 0)
    lines: list[str] = []
    model, history = B.train(TINY, x, lengths, y, K, log=lines.append)
    return model, history, lines, (x, lengths, y)


def leaves(model):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(model.params)]


# ---------------------------------------------------------------------------------------------
# cfg


def test_with_defaults_completes_and_rejects_unknown_keys():
    c = B.with_defaults({"steps": 7})
    assert c["steps"] == 7 and c["segment"] == 5000 and c["channels"] == [16, 32, 64, 64]
    assert set(c) == set(B.DEFAULTS)
    with pytest.raises(ValueError, match="stpes"):
        B.with_defaults({"stpes": 7})
    with pytest.raises(ValueError, match="segment"):
        B.with_defaults({"segment": 0})
    with pytest.raises(ValueError, match="channels"):
        B.with_defaults({"channels": []})


# ---------------------------------------------------------------------------------------------
# Windows


def test_segment_starts_cover_every_weight():
    lengths, seg = np.array([137, 50, 20]), 50
    rng = np.random.default_rng(0)
    covered = np.zeros(137, bool)
    seen = set()
    for _ in range(2000):
        s = B.segment_starts(lengths, seg, rng)
        assert s.dtype == np.int64 and s.shape == (3,)
        assert 0 <= s[0] <= 137 - seg
        assert s[1] == 0 and s[2] == 0
        covered[s[0]:s[0] + seg] = True
        seen.add(int(s[0]))
    assert covered.all()
    assert seen == set(range(137 - seg + 1))  # uniform over 0..87 inclusive: all hit
    # a pure function of the generator's state
    a = B.segment_starts(lengths, seg, np.random.default_rng([1, 2]))
    b = B.segment_starts(lengths, seg, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a, b)


def test_segment_starts_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="segment"):
        B.segment_starts([10, 20], 0, rng)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        B.segment_starts([10, 0], 5, rng)
    with pytest.raises(ValueError, match="integers"):
        B.segment_starts([10.5, 3.0], 5, rng)


def test_segments_never_read_padding():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 91, 20)
    lengths[:3] = 90, 7, 1  # a full row, one shorter than the window, one weight only
    x = rng.normal(0.0, 1.0, (20, 90)).astype(np.float32)
    x[np.arange(90) >= lengths[:, None]] = 999.0  # junk padding
    seg = 50
    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = B.segment_starts(lengths, seg, rng)
        w = B.segments(x, lengths, starts, seg)
        assert w.dtype == np.float32 and w.shape == (20, seg)
        assert not (w == 999.0).any()
        for i in range(20):
            m = min(seg, lengths[i] - starts[i])
            np.testing.assert_array_equal(w[i, :m], x[i, starts[i]:starts[i] + m])
            assert (w[i, m:] == 0).all()
    # x narrower than the window: zero-filled on the right
    w = B.segments(np.ones((2, 20), np.float32), [20, 5], [0, 0], seg)
    assert (w[0, :20] == 1).all() and (w[0, 20:] == 0).all()
    assert (w[1, :5] == 1).all() and (w[1, 5:] == 0).all()


def test_segments_validates():
    x = np.zeros((3, 40), np.float32)
    with pytest.raises(ValueError, match="lengths has 2 entries"):
        B.segments(x, [5, 5], [0, 0], 10)
    with pytest.raises(ValueError, match=r"lengths\[2\] = 41 is outside 1..40"):
        B.segments(x, [5, 5, 41], [0, 0, 0], 10)
    with pytest.raises(ValueError, match=r"starts\[1\] = 5"):
        B.segments(x, [5, 5, 5], [0, 5, 0], 10)
    with pytest.raises(ValueError, match="segment"):
        B.segments(x, [5, 5, 5], [0, 0, 0], 0)
    with pytest.raises(ValueError, match=r"\[N, P\]"):
        B.segments(np.zeros(40, np.float32), [5], [0], 10)


# ---------------------------------------------------------------------------------------------
# Meta-model and training


def test_segment_cnn_shapes():
    m = B.build(TINY, classes=5)
    for seg in (3, 50):  # 3 < pool: SAME pooling keeps one position
        xb = np.random.default_rng(0).normal(0, 0.1, (2, seg)).astype(np.float32)
        params = jax.jit(m.init)(jax.random.PRNGKey(0), xb)["params"]
        out = jax.jit(m.apply)({"params": params}, xb)
        assert out.shape == (2, 5) and np.isfinite(np.asarray(out)).all()
    # an all-zero window stays finite
    zero = jax.jit(m.apply)({"params": params}, np.zeros((1, 50), np.float32))
    assert np.isfinite(np.asarray(zero)).all()
    # the defaults: 4 blocks on 5,000-long windows (shapes only, nothing computed)
    m = B.build({}, classes=4)
    xb = jax.ShapeDtypeStruct((2, 5000), np.float32)
    params = jax.eval_shape(m.init, jax.random.PRNGKey(0), xb)["params"]
    assert params["conv_3"]["kernel"].shape == (5, 64, 64)
    assert params["dense"]["kernel"].shape == (64 + 1, 64)  # pooled features + log-scale
    assert jax.eval_shape(m.apply, {"params": params}, xb).shape == (2, 4)


def test_train_learns_weight_scale(trained):
    model, history, lines, (x, lengths, y) = trained
    assert model.classes == K and model.cfg == B.with_defaults(TINY)
    assert [h["step"] for h in history] == [100, 200]
    assert {"step", "train_loss", "train_acc", "train_s"} <= set(history[-1])
    assert history[-1]["train_loss"] < 0.5 < np.log(K)  # chance: ln 3 = 1.10
    assert lines and all(s.startswith("[segment-cnn]") for s in lines)
    assert (B.predict(model, x, lengths) == y).mean() > 0.9
    xf, lf, yf = zoo("scale", 1)  # fresh base networks
    assert (B.predict(model, xf, lf) == yf).mean() > 0.9


def test_train_learns_scale_free_structure():
    """Unit-std rows that differ only in smoothness: the standardised conv trunk must learn."""
    x, lengths, y = zoo("smooth", 0)
    model, history = B.train({**TINY, "steps": 500}, x, lengths, y, K, log=None)
    assert history[-1]["train_loss"] < 0.6
    assert (B.predict(model, x, lengths) == y).mean() > 0.85


def test_train_is_deterministic_and_compiles_once(trained):
    x, lengths, y = trained[3]
    cfg = {**TINY, "steps": 20}
    a, _ = B.train(cfg, x, lengths, y, K, log=None)
    hits = B._train_fns.cache_info().hits
    b, _ = B.train(cfg, x, lengths, y, K, log=None)
    assert B._train_fns.cache_info().hits == hits + 1
    for u, v in zip(leaves(a), leaves(b), strict=True):
        assert u.dtype == v.dtype and u.tobytes() == v.tobytes()
    c, _ = B.train({**cfg, "seed": 1}, x, lengths, y, K, log=None)
    assert any(u.tobytes() != w.tobytes() for u, w in zip(leaves(a), leaves(c)))


def test_train_validates():
    x, lengths, y = zoo("scale", 0, n=8)
    with pytest.raises(ValueError, match=r"labels \[3\] outside 0..2"):
        B.train(TINY, x, lengths, np.where(y == 2, 3, y), K, log=None)
    with pytest.raises(ValueError, match="y has 7 entries"):
        B.train(TINY, x, lengths, y[:7], K, log=None)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0"):
        B.train(TINY, x, np.r_[0, lengths[1:]], y, K, log=None)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 301 is outside 1..300"):
        B.train(TINY, x, np.r_[P + 1, lengths[1:]], y, K, log=None)
    with pytest.raises(ValueError, match="classes"):
        B.train(TINY, x, lengths, y * 0, 1, log=None)
    with pytest.raises(ValueError, match="unknown keys"):
        B.train({**TINY, "lr": 1.0}, x, lengths, y, K, log=None)


# ---------------------------------------------------------------------------------------------
# Prediction and files


def test_predict_proba(trained):
    model, _, _, (x, lengths, _) = trained
    p = B.predict_proba(model, x[:37], lengths[:37])  # 37 * 4 windows: last batch padded
    assert p.shape == (37, K) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert (p >= 0).all()
    p8 = B.predict_proba(model, x, lengths, segments=8, seed=5)
    np.testing.assert_array_equal(p8, B.predict_proba(model, x, lengths, segments=8, seed=5))
    assert not np.array_equal(p8, B.predict_proba(model, x, lengths, segments=8, seed=6))
    assert not np.array_equal(p8, B.predict_proba(model, x, lengths, segments=1, seed=5))
    # the row's result does not depend on the other rows of the call
    np.testing.assert_allclose(B.predict_proba(model, x, lengths, segments=1)[:5],
                               B.predict_proba(model, x[:5], lengths[:5], segments=1), atol=1e-6)
    with pytest.raises(ValueError, match="segments"):
        B.predict_proba(model, x, lengths, segments=0)
    with pytest.raises(ValueError, match="lengths"):
        B.predict_proba(model, x, lengths[:3])


def test_save_load_round_trip(trained, tmp_path):
    model, _, _, (x, lengths, _) = trained
    path = tmp_path / "baseline.npz"
    B.save(path, model)
    assert sorted(os.listdir(tmp_path)) == ["baseline.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as z:
        assert "config" in z.files and all(k == "config" or k.startswith("params/")
                                           for k in z.files)
        meta = json.loads(str(z["config"][0]))
    assert meta["classes"] == K and meta["cfg"] == B.with_defaults(TINY)
    back = B.load(path)
    assert back.classes == K and back.cfg == model.cfg
    for u, v in zip(leaves(model), leaves(back), strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(B.predict_proba(model, x, lengths),
                                  B.predict_proba(back, x, lengths))
    B.save(path, back)  # deterministic bytes
    first = path.read_bytes()
    B.save(path, B.load(path))
    assert path.read_bytes() == first


def test_load_rejects_other_files(tmp_path):
    from metamodels.core import shards as S
    other = tmp_path / "other.npz"
    S.save_npz(other, {"config": S.text_array([json.dumps({"format": 1})])})
    with pytest.raises(ValueError, match="not a segment-cnn model"):
        B.load(other)
    with pytest.raises(ValueError, match="no such file"):
        B.load(tmp_path / "missing.npz")
