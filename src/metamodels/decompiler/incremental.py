"""Key/value-cached decoding of the decompiler (:mod:`metamodels.decompiler.transformer`).

Free decoding used to run the whole decoder over the whole program buffer for every new
token, O(T^2) per program. Here one jitted step embeds the newest token of every row,
attends to cached keys and values and appends its own, so a program of T tokens costs T
steps of one position each. The weight side is computed once per batch: the encoder's
output projected to each decoder layer's cross-attention keys and values
(``encoder_decoder``), or every layer's keys and values of the weight tokens
(``prefix_lm``, whose weight tokens never attend to program tokens).

The step reproduces Flax's modules from the trained parameters (pre-LayerNorm blocks of
:class:`metamodels.core.nn.Block`: LayerNorm with epsilon 1e-6, multi-head attention with
queries scaled by 1/sqrt(head size), tanh-approximated GELU). Its logits equal the full
model's at every position to float32 rounding (tests/decompiler/test_search.py).

API: ``d = Cached(model).bind(params)``; ``state = d.start(batch, max_len)``;
``logits, state = d.step(state, tokens (R,), t)``: next-token logits (R, vocab) after
token ``tokens`` at program position ``t`` (R = B * width rows); ``d.take(state, rows)``
reorders beams (beam search). The weight side is stored once per program and read by all
its beams; the step and the reordering update the caches in place (buffer donation).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from metamodels.decompiler.transformer import Decompiler


def _ln(p, x):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.maximum((x32 * x32).mean(-1, keepdims=True) - mean * mean, 0.0)
    y = (x32 - mean) * jax.lax.rsqrt(var + 1e-6)
    return (y * p["scale"] + p["bias"]).astype(x.dtype)


def _proj(p, x):
    return jnp.einsum("...d,dhk->...hk", x, p["kernel"]) + p["bias"]


def _query(p, h):
    q = _proj(p["query"], h)
    return q / jnp.sqrt(q.shape[-1]).astype(q.dtype)


def _attend(p, q, parts):
    """Attention of one query position per row over several key sets at once (one softmax).

    q (R, H, K) with R = B * width rows, beams of one program adjacent; ``parts``: (keys,
    values, mask, shared) with keys/values (R, S, H, K) and mask (R, S) per row, or, when
    ``shared``, (B, S, H, K) and (B, S) per program, read by all its beams without copies.
    Returns the output projection (R, d).
    """
    logits = []  # each (R, S, H): the positions axis before the heads
    for keys, _, mask, shared in parts:
        if shared:
            b = keys.shape[0]
            qg = q.reshape(b, -1, *q.shape[1:])
            lg = jnp.einsum("bjhk,bshk->bjsh", qg, keys).reshape(q.shape[0], -1, q.shape[1])
            m = jnp.repeat(mask, qg.shape[1], axis=0)
        else:  # elementwise: XLA:CPU runs R tiny batched dots about 4x slower
            lg = (q[:, None] * keys).sum(-1)
            m = mask
        logits.append(jnp.where(m[:, :, None], lg, jnp.finfo(lg.dtype).min))
    sizes = [lg.shape[1] for lg in logits]
    w = jax.nn.softmax(jnp.concatenate(logits, 1).astype(jnp.float32), axis=1)
    o, at = 0.0, 0
    for (_, values, _, shared), n in zip(parts, sizes):
        wi = w[:, at:at + n].astype(values.dtype)
        at += n
        if shared:
            b = values.shape[0]
            wg = wi.reshape(b, -1, *wi.shape[1:])
            o = o + jnp.einsum("bjsh,bshk->bjhk", wg, values).reshape(q.shape)
        else:
            o = o + (wi[..., None] * values).sum(1)
    return jnp.einsum("rhk,hkd->rd", o, p["out"]["kernel"]) + p["out"]["bias"]


def _mlp(p, x):
    h = _ln(p["ln_mlp"], x)
    h = h @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"]
    return jax.nn.gelu(h) @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]


def _full_block(p, x, mask):
    """Block over whole sequences x (B, S, d) with a (B, S) key mask; also returns this
    layer's keys and values (from the LayerNorm'd input), as the step needs them."""
    h = _ln(p["ln_self"], x)
    a = p["self_attn"]
    k, v = _proj(a["key"], h), _proj(a["value"], h)
    q = _proj(a["query"], h)
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    o = jnp.einsum("bhqs,bshk->bqhk", w, v)
    x = x + jnp.einsum("bqhk,hkd->bqd", o, a["out"]["kernel"]) + a["out"]["bias"]
    return x + _mlp(p, x), k, v


class Cached:
    """Cached single-token decoding for one trained :class:`Decompiler` and its params.

    State (all arrays on the device): ``mem_k``, ``mem_v`` (one (B, S, heads, head size)
    array per layer) and ``mask`` (B, S): the weight side, one copy per program; ``k``, ``v``
    (one (B * width, max_len, heads, head size) array per layer): each beam's program-token
    keys and values, one array per layer so that a step writes its position in place.
    """

    def __init__(self, model: Decompiler):
        self.model = model
        self.prefix = model.architecture == "prefix_lm"
        self._start = jax.jit(self._start_impl, static_argnums=(2, 3))
        self._step = jax.jit(self._step_impl, donate_argnums=(1,))
        self._take = jax.jit(lambda s, rows: dict(s, **{
            n: tuple(jnp.take(a, rows, axis=0) for a in s[n]) for n in ("k", "v")}),
            donate_argnums=(0,))

    def _layers(self, params):
        n = self.model.layers if self.prefix else self.model.decoder_layers
        name = "blocks" if self.prefix else "decoder"
        return [params[f"{name}_{i}"] for i in range(n)]

    def _start_impl(self, params, batch, max_len: int, width: int):
        wmask = batch["mask"]
        if self.prefix:
            x = self.model.apply({"params": params}, batch, method=Decompiler.encode)
            mem_k, mem_v = [], []
            for p in self._layers(params):
                x, k, v = _full_block(p, x, wmask)
                mem_k.append(k)
                mem_v.append(v)
        else:
            memory = self.model.apply({"params": params}, batch, method=Decompiler.encode)
            mem_k = [_proj(p["cross_attn"]["key"], memory) for p in self._layers(params)]
            mem_v = [_proj(p["cross_attn"]["value"], memory) for p in self._layers(params)]
        b = wmask.shape[0]
        h, kd = self.model.heads, self.model.d_model // self.model.heads
        dt = mem_k[0].dtype
        shape = (b * width, max_len, h, kd)
        return {"mem_k": tuple(mem_k), "mem_v": tuple(mem_v), "mask": wmask,
                "k": tuple(jnp.zeros(shape, dt) for _ in mem_k),
                "v": tuple(jnp.zeros(shape, dt) for _ in mem_k)}

    def _step_impl(self, params, state, tokens, t):
        emb = params["program_embed"]
        x = (emb["token"]["embedding"][tokens] + emb["position"]["embedding"][t])
        x = x.astype(self.model.dtype)
        max_len = state["k"][0].shape[1]
        seen = jnp.broadcast_to(jnp.arange(max_len) <= t, (tokens.shape[0], max_len))
        ks, vs = list(state["k"]), list(state["v"])
        for i, p in enumerate(self._layers(params)):
            a = p["self_attn"]
            h = _ln(p["ln_self"], x)
            ks[i] = ks[i].at[:, t].set(_proj(a["key"], h))
            vs[i] = vs[i].at[:, t].set(_proj(a["value"], h))
            own = (ks[i], vs[i], seen, False)
            mem = (state["mem_k"][i], state["mem_v"][i], state["mask"], True)
            if self.prefix:
                x = x + _attend(a, _query(a, h), [mem, own])
            else:
                x = x + _attend(a, _query(a, h), [own])
                h = _ln(p["ln_cross"], x)
                x = x + _attend(p["cross_attn"], _query(p["cross_attn"], h), [mem])
            x = x + _mlp(p, x)
        x = _ln(params["ln_out"], x)
        logits = (x @ params["head"]["kernel"] + params["head"]["bias"]).astype(jnp.float32)
        return logits, dict(state, k=tuple(ks), v=tuple(vs))

    def bind(self, params: Mapping) -> "Bound":
        """The decoding interface (``start``, ``step``, ``take``) for trained ``params``; the
        jitted functions are this object's, so binding other params compiles nothing new."""
        return Bound(self, params)


class Bound:
    """:class:`Cached` with its parameters: what :func:`metamodels.decompiler.decode.ranked`
    drives."""

    def __init__(self, cached: Cached, params: Mapping):
        self.c, self.params = cached, params

    def start(self, batch: Mapping[str, np.ndarray], max_len: int, width: int = 1) -> dict:
        """Decoder state for a batch of weight tokens (``features``, ``kind``, ``layer``,
        ``index``, ``mask``; B rows), with ``width`` rows per program (beams, adjacent) and
        room for ``max_len`` program tokens."""
        keep = ("features", "kind", "layer", "index", "mask")
        return self.c._start(self.params, {k: jnp.asarray(v) for k, v in batch.items()
                                           if k in keep}, int(max_len), int(width))

    def step(self, state: dict, tokens: np.ndarray, t: int):
        """(logits (B, vocab) float32 of the token after position t, new state), where
        ``tokens`` (B,) are the tokens at position t."""
        logits, state = self.c._step(self.params, state, jnp.asarray(tokens, jnp.int32),
                                     jnp.int32(t))
        return np.asarray(logits), state

    def take(self, state: dict, rows: np.ndarray) -> dict:
        """The state with beam rows ``rows`` (int array, B * width: each row's new source
        row, within its own program's beams), in that order; ``state`` is consumed."""
        return self.c._take(state, jnp.asarray(rows, jnp.int32))
