"""Building blocks every meta-model shares (the decompiler, the backdoor detector, the
distilled students): a pre-LayerNorm transformer block, the compute dtype, and the optimizer.

The optimizer is AdamW with linear warmup and cosine decay and global-norm gradient clipping,
as in seed 001 §3 (decompiler) and seed 000 §3 (detector).
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def compute_dtype(precision: str):
    """The activations' dtype for ``precision`` (``auto``, ``float32`` or ``bfloat16``).

    ``auto`` is bfloat16 on a GPU or TPU (whatever JAX's device discovery finds) and float32 on
    the CPU; parameters and optimizer state stay float32 in every case.
    Raises KeyError for any other name (the params schema admits only these three).
    """
    if precision == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision]


def optimizer(t: Mapping) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay, after global-norm gradient clipping.

    ``t`` holds ``learning_rate``, ``warmup_steps``, ``steps``, ``final_lr_fraction`` (the
    decayed rate as a fraction of the peak), ``clip_norm``, ``b1``, ``b2``, ``eps`` and
    ``weight_decay``: a training section of params.yaml (``decompiler.train``,
    ``detector.model``, ``variants.distill``).
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t["learning_rate"], t["warmup_steps"], max(t["steps"], t["warmup_steps"] + 1),
        end_value=t["learning_rate"] * t["final_lr_fraction"])
    return optax.chain(
        optax.clip_by_global_norm(t["clip_norm"]),
        optax.adamw(schedule, b1=t["b1"], b2=t["b2"], eps=t["eps"],
                    weight_decay=t["weight_decay"]))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, optional cross-attention, GELU MLP.

    ``x`` [batch, length, d_model]; ``mask`` broadcastable to [batch, heads, length, length]
    (True where attention is allowed); ``memory`` [batch, memory_length, d_model] and
    ``memory_mask`` for cross-attention when ``cross``. Returns [batch, length, d_model].
    """

    d_model: int
    heads: int
    mlp: int
    cross: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, memory=None, memory_mask=None):
        attn = lambda name: nn.MultiHeadDotProductAttention(  # noqa: E731
            num_heads=self.heads, qkv_features=self.d_model, dtype=self.dtype, name=name)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_self")(x)
        x = x + attn("self_attn")(h, h, mask=mask)
        if self.cross:
            h = nn.LayerNorm(dtype=self.dtype, name="ln_cross")(x)
            x = x + attn("cross_attn")(h, memory, mask=memory_mask)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        h = nn.Dense(self.mlp, dtype=self.dtype, name="mlp_in")(h)
        h = nn.Dense(self.d_model, dtype=self.dtype, name="mlp_out")(nn.gelu(h))
        return x + h
