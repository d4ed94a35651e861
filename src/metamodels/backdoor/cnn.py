"""Base models of the backdoor task: small CNNs, trained many at once with ``jax.vmap``.

Architecture (seed 000, Sec. 3.1 / App. A): three blocks of ``channels``
(16, 32, 64); each block is Conv3x3 (SAME) -> LayerNorm -> ReLU -> Conv3x3
(SAME) -> max-pool 2x2 -> LayerNorm -> ReLU; then a global max over H and W
and a Dense layer to ``classes`` logits. LayerNorm is Flax's default: it
normalises over the channel axis only, with a per-channel scale and bias.

Layers are named ``conv_k`` / ``norm_k`` (k = 0 .. 2*blocks-1, in network
order; ``norm_k`` follows ``conv_k``) and ``dense``. The canonical flat layout
(:func:`layout`) lists, in network order, ``conv_k/kernel`` [3,3,Cin,Cout],
``conv_k/bias`` [Cout], ``norm_k/scale`` [Cout], ``norm_k/bias`` [Cout] for
k = 0, 1, ..., then ``dense/kernel`` [C,classes], ``dense/bias`` [classes];
each array is flattened in C (row-major) order.

Zoo training (:func:`train_models`) trains a list of model specs in groups of
``cfg["vmap_group"]``: one jitted step, the single-model AdamW step vmapped over
the models of the group, is called once per training step. Each model has its
own init key, data order, trigger, poisoned indices and target; the uint8
training set is shared and each model's batch is gathered, converted to float
and triggered inside the step. The last group is padded with copies of its
last spec (dropped afterwards), so every group runs the same compiled step
whatever the number of models: with the same specs and cfg the weights are
bitwise identical, and a model's weights do not depend on which group it lands
in. They do depend on ``vmap_group`` itself at the level of float rounding
(a grouped convolution sums in another order than a single one); training
amplifies that (max |diff| ~1e-6 after 4 steps, ~0.1 after 62 steps on
Fashion-MNIST), so ``vmap_group`` is part of the recipe like the seed.

vmap turns each convolution into a grouped convolution. On a GPU that batches
many small models into one launch; XLA:CPU runs grouped convolutions (and
their gradients) several times slower per model than separate ones, so on the CPU
``vmap_group: 1`` is the fast setting. :func:`train_models` follows JAX's device discovery
(:func:`backend_for`): the vmapped step on a GPU/TPU; on the CPU this module one model at a
time, or :mod:`metamodels.backdoor.cnn_torch` (the same models in PyTorch) when
``cpu_path: torch``. benchmarks/cnn_zoo_throughput.py times both on the same models.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, dict[str, Any]]
Layout = list[tuple[str, tuple[int, ...]]]

DEFAULTS: dict[str, Any] = {
    "channels": [16, 32, 64],  # conv widths, one block each
    "classes": 10,
    "lr": 0.003,               # AdamW learning rate (constant)
    "wd": 0.0001,              # AdamW (decoupled) weight decay
    "batch_size": 32,
    "epochs": 2,
    "vmap_group": 1,           # models per vmapped step: 1 on a CPU (fastest), 8-64 on a GPU
    "cpu_path": "jax",         # on the CPU: jax (this module) or torch (cnn_torch.py)
    "eval_batch_size": 500,    # test images per evaluation step
}

# Base (unbatched) rank of each parameter kind; leading axes beyond it are batch axes.
_BASE_NDIM = {("conv", "kernel"): 4, ("dense", "kernel"): 2}


def settings(cfg: Mapping | None) -> dict[str, Any]:
    """`cfg` over :data:`DEFAULTS` (unknown keys are kept, missing ones filled)."""
    return {**DEFAULTS, **(cfg or {})}


# ---------------------------------------------------------------------------
# model

def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool, stride 2, VALID (odd trailing rows/columns dropped), on [..., H, W, C].

    Same forward values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a reshape
    and a max because XLA:CPU's gradient of the windowed max-pool is several times slower.
    """
    *lead, h, w, c = x.shape
    x = x[..., :h // 2 * 2, :w // 2 * 2, :]
    return x.reshape(*lead, h // 2, 2, w // 2, 2, c).max(axis=(-4, -2))


class CNN(nn.Module):
    """Conv blocks of ``channels`` widths, global max-pool, Dense(``classes``)."""

    channels: Sequence[int] = (16, 32, 64)
    classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k = 0
        for c in self.channels:
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{k}")(x)
            x = nn.relu(nn.LayerNorm(name=f"norm_{k}")(x))
            k += 1
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{k}")(x)
            x = max_pool_2x2(x)
            x = nn.relu(nn.LayerNorm(name=f"norm_{k}")(x))
            k += 1
        x = jnp.max(x, axis=(-3, -2))
        return nn.Dense(self.classes, name="dense")(x)


def make_model(cfg: Mapping | None = None) -> CNN:
    s = settings(cfg)
    return CNN(channels=tuple(int(c) for c in s["channels"]), classes=int(s["classes"]))


# Flax's truncated-normal initialisers draw from N(0, 1) truncated to [-2, 2], whose standard
# deviation is this; they divide by it so the kept samples have the requested variance.
_TRUNC_STD = 0.87962566103423978


def init_params(key: jax.Array, shape: Sequence[int], cfg: Mapping | None = None) -> Params:
    """Fresh parameters for images of `shape` = (H, W, C).

    Flax's default distributions (conv / dense kernels LeCun-normal: truncated normal with
    variance 1 / fan_in; biases 0; LayerNorm scale 1, bias 0), but all kernels are sliced
    from ONE truncated-normal draw of `key`, in :func:`layout` order: a single RNG call
    compiles in a fraction of the time of one per layer (threefry compiles slowly on CPU).
    """
    model = make_model(cfg)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, *shape), jnp.float32)))
    lay = layout(abstract["params"])
    kernels = [(n, sh) for n, sh in lay if n.endswith("/kernel")]
    total = sum(int(np.prod(sh)) for _, sh in kernels)
    draw = jax.random.truncated_normal(key, -2.0, 2.0, (total,), jnp.float32)
    out: Params = {}
    off = 0
    for name, sh in lay:
        layer, p = name.split("/")
        size = int(np.prod(sh))
        if p == "kernel":
            fan_in = int(np.prod(sh[:-1]))
            value = draw[off:off + size].reshape(sh) * (1.0 / np.sqrt(fan_in) / _TRUNC_STD)
            off += size
        elif p == "scale":
            value = jnp.ones(sh, jnp.float32)
        else:
            value = jnp.zeros(sh, jnp.float32)
        out.setdefault(layer, {})[p] = value
    return out


def _conv_names(params: Mapping) -> list[str]:
    return sorted((n for n in params if n.startswith("conv_")), key=lambda n: int(n[5:]))


def model_for(params: Mapping) -> CNN:
    """The :class:`CNN` whose parameters these are (widths read from the bias shapes)."""
    convs = _conv_names(params)
    channels = tuple(int(params[n]["bias"].shape[-1]) for n in convs[1::2])
    return CNN(channels=channels, classes=int(params["dense"]["bias"].shape[-1]))


def forward(params: Mapping, x: jnp.ndarray) -> jnp.ndarray:
    """Logits [B, classes] of one model on float images `x` [B, H, W, C]."""
    return model_for(params).apply({"params": params}, x)


# ---------------------------------------------------------------------------
# canonical layout, flat vectors

def _layer_order(params: Mapping) -> list[tuple[str, tuple[str, ...]]]:
    order = []
    for conv in _conv_names(params):
        order.append((conv, ("kernel", "bias")))
        order.append(("norm_" + conv[5:], ("scale", "bias")))
    order.append(("dense", ("kernel", "bias")))
    return order


def layout(params: Mapping) -> Layout:
    """[(``layer/param``, base shape)] in canonical order (see module docstring).

    Works on batched parameters too: leading axes beyond each kind's base rank are ignored.
    """
    out = []
    for layer, names in _layer_order(params):
        for name in names:
            shape = tuple(params[layer][name].shape)
            nd = _BASE_NDIM.get((layer.split("_")[0], name), 1)
            out.append((f"{layer}/{name}", shape[len(shape) - nd:]))
    return out


def layout_for(shape: Sequence[int], cfg: Mapping | None = None) -> Layout:
    """The layout of :func:`init_params` (`shape`, `cfg`) without computing any weights."""
    abstract = jax.eval_shape(lambda k: init_params(k, shape, cfg), jax.random.PRNGKey(0))
    return layout(abstract)


def num_params(lay: Layout) -> int:
    return int(sum(np.prod(s, dtype=np.int64) for _, s in lay))


def _flatten(params: Mapping, xp=jnp):
    lay = layout(params)
    parts = []
    for name, shape in lay:
        layer, p = name.split("/")
        a = params[layer][p]
        lead = a.shape[:a.ndim - len(shape)]
        parts.append(xp.reshape(a, (*lead, -1)).astype(xp.float32))
    return xp.concatenate(parts, axis=-1)


def flatten(params: Mapping) -> np.ndarray:
    """float32 [..., P] in canonical order (leading batch axes kept)."""
    return _flatten(jax.tree_util.tree_map(np.asarray, params), np)


def unflatten(flat, lay: Layout) -> Params:
    """Inverse of :func:`flatten`; `flat` [..., P] (numpy or jax), leading axes kept."""
    if flat.shape[-1] != num_params(lay):
        raise ValueError(f"flat vector has {flat.shape[-1]} values, layout {num_params(lay)}")
    lead = flat.shape[:-1]
    out: Params = {}
    off = 0
    for name, shape in lay:
        n = int(np.prod(shape, dtype=np.int64))
        layer, p = name.split("/")
        out.setdefault(layer, {})[p] = flat[..., off:off + n].reshape(*lead, *shape)
        off += n
    return out


# ---------------------------------------------------------------------------
# neuron permutations

def permute(params: Mapping, key: jax.Array) -> Params:
    """Randomly permute the channels of every hidden layer; the function is unchanged.

    For each ``conv_k`` a permutation ``p`` of its output channels is applied to
    its kernel's output axis and bias, to ``norm_k``'s scale and bias, and to
    the input axis of the next layer (``conv_{k+1}``'s kernel, or ``dense``'s
    kernel rows after the last conv). The Dense output (the logits) is never
    permuted. The permutations come from one draw of random 32-bit keys (one per
    hidden channel, in layer order) under `key`: each layer's channels are sorted by
    their keys (ties, at odds of ~1e-6, keep their order).

    Why the output is unchanged: permuting a conv's output channels permutes
    the channel axis of its activations. LayerNorm normalises each pixel over
    the channel axis: the mean and variance are symmetric functions of the
    channels, so they do not change, and the per-channel scale and bias were
    permuted with the channels, so the normalised output is the same values
    with the channels permuted. ReLU is elementwise; the 2x2 max-pool and the
    global max over H, W act on each channel separately, so both commute with
    a channel permutation. The next layer sums over its input channels using
    kernel slices permuted the same way, so the permutation cancels there.

    Pure jnp (static shapes): jittable, and vmappable over params and keys.
    """
    convs = _conv_names(params)
    widths = [int(params[c]["bias"].shape[-1]) for c in convs]
    bits = jax.random.bits(key, (sum(widths),), jnp.uint32)
    offsets = np.cumsum([0, *widths])
    return _sort_channels(params, [bits[offsets[i]:offsets[i + 1]] for i in range(len(convs))])


def canonical(params: Mapping) -> Params:
    """The neuron-permutation-equivalent parameters whose channels are in canonical order.

    Every hidden layer's output channels are sorted by the L2 norm of their incoming
    kernel slice (``conv_k`` kernel ``[..., c]``: 3 x 3 x C_in weights), largest first, and
    the next layer's input axis follows, exactly as in :func:`permute`; the function is
    unchanged. The norm of a channel's incoming weights does not depend on the order of the
    previous layer's channels, so all models that differ by a neuron permutation map to one
    point (up to ties in the norms, which trained float32 weights do not have). An
    alternative to permutation augmentation (seed 000 §3.1) for zoos too small to learn the
    invariance from (docs/backdoor.md). One model's parameters; pure jnp: jittable and vmappable.
    """
    convs = _conv_names(params)
    return _sort_channels(params, [-jnp.sqrt(jnp.sum(jnp.square(params[c]["kernel"]),
                                                     axis=(0, 1, 2))) for c in convs])


def _sort_channels(params: Mapping, keys: Sequence[jax.Array]) -> Params:
    """`params` with each ``conv_k``'s output channels sorted by ``keys[k]`` (stable), and the
    layers that read them (``norm_k``, the next conv's or the dense kernel's input axis)
    permuted to match (:func:`permute`)."""
    out: Params = {layer: dict(v) for layer, v in params.items()}
    convs = _conv_names(params)
    for i, conv in enumerate(convs):
        perm = jnp.argsort(keys[i], stable=True)
        norm = "norm_" + conv[5:]
        out[conv]["kernel"] = out[conv]["kernel"][..., perm]
        out[conv]["bias"] = out[conv]["bias"][perm]
        out[norm]["scale"] = out[norm]["scale"][perm]
        out[norm]["bias"] = out[norm]["bias"][perm]
        nxt = convs[i + 1] if i + 1 < len(convs) else "dense"
        out[nxt]["kernel"] = jnp.take(out[nxt]["kernel"], perm, axis=-2)
    return out


def permute_flat(flat: jnp.ndarray, key: jax.Array, lay: Layout) -> jnp.ndarray:
    """:func:`permute` on one flat vector [P] (jnp); vmap over (flats [B, P], keys [B])."""
    return _flatten(permute(unflatten(jnp.asarray(flat), lay), key), jnp)


def canonical_flat(flat: np.ndarray, lay: Layout, batch: int = 256) -> np.ndarray:
    """:func:`canonical` on flat vectors ``[N, P]`` or ``[P]`` (float32, numpy in and out)."""
    flat = np.asarray(flat, np.float32)
    if flat.ndim == 1:
        return canonical_flat(flat[None], lay, batch)[0]
    f = _canonical_batch(tuple((n, tuple(s)) for n, s in lay))
    return np.concatenate([np.asarray(f(flat[i:i + batch])) for i in range(0, len(flat), batch)]
                          or [np.zeros((0, flat.shape[1]), np.float32)])


@functools.lru_cache(maxsize=8)
def _canonical_batch(lay: tuple):
    return jax.jit(jax.vmap(lambda f: _flatten(canonical(unflatten(f, list(lay))), jnp)))


# ---------------------------------------------------------------------------
# batches

def apply_trigger(x: jnp.ndarray, mask: jnp.ndarray, pattern: jnp.ndarray) -> jnp.ndarray:
    """``x * (1 - mask) + mask * pattern`` (float images in [0, 1])."""
    return x * (1.0 - mask) + mask * pattern


def make_batch(train_x, train_y, idx, poisoned, mask, pattern, target):
    """One model's batch: images `train_x`[idx] as float in [0, 1] (uint8 / 255), labels.

    `poisoned` is that model's bool [N] over the training set; those examples
    get the trigger (`mask`, `pattern`) and the label `target`.
    Returns (x float32 [B, H, W, C], y int32 [B]).
    """
    x = train_x[idx].astype(jnp.float32) / 255.0
    p = poisoned[idx]
    x = jnp.where(p[:, None, None, None], apply_trigger(x, mask, pattern), x)
    y = jnp.where(p, target, train_y[idx]).astype(jnp.int32)
    return x, y


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """Training indices [steps, batch_size] of one model's epoch (last partial batch dropped)."""
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"training set of {n} images is smaller than batch_size {batch_size}")
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    return perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


# ---------------------------------------------------------------------------
# specs

def _spec_arrays(specs: Sequence[Mapping], shape: Sequence[int], n_train: int) -> dict:
    """Stacked per-model arrays: seed, init_seed, mask, pattern, target, poisoned [M, N]."""
    m = len(specs)
    out = {"seed": np.zeros(m, np.int64), "init_seed": np.zeros(m, np.int64),
           "target": np.zeros(m, np.int32),
           "mask": np.zeros((m, *shape), np.float32), "pattern": np.zeros((m, *shape), np.float32),
           "poisoned": np.zeros((m, n_train), bool)}
    for i, s in enumerate(specs):
        out["seed"][i] = int(s["seed"])
        out["init_seed"][i] = int(s.get("init_seed", s["seed"]))
        out["target"][i] = int(s.get("target", 0))
        for k in ("mask", "pattern"):
            if s.get(k) is not None:
                a = np.asarray(s[k], np.float32)
                if a.shape != tuple(shape):
                    raise ValueError(f"spec {i}: {k} shape {a.shape} != image shape {tuple(shape)}")
                out[k][i] = a
        idx = np.asarray(s.get("poison_idx", []), np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n_train):
            raise ValueError(f"spec {i}: poison_idx outside 0..{n_train - 1}")
        out["poisoned"][i, idx] = True
    return out


def _groups(m: int, g: int) -> list[tuple[np.ndarray, int]]:
    """(model indices padded to `g` with copies of the last, number of real ones) per group."""
    if g < 1:
        raise ValueError(f"vmap_group must be >= 1, got {g}")
    out = []
    for start in range(0, m, g):
        idx = np.arange(start, min(start + g, m))
        out.append((np.concatenate([idx, np.full(g - len(idx), idx[-1])]), len(idx)))
    return out


# ---------------------------------------------------------------------------
# training

def _stack(trees: Sequence[Any]) -> Any:
    """Stack pytrees of equal structure along a new leading (model) axis."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


@functools.lru_cache(maxsize=8)
def _init_fn(shape: tuple[int, ...], channels: tuple[int, ...], classes: int):
    """Jitted single-model init (models are initialised one by one and stacked, so a model's
    initial weights never depend on its group)."""
    cfg = {"channels": channels, "classes": classes}
    return jax.jit(lambda key: init_params(key, shape, cfg))


@functools.lru_cache(maxsize=8)
def _make_step(model: CNN, lr: float, wd: float):
    """(AdamW, jitted step): gather each model's batch, then one AdamW step, vmapped over M.

    Called once per step from Python rather than scanned: XLA:CPU runs convolutions inside a
    while loop (lax.scan) about ten times slower. Cached on (model, lr, wd) so repeated calls
    reuse the compiled step.
    """
    tx = optax.adamw(lr, weight_decay=wd)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def one(params, opt_state, train_x, train_y, idx, poisoned, mask, pattern, target):
        x, y = make_batch(train_x, train_y, idx, poisoned, mask, pattern, target)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0, 0, 0, 0, 0)))
    return tx, step


BACKENDS = ("jax", "torch")


def backend_for(cfg: Mapping | None = None) -> str:
    """The zoo's training path on this machine: ``jax`` (the vmapped step below) when JAX's
    device discovery finds an accelerator; on the CPU ``cfg["cpu_path"]``: ``jax`` (the same
    step, ``vmap_group`` models at a time) or ``torch`` (:mod:`metamodels.backdoor.cnn_torch`,
    one model at a time). Which is faster depends on the image size
    (benchmarks/cnn_zoo_throughput.py): PyTorch 1.2x at 28x28, JAX 1.15x at 14x14."""
    if jax.default_backend() != "cpu":
        return "jax"
    path = settings(cfg)["cpu_path"]
    if path not in BACKENDS:
        raise ValueError(f"cnn_zoo.cnn.cpu_path must be one of {list(BACKENDS)}, got {path!r}")
    return path


def train_models(images: Any, specs: Sequence[Mapping], cfg: Mapping | None = None,
                 backend: str | None = None) -> dict:
    """Train one CNN per spec; returns weights, clean accuracy, ASR and losses.

    `backend`: ``jax`` or ``torch``; None picks :func:`backend_for` (`cfg`). Both give the
    same record for the same specs, equal up to float rounding
    (tests/backdoor/test_cnn_torch.py).

    `images` has uint8 ``train_x`` [N,H,W,C], int ``train_y`` [N], ``test_x``,
    ``test_y``. Each spec: ``seed`` (epoch e's order ``default_rng([seed, e])``; init key
    ``PRNGKey(seed)`` unless the spec has an ``init_seed``), ``mask`` and ``pattern`` (float32
    [H,W,C], the trigger), ``poison_idx`` (training indices to trigger and
    relabel; empty for a clean model), ``target`` (int class).

    Returns ``weights`` float32 [M, P] (canonical layout), ``clean_acc`` [M],
    ``asr`` [M] (see :func:`evaluate`), ``train_loss`` float32 [M, epochs]
    (mean over each epoch's steps) and ``layout``.
    """
    backend = backend or backend_for(cfg)
    if backend not in BACKENDS:
        raise ValueError(f"unknown CNN training backend {backend!r}; known: {list(BACKENDS)}")
    if backend == "torch":
        from metamodels.backdoor import cnn_torch
        return cnn_torch.train_models(images, specs, cfg)
    s = settings(cfg)
    train_x = np.asarray(images.train_x)
    if train_x.dtype != np.uint8 or train_x.ndim != 4:
        raise ValueError(f"train_x must be uint8 [N,H,W,C], got {train_x.dtype} {train_x.shape}")
    n, shape = len(train_x), train_x.shape[1:]
    m, g, bs, epochs = len(specs), int(s["vmap_group"]), int(s["batch_size"]), int(s["epochs"])
    if m == 0:
        raise ValueError("no model specs")
    arrays = _spec_arrays(specs, shape, n)
    model = make_model(s)
    lay = layout_for(shape, s)
    tx, step = _make_step(model, float(s["lr"]), float(s["wd"]))
    run_eval = _make_eval(model)
    init = _init_fn(tuple(shape), model.channels, model.classes)
    dx, dy = jnp.asarray(train_x), jnp.asarray(np.asarray(images.train_y, np.int32))

    weights = np.zeros((m, num_params(lay)), np.float32)
    losses = np.zeros((m, epochs), np.float32)
    clean_acc, asr = np.zeros(m), np.zeros(m)
    t0 = time.perf_counter()
    for idx, keep in _groups(m, g):
        params = _stack([init(jax.random.PRNGKey(int(sd))) for sd in arrays["init_seed"][idx]])
        opt_state = jax.vmap(tx.init)(params)
        per = {k: jnp.asarray(arrays[k][idx]) for k in ("poisoned", "mask", "pattern", "target")}
        for e in range(epochs):
            order = np.stack([epoch_order(sd, e, n, bs) for sd in arrays["seed"][idx]], axis=1)
            step_losses = []
            for batch_idx in order:
                params, opt_state, loss = step(params, opt_state, dx, dy, jnp.asarray(batch_idx),
                                               per["poisoned"], per["mask"], per["pattern"],
                                               per["target"])
                step_losses.append(loss)
            losses[idx[:keep], e] = np.asarray(jnp.stack(step_losses).mean(axis=0))[:keep]
        weights[idx[:keep]] = flatten(params)[:keep]
        acc, rate = _evaluate_group(run_eval, params, images, arrays, idx, s)
        clean_acc[idx[:keep]], asr[idx[:keep]] = acc[:keep], rate[:keep]
        done = int(idx[keep - 1]) + 1
        print(f"[cnn] {done}/{m} models, {time.perf_counter() - t0:.1f}s", file=sys.stderr,
              flush=True)
    return {"weights": weights, "clean_acc": clean_acc, "asr": asr, "train_loss": losses,
            "layout": lay}


# ---------------------------------------------------------------------------
# evaluation

@functools.lru_cache(maxsize=8)
def _make_eval(model: CNN):
    def one(params, x, y, valid, mask, pattern, target):
        correct = (jnp.argmax(model.apply({"params": params}, x), -1) == y) & valid
        xt = apply_trigger(x, mask, pattern)
        eligible = valid & (y != target)
        hit = (jnp.argmax(model.apply({"params": params}, xt), -1) == target) & eligible
        return correct.sum(), hit.sum(), eligible.sum()

    vone = jax.vmap(one, in_axes=(0, None, None, None, 0, 0, 0))

    @jax.jit
    def run(params, x_u8, y, valid, mask, pattern, target):
        return vone(params, x_u8.astype(jnp.float32) / 255.0, y, valid, mask, pattern, target)

    return run


def _evaluate_group(run, params, images, arrays: Mapping, idx: np.ndarray,
                    s: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(clean_acc, asr) of one group of models (params with a leading axis of len(idx))."""
    test_x = np.asarray(images.test_x)
    test_y = np.asarray(images.test_y, np.int32)
    n, shape = len(test_x), test_x.shape[1:]
    eb = min(int(s["eval_batch_size"]), max(n, 1))
    if n == 0:
        raise ValueError("empty test set")
    pad = -n % eb
    xs = np.concatenate([test_x, np.zeros((pad, *shape), np.uint8)])
    ys = np.concatenate([test_y, np.zeros(pad, np.int32)])
    valid = np.arange(n + pad) < n
    per = [jnp.asarray(arrays[k][idx]) for k in ("mask", "pattern", "target")]
    totals = np.zeros((3, len(idx)), np.int64)
    for start in range(0, n + pad, eb):
        sl = slice(start, start + eb)
        out = run(params, jnp.asarray(xs[sl]), jnp.asarray(ys[sl]), jnp.asarray(valid[sl]), *per)
        totals += np.stack([np.asarray(o) for o in out])
    clean_acc = totals[0] / n
    with np.errstate(invalid="ignore", divide="ignore"):
        asr = totals[1] / totals[2]
    asr[~np.any(arrays["mask"][idx].reshape(len(idx), -1) > 0, axis=1)] = np.nan
    return clean_acc, asr


def evaluate(weights: Any, images: Any, specs: Sequence[Mapping],
             cfg: Mapping | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(clean_acc [M], asr [M]) of M models on the test set.

    `weights`: flat float32 [M, P] (layout from `cfg` and the image shape) or
    a params pytree with a leading model axis. ``clean_acc`` is the accuracy
    on the untouched test set. ``asr`` (attack success rate) is the fraction
    of test images whose label is not the spec's ``target`` that the model
    classifies as ``target`` once the spec's trigger (``mask``, ``pattern``)
    is applied (NaN if no test image qualifies). It is NaN where the mask is
    all zeros (a clean model without a trigger); to measure a clean model's
    baseline rate for some trigger, give its spec that trigger and an empty
    ``poison_idx`` (training only triggers ``poison_idx``). Models are
    evaluated in groups of ``cfg["vmap_group"]`` (last group padded).
    """
    s = settings(cfg)
    shape = np.asarray(images.test_x).shape[1:]
    m = len(specs)
    if isinstance(weights, Mapping):
        params = weights
    else:
        params = unflatten(jnp.asarray(weights, jnp.float32), layout_for(shape, s))
    if jax.tree_util.tree_leaves(params)[0].shape[0] != m:
        raise ValueError("weights and specs disagree on the number of models")
    arrays = _spec_arrays([{**sp, "poison_idx": []} for sp in specs], shape, 1)
    run = _make_eval(model_for(jax.tree_util.tree_map(lambda a: a[0], params)))
    clean_acc, asr = np.zeros(m), np.zeros(m)
    for idx, keep in _groups(m, int(s["vmap_group"])):
        group = jax.tree_util.tree_map(lambda a: a[idx], params)
        acc, rate = _evaluate_group(run, group, images, arrays, idx, s)
        clean_acc[idx[:keep]], asr[idx[:keep]] = acc[:keep], rate[:keep]
    return clean_acc, asr
