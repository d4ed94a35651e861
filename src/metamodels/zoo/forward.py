"""NumPy forward pass of a compiled tracr model (no JAX).

Mirrors ``tracr.transformer.model.CompiledTransformerModel`` with the
configuration tracr's assembler uses: no layer norm, ReLU MLPs, dropout off,
and an all-ones input mask (tracr does not pass a pad token to the model, so
PAD tokens are *not* masked; only the causal mask applies when
``model.causal``).  Per layer: ``res += attn(res)`` then ``res += mlp(res)``.
Attention logits are ``q.k / sqrt(key_size)``, masked with ``-1e30`` and put
through a max-subtracted softmax exactly like ``jax.nn.softmax``.

By default the computation runs in float32 like tracr's own JAX model, which
makes decoded outputs agree with ``assembled_model.apply``; pass
``dtype=np.float64`` for a higher-precision evaluation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from metamodels.zoo.compiler import CompiledModel

__all__ = ["encode", "forward_ids", "forward_logits", "forward_residuals", "run"]


def _token_ids(model: CompiledModel) -> dict:
    # Same as tracr's CategoricalEncoder.encoding_map.
    return {v: i for i, v in enumerate(model.input_tokens)}


def encode(model: CompiledModel, seqs: Sequence[Sequence[Any]]) -> np.ndarray:
    """Token values -> int ids [B, T+1] with the BOS id prepended.

    All sequences must have the same length (use :func:`run` for mixed lengths).
    """
    mapping = _token_ids(model)
    seqs = [list(s) for s in seqs]
    if not seqs:
        return np.zeros((0, 1), np.int64)
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"encode needs equal-length sequences, got {lengths}")
    (n,) = lengths
    if n > model.max_seq_len:
        raise ValueError(f"sequence length {n} exceeds max_seq_len {model.max_seq_len}")
    out = np.empty((len(seqs), n + 1), np.int64)
    out[:, 0] = mapping[model.bos_token]
    try:
        flat = [mapping[tok] for s in seqs for tok in s]
    except (KeyError, TypeError):
        bad = next(t for s in seqs for t in s if not _known(mapping, t))
        raise ValueError(
            f"token {bad!r} not in the model's vocabulary {model.input_tokens}"
        ) from None
    out[:, 1:] = np.asarray(flat, np.int64).reshape(len(seqs), n)
    return out


def _known(mapping: dict, tok: Any) -> bool:
    try:
        return tok in mapping
    except TypeError:  # unhashable
        return False


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def forward_residuals(model: CompiledModel, ids: np.ndarray, dtype=np.float32) -> list[np.ndarray]:
    """Residual stream [B, T, D] after embedding and after every half layer.

    Returns ``[embeddings, after attn_0, after mlp_0, after attn_1, ...]``. The layers'
    weights are prepared once per model and dtype and kept on the model object, so a
    model's ``params`` must not be changed in place after its first forward pass (nothing
    here does: variants are new models).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be [B, T], got shape {ids.shape}")
    bsz, seq_len = ids.shape
    p = model.params
    tok = np.asarray(p["token_embed"]["embeddings"], dtype)
    pos = np.asarray(p["pos_embed"]["embeddings"], dtype)
    if seq_len > pos.shape[0]:
        raise ValueError(f"sequence length {seq_len} (incl. BOS) exceeds {pos.shape[0]}")
    if ids.size and (ids.min() < 0 or ids.max() >= tok.shape[0]):
        raise ValueError("token id out of range")
    x = tok[ids] + pos[np.arange(seq_len)][None]
    out = [x]

    key_size = model.key_size
    if model.causal:
        mask = np.tril(np.ones((seq_len, seq_len), bool))[None, None]
    else:
        mask = None
    scale = np.sqrt(key_size).astype(dtype)
    rows = bsz * seq_len
    for layer in _layers(model, dtype):
        # one 2-D matmul per projection over all B * T positions; heads whose value and
        # output weights are zero and hidden units with zero weights and bias (tracr pads
        # every layer to the widest) are left out: they add exactly 0 to the residual
        h2 = x.reshape(rows, -1)
        heads = layer["heads"]
        if heads:
            q = (h2 @ layer["q"] + layer["qb"]).reshape(bsz, seq_len, heads, key_size)
            k = (h2 @ layer["k"] + layer["kb"]).reshape(bsz, seq_len, heads, key_size)
            v = (h2 @ layer["v"] + layer["vb"]).reshape(bsz, seq_len, heads, -1)
            logits = np.einsum("bthd,bshd->bhts", q, k) / scale
            if mask is not None:
                logits = np.where(mask, logits, np.asarray(-1e30, dtype))
            weights = _softmax(logits)
            attn = np.einsum("bhts,bshd->bthd", weights, v).reshape(rows, -1)
            x = x + (attn @ layer["o"] + layer["ob"]).reshape(x.shape)
        else:
            x = x + layer["ob"]
        out.append(x)
        h2 = x.reshape(rows, -1)
        hidden = np.maximum(h2 @ layer["w1"] + layer["b1"], 0)
        x = x + (hidden @ layer["w2"] + layer["b2"]).reshape(x.shape)
        out.append(x)
    return out


def _layers(model: CompiledModel, dtype) -> list[dict]:
    """Each layer's weights in ``dtype`` without the heads and hidden units that contribute
    nothing (cached on the model per dtype)."""
    cache = model.__dict__.setdefault("_forward_layers", {})
    key = np.dtype(dtype).str
    if key in cache:
        return cache[key]
    p = model.params
    nh, ks = model.num_heads, model.key_size
    layers = []
    for layer in range(model.num_layers):
        pre = f"transformer/layer_{layer}"
        w = {n: np.asarray(p[f"{pre}/{n}"]["w"], dtype) for n in
             ("attn/query", "attn/key", "attn/value", "attn/linear", "mlp/linear_1",
              "mlp/linear_2")}
        b = {n: np.asarray(p[f"{pre}/{n}"]["b"], dtype) for n in w}
        vs = w["attn/value"].shape[1] // nh
        wv = w["attn/value"].reshape(-1, nh, vs)
        bv = b["attn/value"].reshape(nh, vs)
        wo = w["attn/linear"].reshape(nh, vs, -1)
        # a head adds nothing when its values are always 0 or its output projection is 0
        live = [h for h in range(nh) if (wv[:, h].any() or bv[h].any()) and wo[h].any()]
        sel = lambda a, n: a.reshape(*a.shape[:-1], nh, n)[..., live, :].reshape(  # noqa: E731
            *a.shape[:-1], len(live) * n)
        unit = np.flatnonzero(w["mlp/linear_1"].any(0) | (b["mlp/linear_1"] > 0))
        layers.append({
            "heads": len(live),
            "q": sel(w["attn/query"], ks), "qb": sel(b["attn/query"], ks),
            "k": sel(w["attn/key"], ks), "kb": sel(b["attn/key"], ks),
            "v": sel(w["attn/value"], vs), "vb": sel(b["attn/value"], vs),
            "o": wo[live].reshape(len(live) * vs, wo.shape[-1]), "ob": b["attn/linear"],
            "w1": w["mlp/linear_1"][:, unit], "b1": b["mlp/linear_1"][unit],
            "w2": w["mlp/linear_2"][unit], "b2": b["mlp/linear_2"]})
    cache[key] = layers
    return layers


def forward_logits(model: CompiledModel, ids: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The unembedded output before decoding: [B, T, outputs] in ``dtype``."""
    if not model.unembed_indices:
        raise ValueError("model has no unembedding (unembed_indices is empty)")
    x = forward_residuals(model, ids, dtype)[-1]
    if model.unembed is not None:
        return x @ np.asarray(model.unembed, dtype)
    return x[..., model.unembed_indices]  # == x @ model.unembed_matrix()


def forward_ids(model: CompiledModel, ids: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Runs the model on ids [B, T] (BOS included at position 0).

    Returns the unembedded output: [B, T] int argmax indices into
    ``model.output_values`` for categorical models, [B, T] floats for numerical
    ones (in ``dtype``).
    """
    out = forward_logits(model, ids, dtype)
    if model.categorical_output:
        return np.argmax(out, axis=-1)
    if out.shape[-1] == 1:
        return out[..., 0]
    return out


def run(
    model: CompiledModel, inputs: Sequence[Sequence[Any]], dtype=np.float32, batch_size: int = 4096
) -> list[list]:
    """Decoded outputs for raw token sequences (without BOS), any lengths.

    Sequences are grouped by length and evaluated in batches. The BOS position
    is dropped from the result. Categorical outputs are decoded through
    ``model.output_values``, numerical outputs become Python floats.
    """
    inputs = [list(s) for s in inputs]
    results: list[list | None] = [None] * len(inputs)
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(inputs):
        if not 1 <= len(s) <= model.max_seq_len:
            raise ValueError(f"input {i} has length {len(s)}; must be in 1..{model.max_seq_len}")
        by_len.setdefault(len(s), []).append(i)
    for _, idx in sorted(by_len.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            ids = encode(model, [inputs[i] for i in chunk])
            out = forward_ids(model, ids, dtype)[:, 1:]
            if model.categorical_output:
                vals = model.output_values
                for row, i in zip(out.tolist(), chunk):
                    results[i] = [vals[j] for j in row]
            else:
                for row, i in zip(out.tolist(), chunk):
                    results[i] = row  # tolist() gives Python floats
    return results  # type: ignore[return-value]
