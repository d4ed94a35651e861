"""Query-based backdoor detectors that seed 000 compares against: ULP and MNTD.

Both detectors see a base CNN (:mod:`metamodels.backdoor.cnn`) only through its outputs on a
few learned input images; neither reads its weights. A base model is fixed (no gradient to its
weights); the gradient of the detection loss flows through it to the input images and to the
classifier on its outputs, which are learned jointly with Adam on minibatches of the training
models. Labels: 0 clean, 1 poisoned. Every base-model pass is :func:`.cnn_torch.forward` on
the CPU, one model at a time with the k input images as its batch; each training model's
weights are converted to torch tensors once per fit.

Universal Litmus Patterns (:func:`fit_ulp`, :func:`score_ulp`; Kolouri, Saha, Pirsiavash and
Hoffmann, CVPR 2020)
    ``patterns`` images z_1..z_k ("litmus patterns") and a linear classifier on the
    concatenation of the model's logits on them (k x classes values) -> one logit. Loss:
    binary cross-entropy over the minibatch + ``tv`` * TV, where TV is the anisotropic total
    variation |z[i+1, j] - z[i, j]| + |z[i, j+1] - z[i, j]| (every channel) *averaged* over the
    neighbouring pairs of all patterns, so ``tv`` weighs a per-pixel quantity whatever the
    image size or the number of patterns (the paper sums it over each pattern). Default
    ``tv`` 0.1, a mild smoothness prior: on 24 CNNs of the default architecture (trained
    for one epoch on 3,000 Fashion-MNIST images) and uniform random patterns, the RMS
    gradient per pixel of the cross-entropy was 1.7e-4 and that of the mean TV 1.8e-4, so at
    0.1 the TV term is about a tenth of the pull (at 1e-3 it would do nothing).

MNTD, Meta Neural Trojan Detection (:func:`fit_mntd`, :func:`score_mntd`; Xu, Wang, Li,
Borisov, Gunter and Li, IEEE S&P 2021)
    ``queries`` images and a meta-classifier MLP (one hidden layer of ``hidden`` ReLU units
    -> one logit) on the concatenation of the model's softmax *probabilities* on them. Query
    tuning: queries and meta-classifier are optimised jointly by binary cross-entropy; no
    regulariser on the queries. MNTD's shadow models are here the training split of the zoo;
    their triggers vary per model in kind (patch, pixel, blends), position, colour and pattern,
    much like MNTD's "jumbo" distribution of random shadow attacks.

Common to both
    Input images are float NCHW in [0, 1], initialised uniformly at random and clipped to
    [0, 1] after every Adam step (projected gradient). The classifier starts like a
    ``torch.nn.Linear`` (uniform in +-1/sqrt(fan_in)). Adam (torch's defaults but the
    learning rates: ``lr`` for the classifier, ``input_lr`` for the images); step s trains on
    the models :func:`metamodels.backdoor.detector.batch_indices` gives for (``seed``, s).
    Everything is seeded by ``seed`` (a ``torch.Generator`` for the initial values), so the
    same inputs and cfg give bitwise the same scores for one torch thread count (the process's:
    params ``threads.train`` in the pipeline, see :mod:`metamodels.core.threads`).

Cost at the defaults (measured with 1 torch thread on a 2-core machine that another job was
loading, default CNN ``channels`` [16, 32, 64] on 28x28x1, 300 training models): ``fit_ulp``
51 s, ``fit_mntd`` 53 s (a training step of 16 models ~0.17 s, i.e. ~10 ms for one model's
forward and backward pass on the 10 images; converting the 300 models to tensors 0.4-2 s);
scoring ~7 ms per model. Two threads on cores that another process is using were 20 times
slower per step (threads wait for each other): give the job the cores its threads ask for.

Model (a plain dict of numpy arrays, no pickle; save it with
:func:`metamodels.core.shards.save_npz`):
    ``kind``                      1-element unicode array: ``ulp`` or ``mntd``
    ``config``                    1-element unicode array: JSON of the completed cfg
    ``patterns`` / ``queries``    float32 [k, H, W, C] in [0, 1] (the images' own layout)
    ``classifier/w``, ``classifier/b``          ULP: float32 [k * classes], [1]
    ``classifier/w1``, ``classifier/b1``, ``classifier/w2``, ``classifier/b2``
                                  MNTD: float32 [k * classes, hidden], [hidden], [hidden], [1]
    ``history/step``, ``history/train_loss``, ``history/val_auc``
                                  one entry every ``log_every`` steps and at the end: mean
                                  training loss since the last entry, validation AUC (NaN
                                  without ``val``)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Layout = Sequence[tuple[str, Sequence[int]]]
Log = Callable[[str], None]

ULP_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "patterns": 10,       # litmus patterns (the paper uses 1, 5 or 10)
    "steps": 300,         # Adam steps
    "batch_size": 16,     # base models per step
    "lr": 1.0e-3,         # classifier learning rate
    "input_lr": 1.0e-2,   # pattern learning rate (pixels in [0, 1])
    "tv": 0.1,            # weight of the mean total variation of the patterns (see above)
    "log_every": 100,     # steps between history entries (and validation AUCs)
}
"""ULP's cfg keys and defaults."""

MNTD_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "queries": 10,        # query images (k)
    "hidden": 20,         # hidden ReLU units of the meta-classifier
    "steps": 300,
    "batch_size": 16,
    "lr": 1.0e-3,         # meta-classifier learning rate
    "input_lr": 1.0e-2,   # query learning rate (pixels in [0, 1])
    "log_every": 100,
}
"""MNTD's cfg keys and defaults."""

_DEFAULTS = {"ulp": ULP_DEFAULTS, "mntd": MNTD_DEFAULTS}
_INPUTS = {"ulp": "patterns", "mntd": "queries"}


def _torch():
    import torch
    return torch


def with_defaults(kind: str, cfg: Mapping | None) -> dict:
    """``cfg`` over the defaults of ``kind`` (``ulp`` or ``mntd``); unknown keys: ValueError."""
    defaults = _DEFAULTS[kind]
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f"{kind} cfg: unknown keys {unknown}; known: {sorted(defaults)}")
    c = {**defaults, **cfg}
    positive = ("steps", "batch_size", "log_every", _INPUTS[kind]) + (
        ("hidden",) if kind == "mntd" else ())
    for key in positive:
        if int(c[key]) < 1:
            raise ValueError(f"{kind} cfg: {key} must be >= 1, got {c[key]}")
    return c


def _shapes(layout: Layout, image_shape: Sequence[int]) -> tuple[tuple[int, int, int], int]:
    """((H, W, C), classes), checking that ``layout`` is a CNN taking C input channels."""
    shapes = {str(name): tuple(int(d) for d in shape) for name, shape in layout}
    if "conv_0/kernel" not in shapes or "dense/kernel" not in shapes:
        raise ValueError("layout is not a metamodels.backdoor.cnn layout (no conv_0 or dense)")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    h, w, c = (int(d) for d in image_shape)
    if shapes["conv_0/kernel"][2] != c:
        raise ValueError(f"image_shape has {c} channels, the CNN takes "
                         f"{shapes['conv_0/kernel'][2]}")
    return (h, w, c), shapes["dense/kernel"][1]


def _model_tensors(flat: np.ndarray, layout: Layout) -> dict:
    """One base model's weights as fixed torch tensors (no gradient)."""
    from metamodels.backdoor import cnn, cnn_torch
    tensors = cnn_torch.to_torch_params(cnn.unflatten(np.asarray(flat, np.float32), layout))
    return {k: t.detach() for k, t in tensors.items()}


def _features(kind: str, tensors: Mapping, inputs) -> Any:
    """The classifier's input for one model: logits (ULP) or probabilities (MNTD), [k*classes]."""
    from metamodels.backdoor import cnn_torch
    out = cnn_torch.forward(tensors, inputs)
    if kind == "mntd":
        out = out.softmax(-1)
    return out.reshape(-1)


def _init_head(kind: str, n_in: int, c: Mapping, gen) -> dict:
    """Classifier parameters, uniform in +-1/sqrt(fan_in) like ``torch.nn.Linear``."""
    torch = _torch()

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    if kind == "ulp":
        return {"w": uniform((n_in,), n_in), "b": uniform((1,), n_in)}
    hid = int(c["hidden"])
    return {"w1": uniform((n_in, hid), n_in), "b1": uniform((hid,), n_in),
            "w2": uniform((hid,), hid), "b2": uniform((1,), hid)}


def _head(kind: str, p: Mapping, feats) -> Any:
    """Logits [B] from features [B, F]."""
    if kind == "ulp":
        return feats @ p["w"] + p["b"]
    h = (feats @ p["w1"] + p["b1"]).relu()
    return h @ p["w2"] + p["b2"]


def total_variation(z) -> Any:
    """Mean |difference| of vertically and horizontally neighbouring pixels of NCHW ``z``
    (anisotropic total variation averaged over all neighbouring pairs, channels, images)."""
    dh = (z[:, :, 1:, :] - z[:, :, :-1, :]).abs()
    dw = (z[:, :, :, 1:] - z[:, :, :, :-1]).abs()
    return (dh.sum() + dw.sum()) / max(dh.numel() + dw.numel(), 1)


def _check_weights(weights, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(weights, np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"weights must be [M, P] with M > 0, got {x.shape}")
    if labels is None:
        return x, None
    y = np.asarray(labels).astype(np.float32).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} models but {len(y)} labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (clean) or 1 (poisoned)")
    return x, y


def _logits(kind: str, inputs, head: Mapping, tensors: Sequence[Mapping]) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        if not tensors:
            return np.zeros(0, np.float32)
        feats = torch.stack([_features(kind, t, inputs) for t in tensors])
        return _head(kind, head, feats).numpy().astype(np.float32)


def _nhwc(z: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC float32 with standard C-order strides (see :func:`_nchw`)."""
    k, c, h, w = z.shape
    return np.ascontiguousarray(z.transpose(0, 2, 3, 1).reshape(-1), np.float32).reshape(
        k, h, w, c)


def _nchw(imgs: np.ndarray):
    """NHWC numpy -> NCHW torch tensor in torch's memory with standard strides.

    Going through a flat copy matters: with one channel, a transposed array counts as
    contiguous while keeping odd strides, which torch may read as channels-last and convolve
    with other kernels (other rounding); scores must not depend on where an array came from.
    """
    torch = _torch()
    k, h, w, c = imgs.shape
    flat = np.ascontiguousarray(np.asarray(imgs, np.float32).transpose(0, 3, 1, 2).reshape(-1))
    return torch.tensor(flat).reshape(k, c, h, w)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def _fit(kind: str, cfg: Mapping | None, weights, labels, layout: Layout,
         image_shape: Sequence[int], val, log: Log | None) -> dict:
    from metamodels.backdoor import detector as D
    from metamodels.core import shards as S
    torch = _torch()
    c = with_defaults(kind, cfg)
    log = log or (lambda s: None)
    x, y = _check_weights(weights, labels)
    (h, w, ch), classes = _shapes(layout, image_shape)
    k = int(c[_INPUTS[kind]])
    n, steps, seed = len(x), int(c["steps"]), int(c["seed"])
    bs = min(int(c["batch_size"]), n)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.rand((k, ch, h, w), generator=gen).requires_grad_(True)
    head = {name: t.requires_grad_(True)
            for name, t in _init_head(kind, k * classes, c, gen).items()}
    opt = torch.optim.Adam([{"params": [inputs], "lr": float(c["input_lr"])},
                            {"params": list(head.values()), "lr": float(c["lr"])}])
    models = [_model_tensors(f, layout) for f in x]
    val_models, val_y = [], None
    if val is not None:
        vx, val_y = _check_weights(*val)
        val_models = [_model_tensors(f, layout) for f in vx]
    yt = torch.from_numpy(y)
    log(f"[{kind}] {n} train models, {k} {_INPUTS[kind]} of {h}x{w}x{ch}, {classes} classes, "
        f"{steps} steps of {bs}")
    hist: dict[str, list] = {"step": [], "train_loss": [], "val_auc": []}
    losses: list[float] = []
    for s in range(steps):
        idx = D.batch_indices(n, bs, seed, s)
        feats = torch.stack([_features(kind, models[i], inputs) for i in idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            _head(kind, head, feats), yt[idx])
        if kind == "ulp":
            loss = loss + float(c["tv"]) * total_variation(inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            inputs.clamp_(0.0, 1.0)
        losses.append(float(loss.detach()))
        done = s + 1
        if done % int(c["log_every"]) == 0 or done == steps:
            val_auc = float("nan")
            if val_models:
                val_auc = D.auc(_logits(kind, inputs, head, val_models), val_y)
            hist["step"].append(done)
            hist["train_loss"].append(float(np.mean(losses)))
            hist["val_auc"].append(val_auc)
            log(f"[{kind}] step {done}/{steps} loss {np.mean(losses):.4f} "
                f"val_auc {val_auc:.4f}")
            losses = []
    model = {"kind": S.text_array([kind]),
             "config": S.text_array([json.dumps(c, sort_keys=True)]),
             _INPUTS[kind]: _nhwc(inputs.detach().numpy())}
    for name, t in head.items():
        model[f"classifier/{name}"] = t.detach().numpy().astype(np.float32)
    model["history/step"] = np.asarray(hist["step"], np.int64)
    model["history/train_loss"] = np.asarray(hist["train_loss"], np.float64)
    model["history/val_auc"] = np.asarray(hist["val_auc"], np.float64)
    return model


def _scores(kind: str, model: Mapping, weights, layout: Layout) -> np.ndarray:
    torch = _torch()
    got = str(np.asarray(model.get("kind", [""]))[0])
    if got != kind:
        raise ValueError(f"expected a {kind} model, got {got!r}")
    x, _ = _check_weights(weights)
    imgs = np.asarray(model[_INPUTS[kind]], np.float32)
    _, classes = _shapes(layout, imgs.shape[1:])
    # fresh torch copies (with standard strides, see _nchw): scores must not depend on where
    # the model's arrays came from (fit, or an .npz)
    head = {k.split("/", 1)[1]: torch.tensor(np.asarray(v, np.float32))
            for k, v in model.items() if k.startswith("classifier/")}
    n_in = len(imgs) * classes
    first = head["w"] if kind == "ulp" else head["w1"]
    if first.shape[0] != n_in:
        raise ValueError(f"classifier takes {first.shape[0]} features, the CNN gives {n_in}")
    inputs = _nchw(imgs)
    out = np.zeros(len(x), np.float32)
    for i, flat in enumerate(x):
        out[i] = _logits(kind, inputs, head, [_model_tensors(flat, layout)])[0]
    return _sigmoid(out)


def fit_ulp(cfg: Mapping | None, weights: np.ndarray, labels: np.ndarray, layout: Layout,
            image_shape: Sequence[int], val: tuple[np.ndarray, np.ndarray] | None = None,
            log: Log | None = None) -> dict:
    """Learn universal litmus patterns and their linear classifier (see the module docstring).

    ``weights`` float32 [M, P]: flat CNN weights in ``layout`` order (the zoo's ``layout``,
    a list of (name, shape)); ``labels`` [M] 0 clean / 1 poisoned; ``image_shape`` (H, W, C)
    of the CNN's inputs (28, 28, 1 for Fashion-MNIST); ``cfg`` over :data:`ULP_DEFAULTS`
    (unknown keys: ValueError). ``val`` = (weights [V, P], labels [V]) is only used to log a
    validation AUC every ``log_every`` steps; ``log`` receives progress lines. Returns the
    model dict described in the module docstring. Raises ValueError on inconsistent shapes.
    """
    return _fit("ulp", cfg, weights, labels, layout, image_shape, val, log)


def score_ulp(model: Mapping, weights: np.ndarray, layout: Layout) -> np.ndarray:
    """P(poisoned) of each base model, float64 [M], from a :func:`fit_ulp` model."""
    return _scores("ulp", model, weights, layout)


def fit_mntd(cfg: Mapping | None, weights: np.ndarray, labels: np.ndarray, layout: Layout,
             image_shape: Sequence[int], val: tuple[np.ndarray, np.ndarray] | None = None,
             log: Log | None = None) -> dict:
    """Learn MNTD's query images and meta-classifier with query tuning (module docstring).

    Arguments as in :func:`fit_ulp`, with ``cfg`` over :data:`MNTD_DEFAULTS`; the training
    models play MNTD's shadow models.
    """
    return _fit("mntd", cfg, weights, labels, layout, image_shape, val, log)


def score_mntd(model: Mapping, weights: np.ndarray, layout: Layout) -> np.ndarray:
    """P(poisoned) of each base model, float64 [M], from a :func:`fit_mntd` model."""
    return _scores("mntd", model, weights, layout)
