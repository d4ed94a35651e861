"""Segment-CNN baseline: a training hyperparameter from a random segment of the weights.

What it is
    The prior meta-model that seed 000 compares against in §3.2 (details in its App. A):
    Eilertsen et al. (2020), "Classifying the classifier: dissecting the weight space of
    neural networks". A small 1-D CNN reads a contiguous ``segment``-long window (5,000 by
    default) of a base network's flattened weight vector and predicts one of its training
    hyperparameters as a K-way classification. A new window is drawn for every row at every
    training step; at test time the class probabilities of ``test_segments`` windows are
    averaged.

Inputs
    ``x [N, P]`` float32: row i is one base network's flat weights, zero-padded on the right
    up to P; ``lengths [N]`` int: the number of real weights of each row
    (``1 <= lengths[i] <= P``); ``y [N]`` int labels in ``0..K-1``. A window starts at
    ``start`` (uniform over ``0..max(lengths[i] - segment, 0)``, so every weight of a row can
    be seen) and every position at or past ``lengths[i]`` is exactly 0 (:func:`segments`):
    the padding of ``x`` is never read, and a row shorter than the window, or a matrix
    narrower than ``start + segment``, is zero-filled.

Meta-model (:class:`SegmentCNN`), ``[B, segment] -> logits [B, K]``
    Each window is standardised on its own: divided by the root mean square of its non-zero
    entries (``s``; windows that are all zero are left as they are). Dividing alone would
    throw away the overall magnitude of the weights, which depends on hyperparameters such as
    the initialisation or the optimizer, so ``log(max(s, 1e-8))`` is handed to the head as one
    extra feature. Then, for each entry of ``channels``: Conv1D (``kernel`` wide, SAME
    padding) -> ReLU -> max-pool of window and stride ``pool`` (SAME padding, so a length
    never reaches 0); the mean over positions, concatenated with the log-scale, goes through
    Dense(``dense``) -> ReLU -> Dense(K).

Training (:func:`train`)
    AdamW (``learning_rate``, ``weight_decay``; optax defaults otherwise, constant rate) on
    softmax cross-entropy, ``steps`` steps of ``batch_size`` rows.

Randomness (all of it is seeded; the same inputs and cfg give bitwise-identical parameters)
    * initial parameters: ``jax.random.PRNGKey(seed)``;
    * rows of step ``s``: epoch ``e = s // (N // batch_size)`` is the permutation
      ``np.random.default_rng([seed, 0, e]).permutation(N)`` cut into ``N // batch_size``
      batches (the remainder of each epoch is dropped);
    * window starts of step ``s``: ``np.random.default_rng([seed, 1, s])``;
    * window starts of draw ``k`` of :func:`predict_proba`: ``np.random.default_rng([seed, 2,
      k])`` with its own ``seed`` argument.
    (The three streams have distinct second entries: numpy's SeedSequence maps ``[a, b]``
    and ``[a, b, 0]`` to the same stream, so ``[seed, epoch]`` would share the stream of
    ``[seed, 1, 0]``.)

Saved model (:func:`save` / :func:`load`): one ``.npz`` written atomically by
:func:`metamodels.core.shards.save_npz` (no pickle; ``numpy.load(path)`` reads it):
    ``config``             1-element unicode array: JSON ``{"format": 1, "model":
                           "segment-cnn", "cfg": {...}, "classes": K}`` (cfg completed
                           with :data:`DEFAULTS`)
    ``params/<a>/<b>/..``  float32 arrays: the Flax parameter tree, keys joined by "/"
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from metamodels.core import shards as S

FORMAT = 1
NAME = "segment-cnn"
LOG_EVERY = 100
"""Steps between progress lines (and history entries)."""

DEFAULTS: dict = {
    "seed": 0,
    "segment": 5000,
    "channels": [16, 32, 64, 64],
    "kernel": 5,
    "pool": 4,
    "dense": 64,
    "steps": 600,
    "batch_size": 32,
    "learning_rate": 1.0e-3,
    "weight_decay": 1.0e-4,
    "test_segments": 8,
    "eval_batch_size": 256,
}
"""Keys of the baseline's cfg, with the values used when a key is missing."""

_POSITIVE = ("segment", "kernel", "pool", "dense", "steps", "batch_size", "test_segments",
             "eval_batch_size")


def with_defaults(cfg: Mapping) -> dict:
    """``cfg`` completed with :data:`DEFAULTS` (a new dict; ``channels`` as a list of ints).

    Raises ValueError naming unknown keys (typos), and naming any integer key below 1, an
    empty or non-positive ``channels``, or a negative rate."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"segment-cnn cfg: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **cfg}
    for k in _POSITIVE:
        if int(c[k]) != c[k] or int(c[k]) < 1:
            raise ValueError(f"segment-cnn cfg: {k} must be an integer >= 1, got {c[k]!r}")
        c[k] = int(c[k])
    c["seed"] = int(c["seed"])
    ch = c["channels"]
    if isinstance(ch, (str, bytes)) or not hasattr(ch, "__len__") or len(ch) == 0 or any(
            int(v) != v or int(v) < 1 for v in ch):
        raise ValueError(f"segment-cnn cfg: channels must be a non-empty list of integers >= 1 "
                         f"(one conv block each), got {ch!r}")
    c["channels"] = [int(v) for v in ch]
    for k in ("learning_rate", "weight_decay"):
        if not float(c[k]) >= 0:
            raise ValueError(f"segment-cnn cfg: {k} must be >= 0, got {c[k]!r}")
        c[k] = float(c[k])
    return c


# ---------------------------------------------------------------------------------------------
# Windows


def _check_segment(segment) -> int:
    if int(segment) != segment or int(segment) < 1:
        raise ValueError(f"segment must be an integer >= 1 (the window length), got {segment!r}")
    return int(segment)


def _int_array(name: str, a, n: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array [N], got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}; pass "
                         f"np.asarray({name}, np.int64)")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries but x has {n} rows; give one per row")
    return a.astype(np.int64)


def _check_x(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be a float matrix [N, P] (one flat weight vector per row), "
                         f"got shape {x.shape}")
    return x


def _check_lengths(lengths, n: int, p: int | None) -> np.ndarray:
    lengths = _int_array("lengths", lengths, n)
    bad = (lengths < 1) | (lengths > p) if p is not None else lengths < 1
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        bound = f"1..{p} (the width P of x)" if p is not None else ">= 1"
        raise ValueError(f"lengths[{i}] = {lengths[i]} is outside {bound}; lengths[i] is the "
                         f"number of real weights of row i, padding excluded")
    return lengths


def segment_starts(lengths, segment: int, rng: np.random.Generator) -> np.ndarray:
    """Start of one window per row, int64 ``[N]``.

    ``starts[i]`` is uniform over ``0..max(lengths[i] - segment, 0)`` inclusive, so every
    weight of a row can fall in a window, and a row shorter than ``segment`` starts at 0.
    Raises ValueError when ``lengths`` is not a 1-D integer array of values >= 1 or when
    ``segment < 1``."""
    segment = _check_segment(segment)
    lengths = _int_array("lengths", lengths)
    lengths = _check_lengths(lengths, len(lengths), None)
    high = np.maximum(lengths - segment, 0)
    return rng.integers(0, high + 1, dtype=np.int64) if len(high) else np.zeros(0, np.int64)


def _cut(x: np.ndarray, rows: np.ndarray, lengths: np.ndarray, starts: np.ndarray,
         segment: int) -> np.ndarray:
    """``[len(rows), segment]`` windows of rows ``rows`` of ``x`` (no full-row copies)."""
    out = np.zeros((len(rows), segment), np.float32)
    for j, (r, s) in enumerate(zip(rows, starts)):
        m = min(segment, int(lengths[r]) - int(s))
        if m > 0:
            out[j, :m] = x[r, s:s + m]
    return out


def segments(x, lengths, starts, segment: int) -> np.ndarray:
    """The windows ``x[i, starts[i] : starts[i] + segment]``, float32 ``[N, segment]``.

    Positions at or past ``lengths[i]`` are exactly 0 (whatever the padding of ``x`` holds),
    and so are positions past the width P of ``x``. ``x [N, P]``; ``lengths``, ``starts``
    int ``[N]``. Raises ValueError on a shape mismatch, ``lengths`` outside ``1..P``,
    ``starts`` outside ``0..lengths[i] - 1`` or ``segment < 1``."""
    segment = _check_segment(segment)
    x = _check_x(x)
    n, p = x.shape
    lengths = _check_lengths(lengths, n, p)
    starts = _int_array("starts", starts, n)
    bad = (starts < 0) | (starts >= lengths)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"starts[{i}] = {starts[i]} is outside 0..{lengths[i] - 1} (row {i} "
                         f"has {lengths[i]} weights); draw starts with segment_starts")
    return _cut(x, np.arange(n), lengths, starts, segment)


# ---------------------------------------------------------------------------------------------
# Meta-model


class SegmentCNN(nn.Module):
    """``__call__(x [B, segment] float32) -> logits [B, classes]`` (module docstring)."""

    classes: int
    channels: tuple[int, ...]
    kernel: int
    pool: int
    dense: int

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        sq = jnp.sum(x * x, axis=-1, keepdims=True)
        nonzero = jnp.sum(x != 0, axis=-1, keepdims=True)
        rms = jnp.sqrt(sq / jnp.maximum(nonzero, 1))
        h = (x / jnp.where(rms > 0, rms, 1.0))[..., None]  # [B, L, 1]
        log_scale = jnp.log(jnp.maximum(rms, 1e-8))  # [B, 1]
        for i, c in enumerate(self.channels):
            h = nn.Conv(c, (self.kernel,), padding="SAME", name=f"conv_{i}")(h)
            h = nn.relu(h)
            h = nn.max_pool(h, (self.pool,), strides=(self.pool,), padding="SAME")
        h = jnp.concatenate([h.mean(axis=1), log_scale], axis=-1)
        h = nn.relu(nn.Dense(self.dense, name="dense")(h))
        return nn.Dense(self.classes, name="head")(h)


def build(cfg: Mapping, classes: int) -> SegmentCNN:
    c = with_defaults(cfg)
    return SegmentCNN(classes=int(classes), channels=tuple(c["channels"]), kernel=c["kernel"],
                      pool=c["pool"], dense=c["dense"])


@dataclasses.dataclass
class Model:
    """A trained baseline: its completed cfg, the number of classes K and the parameters."""

    cfg: dict
    classes: int
    params: dict


MODEL_KEYS = ("channels", "kernel", "pool", "dense")
STEP_KEYS = MODEL_KEYS + ("learning_rate", "weight_decay")


def _key(c: Mapping, keys, classes: int) -> str:
    """JSON of the static part of a cfg: the cache key of compiled functions."""
    return json.dumps({**{k: c[k] for k in keys}, "classes": int(classes)}, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _proba_fn(model_json: str):
    c = json.loads(model_json)
    module = build({k: c[k] for k in MODEL_KEYS}, c["classes"])

    def f(params, xb):
        return jax.nn.softmax(module.apply({"params": params}, xb), axis=-1)
    return jax.jit(f)


@functools.lru_cache(maxsize=16)
def _train_fns(step_json: str, segment: int):
    """Jitted ``init(key) -> (params, opt_state)`` and ``step(params, opt_state, xb, yb) ->
    (params, opt_state, loss, correct)`` for one static cfg, compiled once per process."""
    c = json.loads(step_json)
    module = build({k: c[k] for k in MODEL_KEYS}, c["classes"])
    tx = optax.adamw(c["learning_rate"], weight_decay=c["weight_decay"])

    def init(key):
        params = module.init(key, jnp.zeros((1, segment), jnp.float32))["params"]
        return params, tx.init(params)

    def loss_fn(params, xb, yb):
        logit = module.apply({"params": params}, xb)
        loss = optax.softmax_cross_entropy_with_integer_labels(logit, yb).mean()
        return loss, jnp.sum(jnp.argmax(logit, axis=-1) == yb)

    def step(params, opt_state, xb, yb):
        (loss, correct), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, correct

    return jax.jit(init), jax.jit(step, donate_argnums=(0, 1))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of the batch of ``step`` (a pure function of its arguments): epoch ``e`` is
    ``default_rng([seed, 0, e]).permutation(n)`` cut into ``n // batch_size`` batches."""
    bs = min(batch_size, n)
    e, s = divmod(step, n // bs)
    perm = np.random.default_rng([seed, 0, e]).permutation(n)
    return perm[s * bs:(s + 1) * bs]


def _check_classes(classes) -> int:
    if int(classes) != classes or int(classes) < 2:
        raise ValueError(f"classes must be an integer >= 2 (the number K of label values), "
                         f"got {classes!r}")
    return int(classes)


def train(cfg: Mapping, x, lengths, y, classes: int,
          log: Callable[[str], None] | None = print) -> tuple[Model, list[dict]]:
    """Fit the baseline on ``x [N, P]`` (flat weights, zero-padded), ``lengths [N]`` and
    labels ``y [N]`` in ``0..classes-1``.

    Returns ``(model, history)``. history has one entry every :data:`LOG_EVERY` steps and at
    the end: step, train_loss and train_acc (means over the steps since the previous entry,
    each on its training windows), train_s (seconds since the start, compilation included)
    and examples_per_s (after the first step). Progress lines start with ``[segment-cnn]``.
    Raises ValueError for an unknown or invalid cfg key, ``x`` not 2-D or empty, ``lengths``
    or ``y`` not one per row, ``lengths`` outside ``1..P``, ``y`` outside ``0..classes-1`` or
    ``classes < 2``."""
    c = with_defaults(cfg)
    log = log or (lambda s: None)
    classes = _check_classes(classes)
    x = _check_x(x)
    n, p = x.shape
    if n == 0:
        raise ValueError("x has no rows; train needs at least one base network")
    lengths = _check_lengths(lengths, n, p)
    y = _int_array("y", y, n)
    if ((y < 0) | (y >= classes)).any():
        bad = sorted(set(y[(y < 0) | (y >= classes)].tolist()))[:5]
        raise ValueError(f"y holds labels {bad} outside 0..{classes - 1}; map them to "
                         f"0..classes-1 or raise classes")
    y = y.astype(np.int32)
    seg, seed, steps = c["segment"], c["seed"], c["steps"]
    bs = min(c["batch_size"], n)
    t0 = time.perf_counter()
    init_fn, step_fn = _train_fns(_key(c, STEP_KEYS, classes), seg)
    params, opt_state = init_fn(jax.random.PRNGKey(seed))
    n_params = sum(int(a.size) for a in jax.tree_util.tree_leaves(params))
    log(f"[segment-cnn] {n} rows of up to {p:,} weights, {classes} classes, {steps} steps of "
        f"{bs}, windows of {seg:,}, {n_params:,} params")
    history: list[dict] = []
    losses, correct = [], []
    t1 = t0
    for s in range(steps):
        idx = batch_indices(n, bs, seed, s)
        starts = segment_starts(lengths[idx], seg, np.random.default_rng([seed, 1, s]))
        xb = _cut(x, idx, lengths, starts, seg)
        params, opt_state, loss, ok = step_fn(params, opt_state, xb, y[idx])
        losses.append(loss)
        correct.append(ok)
        done = s + 1
        if done == 1:  # throughput is measured after the first (compiling) step
            jax.block_until_ready(loss)
            t1 = time.perf_counter()
        if done % LOG_EVERY == 0 or done == steps:
            loss_sum = float(np.sum(jax.device_get(losses)))  # waits for the queued steps
            n_correct = int(np.sum(jax.device_get(correct)))
            now = time.perf_counter()
            entry = {"step": done,
                     "train_loss": loss_sum / len(losses),
                     "train_acc": n_correct / (len(correct) * bs),
                     "train_s": round(now - t0, 3),
                     "examples_per_s": round((done - 1) * bs / max(now - t1, 1e-9), 1)}
            history.append(entry)
            log(f"[segment-cnn] step {done}/{steps} loss {entry['train_loss']:.4f} acc "
                f"{entry['train_acc']:.3f} ({entry['train_s']:.1f} s, "
                f"{entry['examples_per_s']:.0f} ex/s)")
            losses, correct = [], []
    return Model(c, classes, jax.device_get(params)), history


def predict_proba(model: Model, x, lengths, segments: int | None = None,
                  seed: int = 0) -> np.ndarray:
    """Class probabilities ``[N, classes]`` float32: the mean of the softmax over
    ``segments`` (default: the cfg's ``test_segments``) windows per row; the starts of draw
    ``k`` come from ``np.random.default_rng([seed, 2, k])``. Computed in batches of the cfg's
    ``eval_batch_size`` (the last one zero-padded), so it compiles once per model shape.
    Raises ValueError when ``x`` is not 2-D, ``lengths`` is not one per row or outside
    ``1..P``, or ``segments < 1``."""
    c = with_defaults(model.cfg)
    draws = c["test_segments"] if segments is None else segments
    if int(draws) != draws or int(draws) < 1:
        raise ValueError(f"segments must be an integer >= 1 (windows averaged per row), "
                         f"got {segments!r}")
    draws = int(draws)
    x = _check_x(x)
    n, p = x.shape
    lengths = _check_lengths(lengths, n, p)
    seg, bs = c["segment"], c["eval_batch_size"]
    f = _proba_fn(_key(c, MODEL_KEYS, model.classes))
    rows = np.tile(np.arange(n), draws)
    starts = np.concatenate([segment_starts(lengths, seg, np.random.default_rng([seed, 2, k]))
                             for k in range(draws)]) if n else np.zeros(0, np.int64)
    total = np.zeros((n, model.classes), np.float64)
    for i in range(0, len(rows), bs):
        r = rows[i:i + bs]
        xb = np.zeros((bs, seg), np.float32)
        xb[:len(r)] = _cut(x, r, lengths, starts[i:i + bs], seg)
        prob = np.asarray(f(model.params, xb), np.float64)[:len(r)]
        np.add.at(total, r, prob)
    return (total / draws).astype(np.float32)


def predict(model: Model, x, lengths, segments: int | None = None, seed: int = 0) -> np.ndarray:
    """The most probable class of each row, int64 ``[N]`` (:func:`predict_proba`)."""
    return np.argmax(predict_proba(model, x, lengths, segments, seed), axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Files


def save(path: str | os.PathLike, model: Model) -> None:
    """Write ``model`` to one deterministic ``.npz`` at ``path``, atomically (a temporary
    file in the same folder renamed over ``path``); format in the module docstring."""
    meta = {"format": FORMAT, "model": NAME, "cfg": with_defaults(model.cfg),
            "classes": int(model.classes)}
    arrays = {"config": S.text_array([json.dumps(meta, sort_keys=True)])}
    flat = traverse_util.flatten_dict(jax.device_get(model.params), sep="/")
    for k in sorted(flat):
        arrays[f"params/{k}"] = np.asarray(flat[k], np.float32)
    S.save_npz(path, arrays)


def load(path: str | os.PathLike) -> Model:
    """Read a model written by :func:`save`. Raises
    :class:`metamodels.core.shards.FileFormatError` (a ValueError) naming the file when it is
    missing, not an ``.npz``, or not a segment-CNN file of this format."""
    arrays = S.load_npz(path)
    meta = json.loads(str(arrays["config"][0]))
    if not isinstance(meta, dict) or meta.get("model") != NAME:
        raise S.FileFormatError(path, f"not a {NAME} model file (config says "
                                f"{meta.get('model') if isinstance(meta, dict) else meta!r})",
                                column="config")
    if meta.get("format") != FORMAT:
        raise S.FileFormatError(path, f"{NAME} format {meta.get('format')}, expected {FORMAT}",
                                column="config")
    flat = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    if not flat:
        raise S.FileFormatError(path, "no params/... columns", column="params")
    return Model(with_defaults(meta["cfg"]), int(meta["classes"]),
                 traverse_util.unflatten_dict(flat, sep="/"))
