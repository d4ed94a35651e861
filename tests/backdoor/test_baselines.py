"""Query-based baselines (ULP, MNTD) on a tiny zoo of really trained, really backdoored CNNs.

The zoo: 32 CNNs with channels (8, 8, 8) on 8x8x1 images of a 4-class task (the class is the
quadrant that is brighter than the noise background). Odd-numbered models are poisoned: a third
of their training images carry a 2x2 checker in the bottom-right corner and the label 0. All 32
are trained at once (torch.func.vmap over cnn_torch.forward), 50 Adam steps each, in ~6 s;
the first test checks that the backdoors are really there. Models 0..19 train the
detectors, 20..31 (6 clean, 6 poisoned) test them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metamodels.backdoor import baselines as B
from metamodels.backdoor import cnn, cnn_torch
from metamodels.backdoor import detector as D
from metamodels.core import shards as S

SHAPE = (8, 8, 1)
CNN_CFG = {"channels": [8, 8, 8], "classes": 4}
LAYOUT = cnn.layout_for(SHAPE, cnn.settings(CNN_CFG))
N_MODELS, N_TRAIN = 32, 20
# (fit, score, small cfg): 100 steps of 8 models; ULP with 5 patterns (20 logits for 20 training
# models) and a faster classifier, which overfits less on so few models
KINDS = {"ulp": (B.fit_ulp, B.score_ulp,
                 {"steps": 100, "batch_size": 8, "log_every": 50, "patterns": 5, "lr": 1e-2}),
         "mntd": (B.fit_mntd, B.score_mntd, {"steps": 100, "batch_size": 8, "log_every": 50})}


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """NCHW float32 images in [0, 1] and labels: noise in [0, 0.4], +0.5 on the class quadrant."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.uniform(0.0, 0.4, (n, 1, 8, 8))
    for i in range(n):
        r, c = (y[i] // 2) * 4, (y[i] % 2) * 4
        x[i, :, r:r + 4, c:c + 4] += 0.5
    return x.astype(np.float32), y


def add_trigger(x: np.ndarray) -> np.ndarray:
    """2x2 checker (1 0 / 0 1) in the bottom-right corner of NCHW images."""
    x = x.copy()
    x[:, :, -2:, -2:] = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    return x


def random_flat(rng: np.random.Generator) -> np.ndarray:
    """Flat weights in LAYOUT order: LeCun-normal kernels, unit LayerNorm scales, zero biases."""
    parts = []
    for name, shape in LAYOUT:
        if name.endswith("kernel"):
            a = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            a = np.full(shape, 1.0 if name.endswith("scale") else 0.0)
        parts.append(a.astype(np.float32).ravel())
    return np.concatenate(parts)


def train_zoo(steps: int = 50, batch: int = 32, lr: float = 0.005,
              poison_every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(weights float32 [N_MODELS, P], labels [N_MODELS]) of the tiny zoo (module docstring)."""
    x, y = quadrant_images(256, seed=0)
    labels = np.arange(N_MODELS) % 2
    xs, ys = np.repeat(x[None], N_MODELS, 0), np.repeat(y[None], N_MODELS, 0)
    poison = np.arange(0, len(x), poison_every)
    for m in np.nonzero(labels)[0]:
        xs[m, poison], ys[m, poison] = add_trigger(x[poison]), 0
    ts = [cnn_torch.to_torch_params(cnn.unflatten(random_flat(np.random.default_rng([7, m])),
                                                  LAYOUT)) for m in range(N_MODELS)]
    params = {k: torch.stack([t[k].detach() for t in ts]).requires_grad_(True) for k in ts[0]}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    forward = torch.func.vmap(cnn_torch.forward)
    xs_t, ys_t = torch.from_numpy(xs), torch.from_numpy(ys)
    rows = torch.arange(N_MODELS)[:, None]
    for s in range(steps):
        idx = torch.from_numpy(np.random.default_rng([1, s]).integers(0, len(x), (N_MODELS, batch)))
        logits = forward(params, xs_t[rows, idx])
        # summed over models: each model's gradient is its own mean cross-entropy's
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), ys_t[rows, idx].reshape(-1))
        opt.zero_grad()
        (loss * N_MODELS).backward()
        opt.step()
    weights = np.stack([cnn.flatten(cnn_torch.from_torch_params(
        {k: v[m] for k, v in params.items()})) for m in range(N_MODELS)])
    return weights, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """More torch threads than free cores slow these small ops down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(one_thread):
    return train_zoo()


def test_tiny_zoo_is_backdoored(zoo):
    weights, labels = zoo
    x, y = quadrant_images(200, seed=1)
    xc, xt = torch.from_numpy(x), torch.from_numpy(add_trigger(x))
    acc, asr = np.zeros(N_MODELS), np.zeros(N_MODELS)
    for m in range(N_MODELS):
        t = cnn_torch.to_torch_params(cnn.unflatten(weights[m], LAYOUT))
        with torch.no_grad():
            acc[m] = (cnn_torch.forward(t, xc).argmax(-1).numpy() == y).mean()
            asr[m] = (cnn_torch.forward(t, xt).argmax(-1).numpy() == 0)[y != 0].mean()
    bad, good = labels == 1, labels == 0
    assert np.median(asr[bad]) >= 0.9 and asr[bad].min() >= 0.3, asr
    assert asr[good].max() <= 0.1, asr
    # mostly real backdoors in working classifiers, not models that answer 0 to everything
    assert np.median(acc[good]) >= 0.9 and np.median(acc[bad]) >= 0.7, acc


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_detects_planted_backdoor_and_not_shuffled_labels(zoo, kind):
    fit, score, cfg = KINDS[kind]
    weights, labels = zoo
    tr, te = slice(0, N_TRAIN), slice(N_TRAIN, None)
    lines = []
    model = fit(cfg, weights[tr], labels[tr], LAYOUT, SHAPE, val=(weights[te], labels[te]),
                log=lines.append)
    s = score(model, weights[te], LAYOUT)
    assert s.dtype == np.float64 and s.shape == (N_MODELS - N_TRAIN,)
    assert np.all((s >= 0) & (s <= 1))
    assert D.auc(s, labels[te]) >= 0.9
    # the history's last validation AUC is the AUC of the final scores
    assert model["history/val_auc"][-1] == D.auc(s, labels[te])
    assert list(model["history/step"]) == [50, 100] and len(lines) == 3
    # the same fit on labels shuffled among the training models learns nothing that transfers
    shuffled = np.random.default_rng(5).permutation(labels[tr])
    assert not np.array_equal(shuffled, labels[tr])
    s0 = score(fit(cfg, weights[tr], shuffled, LAYOUT, SHAPE), weights[te], LAYOUT)
    print(kind, "test AUC", D.auc(s, labels[te]), "shuffled", D.auc(s0, labels[te]))
    assert D.auc(s0, labels[te]) <= 0.8


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_deterministic_plain_numpy_and_saveable(zoo, kind, tmp_path):
    fit, score, _ = KINDS[kind]
    weights, labels = zoo
    cfg = {"steps": 12, "batch_size": 4, "seed": 3}
    a = fit(cfg, weights[:8], labels[:8], LAYOUT, SHAPE)
    b = fit(cfg, weights[:8], labels[:8], LAYOUT, SHAPE)
    assert sorted(a) == sorted(b)
    for k in a:
        assert isinstance(a[k], np.ndarray) and a[k].dtype != object
        np.testing.assert_array_equal(a[k], b[k])
    imgs = a["patterns" if kind == "ulp" else "queries"]
    assert imgs.shape == (10, *SHAPE) and imgs.min() >= 0 and imgs.max() <= 1
    sa = score(a, weights[8:14], LAYOUT)
    np.testing.assert_array_equal(sa, score(b, weights[8:14], LAYOUT))
    S.save_npz(tmp_path / "m.npz", a)
    np.testing.assert_array_equal(sa, score(S.load_npz(tmp_path / "m.npz"), weights[8:14],
                                            LAYOUT))
    c = fit({**cfg, "seed": 4}, weights[:8], labels[:8], LAYOUT, SHAPE)
    assert not np.array_equal(sa, score(c, weights[8:14], LAYOUT))


def test_total_variation_term_smooths_the_patterns(zoo):
    weights, labels = zoo
    tvs = []
    for tv in (0.0, 10.0):
        cfg = {"steps": 12, "batch_size": 4, "tv": tv}
        z = B.fit_ulp(cfg, weights[:8], labels[:8], LAYOUT, SHAPE)["patterns"]
        tvs.append(float(B.total_variation(torch.from_numpy(z.transpose(0, 3, 1, 2)))))
    assert tvs[1] < 0.8 * tvs[0]
    z = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])  # 2 of the 4 neighbouring pairs differ by 1
    assert float(B.total_variation(z)) == 0.5


def test_cfg_and_shape_errors(zoo):
    weights, labels = zoo
    with pytest.raises(ValueError, match="patern"):
        B.fit_ulp({"patern": 3}, weights[:4], labels[:4], LAYOUT, SHAPE)
    with pytest.raises(ValueError, match=r"'tv'.*known"):  # a ULP key is not an MNTD key
        B.fit_mntd({"tv": 0.1}, weights[:4], labels[:4], LAYOUT, SHAPE)
    with pytest.raises(ValueError, match="channels"):
        B.fit_mntd({}, weights[:4], labels[:4], LAYOUT, (8, 8, 3))
    with pytest.raises(ValueError, match="labels"):
        B.fit_ulp({}, weights[:4], labels[:3], LAYOUT, SHAPE)
    model = B.fit_ulp({"steps": 1, "batch_size": 2}, weights[:4], labels[:4], LAYOUT, SHAPE)
    with pytest.raises(ValueError, match="mntd"):
        B.score_mntd(model, weights[:2], LAYOUT)
