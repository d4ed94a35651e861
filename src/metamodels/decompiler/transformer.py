"""The decompiler meta-model (Flax): weight tokens in, program tokens out.

Two architectures share one pre-LayerNorm transformer block:

``prefix_lm`` (seed 001)
    One stack over ``[weight tokens ; program tokens]``: weight tokens attend
    to all weight tokens (bidirectional, padding masked), program tokens to all
    weight tokens and causally to earlier program tokens.
``encoder_decoder`` (TraDe, seed 004)
    An encoder over the weight tokens; a decoder with causal self-attention
    and cross-attention to the encoder output.

Weight tokens are embedded as ``Dense(features) + Embed(kind) + Embed(layer) +
Embed(index)``; program tokens as ``Embed(token) + Embed(position)``. The
model returns next-token logits at every program position.

With ``residual_slots > 0`` (``decompiler.train.residual_supervision > 0``, encoder-decoder
only) an extra head on the encoder states gives, for each weight token, logits of which
variables (:data:`metamodels.decompiler.weights.SLOTS`) its two residual halves read or write:
the auxiliary supervision of :meth:`Decompiler.with_residual`.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp

from metamodels.core.nn import Block
from metamodels.decompiler import weights as W


class WeightEmbed(nn.Module):
    d_model: int
    max_layers: int
    max_index: int
    dtype: jnp.dtype = jnp.float32
    kinds: int = W.BASE_KINDS

    @nn.compact
    def __call__(self, batch):
        x = nn.Dense(self.d_model, dtype=self.dtype, name="features")(batch["features"])
        x = x + nn.Embed(self.kinds, self.d_model, name="kind")(batch["kind"])
        x = x + nn.Embed(self.max_layers, self.d_model, name="layer")(batch["layer"])
        x = x + nn.Embed(self.max_index, self.d_model, name="index")(batch["index"])
        return x.astype(self.dtype)


class ProgramEmbed(nn.Module):
    d_model: int
    vocab_size: int
    max_len: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab_size, self.d_model, name="token")(tokens)
        pos = jnp.arange(tokens.shape[1])
        x = x + nn.Embed(self.max_len, self.d_model, name="position")(pos)[None]
        return x.astype(self.dtype)


class Decompiler(nn.Module):
    """``__call__(batch, program_in) -> logits (B, Tp, vocab)`` in float32."""

    architecture: str
    vocab_size: int
    max_program_tokens: int
    d_model: int
    layers: int
    decoder_layers: int
    heads: int
    mlp: int
    max_layers: int
    max_index: int
    dtype: jnp.dtype = jnp.float32
    residual_slots: int = 0
    kinds: int = W.BASE_KINDS

    def setup(self):
        kw = dict(d_model=self.d_model, heads=self.heads, mlp=self.mlp, dtype=self.dtype)
        self.weight_embed = WeightEmbed(self.d_model, self.max_layers, self.max_index, self.dtype,
                                        self.kinds)
        self.program_embed = ProgramEmbed(self.d_model, self.vocab_size,
                                          self.max_program_tokens, self.dtype)
        if self.architecture == "prefix_lm":
            self.blocks = [Block(**kw) for _ in range(self.layers)]
        elif self.architecture == "encoder_decoder":
            self.blocks = [Block(**kw) for _ in range(self.layers)]
            self.decoder = [Block(cross=True, **kw) for _ in range(self.decoder_layers)]
        else:
            raise ValueError(f"decompiler.model.architecture: unknown {self.architecture!r}; "
                             "use prefix_lm or encoder_decoder")
        self.ln_out = nn.LayerNorm(dtype=self.dtype)
        self.head = nn.Dense(self.vocab_size, dtype=jnp.float32)
        if self.residual_slots:
            if self.architecture != "encoder_decoder":
                raise ValueError("decompiler.train.residual_supervision > 0 needs "
                                 "decompiler.model.architecture: encoder_decoder (the prefix LM "
                                 "has no encoder states); set it to 0 or change the architecture")
            self.residual_head = nn.Dense(2 * self.residual_slots, dtype=jnp.float32)

    def encode(self, batch):
        """Encoder states (encoder_decoder) or embedded weight tokens (prefix_lm)."""
        w = self.weight_embed(batch)
        if self.architecture == "prefix_lm":
            return w
        wm = batch["mask"]
        mask = nn.make_attention_mask(wm, wm)
        for blk in self.blocks:
            w = blk(w, mask)
        return w

    def decode(self, memory, weight_mask, program_in):
        p = self.program_embed(program_in)
        if self.architecture == "prefix_lm":
            tw = memory.shape[1]
            x = jnp.concatenate([memory, p], axis=1)
            # keys: weight tokens (valid ones) are visible to every query; program keys only
            # to program queries at or after them.
            key_valid = jnp.concatenate([weight_mask, jnp.ones(program_in.shape, bool)], axis=1)
            b, t = key_valid.shape
            is_prog_q = (jnp.arange(t) >= tw)[:, None]
            is_w_k = (jnp.arange(t) < tw)[None, :]
            order = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
            allowed = is_w_k | (is_prog_q & order)
            mask = (allowed[None] & key_valid[:, None, :])[:, None]
            for blk in self.blocks:
                x = blk(x, mask)
            x = x[:, tw:]
        else:
            x = p
            causal = nn.make_causal_mask(program_in)
            cross = nn.make_attention_mask(jnp.ones(program_in.shape, bool), weight_mask)
            for blk in self.decoder:
                x = blk(x, causal, memory, cross)
        return self.head(self.ln_out(x)).astype(jnp.float32)

    def __call__(self, batch, program_in):
        return self.decode(self.encode(batch), batch["mask"], program_in)

    def with_residual(self, batch, program_in):
        """``(logits (B, Tp, vocab), residual logits (B, Tw, 2, residual_slots))``: the
        program logits and, per weight token, the logits of each slot being read by (index 0)
        or written by (index 1) its first and second residual half."""
        memory = self.encode(batch)
        r = self.residual_head(memory).astype(jnp.float32)
        return (self.decode(memory, batch["mask"], program_in),
                r.reshape(*r.shape[:2], 2, self.residual_slots))


def build(cfg: Mapping, vocab_size: int, dtype=jnp.float32) -> Decompiler:
    m, i = cfg["model"], cfg["input"]
    return Decompiler(architecture=m["architecture"], vocab_size=vocab_size,
                      max_program_tokens=cfg["max_program_tokens"], d_model=m["d_model"],
                      layers=m["layers"], decoder_layers=m["decoder_layers"], heads=m["heads"],
                      mlp=m["mlp"], max_layers=m["max_layers"], max_index=i["max_index"],
                      dtype=dtype, residual_slots=(len(W.SLOTS) if residual_weight(cfg) else 0),
                      kinds=W.kinds(i))


def residual_weight(cfg: Mapping) -> float:
    """``decompiler.train.residual_supervision`` (0 in model files written before it)."""
    return float(cfg["train"].get("residual_supervision", 0.0))
