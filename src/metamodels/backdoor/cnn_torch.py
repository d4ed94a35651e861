"""The CNN zoo's training loop on the CPU, in PyTorch: same models, same recipe as :mod:`.cnn`.

Why a second implementation: XLA:CPU runs these small convolutions (and their gradients)
several times below the machine's matmul rate, and vmapping models makes it slower still
(``benchmarks/cnn_zoo_throughput.py`` measures both against this path). PyTorch's CPU
convolutions (oneDNN) run close to the machine's matmul rate, but PyTorch's eager overhead per
op is larger, so which path wins depends on the image size (28x28: PyTorch 1.2x; 14x14: JAX
1.15x). :func:`metamodels.backdoor.cnn.train_models` calls :func:`train_models` on the CPU when
``cnn_zoo.cnn.cpu_path`` is ``torch`` and keeps the vmapped JAX step on a GPU/TPU; both return
the same record, and the zoo's file format does not depend on the path.

What is the same as the JAX path, so a model means one thing whatever trains it:
  * initial weights: :func:`metamodels.backdoor.cnn.init_params` (JAX) with the model's init seed,
    converted to PyTorch's layouts (conv kernels HWIO -> OIHW);
  * data order (:func:`metamodels.backdoor.cnn.epoch_order`), poisoned indices, trigger
    (``x * (1 - mask) + mask * pattern`` on pixels / 255) and relabelling;
  * the network (seed 000 App. A, see :mod:`.cnn`): 3x3 SAME convolutions, LayerNorm over the
    channels with Flax's epsilon 1e-6, ReLU, 2x2 max-pool, global max over H and W, Dense;
  * AdamW (PyTorch's fused CPU kernel) with optax's defaults (b1 0.9, b2 0.999, eps 1e-8,
    decoupled weight decay on every parameter) and softmax cross-entropy averaged over the batch.
It differs only in floating-point rounding (another summation order), which training amplifies
like the JAX path's own ``vmap_group`` does; ``tests/backdoor/test_cnn_torch.py`` bounds the
difference after a few steps. The path is deterministic: PyTorch runs with the job's thread
count (params ``threads.cnn_zoo``) and deterministic algorithms, so the same params give the
same bytes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

LN_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon


def _torch():
    import torch
    return torch


def to_torch_params(params: Mapping) -> dict[str, Any]:
    """Flax parameters of one :class:`metamodels.backdoor.cnn.CNN` -> torch tensors by name.

    ``conv_k.weight`` [Cout, Cin, 3, 3] (OIHW), ``conv_k.bias``, ``norm_k.weight`` /
    ``norm_k.bias`` [C], ``dense.weight`` [classes, C] (torch's [out, in]) and ``dense.bias``.
    """
    torch = _torch()
    out = {}
    for layer, p in params.items():
        for name, value in p.items():
            a = np.asarray(value, np.float32)
            if layer.startswith("conv") and name == "kernel":
                a, key = a.transpose(3, 2, 0, 1), "weight"
            elif layer == "dense" and name == "kernel":
                a, key = a.T, "weight"
            elif name == "scale":
                key = "weight"
            else:
                key = name
            out[f"{layer}.{key}"] = torch.tensor(np.ascontiguousarray(a), requires_grad=True)
    return out


def from_torch_params(tensors: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`to_torch_params`: Flax-layout numpy arrays."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for full, t in tensors.items():
        layer, key = full.split(".")
        a = t.detach().numpy()
        if layer.startswith("conv") and key == "weight":
            a, name = a.transpose(2, 3, 1, 0), "kernel"
        elif layer == "dense" and key == "weight":
            a, name = a.T, "kernel"
        elif key == "weight":
            name = "scale"
        else:
            name = key
        out.setdefault(layer, {})[name] = np.ascontiguousarray(a, np.float32)
    return out


def _n_convs(tensors: Mapping[str, Any]) -> int:
    return sum(1 for k in tensors if k.startswith("conv_") and k.endswith(".weight"))


def _layer_norm(x, weight, bias):
    """LayerNorm over the channel axis of NCHW `x` (Flax's: per pixel, over C).

    PyTorch's fused ``layer_norm`` on an NHWC view: twice as fast over a whole training step as
    a ``var_mean`` over the strided channel axis (measured: 30 vs 61 ms per step of 32 28x28
    images).
    """
    F = _torch().nn.functional
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, LN_EPS)
    return y.permute(0, 3, 1, 2)


def forward(tensors: Mapping[str, Any], x):
    """Logits [B, classes] of one model on float NCHW images `x` [B, C, H, W]."""
    torch = _torch()
    F = torch.nn.functional
    for k in range(0, _n_convs(tensors), 2):
        x = F.conv2d(x, tensors[f"conv_{k}.weight"], tensors[f"conv_{k}.bias"], padding=1)
        x = F.relu(_layer_norm(x, tensors[f"norm_{k}.weight"], tensors[f"norm_{k}.bias"]))
        j = k + 1
        x = F.conv2d(x, tensors[f"conv_{j}.weight"], tensors[f"conv_{j}.bias"], padding=1)
        x = F.max_pool2d(x, 2)
        x = F.relu(_layer_norm(x, tensors[f"norm_{j}.weight"], tensors[f"norm_{j}.bias"]))
    x = x.amax(dim=(2, 3))
    return F.linear(x, tensors["dense.weight"], tensors["dense.bias"])


def _batch(torch, train_x, train_y, idx, poisoned, mask, pattern, target):
    """One model's batch as in :func:`metamodels.backdoor.cnn.make_batch` (NCHW float32)."""
    x = train_x[idx].astype(np.float32) / np.float32(255.0)
    y = train_y[idx].astype(np.int64)
    p = poisoned[idx]
    if p.any():
        x[p] = x[p] * (np.float32(1.0) - mask) + mask * pattern
        y[p] = target
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)


def train_one(images: Any, spec: Mapping, cfg: Mapping, init: Mapping,
              steps: int | None = None) -> tuple[dict, np.ndarray]:
    """Train one model from Flax params `init`; (final Flax params, mean loss per epoch [E]).

    `spec` and `cfg` as in :func:`metamodels.backdoor.cnn.train_models`. `steps` (tests)
    stops after that many updates of the first epoch.
    """
    from metamodels.backdoor import cnn
    torch = _torch()
    train_x = np.asarray(images.train_x)
    train_y = np.asarray(images.train_y)
    n, shape = len(train_x), train_x.shape[1:]
    arrays = cnn._spec_arrays([spec], shape, n)
    poisoned, target = arrays["poisoned"][0], int(arrays["target"][0])
    mask, pattern = arrays["mask"][0], arrays["pattern"][0]
    seed = int(arrays["seed"][0])
    tensors = to_torch_params(init)
    opt = torch.optim.AdamW(list(tensors.values()), lr=float(cfg["lr"]), betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=float(cfg["wd"]), fused=True)
    epochs, bs = int(cfg["epochs"]), int(cfg["batch_size"])
    losses = np.zeros(epochs, np.float32)
    done = 0
    for e in range(epochs):
        total, count = 0.0, 0
        for idx in cnn.epoch_order(seed, e, n, bs):
            if steps is not None and done >= steps:
                break
            x, y = _batch(torch, train_x, train_y, idx, poisoned, mask, pattern, target)
            loss = torch.nn.functional.cross_entropy(forward(tensors, x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            count += 1
            done += 1
        losses[e] = total / max(count, 1)
    return from_torch_params(tensors), losses


def evaluate_one(tensors: Mapping[str, Any], images: Any, mask: np.ndarray, pattern: np.ndarray,
                 target: int, batch_size: int) -> tuple[float, float]:
    """(clean accuracy, attack success rate) of one model, as in :func:`.cnn.evaluate`."""
    torch = _torch()
    test_x = np.asarray(images.test_x)
    test_y = np.asarray(images.test_y)
    n = len(test_x)
    if n == 0:
        raise ValueError("empty test set")
    correct = hits = eligible = 0
    m = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))
    pt = torch.from_numpy(np.ascontiguousarray(pattern.transpose(2, 0, 1)))
    with torch.no_grad():
        for start in range(0, n, batch_size):
            xb = test_x[start:start + batch_size].astype(np.float32) / np.float32(255.0)
            x = torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2)))
            y = torch.from_numpy(test_y[start:start + batch_size].astype(np.int64))
            correct += int((forward(tensors, x).argmax(-1) == y).sum())
            keep = y != target
            hit = forward(tensors, x * (1.0 - m) + m * pt).argmax(-1) == target
            hits += int((hit & keep).sum())
            eligible += int(keep.sum())
    asr = hits / eligible if eligible else float("nan")
    if not np.any(mask > 0):
        asr = float("nan")
    return correct / n, asr


def train_models(images: Any, specs: Sequence[Mapping], cfg: Mapping | None = None) -> dict:
    """:func:`metamodels.backdoor.cnn.train_models` on the CPU with PyTorch, one model at a time.

    Same arguments and record (``weights`` [M, P], ``clean_acc``, ``asr``, ``train_loss``
    [M, epochs], ``layout``). PyTorch keeps its own intra-op thread count, which follows
    ``OMP_NUM_THREADS`` (set from params ``threads`` by :func:`metamodels.core.threads.limit`
    for every verb).
    """
    import jax

    from metamodels.backdoor import cnn
    torch = _torch()
    torch.use_deterministic_algorithms(True)
    s = cnn.settings(cfg)
    train_x = np.asarray(images.train_x)
    if train_x.dtype != np.uint8 or train_x.ndim != 4:
        raise ValueError(f"train_x must be uint8 [N,H,W,C], got {train_x.dtype} {train_x.shape}")
    shape = tuple(train_x.shape[1:])
    if not specs:
        raise ValueError("no model specs")
    model = cnn.make_model(s)
    lay = cnn.layout_for(shape, s)
    init = cnn._init_fn(shape, model.channels, model.classes)
    m = len(specs)
    weights = np.zeros((m, cnn.num_params(lay)), np.float32)
    losses = np.zeros((m, int(s["epochs"])), np.float32)
    clean_acc, asr = np.zeros(m), np.zeros(m)
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        trig = cnn._spec_arrays([{**spec, "poison_idx": []}], shape, 1)
        start = jax.tree_util.tree_map(np.asarray,
                                       init(jax.random.PRNGKey(int(trig["init_seed"][0]))))
        params, losses[i] = train_one(images, spec, s, start)
        weights[i] = cnn.flatten(params)
        clean_acc[i], asr[i] = evaluate_one(to_torch_params(params), images, trig["mask"][0],
                                            trig["pattern"][0], int(trig["target"][0]),
                                            int(s["eval_batch_size"]))
        print(f"[cnn] {i + 1}/{m} models, {time.perf_counter() - t0:.1f}s", file=sys.stderr,
              flush=True)
    return {"weights": weights, "clean_acc": clean_acc, "asr": asr, "train_loss": losses,
            "layout": lay}
