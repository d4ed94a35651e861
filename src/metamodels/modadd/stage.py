"""Backdoored modular addition (issue 6, paper 002): data, model, training, analyses.

Task (App. A). Inputs are ``(a, b, t)`` with ``a, b`` in ``[0, p0)`` and a trigger ``t`` in
``{0, 1}``; the label is ``(a + b) mod p0`` when ``t = 0`` (the safe rule) and
``(a + b) mod p1`` when ``t = 1`` (the backdoor). The vocabulary is the ``p0`` numbers: the
trigger tokens 0 and 1 are ordinary number tokens, there are no special tokens.

Model (App. B). One layer: learned token and position embeddings (context 3), causal
multi-head attention (``n_heads`` heads of width ``d_head``), a ReLU MLP, residual connections
around both, no LayerNorm, and an unembedding read at the last position. Parameters are a flat
dict of arrays (per-head weights carry a leading head axis, as in TransformerLens), so they
save directly with :func:`metamodels.core.shards.save_npz`:

    W_E [p0, d]   W_pos [3, d]   W_Q, W_K, W_V [H, d, dh]   W_O [H, dh, d]
    W_in [d, m]   W_out [m, d]   W_U [d, p0]
    with ``biases``: b_Q, b_V [H, dh]  b_O [d]  b_in [m]  b_out [d]  b_U [p0]

Biases (the paper is silent; its implementation, TransformerLens' HookedTransformer, has them
on attention, MLP and unembedding) are on by default, initialised at zero and trained, except
the key bias: it adds the same amount to every score of a query row, so the softmax ignores it
and its true gradient is zero; under Adam its float-rounding gradient would only make it drift
without effect, so it is left out. Weights are initialised in the style of Nanda et al.'s
grokking model: normal with std ``1/sqrt(d_model)``, except ``W_U`` with std ``1/sqrt(p0)``.

Training (App. C). Full-batch AdamW on the training split, ``lax.scan`` over chunks of epochs,
several seeds at once under ``jax.vmap`` (or one after the other, see :func:`train_runs`).
Row ``e`` of the history describes the parameters after ``e`` updates. A run stops at the
first epoch ``s`` at which both test accuracies have been ``>= stop_accuracy`` for
``patience`` consecutive rows (or at ``max_epochs``); from then on it is frozen (no more
updates), so the returned parameters are those of its own stop epoch, and its later history
rows are NaN. Progress goes to stderr at the first chunk end past each ``log_every`` epochs.

Analyses (Sec. 2). :func:`head_attribution` maps each head's contribution at ``res_mid`` (last
position) through ``W_U`` and reads the logit of the correct label; :func:`patch_heads`
replaces chosen heads' contributions on ``(a, b, 1)`` by those computed on ``(a, b, 0)`` and
reports the backdoor accuracy; :func:`patching_table` gives the rows of the paper's Tables 1-2.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

N_CTX = 3
HISTORY_COLUMNS = ("train_loss", "test_loss", "clean_accuracy", "backdoor_accuracy")

DEFAULTS: dict = {
    "p0": 113, "train_fraction": 0.3,
    "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512, "biases": True,
    "learning_rate": 1e-3, "weight_decay": 1.0, "b1": 0.9, "b2": 0.98,
    "max_epochs": 20000, "stop_accuracy": 0.99, "patience": 50,
    "chunk": 100, "log_every": 1000, "vmap": "auto",
}


def with_defaults(cfg: Mapping) -> dict:
    """`cfg` completed with :data:`DEFAULTS` for missing keys (other keys pass through)."""
    return {**DEFAULTS, **cfg}


# ----------------------------------------------------------------------------- data


def all_pairs(p0: int, trigger: int) -> np.ndarray:
    """Tokens ``(a, b, trigger)`` for every ``a, b`` in ``[0, p0)``, a-major: int32 [p0*p0, 3]."""
    a, b = np.divmod(np.arange(p0 * p0), p0)
    return np.stack([a, b, np.full_like(a, trigger)], axis=1).astype(np.int32)


def labels_for(tokens: np.ndarray, p0: int, p1: int) -> np.ndarray:
    """``(a + b) mod p0`` where the trigger is 0, ``(a + b) mod p1`` where it is 1 (int32)."""
    tokens = np.asarray(tokens)
    s = tokens[:, 0] + tokens[:, 1]
    return np.where(tokens[:, 2] == 1, s % p1, s % p0).astype(np.int32)


def make_data(p0: int, p1: int, train_fraction: float, seed: int,
              clean: bool = False) -> dict[str, np.ndarray]:
    """The merged safe + backdoor dataset with a seeded train/test split.

    Returns ``tokens`` int32 [N, 3] (all pairs with t=0, then, unless `clean`, all pairs with
    t=1), ``labels`` int32 [N], ``trigger`` bool [N] and ``train`` bool [N], where
    ``N = p0**2`` (clean) or ``2 * p0**2``; exactly ``round(train_fraction * N)`` examples,
    chosen by ``numpy.random.default_rng(seed).permutation``, are training examples.
    """
    if not 1 <= p1 <= p0 or p0 < 2:
        raise ValueError(f"need 1 <= p1 <= p0 and p0 >= 2, got p0={p0}, p1={p1}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    blocks = [all_pairs(p0, 0)] if clean else [all_pairs(p0, 0), all_pairs(p0, 1)]
    tokens = np.concatenate(blocks)
    n = len(tokens)
    train = np.zeros(n, dtype=bool)
    train[np.random.default_rng(seed).permutation(n)[:int(round(train_fraction * n))]] = True
    return {"tokens": tokens, "labels": labels_for(tokens, p0, p1),
            "trigger": tokens[:, 2] == 1, "train": train}


# ----------------------------------------------------------------------------- model


class Trace(NamedTuple):
    """Activations of one forward pass (N examples, H heads, 3 positions, width d)."""

    res_pre: jax.Array   # [N, 3, d] token + position embeddings
    pattern: jax.Array   # [N, H, 3, 3] attention pattern (query, key)
    heads: jax.Array     # [N, H, 3, d] per-head contribution A^h V^h W_O^h (no b_O)
    res_mid: jax.Array   # [N, 3, d] res_pre + sum_h heads (+ b_O)
    res_post: jax.Array  # [N, 3, d] res_mid + MLP(res_mid)
    logits: jax.Array    # [N, p0] unembedding at the last position


_MODEL_KEYS = ("p0", "d_model", "n_heads", "d_head", "d_mlp", "biases")


def init(key: jax.Array, cfg: Mapping) -> dict[str, jax.Array]:
    """Fresh parameters (see the module docstring for shapes and the init scheme)."""
    c = with_defaults(cfg)
    return _init_fn(tuple(c[k] for k in _MODEL_KEYS))(key)


@functools.lru_cache(maxsize=16)
def _init_fn(model: tuple):
    v, d, h, dh, m, biases = model
    shapes = {"W_E": (v, d), "W_pos": (N_CTX, d), "W_Q": (h, d, dh), "W_K": (h, d, dh),
              "W_V": (h, d, dh), "W_O": (h, dh, d), "W_in": (d, m), "W_out": (m, d),
              "W_U": (d, v)}
    bias_shapes = {"b_Q": (h, dh), "b_V": (h, dh), "b_O": (d,), "b_in": (m,), "b_out": (d,),
                   "b_U": (v,)} if biases else {}
    sizes = [math.prod(shape) for shape in shapes.values()]

    @jax.jit
    def fn(key):
        flat = jax.random.normal(key, (sum(sizes),), jnp.float32)  # one draw: one RNG kernel
        params, start = {}, 0
        for (name, shape), size in zip(shapes.items(), sizes):
            std = 1.0 / math.sqrt(v if name == "W_U" else d)
            params[name] = std * flat[start:start + size].reshape(shape)
            start += size
        return params | {name: jnp.zeros(shape, jnp.float32)
                         for name, shape in bias_shapes.items()}

    return fn


def _bias(params: Mapping, name: str):
    return params[name] if name in params else 0.0


def embed(params: Mapping, tokens: jax.Array) -> jax.Array:
    """``res_pre = W_E[tokens] + W_pos``: [N, 3, d]."""
    return params["W_E"][tokens] + params["W_pos"]


def _qkv(params: Mapping, x: jax.Array, which: str) -> jax.Array:
    """Per-head projection of x [..., d] -> [..., H, dh]."""
    return jnp.einsum("...d,hde->...he", x, params[f"W_{which}"]) + _bias(params, f"b_{which}")


def attention_heads(params: Mapping, res_pre: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Causal attention: (pattern [N, H, 3, 3], per-head contributions [N, H, 3, d])."""
    q, k, v = (_qkv(params, res_pre, w) for w in "QKV")            # [N, 3, H, dh]
    scores = jnp.einsum("nqhe,nkhe->nhqk", q, k) / math.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((N_CTX, N_CTX), dtype=bool))
    pattern = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    z = jnp.einsum("nhqk,nkhe->nhqe", pattern, v)                   # [N, H, 3, dh]
    return pattern, jnp.einsum("nhqe,hed->nhqd", z, params["W_O"])


def mlp(params: Mapping, x: jax.Array) -> jax.Array:
    """``W_out ReLU(W_in x + b_in) + b_out`` on the last axis."""
    hidden = jax.nn.relu(x @ params["W_in"] + _bias(params, "b_in"))
    return hidden @ params["W_out"] + _bias(params, "b_out")


def unembed(params: Mapping, x: jax.Array) -> jax.Array:
    """Logits ``x W_U + b_U`` for residual vectors x [..., d]."""
    return x @ params["W_U"] + _bias(params, "b_U")


def after_attention(params: Mapping, res_mid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rest of the model from ``res_mid`` [N, 3, d]: (res_post, last-position logits)."""
    res_post = res_mid + mlp(params, res_mid)
    return res_post, unembed(params, res_post[:, -1])


@jax.jit
def forward(params: Mapping, tokens: jax.Array,
            patch: tuple[jax.Array, jax.Array] | None = None) -> Trace:
    """Full forward pass over tokens int [N, 3], exposing every activation (:class:`Trace`).

    `patch` = ``(head_mask [H] bool, replacement [N, H, 3, d])`` substitutes the masked heads'
    contributions by the replacement before they are summed into ``res_mid`` (activation
    patching); ``trace.heads`` then holds the patched contributions.
    """
    res_pre = embed(params, tokens)
    pattern, heads = attention_heads(params, res_pre)
    if patch is not None:
        mask, replacement = patch
        heads = jnp.where(jnp.asarray(mask)[None, :, None, None], replacement, heads)
    res_mid = res_pre + heads.sum(axis=1) + _bias(params, "b_O")
    res_post, logits = after_attention(params, res_mid)
    return Trace(res_pre, pattern, heads, res_mid, res_post, logits)


@jax.jit
def last_logits(params: Mapping, tokens: jax.Array) -> jax.Array:
    """Fast path: the same logits as :func:`forward`, computing only what they need.

    Only the last position's attention row, MLP and unembedding are evaluated, and since each
    position's ``res_pre`` is one of ``p0`` rows (``W_E + W_pos[pos]``), its query, key and
    value-times-``W_O`` are computed once per vocabulary row and gathered per example.
    """
    emb = params["W_E"][None] + params["W_pos"][:, None]            # [3, V, d]
    q_tab = _qkv(params, emb[-1], "Q")                              # [V, H, dh]
    k_tab = _qkv(params, emb, "K")                                  # [3, V, H, dh]
    vo_tab = jnp.einsum("pvhe,hed->pvhd", _qkv(params, emb, "V"), params["W_O"])
    pos = jnp.arange(N_CTX)
    q, k, vo = q_tab[tokens[:, -1]], k_tab[pos, tokens], vo_tab[pos, tokens]
    pattern = jax.nn.softmax(jnp.einsum("nhe,nkhe->nhk", q, k) / math.sqrt(q.shape[-1]), -1)
    res_mid = (emb[-1][tokens[:, -1]] + jnp.einsum("nhk,nkhd->nd", pattern, vo)
               + _bias(params, "b_O"))
    return unembed(params, res_mid + mlp(params, res_mid))


# ----------------------------------------------------------------------------- training


def optimizer(cfg: Mapping) -> optax.GradientTransformation:
    """AdamW with the paper's hyper-parameters (App. C) from `cfg`."""
    c = with_defaults(cfg)
    return optax.flatten(optax.adamw(c["learning_rate"], b1=c["b1"], b2=c["b2"],
                                     weight_decay=c["weight_decay"]))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy [N] (float32 log-softmax)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(jnp.float32)
    return jnp.where(m.sum() > 0, (x * m).sum() / jnp.maximum(m.sum(), 1.0), jnp.nan)


def _run_arrays(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One run's train/test arrays (fixed shapes for a given p0, fraction and cleanliness)."""
    tr, te = data["train"], ~data["train"]
    return {"x_train": data["tokens"][tr], "y_train": data["labels"][tr],
            "x_test": data["tokens"][te], "y_test": data["labels"][te],
            "t_test": data["trigger"][te]}


_STRUCTURAL = ("p0", "d_model", "n_heads", "d_head", "d_mlp", "biases", "learning_rate",
               "weight_decay", "b1", "b2", "chunk")


@functools.lru_cache(maxsize=16)
def _compiled(structural: tuple):
    """jit(vmap(init + optimizer init)) and jit(scan over `chunk` epochs of vmap(one epoch)),
    cached per structure.

    The stopping rule (threshold, patience, max_epochs, clean) is a runtime argument, so runs
    that differ only in it share one compilation.
    """
    c = dict(structural)
    tx = optimizer(c)

    @jax.jit
    @jax.vmap
    def start(key):
        params = init(key, c)
        return params, tx.init(params)

    def loss_fn(params, x, y):
        return cross_entropy(last_logits(params, x), y).mean()

    def epoch(state, arrays, rule):
        params, opt_state, done, streak, stop, e = state
        loss, grads = jax.value_and_grad(loss_fn)(params, arrays["x_train"], arrays["y_train"])
        logits = last_logits(params, arrays["x_test"])
        y, trig = arrays["y_test"], arrays["t_test"]
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        acc0, acc1 = _masked_mean(correct, ~trig), _masked_mean(correct, trig)
        row = jnp.stack([loss, cross_entropy(logits, y).mean(), acc0, acc1])
        ok = (acc0 >= rule["threshold"]) & ((acc1 >= rule["threshold"]) | rule["clean"])
        streak = jnp.where(ok, streak + 1, 0)
        now_done = ~done & ((streak >= rule["patience"]) | (e >= rule["max_epochs"]))
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        freeze = done | now_done
        keep = lambda old, new: jnp.where(freeze, old, new)  # noqa: E731
        row = jnp.where(done, jnp.nan, row)
        state = (jax.tree.map(keep, params, new_params), jax.tree.map(keep, opt_state, new_opt),
                 freeze, streak, jnp.where(now_done, e, stop), e + 1)
        return state, row

    batched = jax.vmap(epoch, in_axes=(0, 0, None))

    def chunk(state, arrays, rule):
        return jax.lax.scan(lambda s, _: batched(s, arrays, rule), state, None,
                            length=c["chunk"])

    return start, jax.jit(chunk, donate_argnums=(0,))


def _progress(chunk_rows: np.ndarray, state) -> str:
    """One entry per run: its last test metrics, or the epoch it stopped at."""
    done, stops = np.asarray(state[2]), np.asarray(state[4])
    out = []
    for i in range(chunk_rows.shape[1]):
        rows = chunk_rows[:, i][~np.isnan(chunk_rows[:, i, 0])]
        msg = "" if not len(rows) else "{:.3g}/{:.3f}/{:.3f}".format(*rows[-1, 1:])
        out.append(f"{msg} stop@{stops[i]}" if done[i] else msg)
    return " | ".join(out)


def _train_group(cfg: Mapping, p1: int, seeds: Sequence[int], clean: bool, tag: str):
    """Train the `seeds` together (vmapped); returns numpy (params, history, stops)."""
    c = with_defaults(cfg)
    runs = [_run_arrays(make_data(c["p0"], p1, c["train_fraction"], s, clean)) for s in seeds]
    arrays = {k: jnp.asarray(np.stack([r[k] for r in runs])) for k in runs[0]}
    start, chunk_fn = _compiled(tuple((k, c[k]) for k in _STRUCTURAL))
    r = len(seeds)
    params, opt_state = start(jnp.stack([jax.random.key(s) for s in seeds]))
    state = (params, opt_state, jnp.zeros(r, bool), jnp.zeros(r, jnp.int32),
             jnp.zeros(r, jnp.int32), jnp.zeros(r, jnp.int32))
    rule = {"threshold": jnp.float32(c["stop_accuracy"]), "patience": jnp.int32(c["patience"]),
            "max_epochs": jnp.int32(c["max_epochs"]), "clean": jnp.bool_(clean)}
    rows, epochs, logged, t0 = [], 0, 0, time.perf_counter()
    while True:
        state, chunk_rows = chunk_fn(state, arrays, rule)
        rows.append(np.asarray(chunk_rows))                         # [chunk, runs, 4]
        epochs += c["chunk"]
        done = bool(np.all(np.asarray(state[2])))
        if done or epochs // c["log_every"] > logged:
            logged = epochs // c["log_every"]
            print(f"modadd {tag} epoch {epochs} ({time.perf_counter() - t0:.0f}s) "
                  f"test loss/clean acc/backdoor acc: {_progress(rows[-1], state)}",
                  file=sys.stderr, flush=True)
        if done:
            break
    stops = np.asarray(state[4])
    history = np.concatenate(rows).transpose(1, 0, 2)[:, :int(stops.max()) + 1]
    return jax.tree.map(np.asarray, state[0]), history, stops


def train_runs(cfg: Mapping, p1: int, seeds: Sequence[int], clean: bool = False
               ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Train one model per seed on the mod-`p1` backdoor task (or the clean task).

    Seed ``s`` (``0 <= s < 2**32``) fixes both the data split (:func:`make_data`) and the init key
    (``jax.random.key(s)``). With ``cfg["vmap"]`` true the seeds train together under
    ``jax.vmap`` (stopped runs are frozen but still computed until the last one stops), with
    false one after the other; ``"auto"``: vmap unless JAX runs on the CPU, where batching does
    not pay. Results agree up to float rounding (batched vs single kernels). Returns numpy
    ``(params stacked over runs [R, ...], history [R, epochs, 4] with columns
    HISTORY_COLUMNS (NaN after a run's stop; backdoor accuracy NaN for clean runs),
    stop epochs int [R])``; ``params[...][i]`` are run i's parameters at its stop epoch.
    """
    c = with_defaults(cfg)
    seeds = [int(s) for s in seeds]
    if not all(0 <= s < 2**32 for s in seeds):  # jax.random.key would silently truncate
        raise ValueError(f"seeds must be in [0, 2**32), got {seeds}")
    tag = f"p0={c['p0']} {'clean' if clean else f'p1={p1}'}"
    vmap = c["vmap"] if c["vmap"] != "auto" else jax.default_backend() != "cpu"
    if vmap or len(seeds) == 1:
        return _train_group(c, p1, seeds, clean, tag)
    parts = [_train_group(c, p1, [s], clean, f"{tag} seed={s}") for s in seeds]
    width = max(h.shape[1] for _, h, _ in parts)
    history = np.stack([np.pad(h[0], ((0, width - h.shape[1]), (0, 0)),
                               constant_values=np.nan) for _, h, _ in parts])
    params = {k: np.concatenate([p[k] for p, _, _ in parts]) for k in parts[0][0]}
    return params, history, np.concatenate([s for _, _, s in parts])


def run_params(params: Mapping[str, np.ndarray], i: int) -> dict[str, jax.Array]:
    """Run `i`'s parameters out of a stack returned by :func:`train_runs`."""
    return {k: jnp.asarray(v[i]) for k, v in params.items()}


# ----------------------------------------------------------------------------- analyses


def _label_logit_per_head(params: Mapping, tokens: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each head's last-position contribution through W_U at the label: [N, H] (no bias)."""
    heads = forward(params, jnp.asarray(tokens)).heads[:, :, -1]         # [N, H, d]
    w = jnp.asarray(params["W_U"])[:, jnp.asarray(labels)].T             # [N, d]
    return np.asarray(jnp.einsum("nhd,nd->nh", heads, w))


def _attribution(contrib: np.ndarray) -> dict[str, np.ndarray]:
    n_heads = contrib.shape[1]
    top = np.bincount(np.argmax(contrib, axis=1), minlength=n_heads) / len(contrib)
    return {"mean": contrib.mean(axis=0), "top_frequency": top}


def head_attribution(params: Mapping, data: Mapping[str, np.ndarray], p1: int
                     ) -> dict[str, np.ndarray]:
    """Logit-lens attribution of the label to each attention head (Sec. 2.1, Fig. 2, 4).

    For every example of `data` with trigger 1 (label ``(a+b) mod p1``), resp. trigger 0
    (label ``(a+b) mod p0``): each head's contribution to ``res_mid`` at the last position,
    times ``W_U[:, label]``. Returns ``backdoor_mean``/``safe_mean`` [H] (average over examples)
    and ``backdoor_top_frequency``/``safe_top_frequency`` [H] (share of examples where the head
    has the largest contribution); the backdoor entries are absent for clean data.
    """
    p0 = params["W_E"].shape[0]
    out = {}
    for name, flag in (("backdoor", True), ("safe", False)):
        rows = np.asarray(data["trigger"]) == flag
        if not rows.any():
            continue
        tokens = np.asarray(data["tokens"])[rows]
        res = _attribution(_label_logit_per_head(params, tokens, labels_for(tokens, p0, p1)))
        out.update({f"{name}_{k}": v for k, v in res.items()})
    return out


def top_head(params: Mapping, p0: int, p1: int) -> int:
    """The head most often the largest contributor to the backdoor label on all (a, b, 1)."""
    tokens = all_pairs(p0, 1)
    res = _attribution(_label_logit_per_head(params, tokens, labels_for(tokens, p0, p1)))
    return int(np.lexsort((res["mean"], res["top_frequency"]))[-1])   # ties: larger mean


def patch_heads(params: Mapping, p0: int, p1: int, heads: Sequence[int]) -> float:
    """Backdoor accuracy on all (a, b, 1) after patching `heads` with their (a, b, 0) outputs.

    Heads are 0-based. The chosen heads' contributions on ``(a, b, 1)`` are replaced by the
    same heads' contributions on ``(a, b, 0)`` (same a, b) before ``res_mid``; the rest of the
    model runs as usual; accuracy is ``argmax == (a + b) mod p1`` over all ``p0**2`` pairs.
    """
    n_heads = params["W_Q"].shape[0]
    mask = np.zeros(n_heads, dtype=bool)
    mask[list(heads)] = True
    clean = forward(params, jnp.asarray(all_pairs(p0, 0))).heads
    tokens = all_pairs(p0, 1)
    logits = forward(params, jnp.asarray(tokens), patch=(jnp.asarray(mask), clean)).logits
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == labels_for(tokens, p0, p1)))


def patching_table(params: Mapping, p0: int, p1: int) -> dict[str, float | int]:
    """The rows of Tables 1-2: backdoor accuracy after patching none, each single head, all
    heads but the top one (by :func:`top_head`), and all heads.

    Keys ``none``, ``head_0`` .. ``head_{H-1}``, ``all_but_top``, ``all`` (accuracies) and
    ``top_head`` (its 0-based index).
    """
    n_heads = params["W_Q"].shape[0]
    top = top_head(params, p0, p1)
    table: dict[str, float | int] = {"none": patch_heads(params, p0, p1, ())}
    for h in range(n_heads):
        table[f"head_{h}"] = patch_heads(params, p0, p1, (h,))
    table["all_but_top"] = patch_heads(params, p0, p1, tuple(h for h in range(n_heads)
                                                             if h != top))
    table["all"] = patch_heads(params, p0, p1, tuple(range(n_heads)))
    table["top_head"] = top
    return table


# ----------------------------------------------------------------------------- pipeline stage
#
# Files (numpy .npz via metamodels.core.shards.save_npz, no pickle; CSV; JSON):
#   models/modadd/<task>.npz   param/<name> [R, ...] (each run's parameters at its stop epoch),
#                              history float32 [R, E, 4] (HISTORY_COLUMNS; NaN after a stop),
#                              stop_epoch int [R], seed int [R], task, config (JSON text)
#   results/modadd/<task>_history.csv   task,run,epoch,<HISTORY_COLUMNS> up to each stop
#   results/backdoor_patching.csv       run,none,head_1..head_H,all_but_top,all,top_head
#                                       (backdoor accuracy; heads numbered from 1 as in the paper)
#   results/modadd/attribution.json     per task and run: mean contribution and top frequency
#   results/metrics/modadd.json         accuracies, stop epochs, the single-head finding


def task_p1(task: str) -> tuple[int, bool]:
    """(P1, clean) of a task name: ``clean`` or ``mod<P1>``."""
    if task == "clean":
        return 1, True
    if task.startswith("mod") and task[3:].isdigit() and int(task[3:]) >= 1:
        return int(task[3:]), False
    raise ValueError(f"modadd task {task!r}: expected 'clean' or 'mod<P1>' (keys of modadd.runs)")


def task_seeds(seed: int, task: str, runs: int) -> list[int]:
    """Seeds of a task's runs, from (modadd.seed, P1 or 0 for clean, run index) only."""
    p1, clean = task_p1(task)
    return [int(np.random.default_rng([seed, 0 if clean else p1, r]).integers(2**31 - 1))
            for r in range(runs)]


def run_train(params: Mapping, task: str, model_out: str, history_out: str,
              timing_out: str | None = None) -> None:
    """Train every run of one task and write its model file and history CSV, and its
    wall-clock seconds to ``timing_out`` (JSON) when given (never into the outputs)."""
    from metamodels.core import shards as S
    m = params["modadd"]
    cfg = with_defaults(m["train"])
    p1, clean = task_p1(task)
    if not clean and not 1 <= p1 <= cfg["p0"]:
        raise ValueError(f"modadd task {task}: P1 must be in 1..p0 ({cfg['p0']})")
    seeds = task_seeds(int(m["seed"]), task, int(m["runs"][task]))
    t0 = time.perf_counter()
    stack, history, stops = train_runs(cfg, p1, seeds, clean)
    train_s = time.perf_counter() - t0
    arrays = {f"param/{k}": np.asarray(v, np.float32) for k, v in stack.items()}
    arrays.update({
        "history": history.astype(np.float32), "stop_epoch": np.asarray(stops, np.int64),
        "seed": np.asarray(seeds, np.int64), "task": S.text_array([task]),
        "config": S.text_array([json.dumps({"train": cfg, "p1": p1, "clean": clean},
                                           sort_keys=True)]),
    })
    S.save_npz(model_out, arrays)
    lines = ["task,run,epoch," + ",".join(HISTORY_COLUMNS)]
    for r in range(len(seeds)):
        for e in range(int(stops[r]) + 1):
            row = history[r, e]
            lines.append(f"{task},{r},{e}," + ",".join(
                "" if np.isnan(v) else f"{v:.6g}" for v in row))
    S.write_bytes(history_out, ("\n".join(lines) + "\n").encode())
    if timing_out:
        S.write_json(timing_out, {"task": task, "runs": len(seeds), "train_s": round(train_s, 1)})
    print(f"[modadd] {task}: {len(seeds)} runs, stop epochs {stops.tolist()}, "
          f"{train_s:.0f}s -> {model_out}", file=sys.stderr)


def load_task(path: str) -> dict:
    """A task's model file: params stack, history, stops, seeds, task, p1, clean, cfg."""
    from metamodels.core import shards as S
    z = S.load_npz(path)
    meta = json.loads(str(z["config"][0]))
    return {"params": {k[len("param/"):]: v for k, v in z.items() if k.startswith("param/")},
            "history": z["history"], "stop_epoch": z["stop_epoch"], "seed": z["seed"],
            "task": str(z["task"][0]), "p1": meta["p1"], "clean": meta["clean"],
            "cfg": meta["train"]}


def _final_row(history: np.ndarray) -> np.ndarray:
    """Last non-NaN-loss history row of one run."""
    ok = ~np.isnan(history[:, 0])
    return history[np.nonzero(ok)[0][-1]]


def single_head_finding(row: Mapping[str, float], n_heads: int, low: float = 0.10,
                        high: float = 0.90) -> bool:
    """The paper's finding for one run: patching one head drops backdoor accuracy below `low`
    while patching any other single head keeps it above `high`."""
    accs = [row[f"head_{h}"] for h in range(n_heads)]
    return any(a < low and all(b > high for g, b in enumerate(accs) if g != h)
               for h, a in enumerate(accs))


def run_analyse(params: Mapping, model_paths: Sequence[str], patching_out: str,
                attribution_out: str, metrics_out: str) -> None:
    """Head attribution for every backdoor run, patching table for the patching task."""
    from metamodels.core import shards as S
    m = params["modadd"]
    tasks = {t["task"]: t for t in (load_task(p) for p in model_paths)}
    if m["patching_task"] not in tasks:
        raise ValueError(f"modadd.patching_task {m['patching_task']} is not among the trained "
                         f"tasks {sorted(tasks)}; add it to modadd.runs")
    attribution, metrics = {}, {"tasks": {}}
    for name, t in sorted(tasks.items()):
        p0 = int(t["cfg"]["p0"])
        finals = np.stack([_final_row(h) for h in t["history"]])
        runs = len(t["seed"])
        metrics["tasks"][name] = {
            "runs": runs, "p1": None if t["clean"] else t["p1"],
            "stop_epoch": t["stop_epoch"].tolist(),
            "clean_accuracy": [round(float(v), 4) for v in finals[:, 2]],
            "backdoor_accuracy": None if t["clean"] else
            [round(float(v), 4) for v in finals[:, 3]]}
        tokens = np.concatenate([all_pairs(p0, 0)] + ([] if t["clean"] else [all_pairs(p0, 1)]))
        data = {"tokens": tokens, "trigger": tokens[:, 2] == 1}
        attribution[name] = []
        for r in range(runs):
            res = head_attribution(run_params(t["params"], r), data, t["p1"])
            attribution[name].append({k: [round(float(x), 6) for x in v]
                                      for k, v in sorted(res.items())})
    pt = tasks[m["patching_task"]]
    p0, n_heads = int(pt["cfg"]["p0"]), int(pt["cfg"]["n_heads"])
    cols = ["none"] + [f"head_{h}" for h in range(n_heads)] + ["all_but_top", "all"]
    lines = ["run," + ",".join(["none"] + [f"head_{h + 1}" for h in range(n_heads)]
                                + ["all_but_top", "all", "top_head"])]
    rows = []
    for r in range(len(pt["seed"])):
        row = patching_table(run_params(pt["params"], r), p0, pt["p1"])
        rows.append(row)
        lines.append(f"{r + 1}," + ",".join(f"{row[c]:.4f}" for c in cols)
                     + f",{row['top_head'] + 1}")
    found = [single_head_finding(row, n_heads) for row in rows]
    metrics["patching"] = {
        "task": m["patching_task"], "runs": len(rows),
        "single_head_runs": int(sum(found)),
        "runs_with_a_head_below_10pct": int(sum(
            any(row[f"head_{h}"] < 0.10 for h in range(n_heads)) for row in rows)),
        "lowest_single_head": [round(min(row[f"head_{h}"] for h in range(n_heads)), 4)
                               for row in rows],
        "criterion": "one head's patch < 10% backdoor accuracy, every other single head > 90%",
        "mean": {c: round(float(np.mean([row[c] for row in rows])), 4) for c in cols}}
    S.write_bytes(patching_out, ("\n".join(lines) + "\n").encode())
    S.write_json(attribution_out, attribution)
    S.write_json(metrics_out, metrics)
    print(f"[modadd] patching {m['patching_task']}: {sum(found)}/{len(rows)} runs have a single "
          "backdoor head", file=sys.stderr)
