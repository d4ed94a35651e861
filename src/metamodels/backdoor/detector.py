"""Backdoor detection from weights: a chunking meta-model, a weight-statistics baseline, ROC/AUC.

Meta-model (spec §3.1, Figure 1)
    A base model's flat weight vector ``[P]`` is cut into ``ceil(P / chunk_size)``
    chunks (the last one zero-padded); each chunk is embedded by one ``Dense(d_model)``
    shared by all chunks (``embedding: shared``, seed 000 Fig. 1) or by a ``Dense`` of its own
    (``embedding: per_chunk``: a per-weight linear path, which few training models can fit;
    measured in docs/backdoor.md), plus a learned per-chunk position embedding, passed
    through ``layers`` pre-LayerNorm transformer blocks (:class:`metamodels.core.nn.Block`,
    bidirectional, no mask), a final LayerNorm, mean-pooled over chunks (``pool: mean``;
    ``pool: cls`` prepends a learned token and reads it instead) and mapped to one logit:
    P(poisoned) = sigmoid.
    With ``classes: K`` > 1 the head has K logits and the loss is softmax cross-entropy over
    integer labels 0..K-1: seed 000 App. A's classification head, used to predict training
    hyperparameters (:mod:`metamodels.hparams`).
    With ``normalize: true`` each coordinate is standardised with the mean and standard
    deviation of the training set (constant coordinates get std 1) before chunking; the
    statistics are part of the model. Padding is appended after standardisation, so it
    is always exactly zero. Off by default: on a toy zoo (800 MLPs with 1,732 weights,
    half backdoored, permutation augmentation) it lowered test AUC in 2 of 2 seeds
    (0.762/0.733 vs 0.772/0.778 unnormalised), mostly by overfitting faster.

Training (:func:`train`)
    AdamW + linear warmup + cosine decay + global-norm clipping
    (:func:`metamodels.core.nn.optimizer`, reading its keys from the same cfg), sigmoid
    cross-entropy. The batch of step ``s`` is a pure function of ``(seed, s)`` (a seeded
    permutation per epoch, the last incomplete batch dropped). With ``augment: true`` and
    an ``augment(flat_batch, keys) -> flat_batch`` callable, every training batch is
    transformed (jitted, on the device) with one key per example derived from
    ``(seed, step)``; ``augment`` must be traceable by JAX (e.g. a vmapped,
    function-preserving neuron permutation) and is applied to the raw weights, before
    standardisation. With ``groups`` (an int per training row) the callable is
    ``augment(flat_batch, keys, groups_of_batch)``: for zoos of several architectures, where
    each row is permuted with its own architecture's layout.
    Compiled steps are cached per (cfg, P), so repeated runs of one
    cfg (several splits or seeds, with or without augmentation) compile once.

Saved model (:func:`save` / :func:`load`), one ``.npz`` written by
:func:`metamodels.core.shards.save_npz` (no pickle):
    ``config``            1-element unicode array: JSON ``{"format": 1, "cfg": {...},
                          "n_inputs": P, "normalize": bool}``
    ``params/<a>/<b>/..`` float32 arrays: the Flax parameter tree, keys joined by "/"
    ``norm/mean``, ``norm/std``  float32 ``[P]`` (only when ``normalize`` is true)

Baseline
    :func:`weight_stats` gives per-tensor statistics of the value multiset of every named
    tensor of a layout (hence invariant under any permutation of entries within a
    tensor, in particular neuron permutations); :func:`fit_logreg` fits an L2-regularised
    logistic regression on standardised features by Newton's method (numpy, float64).

Metrics
    :func:`roc_curve`, :func:`auc` (exact Mann-Whitney statistic, ties count one half),
    :func:`evaluate_by_attack` (the stage's splits, OOD included, are in
    :mod:`metamodels.backdoor.stage`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from metamodels.core import nn as nn_core
from metamodels.core import shards as S

FORMAT = 1
CLEAN = "clean"

Augment = Callable[[jax.Array, jax.Array], jax.Array]

DEFAULTS: dict = {
    "seed": 0,
    "chunk_size": 1024,
    "d_model": 128,
    "layers": 2,
    "heads": 4,
    "mlp": 256,
    "pool": "mean",
    "embedding": "shared",
    "classes": 1,
    "normalize": False,
    "augment": True,
    "precision": "float32",
    "steps": 2000,
    "batch_size": 32,
    "learning_rate": 1.0e-3,
    "warmup_steps": 100,
    "final_lr_fraction": 0.02,
    "weight_decay": 1.0e-4,
    "b1": 0.9,
    "b2": 0.98,
    "eps": 1.0e-8,
    "clip_norm": 1.0,
    "eval_every": 200,
    "log_every": 100,
    "eval_batch_size": 256,
}
"""Keys read from the ``cfg`` section, with the values used when a key is missing."""


def with_defaults(cfg: Mapping) -> dict:
    """``cfg`` completed with :data:`DEFAULTS`; unknown keys are an error (typos)."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"detector cfg: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **cfg}


# ---------------------------------------------------------------------------------------------
# Meta-model


def n_chunks(n_inputs: int, chunk_size: int) -> int:
    return max(1, -(-n_inputs // chunk_size))


def chunk(x: jax.Array, chunk_size: int) -> jax.Array:
    """``[B, P] -> [B, ceil(P / c), c]``; chunk k holds ``x[:, k*c:(k+1)*c]``, zeros after P."""
    b, p = x.shape
    k = n_chunks(p, chunk_size)
    x = jnp.pad(x, ((0, 0), (0, k * chunk_size - p)))
    return x.reshape(b, k, chunk_size)


class Detector(nn.Module):
    """``__call__(x [B, P] standardised weights) -> logits [B]`` (float32), or ``[B, classes]``
    when ``classes`` > 1."""

    n_inputs: int
    chunk_size: int
    d_model: int
    layers: int
    heads: int
    mlp: int
    pool: str = "mean"
    embedding: str = "shared"
    classes: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = n_chunks(self.n_inputs, self.chunk_size)
        chunks = chunk(x, self.chunk_size)
        if self.embedding == "shared":
            h = nn.Dense(self.d_model, dtype=self.dtype, name="embed")(chunks)
        elif self.embedding == "per_chunk":
            w = self.param("embed_chunks", nn.initializers.variance_scaling(
                1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=2, batch_axis=(0,)),
                (k, self.chunk_size, self.d_model))
            b = self.param("embed_chunks_bias", nn.initializers.zeros, (k, self.d_model))
            h = jnp.einsum("bkc,kcd->bkd", chunks.astype(self.dtype), w.astype(self.dtype)) + b
        else:
            raise ValueError(f"detector.embedding: unknown {self.embedding!r}; use shared or "
                             "per_chunk")
        pos = self.param("position", nn.initializers.normal(0.02), (k, self.d_model))
        h = (h + pos[None].astype(self.dtype)).astype(self.dtype)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.normal(0.02), (self.d_model,))
            h = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype),
                                                  (h.shape[0], 1, self.d_model)), h], axis=1)
        elif self.pool != "mean":
            raise ValueError(f"detector.pool: unknown {self.pool!r}; use mean or cls")
        for i in range(self.layers):
            h = nn_core.Block(self.d_model, self.heads, self.mlp, dtype=self.dtype, name=f"block_{i}")(
                h, None)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_out")(h)
        h = h[:, 0] if self.pool == "cls" else h.mean(axis=1)
        out = nn.Dense(self.classes, dtype=jnp.float32, name="head")(h.astype(jnp.float32))
        return out[:, 0] if self.classes == 1 else out


def build(cfg: Mapping, n_inputs: int) -> Detector:
    c = with_defaults(cfg)
    return Detector(n_inputs=n_inputs, chunk_size=c["chunk_size"], d_model=c["d_model"],
                    layers=c["layers"], heads=c["heads"], mlp=c["mlp"], pool=c["pool"],
                    embedding=c["embedding"],
                    classes=int(c["classes"]), dtype=nn_core.compute_dtype(c["precision"]))


@dataclasses.dataclass
class Model:
    """A trained detector: its cfg, parameters and (optional) input standardisation."""

    cfg: dict
    n_inputs: int
    params: dict
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


def norm_stats(x: np.ndarray, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean and std of ``x [N, P]`` (float32; accumulated in float64, ``rows``
    models at a time); std 1 where it is ~0."""
    n = len(x)
    mean = sum(np.asarray(x[r:r + rows], np.float64).sum(0) for r in range(0, n, rows)) / n
    var = sum(((np.asarray(x[r:r + rows], np.float64) - mean) ** 2).sum(0)
              for r in range(0, n, rows)) / n
    std = np.sqrt(var)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _standardise(x, mean, std):
    return x if mean is None else (x - mean) / std


MODEL_KEYS = ("chunk_size", "d_model", "layers", "heads", "mlp", "pool", "embedding", "classes",
              "precision")
LOOP_KEYS = ("seed", "augment", "normalize", "eval_every", "log_every", "eval_batch_size")


def _key(cfg: Mapping, keys: Sequence[str] | None = None) -> str:
    """JSON of the completed cfg (restricted to ``keys``): the cache key of compiled code."""
    c = with_defaults(cfg)
    return json.dumps({k: c[k] for k in (keys or c)}, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _logit_fn(model_json: str, n_inputs: int):
    module = build(json.loads(model_json), n_inputs)

    def f(params, mean, std, x):
        return module.apply({"params": params}, _standardise(x, mean, std))
    return jax.jit(f)


@functools.lru_cache(maxsize=16)
def _augment_fn(augment: Augment, grouped: bool = False):
    """Jitted ``(xb, key, step[, groups]) -> augment(xb, one key per row of fold_in(key, step)
    [, groups])``."""
    def f(xb, key, step, *groups):
        return augment(xb, jax.random.split(jax.random.fold_in(key, step), xb.shape[0]), *groups)
    return jax.jit(f)


@functools.lru_cache(maxsize=16)
def _train_fns(step_json: str, n_inputs: int):
    """Jitted ``init(key) -> (params, opt_state)`` and ``step(...)`` for one cfg; cached so
    that several runs of the same cfg (splits, seeds, with or without augmentation) compile
    once."""
    c = json.loads(step_json)
    module = build(c, n_inputs)
    tx = nn_core.optimizer(c)

    def init(key):
        params = module.init(key, jnp.zeros((1, n_inputs), jnp.float32))["params"]
        return params, tx.init(params)

    def loss_fn(params, xb, yb, mean, std):
        return _loss(module.apply({"params": params}, _standardise(xb, mean, std)), yb)

    def step(params, opt_state, xb, yb, mean, std):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, mean, std)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(init), jax.jit(step, donate_argnums=(0, 1))


def logits(model: Model, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Logits ``[N]`` (``[N, classes]`` when ``classes`` > 1), float32, computed in batches of
    a fixed size (one compilation)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != model.n_inputs:
        raise ValueError(f"expected weights [N, {model.n_inputs}], got {x.shape}")
    bs = int(batch_size or with_defaults(model.cfg)["eval_batch_size"])
    bs = max(1, min(bs, len(x)))
    f = _logit_fn(_key(model.cfg, MODEL_KEYS), model.n_inputs)
    k = int(with_defaults(model.cfg)["classes"])
    out = np.zeros((len(x),) if k == 1 else (len(x), k), np.float32)
    for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        n = len(xb)
        if n < bs:
            xb = np.concatenate([xb, np.zeros((bs - n, x.shape[1]), np.float32)])
        out[i:i + n] = np.asarray(f(model.params, model.mean, model.std, xb))[:n]
    return out


def predict(model: Model, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Probability that each base model is poisoned, ``[N]`` float32."""
    return (1.0 / (1.0 + np.exp(-logits(model, x, batch_size).astype(np.float64)))).astype(
        np.float32)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of the training batch of ``step``: epoch ``e`` is a seeded permutation cut into
    ``n // batch_size`` batches (the rest dropped); a pure function of its arguments."""
    bs = min(batch_size, n)
    per_epoch = n // bs
    e, s = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, e]).permutation(n)
    return perm[s * bs:(s + 1) * bs]


def _loss(logit, y):
    """Sigmoid cross-entropy for one logit per row, softmax cross-entropy for [B, K]."""
    if logit.ndim == 1:
        return optax.sigmoid_binary_cross_entropy(logit, y).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logit, y.astype(jnp.int32)).mean()


def train(cfg: Mapping, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None,
          val_y: np.ndarray | None, augment: Augment | None = None,
          log: Callable[[str], None] | None = print,
          groups: np.ndarray | None = None) -> tuple[Model, list[dict]]:
    """Fit a detector on flat weights ``train_x [N, P]`` and 0/1 labels (1 = poisoned), or
    class labels 0..K-1 when ``cfg["classes"]`` = K > 1.

    ``groups`` (int [N], optional): passed, per batch, as the third argument of ``augment``
    (e.g. each row's architecture, when the zoo mixes several).

    Returns ``(model, history)``; history has one entry per evaluation (every
    ``eval_every`` steps and at the end): step, train_loss (mean since the last entry),
    val_loss, val_acc (threshold 0.5), val_auc, train_s (seconds so far, evaluation
    excluded, compilation included) and examples_per_s (after the first step).
    """
    c = with_defaults(cfg)
    log = log or (lambda s: None)
    x = np.ascontiguousarray(train_x, np.float32)
    y = np.asarray(train_y, np.float32)
    k = int(c["classes"])
    if k > 1 and (np.any(y < 0) or np.any(y >= k) or np.any(y != np.rint(y))):
        raise ValueError(f"train_y must hold class indices 0..{k - 1} (cfg classes {k})")
    if groups is not None and len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} rows, train_y {len(y)}")
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"train_x must be [N, P] with N = len(train_y) > 0; got {x.shape}, "
                         f"{y.shape}")
    n, p = x.shape
    use_aug = bool(c["augment"]) and augment is not None
    bs = min(int(c["batch_size"]), n)
    init_fn, step_fn = _train_fns(_key({k: v for k, v in c.items() if k not in LOOP_KEYS}), p)
    aug_fn = _augment_fn(augment, groups is not None) if use_aug else None
    g = None if groups is None else np.asarray(groups, np.int32)
    init_key, aug_key = jax.random.split(jax.random.PRNGKey(c["seed"]))
    mean, std = norm_stats(x) if c["normalize"] else (None, None)
    params, opt_state = init_fn(init_key)
    steps = int(c["steps"])
    log(f"[detector] {n} train models of {p:,} weights ({n_chunks(p, c['chunk_size'])} chunks "
        f"of {c['chunk_size']}), {steps} steps of {bs}, normalize {c['normalize']}, "
        f"augment {use_aug}, {sum(a.size for a in jax.tree_util.tree_leaves(params)):,} params")
    history: list[dict] = []
    losses: list = []
    t0 = time.perf_counter()
    eval_s = 0.0
    for s in range(steps):
        idx = batch_indices(n, bs, c["seed"], s)
        if aug_fn is None:
            xb = x[idx]
        else:
            xb = aug_fn(x[idx], aug_key, s, *(() if g is None else (g[idx],)))
        params, opt_state, loss = step_fn(params, opt_state, xb, y[idx], mean, std)
        losses.append(loss)
        done = s + 1
        if done == 1:  # throughput is measured after the first (compiling) step
            jax.block_until_ready(loss)
            t1 = time.perf_counter()
        if done % c["log_every"] == 0 and done % c["eval_every"] != 0:
            log(f"[detector] step {done}/{steps} loss "
                f"{float(np.mean(jax.device_get(losses[-c['log_every']:]))):.4f}")
        if done % c["eval_every"] == 0 or done == steps:
            train_loss = float(np.mean(jax.device_get(losses)))
            now = time.perf_counter()
            train_s, steady_s = now - t0 - eval_s, now - t1 - eval_s
            te = now
            entry = {"step": done, "train_loss": train_loss}
            if val_x is not None and len(val_x):
                m = Model(c, p, params, mean, std)
                entry.update(_val_metrics(logits(m, val_x), np.asarray(val_y)))
            eval_s += time.perf_counter() - te
            entry["train_s"] = round(train_s, 3)
            entry["examples_per_s"] = round((done - 1) * bs / max(steady_s, 1e-9), 1)
            history.append(entry)
            log(f"[detector] eval {json.dumps(entry)}")
            losses = []
    params = jax.device_get(params)
    return Model(c, p, params, mean, std), history


def _val_metrics(logit: np.ndarray, y: np.ndarray) -> dict:
    if logit.ndim == 2:  # classes > 1: softmax cross-entropy and accuracy
        z = logit.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        yi = np.asarray(y).astype(np.int64)
        return {"val_loss": float(-np.mean(logp[np.arange(len(yi)), yi])),
                "val_acc": float(np.mean(np.argmax(z, axis=1) == yi))}
    yl = y.astype(np.float64)
    z = logit.astype(np.float64)
    loss = float(np.mean(np.maximum(z, 0) - z * yl + np.log1p(np.exp(-np.abs(z)))))
    return {"val_loss": loss, "val_acc": float(np.mean((z > 0) == (yl > 0.5))),
            "val_auc": auc(z, y)}


def save(path: str | os.PathLike, model: Model) -> None:
    """Write ``model`` as a deterministic .npz (format in the module docstring)."""
    meta = {"format": FORMAT, "cfg": model.cfg, "n_inputs": model.n_inputs,
            "normalize": model.mean is not None}
    arrays = {"config": S.text_array([json.dumps(meta, sort_keys=True)])}
    flat = traverse_util.flatten_dict(model.params, sep="/")
    for k in sorted(flat):
        arrays[f"params/{k}"] = np.asarray(flat[k], np.float32)
    if model.mean is not None:
        arrays["norm/mean"] = np.asarray(model.mean, np.float32)
        arrays["norm/std"] = np.asarray(model.std, np.float32)
    S.save_npz(path, arrays)


def load(path: str | os.PathLike) -> Model:
    """Read a model written by :func:`save`."""
    arrays = S.load_npz(path)
    meta = json.loads(str(arrays["config"][0]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: detector format {meta.get('format')}, expected {FORMAT}")
    flat = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    params = traverse_util.unflatten_dict(flat, sep="/")
    norm = meta["normalize"]
    return Model(meta["cfg"], int(meta["n_inputs"]), params,
                 arrays["norm/mean"] if norm else None, arrays["norm/std"] if norm else None)


# ---------------------------------------------------------------------------------------------
# Weight-statistics baseline

STATS = ("mean", "std", "abs_max", "l2", "skew", "kurtosis", "q05", "q25", "q50", "q75", "q95")


def _layout_sizes(layout: Sequence[tuple[str, Sequence[int]]]) -> list[tuple[str, int]]:
    return [(str(name), int(np.prod(shape, dtype=np.int64))) for name, shape in layout]


def weight_stats_names(layout: Sequence[tuple[str, Sequence[int]]]) -> list[str]:
    """Names of the columns of :func:`weight_stats`: ``"<tensor>/<stat>"``."""
    return [f"{name}/{s}" for name, _ in _layout_sizes(layout) for s in STATS]


def weight_stats(flat: np.ndarray, layout: Sequence[tuple[str, Sequence[int]]],
                 rows: int = 256) -> np.ndarray:
    """Per-tensor statistics of flat weight vectors ``[N, P]`` (or ``[P]``) -> ``[N, F]``.

    For every ``(name, shape)`` of ``layout`` (in order, consecutive slices of the flat
    vector): mean, std, max |w|, L2 norm, skewness, excess kurtosis and the 5/25/50/75/95 %
    quantiles (:data:`STATS`), all functions of the multiset of values, so invariant to any
    permutation within a tensor. float64, computed ``rows`` models at a time.
    """
    x = np.asarray(flat)
    x = x[None] if x.ndim == 1 else x
    sizes = _layout_sizes(layout)
    total = sum(n for _, n in sizes)
    if x.shape[1] != total:
        raise ValueError(f"layout covers {total} weights, flat vectors have {x.shape[1]}")
    out = np.zeros((len(x), len(sizes) * len(STATS)), np.float64)
    offsets = np.cumsum([0] + [n for _, n in sizes])
    for r in range(0, len(x), rows):
        for i in range(len(sizes)):
            t = np.asarray(x[r:r + rows, offsets[i]:offsets[i + 1]], np.float64)
            out[r:r + rows, i * len(STATS):(i + 1) * len(STATS)] = _tensor_stats(t)
    return out


def _tensor_stats(t: np.ndarray) -> np.ndarray:
    """:data:`STATS` of each row of ``t [n, size]`` -> ``[n, len(STATS)]``."""
    mu = t.mean(1)
    d = t - mu[:, None]
    sd = np.sqrt((d ** 2).mean(1))
    safe = np.where(sd > 0, sd, 1.0)
    skew = np.where(sd > 0, (d ** 3).mean(1) / safe ** 3, 0.0)
    kurt = np.where(sd > 0, (d ** 4).mean(1) / safe ** 4 - 3.0, 0.0)
    q = np.quantile(t, [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)
    return np.stack([mu, sd, np.abs(t).max(1), np.sqrt((t ** 2).sum(1)), skew, kurt, *q], 1)


def fit_logreg(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2,
               steps: int = 50) -> dict:
    """Logistic regression on standardised features by Newton's method (numpy float64).

    Minimises mean log-loss + ``l2/2 * |w|^2`` (the bias is not penalised). Returns
    ``{"mean", "std", "w", "b"}`` for :func:`predict_logreg`.
    """
    f = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    mean = f.mean(0)
    std = f.std(0)
    std = np.where(std > 0, std, 1.0)
    z = np.concatenate([(f - mean) / std, np.ones((len(f), 1))], axis=1)
    n, d = z.shape
    reg = np.full(d, float(l2))
    reg[-1] = 0.0
    theta = np.zeros(d)
    for _ in range(int(steps)):
        p = _sigmoid(z @ theta)
        grad = z.T @ (p - y) / n + reg * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z / n + np.diag(reg) + 1e-10 * np.eye(d)
        delta = np.linalg.solve(hess, grad)
        theta = theta - delta
        if np.max(np.abs(delta)) < 1e-10:
            break
    return {"mean": mean, "std": std, "w": theta[:-1], "b": float(theta[-1])}


def predict_logreg(model: Mapping, features: np.ndarray) -> np.ndarray:
    """Probabilities ``[N]`` of the positive (poisoned) class."""
    f = (np.asarray(features, np.float64) - model["mean"]) / model["std"]
    return _sigmoid(f @ model["w"] + model["b"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# ---------------------------------------------------------------------------------------------
# Metrics


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.shape[0]} scores but {y.shape[0]} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for "positive iff score >= threshold", thresholds descending.

    The first point is ``(0, 0)`` at threshold +inf, then one point per distinct score;
    tied scores move both rates at once (a diagonal segment). Rates are NaN when a class
    is absent.
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, int)
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    npos, nneg = y.sum(), (~y).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0, tp] / npos
        fpr = np.r_[0, fp] / nneg
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, s[last]]


def auc(scores, labels) -> float:
    """Exact ROC AUC = P(score_pos > score_neg) + P(equal) / 2 (Mann-Whitney U / n+ n-).

    NaN when either class is absent.
    """
    s, y = _check(scores, labels)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ranks = np.empty(len(s), np.float64)
    # average 1-based ranks over groups of tied scores
    starts = np.r_[0, np.nonzero(np.diff(ss))[0] + 1]
    ends = np.r_[starts[1:], len(ss)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - npos * (npos + 1) / 2.0
    return float(u / (npos * nneg))


def accuracy(scores, labels, threshold: float = 0.5) -> float:
    s, y = _check(scores, labels)
    return float(np.mean((s >= threshold) == y)) if len(s) else float("nan")


def evaluate_by_attack(scores, labels, attacks: Sequence[str], threshold: float = 0.5) -> dict:
    """Overall and per-attack detection metrics (JSON-ready).

    ``attacks[i]`` names the attack of model i (``"clean"`` for clean ones; clean models
    are those with label 0). Returns ``{"overall": {"auc", "accuracy", "n", "n_clean",
    "n_poisoned"}, "by_attack": {attack: {"auc", "accuracy", "n_clean", "n_poisoned",
    "fpr", "tpr", "thresholds"}}}``, where each attack is scored on all clean models plus
    the poisoned models of that attack (thresholds: +inf written as null).
    """
    s, y = _check(scores, labels)
    a = np.asarray([str(t) for t in attacks])
    if a.shape != s.shape:
        raise ValueError(f"{s.shape[0]} scores but {a.shape[0]} attack names")
    if np.any(y & (a == CLEAN)) or np.any(~y & (a != CLEAN)):
        raise ValueError("labels disagree with attack names (label 0 <=> 'clean')")
    out = {"overall": {"auc": auc(s, y), "accuracy": accuracy(s, y, threshold), "n": len(s),
                       "n_clean": int((~y).sum()), "n_poisoned": int(y.sum())},
           "by_attack": {}}
    for name in sorted(set(a[y].tolist())):
        m = ~y | (a == name)
        fpr, tpr, th = roc_curve(s[m], y[m])
        out["by_attack"][name] = {
            "auc": auc(s[m], y[m]), "accuracy": accuracy(s[m], y[m], threshold),
            "n_clean": int((~y).sum()), "n_poisoned": int((a == name).sum()),
            "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "thresholds": [None if math.isinf(t) else float(t) for t in th]}
    return out
