"""The hyperparameter zoo (seed 000 §3.2, App. A.1.1, after Eilertsen et al. 2020): CNNs of the
backdoor zoo's family with variable width and depth, each trained with hyperparameters drawn
at random.

Per model, :func:`draw` picks uniformly from ``hparam_zoo.choices``:

``dataset``         a real image set (:mod:`metamodels.hparams.data`)
``batch_size``      images per step (seed 000: 32, 64, 128, 256)
``augmentation``    ``none``; ``flip_crop`` (horizontal flip with probability 1/2, then a
                    random crop of the image zero-padded by ``crop_pad`` pixels);
                    ``noise`` (additive Gaussian of std ``noise_std``, clipped to [0, 1])
``optimizer``       ``sgd`` (SGD with momentum ``momentum``: seed 000's MomentumSGD),
                    ``adam``, ``adamw`` (decoupled ``weight_decay``), ``rmsprop``; the rate of
                    each is ``learning_rate[optimizer]``
``activation``      ``relu``, ``elu``, ``gelu``, ``tanh``, ``sigmoid``, after every LayerNorm
``initialization``  of every conv and dense kernel (biases 0, LayerNorm scale 1 / bias 0):
                    ``constant`` (every entry ``init_constant``), ``random_normal`` (std
                    ``init_normal_std``), ``glorot_uniform`` / ``glorot_normal`` (variance
                    2 / (fan_in + fan_out)), ``he_normal`` (2 / fan_in), ``lecun_normal``
                    (1 / fan_in); fans as Keras counts them (receptive field x channels)
``width``, ``depth`` the architecture: ``depth`` blocks of widths ``width * 2**b``
                    (:class:`metamodels.backdoor.cnn.CNN`'s blocks, layers named the same,
                    so its :func:`~metamodels.backdoor.cnn.layout`,
                    :func:`~metamodels.backdoor.cnn.flatten` and neuron
                    :func:`~metamodels.backdoor.cnn.permute` apply unchanged)

Randomness: model ``j`` of shard ``s`` has the seed ``default_rng([zoo.seed, s, j])``; its
draws come from ``default_rng([seed, 0])``, its initial weights from ``[seed, 1]`` (NumPy,
float64 then float32), step ``t`` of epoch ``e``'s augmentation from ``[seed, 2, e, t]`` and
epoch ``e``'s order from :func:`metamodels.backdoor.cnn.epoch_order` under the order seed
``default_rng([seed, 3]).integers(2**31 - 1)`` (a seed of its own: NumPy gives ``[a, b]``
and ``[a, b, 0]`` one stream, so ``epoch_order(seed, 0)`` would replay the draws). Same
params -> the same weights, bit for bit.

Training path: one model at a time, a jitted JAX step (on a GPU when JAX finds one). The
activation is a traced index (:func:`jax.lax.switch`), so a step compiles once per
(architecture, optimizer, batch size): on the CPU compiling (1.5-4.5 s) costs more than
training a small model for two epochs, so :func:`train_one` also keeps JAX's persistent
compilation cache (:mod:`metamodels.core.jaxcache`; on for every verb, and
:func:`train_models` turns it on where JAX was loaded before): the zoo's shards share compiled
steps across processes.
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

from metamodels.backdoor import cnn
from metamodels.hparams import HPARAMS  # the targets, seed 000 App. A.1.1 (re-exported)

ARCHITECTURE = ("width", "depth")
ACTIVATIONS = ("relu", "elu", "gelu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
AUGMENTATIONS = ("none", "flip_crop", "noise")
INITIALIZATIONS = ("constant", "random_normal", "glorot_uniform", "glorot_normal", "he_normal",
                   "lecun_normal")

_ACTIVATION_FNS = {"relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "tanh": jnp.tanh,
                   "sigmoid": nn.sigmoid}


def channels_of(width: int, depth: int) -> tuple[int, ...]:
    """Block widths of a model: ``width * 2**b`` for b = 0 .. depth-1."""
    return tuple(int(width) * 2 ** b for b in range(int(depth)))


def draw(zoo: Mapping, seed: int) -> dict[str, Any]:
    """One model's hyperparameters: a uniform draw from each ``zoo["choices"]`` list (in
    :data:`HPARAMS` + :data:`ARCHITECTURE` order), from ``default_rng([seed, 0])``."""
    rng = np.random.default_rng([int(seed), 0])
    out = {}
    for name in HPARAMS + ARCHITECTURE:
        options = list(zoo["choices"][name])
        v = options[int(rng.integers(len(options)))]
        out[name] = int(v) if name in ("batch_size", "width", "depth") else str(v)
    return out


def shard_plan(zoo: Mapping, shard: int) -> list[dict[str, Any]]:
    """Every model of one shard: ``seed``, ``model_index`` and its :func:`draw`."""
    n = int(zoo["models_per_shard"])
    plan = []
    for j in range(n):
        seed = int(np.random.default_rng([int(zoo["seed"]), shard, j]).integers(2**31 - 1))
        plan.append({"seed": seed, "model_index": shard * n + j, **draw(zoo, seed)})
    return plan


# ---------------------------------------------------------------------------------------------
# model


class HparamCNN(nn.Module):
    """:class:`metamodels.backdoor.cnn.CNN` with the activation as an input:
    ``__call__(x [B, H, W, C] float, activation: int index into ACTIVATIONS) -> [B, classes]``.

    The index is traced (``lax.switch``), so one compiled step serves every activation.
    """

    channels: Sequence[int] = (16, 32, 64)
    classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, activation) -> jnp.ndarray:
        fns = [_ACTIVATION_FNS[a] for a in ACTIVATIONS]
        act = lambda h: jax.lax.switch(activation, fns, h)  # noqa: E731
        k = 0
        for c in self.channels:
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{k}")(x)
            x = act(nn.LayerNorm(name=f"norm_{k}")(x))
            k += 1
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{k}")(x)
            x = cnn.max_pool_2x2(x)
            x = act(nn.LayerNorm(name=f"norm_{k}")(x))
            k += 1
        x = jnp.max(x, axis=(-3, -2))
        return nn.Dense(self.classes, name="dense")(x)


def init_params(scheme: str, seed: int, shape: Sequence[int], channels: Sequence[int],
                classes: int, zoo: Mapping) -> cnn.Params:
    """Initial weights (NumPy, from ``default_rng([seed, 1])``) for images of ``shape``
    (H, W, C): every kernel from ``scheme`` (module docstring), biases 0, LayerNorm 1 / 0.
    Raises ValueError for an unknown scheme."""
    if scheme not in INITIALIZATIONS:
        raise ValueError(f"hparam_zoo.choices.initialization: unknown {scheme!r}; "
                         f"known: {list(INITIALIZATIONS)}")
    rng = np.random.default_rng([int(seed), 1])
    lay = cnn.layout_for(tuple(shape), {"channels": list(channels), "classes": classes})
    out: cnn.Params = {}
    for name, sh in lay:
        layer, p = name.split("/")
        if p == "kernel":
            receptive = int(np.prod(sh[:-2])) if len(sh) > 2 else 1
            fan_in, fan_out = receptive * sh[-2], receptive * sh[-1]
            if scheme == "constant":
                v = np.full(sh, float(zoo["init_constant"]))
            elif scheme == "random_normal":
                v = rng.normal(0.0, float(zoo["init_normal_std"]), sh)
            elif scheme == "glorot_uniform":
                lim = np.sqrt(6.0 / (fan_in + fan_out))
                v = rng.uniform(-lim, lim, sh)
            else:
                var = {"glorot_normal": 2.0 / (fan_in + fan_out), "he_normal": 2.0 / fan_in,
                       "lecun_normal": 1.0 / fan_in}[scheme]
                v = rng.normal(0.0, np.sqrt(var), sh)
        elif p == "scale":
            v = np.ones(sh)
        else:
            v = np.zeros(sh)
        out.setdefault(layer, {})[p] = jnp.asarray(v, jnp.float32)
    return out


def make_optimizer(name: str, zoo: Mapping) -> optax.GradientTransformation:
    """The optax optimizer of ``name`` at ``zoo["learning_rate"][name]`` (constant rate)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"hparam_zoo.choices.optimizer: unknown {name!r}; "
                         f"known: {list(OPTIMIZERS)}")
    lr = float(zoo["learning_rate"][name])
    if name == "sgd":
        return optax.sgd(lr, momentum=float(zoo["momentum"]))
    if name == "adam":
        return optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=float(zoo["weight_decay"]))
    return optax.rmsprop(lr)


# ---------------------------------------------------------------------------------------------
# augmentation (host side, NumPy)


def augment(x: np.ndarray, mode: str, rng: np.random.Generator, zoo: Mapping) -> np.ndarray:
    """One batch ``x`` float32 [B, H, W, C] in [0, 1] augmented by ``mode`` (module docstring).
    Raises ValueError for an unknown mode."""
    if mode == "none":
        return x
    if mode == "noise":
        noisy = x + rng.normal(0.0, float(zoo["noise_std"]), x.shape).astype(np.float32)
        return np.clip(noisy, 0.0, 1.0)
    if mode != "flip_crop":
        raise ValueError(f"hparam_zoo.choices.augmentation: unknown {mode!r}; "
                         f"known: {list(AUGMENTATIONS)}")
    b, h, w, _ = x.shape
    flip = rng.random(b) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    pad = int(zoo["crop_pad"])
    if pad == 0:
        return x
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, (2, b))
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ---------------------------------------------------------------------------------------------
# training


def _optimizer_key(name: str, zoo: Mapping) -> tuple:
    """What of ``zoo`` the compiled step of optimizer ``name`` depends on (its cache key)."""
    extra = {"sgd": ("momentum",), "adamw": ("weight_decay",)}.get(name, ())
    return (name, float(zoo["learning_rate"][name])) + tuple(float(zoo[k]) for k in extra)


@functools.lru_cache(maxsize=64)
def _step_fn(channels: tuple[int, ...], classes: int, opt_key: tuple):
    """(optimizer, jitted step) for one architecture and optimizer; cached in the process."""
    name, lr, *extra = opt_key
    zoo = {"learning_rate": {name: lr}, "momentum": extra[0] if name == "sgd" else 0.0,
           "weight_decay": extra[0] if name == "adamw" else 0.0}
    tx = make_optimizer(name, zoo)
    model = HparamCNN(channels=channels, classes=classes)

    def loss_fn(params, x, y, act):
        logits = model.apply({"params": params}, x, act)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y, act):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, act)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, jax.jit(step)


@functools.lru_cache(maxsize=64)
def _correct_fn(channels: tuple[int, ...], classes: int):
    model = HparamCNN(channels=channels, classes=classes)

    @jax.jit
    def correct(params, x_u8, y, valid, act):
        pred = jnp.argmax(model.apply({"params": params}, x_u8.astype(jnp.float32) / 255.0, act),
                          -1)
        return ((pred == y) & valid).sum()

    return correct


def test_accuracy(params: cnn.Params, hp: Mapping, images: Any, batch_size: int = 500) -> float:
    """Accuracy of one model (``hp``'s architecture and activation) on ``images.test_x``."""
    channels = channels_of(hp["width"], hp["depth"])
    x, y = np.asarray(images.test_x), np.asarray(images.test_y, np.int32)
    n = len(x)
    bs = min(batch_size, n)
    pad = -n % bs
    xs = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.uint8)])
    ys = np.concatenate([y, np.zeros(pad, np.int32)])
    valid = np.arange(n + pad) < n
    f = _correct_fn(channels, int(images.num_classes))
    act = np.int32(ACTIVATIONS.index(hp["activation"]))
    total = sum(int(f(params, xs[i:i + bs], ys[i:i + bs], valid[i:i + bs], act))
                for i in range(0, n + pad, bs))
    return total / n


def train_one(hp: Mapping, seed: int, images: Any, zoo: Mapping) -> dict:
    """Train one model with hyperparameters ``hp`` (a :func:`draw` result) on ``images``
    (uint8 ``train_x`` [N, H, W, C], ``train_y``, ``test_x``, ``test_y``) for
    ``zoo["epochs"]`` epochs.

    Returns ``params`` (Flax tree), ``weights`` float32 [P] (canonical layout), ``layout``,
    ``test_acc`` (float), ``train_loss`` float32 [epochs] (mean per epoch; NaN if it
    diverged) and ``train_s`` (seconds, compilation included).
    """
    t0 = time.perf_counter()
    x, y = np.asarray(images.train_x), np.asarray(images.train_y, np.int32)
    shape, classes = tuple(x.shape[1:]), int(images.num_classes)
    channels = channels_of(hp["width"], hp["depth"])
    params = init_params(hp["initialization"], seed, shape, channels, classes, zoo)
    tx, step = _step_fn(channels, classes, _optimizer_key(hp["optimizer"], zoo))
    opt_state = tx.init(params)
    act = np.int32(ACTIVATIONS.index(hp["activation"]))
    bs, epochs = int(hp["batch_size"]), int(zoo["epochs"])
    order_seed = int(np.random.default_rng([int(seed), 3]).integers(2**31 - 1))
    losses = np.zeros(epochs, np.float32)
    for e in range(epochs):
        step_losses = []
        for t, idx in enumerate(cnn.epoch_order(order_seed, e, len(x), bs)):
            xb = x[idx].astype(np.float32) / np.float32(255.0)
            xb = augment(xb, hp["augmentation"], np.random.default_rng([seed, 2, e, t]), zoo)
            params, opt_state, loss = step(params, opt_state, xb, y[idx], act)
            step_losses.append(loss)
        losses[e] = float(np.mean(jax.device_get(step_losses)))
    params = jax.device_get(params)
    return {"params": params, "weights": cnn.flatten(params), "layout": cnn.layout(params),
            "test_acc": test_accuracy(params, hp, images), "train_loss": losses,
            "train_s": time.perf_counter() - t0}


def max_params(zoo: Mapping, shape: Sequence[int], classes: int = 10) -> int:
    """Weights of the largest architecture the choices allow (the zoo's padded width)."""
    return max(cnn.num_params(cnn.layout_for(tuple(shape), {"channels": list(channels_of(w, d)),
                                                            "classes": classes}))
               for w in zoo["choices"]["width"] for d in zoo["choices"]["depth"])


def train_models(plan: Sequence[Mapping], datasets: Mapping[str, Any], zoo: Mapping) -> dict:
    """Train every model of a :func:`shard_plan` on ``datasets[name]`` (loaded images).

    Returns ``weights`` float32 [M, P_max] (each row zero-padded after its own
    ``n_weights``), ``n_weights`` int64 [M], ``layout`` (list of M layouts),
    ``test_acc`` float64 [M], ``train_loss`` float32 [M, epochs], ``train_s`` float64 [M].
    """
    from metamodels.core import jaxcache
    jaxcache.enable()
    any_data = next(iter(datasets.values()))
    width = max_params(zoo, any_data.shape, int(any_data.num_classes))
    m, epochs = len(plan), int(zoo["epochs"])
    out = {"weights": np.zeros((m, width), np.float32), "n_weights": np.zeros(m, np.int64),
           "layout": [], "test_acc": np.zeros(m), "train_loss": np.zeros((m, epochs), np.float32),
           "train_s": np.zeros(m)}
    t0 = time.perf_counter()
    for i, spec in enumerate(plan):
        res = train_one(spec, spec["seed"], datasets[spec["dataset"]], zoo)
        w = res["weights"]
        out["weights"][i, :len(w)] = w
        out["n_weights"][i] = len(w)
        out["layout"].append(res["layout"])
        out["test_acc"][i] = res["test_acc"]
        out["train_loss"][i] = res["train_loss"]
        out["train_s"][i] = res["train_s"]
        print(f"[hparam-zoo] {i + 1}/{m} models, {time.perf_counter() - t0:.1f}s "
              f"(last: {spec['dataset']} bs {spec['batch_size']} {spec['optimizer']} "
              f"{spec['activation']} {spec['initialization']} {spec['augmentation']} "
              f"{channels_of(spec['width'], spec['depth'])}: acc {res['test_acc']:.3f}, "
              f"{res['train_s']:.1f}s)", file=sys.stderr, flush=True)
    return out
