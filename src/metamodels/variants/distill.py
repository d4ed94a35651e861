"""Distillation of tracr teachers into students with a compressed residual stream.

A student keeps its teacher's architecture but carries its residual stream in
``D' = compressed_width(D, ratio)`` dimensions through a learned compression
matrix ``C`` of shape ``[D, D']`` (explicit read/write form, see
:func:`read_write_forward`): the input residual ``x0`` (token plus position
embedding, D space) is compressed to ``r = x0 C``; every block (attention, then
MLP, per layer) reads ``x = r Cᵀ``, applies its D-space weights and writes
``r += block(x) C``; the output logits are ``(r Cᵀ) U`` with ``U`` the
teacher's unembedding. After training the student is folded into an ordinary
:class:`CompiledModel` of residual width ``D'`` with
:func:`metamodels.variants.desparsify.fold`.

``kind="compressed"``: the embeddings and block weights are the teacher's,
frozen; only ``C`` is learned. ``kind="natural"``: every parameter (embeddings,
all block weights and biases, and ``C``) is learned, matrices from a Glorot
normal initialisation and biases from zero.

Loss per step, per student, three weighted terms on one batch:

(a) ``random_layer_weight`` x the sum over the ``2 * num_layers`` block outputs
    of the mean (over batch and positions) squared L2 distance between the
    teacher's residual ``h_i`` and the student's decompressed residual
    ``r_i Cᵀ``, on ``batch_random`` random-embedding inputs
    ``x0 ~ N(0, random_scale²)`` over the teacher's D dims (all
    ``max_seq_len + 1`` positions, fed to both in place of the embedding);
(b) ``output_weight`` x, on vocabulary inputs (``batch_vocab`` random token
    sequences with BOS for every length ``1..max_seq_len``), the cross-entropy
    of the student's output log-softmax against the teacher's output softmax
    (categorical outputs) or the squared error of the output value (numerical
    outputs), averaged over non-BOS positions;
(c) ``vocab_layer_weight`` x the same per-block distance as (a) on the
    vocabulary inputs (mean over their real positions).

The thesis's loss is (a) + (b), i.e. weights (a, b, c) = (1, 1, 0). On this zoo the teachers' MLPs
(``mlp_exactness=100``) answer random embeddings with residuals 10-50x larger
than on real inputs, so (a) at weight 1 dominates the gradient and the
acceptance check, which measures per-block distances on *real* inputs, is
never met (0 of 8 compressed and 0 of 8 natural students at ratio 0.5; natural
ones did reach the teacher's outputs); the defaults (a, b, c) = (0.1, 10, 1) keep (a) as a
regulariser and train (c) directly. The three weights are optional config
keys (defaults in :data:`DEFAULTS`). AdamW with warmup, cosine decay and
global-norm clipping (:func:`metamodels.core.nn.optimizer`; ``b1``, ``b2``,
``eps`` optional keys, default 0.9 / 0.999 / 1e-8).

Initial ``C`` of compressed students (optional key ``c_init``): ``"pca"``
(default), the top-``D'`` uncentred principal directions of the teacher's
residual activations on the domain in a seeded random basis of the ``D'``
space -- exact whenever ``D'`` reaches the activations' rank; or
``"random"``, random orthonormal columns. From a random start the learned C
rarely finds even an exact compression in a few hundred steps (the tracr MLPs
decode values like ``1/(n+1)`` with steep slopes, so C must preserve some
directions very precisely).

Batching: teachers are sorted by shape and cut into groups of ``group_size``;
a group is zero-padded to its largest shapes (layers, heads, key and value
size per head, MLP hidden size, residual width, ``D'``, outputs) and trained
as one ``jax.vmap`` over students. Every parameter is multiplied by a 0/1
structural mask in the forward pass, so padded entries stay exactly zero,
receive zero gradient and do not change any real value (padded heads have
zero value and output weights and do not touch the real heads' softmax; a
padded layer is an all-zero block whose distances are left out of the loss;
padded outputs are pushed out of every softmax and argmax). Steps run in
``jax.lax.scan`` chunks of ``eval_every`` inside one ``jit``; the initial
students and then the students after every chunk are scored on the whole
input domain (in JAX), a student's parameters are snapshotted the first time
it meets the acceptance thresholds, and the group stops once every student is
accepted. ``group_size=1`` trains one student at a time through the same
code.

Acceptance is decided on the folded, stored model with the NumPy forward pass
in float32 (:func:`evaluate`): ``agreement`` (the fraction of domain inputs
decoded like the teacher at every compared non-BOS position, see
:func:`metamodels.variants.desparsify.agreement`; categorical positions where the
teacher's two best logits tie -- tracr's None outputs -- are not compared)
must be at least ``min_agreement`` and the largest per-block residual loss
(mean over inputs and positions of ``|h - r Cᵀ|²``) at most
``max_layer_loss``.

Randomness: initial parameters come from ``SeedSequence([seed, 0])``; the
training inputs of step ``t`` from a counter-based integer hash of
(``SeedSequence([seed, 1])``, ``t``, stream) -- ``jax.random``'s threefry
under ``vmap`` cost ~5 s of XLA compile time per group shape. The same
teachers, config and seeds give bitwise-identical results.

Defaults, measured with ``benchmarks/distill_throughput.py --n 16`` on
``data/dataset/train/shard_000.npz`` (2 shared CPU cores)::

    ratio: 0.5            group_size: 16        steps: 1000      eval_every: 250
    batch_random: 8       batch_vocab: 8        random_scale: 0.5
    learning_rate: 0.01   warmup_steps: 100     final_lr_fraction: 0.05
    clip_norm: 1.0        weight_decay: 0.0
    min_agreement: 0.95   max_layer_loss: 1.0

At ratio 0.5 no zoo teacher has an exact linear compression (their residual
activations have rank 0.6-0.93 D, median 0.83 D) and numerical outputs, which
must match within ``atol`` (1e-3), were never reached; of 16 teachers spread
over the shard 5 compressed students (4 of them at step 0, from PCA) and 6
natural ones were accepted, at 39 (compressed) and 25 (natural) CPU-seconds
per accepted student batched vs 56 and 61 one at a time. On a CPU a group
pays for its padding (the padded FLOPs of a group of 16 such teachers are
4-6x their own): batching wins through fewer compilations (about 10 s per
distinct group shape) and evaluations, not through the arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metamodels.core import nn
from metamodels.variants import desparsify
from metamodels.zoo.compiler import CompiledModel
from metamodels.zoo.forward import encode, forward_residuals

__all__ = ["DEFAULTS", "KINDS", "Dims", "Packed", "distill", "evaluate", "group_outputs",
           "groups", "init_params", "init_student", "pack", "read_write_forward", "shape_key",
           "teacher_arrays", "train_group"]

DEFAULTS = {
    "ratio": 0.5, "group_size": 16, "steps": 1000, "eval_every": 250,
    "batch_random": 8, "batch_vocab": 8, "random_scale": 0.5,
    "learning_rate": 0.01, "warmup_steps": 100, "final_lr_fraction": 0.05,
    "clip_norm": 1.0, "weight_decay": 0.0,
    "min_agreement": 0.95, "max_layer_loss": 1.0,
    "random_layer_weight": 0.1, "vocab_layer_weight": 1.0, "output_weight": 10.0,
    "c_init": "pca",
}
_WEIGHTS = ("random_layer_weight", "vocab_layer_weight", "output_weight")  # optional in cfg
KINDS = ("compressed", "natural")
ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
MARGIN = 1e-3  # categorical teacher positions with a top-2 logit gap <= MARGIN are not compared

LAYER_KEYS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "w1", "b1", "w2", "b2")
_MODULES = {"q": "attn/query", "k": "attn/key", "v": "attn/value", "o": "attn/linear",
            "1": "mlp/linear_1", "2": "mlp/linear_2"}


# ---------------------------------------------------------------------------
# Shapes, grouping and padding.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dims:
    """Architecture sizes of one student (or the padded sizes of a group)."""

    layers: int
    width: int  # D
    compressed: int  # D'
    heads: int
    key: int  # per head
    value: int  # per head
    hidden: int  # MLP
    outputs: int

    @classmethod
    def of(cls, m: CompiledModel, ratio: float) -> "Dims":
        value_w = m.params["transformer/layer_0/attn/value"]["w"]
        width = desparsify.compressed_width(m.residual_size, ratio)
        return cls(m.num_layers, m.residual_size, width, m.num_heads, m.key_size,
                   value_w.shape[1] // m.num_heads, m.mlp_hidden_size, len(m.unembed_indices))

    @classmethod
    def max(cls, dims: Sequence["Dims"]) -> "Dims":
        return cls(*(max(getattr(d, f.name) for d in dims) for f in dataclasses.fields(cls)))

    def shapes(self, vocab: int, positions: int) -> dict[str, tuple[int, ...]]:
        """Shape of every student parameter (per-head layout, layers stacked)."""
        L, D, H, K, V, M = self.layers, self.width, self.heads, self.key, self.value, self.hidden
        return {"tok": (vocab, D), "pos": (positions, D),
                "wq": (L, D, H, K), "bq": (L, H, K), "wk": (L, D, H, K), "bk": (L, H, K),
                "wv": (L, D, H, V), "bv": (L, H, V), "wo": (L, H, V, D), "bo": (L, D),
                "w1": (L, D, M), "b1": (L, M), "w2": (L, M, D), "b2": (L, D),
                "C": (D, self.compressed)}

    def matrix_shapes(self, vocab: int, positions: int) -> dict[str, tuple[int, int]]:
        """Every weight matrix as (fan_in, fan_out), for the Glorot initialisation."""
        D, HK, HV, M = self.width, self.heads * self.key, self.heads * self.value, self.hidden
        return {"tok": (vocab, D), "pos": (positions, D), "wq": (D, HK), "wk": (D, HK),
                "wv": (D, HV), "wo": (HV, D), "w1": (D, M), "w2": (M, D),
                "C": (D, self.compressed)}


def shape_key(m: CompiledModel) -> tuple[int, ...]:
    """Sort key: (layers, D, MLP hidden, heads * key size, heads * value size)."""
    value_w = m.params["transformer/layer_0/attn/value"]["w"]
    return (m.num_layers, m.residual_size, m.mlp_hidden_size, m.num_heads * m.key_size,
            value_w.shape[1])


def groups(teachers: Sequence[CompiledModel], group_size: int) -> list[list[int]]:
    """Teacher indices sorted by :func:`shape_key` (ties by index), cut into groups."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    order = sorted(range(len(teachers)), key=lambda i: (shape_key(teachers[i]), i))
    return [order[i:i + group_size] for i in range(0, len(order), group_size)]


def teacher_arrays(m: CompiledModel) -> dict[str, np.ndarray]:
    """The teacher's embeddings and block weights in the per-head layout of :meth:`Dims.shapes`."""
    d = Dims.of(m, 1.0)
    p = m.params

    def get(layer: int, name: str, par: str) -> np.ndarray:
        return np.asarray(p[f"transformer/layer_{layer}/{_MODULES[name]}"][par], np.float32)

    per_layer = {
        "wq": lambda l: get(l, "q", "w").reshape(d.width, d.heads, d.key),
        "bq": lambda l: get(l, "q", "b").reshape(d.heads, d.key),
        "wk": lambda l: get(l, "k", "w").reshape(d.width, d.heads, d.key),
        "bk": lambda l: get(l, "k", "b").reshape(d.heads, d.key),
        "wv": lambda l: get(l, "v", "w").reshape(d.width, d.heads, d.value),
        "bv": lambda l: get(l, "v", "b").reshape(d.heads, d.value),
        "wo": lambda l: get(l, "o", "w").reshape(d.heads, d.value, d.width),
        "bo": lambda l: get(l, "o", "b"),
        "w1": lambda l: get(l, "1", "w"), "b1": lambda l: get(l, "1", "b"),
        "w2": lambda l: get(l, "2", "w"), "b2": lambda l: get(l, "2", "b"),
    }
    out = {"tok": np.asarray(p["token_embed"]["embeddings"], np.float32),
           "pos": np.asarray(p["pos_embed"]["embeddings"], np.float32)}
    for key, fn in per_layer.items():
        out[key] = np.stack([fn(layer) for layer in range(m.num_layers)])
    return out


def _pad(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def _unpad(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return np.asarray(a[tuple(slice(0, n) for n in shape)])


@dataclasses.dataclass
class Packed:
    """One group of teachers padded to common shapes, leading axis = student.

    ``teacher``: padded teacher weights (:meth:`Dims.shapes` keys except ``C``);
    ``masks``: 0/1 structural masks of every student parameter (incl. ``C``);
    ``meta``: per-student constants (attention scale, causal flag, unembedding,
    output mask, categorical flag, real-layer mask, real-D mask).
    """

    dims: list[Dims]
    padded: Dims
    vocab: int
    positions: int
    teacher: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    meta: dict[str, np.ndarray]


def pack(teachers: Sequence[CompiledModel], ratio: float) -> Packed:
    """Pads a group of teachers (sharing vocabulary and max_seq_len) to common shapes."""
    dims = [Dims.of(m, ratio) for m in teachers]
    big = Dims.max(dims)
    vocab, positions = teachers[0].vocab_size, teachers[0].max_seq_len + 1
    shapes = big.shapes(vocab, positions)
    arrays = [teacher_arrays(m) for m in teachers]
    teacher = {k: np.stack([_pad(a[k], shapes[k]) for a in arrays]) for k in shapes if k != "C"}
    masks = {k: np.stack([_pad(np.ones(d.shapes(vocab, positions)[k], np.float32), shapes[k])
                          for d in dims]) for k in shapes}
    meta = {
        "scale": np.array([math.sqrt(m.key_size) for m in teachers], np.float32),
        "causal": np.array([m.causal for m in teachers]),
        "categorical": np.array([m.categorical_output for m in teachers]),
        "unembed": np.stack([_pad(m.unembed_matrix(), (big.width, big.outputs))
                             for m in teachers]),
        "out_mask": np.stack([np.arange(big.outputs) < d.outputs for d in dims]),
        "layer_mask": np.stack([np.arange(big.layers) < d.layers for d in dims]).astype(np.float32),
        "width_mask": np.stack([np.arange(big.width) < d.width for d in dims]).astype(np.float32),
    }
    return Packed(dims, big, vocab, positions, teacher, masks, meta)


def _glorot(rng: np.random.Generator, fans: tuple[int, int], size: tuple[int, ...]) -> np.ndarray:
    std = math.sqrt(2.0 / (fans[0] + fans[1]))
    return (rng.standard_normal(size) * std).astype(np.float32)


def init_student(m: CompiledModel, kind: str, ratio: float, seed: int, c_init: str = "pca",
                 inputs: Sequence[np.ndarray] = ()) -> dict[str, np.ndarray]:
    """Unpadded initial parameters of one student.

    ``natural``: every parameter, Glorot normal matrices (``C`` included) and zero
    biases. ``compressed``: only ``C``; with ``c_init="pca"`` the top-``D'``
    principal directions of the teacher's residual activations on ``inputs``
    (:func:`metamodels.variants.desparsify.pca_basis`; exact whenever ``D'`` reaches their
    rank) in a random orthonormal basis of the ``D'`` space, with ``"random"`` a
    random matrix with orthonormal columns (the teacher itself when ``D' = D``).
    """
    d = Dims.of(m, ratio)
    vocab, positions = m.vocab_size, m.max_seq_len + 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    if kind == "natural":
        shapes, fans = d.shapes(vocab, positions), d.matrix_shapes(vocab, positions)
        return {k: (_glorot(rng, fans[k], shapes[k]) if k in fans
                    else np.zeros(shapes[k], np.float32)) for k in shapes}
    if c_init == "random":
        c = desparsify.random_orthogonal(d.width, rng)[:, :d.compressed]
        return {"C": c.astype(np.float32)}
    if c_init != "pca":
        raise ValueError(f"c_init must be 'pca' or 'random', got {c_init!r}")
    if not any(len(x) for x in inputs):
        raise ValueError("c_init='pca' needs the input domain")
    basis = desparsify.pca_basis(desparsify.residual_activations(m, inputs), d.compressed)
    return {"C": (basis @ desparsify.random_orthogonal(d.compressed, rng)).astype(np.float32)}


def init_params(packed: Packed,
                students: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks unpadded student parameters into the group's padded shapes."""
    shapes = packed.padded.shapes(packed.vocab, packed.positions)
    return {k: np.stack([_pad(s[k], shapes[k]) for s in students]) for k in students[0]}


def _seed_word(seed: int) -> np.uint32:
    """The 32-bit word a student's training inputs are drawn from."""
    return np.random.SeedSequence([seed, 1]).generate_state(1)[0]


# ---------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------


def _check_compatible(teachers: Sequence[CompiledModel], inputs: Sequence[np.ndarray]) -> None:
    first = teachers[0]
    for m in teachers:
        if (m.input_tokens != first.input_tokens or m.bos_token != first.bos_token
                or m.pad_token != first.pad_token or m.max_seq_len != first.max_seq_len):
            raise ValueError("all teachers must share input tokens, BOS, PAD and max_seq_len")
        if not m.categorical_output and len(m.unembed_indices) != 1:
            raise ValueError("numerical teachers must have exactly one output dimension")
    if any(len(x) and x.shape[1] > first.max_seq_len for x in inputs):
        raise ValueError(f"inputs longer than max_seq_len {first.max_seq_len}")


def _domain(m: CompiledModel, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Every input as ids [N, T] (BOS first, PAD after the end) and its valid positions."""
    T = m.max_seq_len + 1
    rows, lengths = [], []
    for x in inputs:
        if len(x):
            ids = encode(m, x.tolist())
            rows.append(np.pad(ids, ((0, 0), (0, T - ids.shape[1])), constant_values=m.pad_id))
            lengths.append(np.full(len(x), x.shape[1]))
    lengths = np.concatenate(lengths)
    return {"ids": np.concatenate(rows).astype(np.int32),
            "valid": np.arange(T)[None] <= lengths[:, None]}


def _shared(m: CompiledModel) -> dict[str, np.ndarray]:
    """What random token sequences are made of: the non-special token ids, BOS, PAD."""
    special = {m.bos_id, m.pad_id}
    return {"tokens": np.array([i for i in range(m.vocab_size) if i not in special], np.int32),
            "bos": np.int32(m.bos_id), "pad": np.int32(m.pad_id)}


def _mix(x):
    """A 32-bit integer hash (xor-shift-multiply; full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _uniform(word, step, stream: int, shape):
    """Counter-based uniforms in [0, 1) for (student word, step, stream): a pure function
    of its arguments, cheap to compile (unlike threefry keys under vmap)."""
    base = _mix(_mix(word ^ jnp.uint32(stream * 0x9E3779B9 % 2**32)) + step.astype(jnp.uint32))
    count = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    bits = _mix(base ^ _mix(count * jnp.uint32(0x9E3779B9) + jnp.uint32(1)))
    return (bits >> 8).astype(jnp.float32) * (1.0 / 2**24)


def _normal(word, step, stream: int, shape):
    """Standard normals by the Box-Muller transform of two uniform streams."""
    u1 = 1.0 - _uniform(word, step, stream, shape)  # (0, 1]
    u2 = _uniform(word, step, stream + 1, shape)
    return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)


def _vocab_batch(word, step, shared, positions: int, per_length: int):
    """``per_length`` random sequences of every length 1..positions-1, packed in [B, T]."""
    lengths = jnp.repeat(jnp.arange(1, positions), per_length)
    pos = jnp.arange(positions)
    n = shared["tokens"].shape[0]
    draw = (_uniform(word, step, 0, (lengths.shape[0], positions)) * n).astype(jnp.int32)
    valid = pos[None] <= lengths[:, None]
    ids = jnp.where(valid, shared["tokens"][jnp.minimum(draw, n - 1)], shared["pad"])
    ids = jnp.where(pos[None] == 0, shared["bos"], ids)
    return ids, valid


# ---------------------------------------------------------------------------
# JAX forward passes (one student; vmapped over the group).
# ---------------------------------------------------------------------------


def _attention(w, x, mask, scale):
    q = jnp.einsum("btd,dhk->bthk", x, w["wq"]) + w["bq"]
    k = jnp.einsum("btd,dhk->bthk", x, w["wk"]) + w["bk"]
    v = jnp.einsum("btd,dhv->bthv", x, w["wv"]) + w["bv"]
    logits = jnp.einsum("bthk,bshk->bhts", q, k) / scale
    probs = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
    heads = jnp.einsum("bhts,bshv->bthv", probs, v)
    return jnp.einsum("bthv,hvd->btd", heads, w["wo"]) + w["bo"]


def _mlp(w, x):
    return jax.nn.relu(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]


def _attention_mask(valid, causal):
    """[B, 1, T, T]: keys inside the sequence, and not in the future when causal."""
    T = valid.shape[1]
    past = jnp.tril(jnp.ones((T, T), bool)) | ~causal
    return valid[:, None, None, :] & past[None, None]


def _fold(w, C):
    """The student's blocks in D' space: reads ``Cᵀ W``, writes ``W C``."""
    return {"wq": jnp.einsum("de,ldhk->lehk", C, w["wq"]), "bq": w["bq"],
            "wk": jnp.einsum("de,ldhk->lehk", C, w["wk"]), "bk": w["bk"],
            "wv": jnp.einsum("de,ldhv->lehv", C, w["wv"]), "bv": w["bv"],
            "wo": w["wo"] @ C, "bo": w["bo"] @ C,
            "w1": jnp.einsum("de,ldm->lem", C, w["w1"]), "b1": w["b1"],
            "w2": w["w2"] @ C, "b2": w["b2"] @ C}


def _side_by_side(teacher, student, C, h, r, mask, scale, weight):
    """Teacher (D space) and folded student (D' space) through all layers together.

    Returns the final residuals and, per layer, the weighted squared distance
    ``sum(weight * |h - r Cᵀ|²)`` after attention and after the MLP ([L, 2]).
    """
    def dist(h, r):
        return jnp.sum(weight * jnp.sum(jnp.square(h - r @ C.T), axis=-1))

    def layer(carry, ws):
        h, r = carry
        t, s = ws
        h, r = h + _attention(t, h, mask, scale), r + _attention(s, r, mask, scale)
        d_attn = dist(h, r)
        h, r = h + _mlp(t, h), r + _mlp(s, r)
        return (h, r), jnp.stack([d_attn, dist(h, r)])

    layers = ({k: teacher[k] for k in LAYER_KEYS}, student)
    (h, r), dists = jax.lax.scan(layer, (h, r), layers)
    return h, r, dists


def _masked(params, teacher, masks):
    """Teacher weights overridden by the learned ones, times the structural masks."""
    merged = {**teacher, **params}
    return {k: merged[k] * masks[k] for k in masks}


def _run(teacher, w, meta, h0, r0, valid, weight):
    """Teacher from ``h0`` [B, T, D] and student from ``r0`` [B, T, D'] on the positions
    ``valid`` [B, T]: (teacher logits, student logits, weighted distances [L, 2])."""
    C = w["C"]
    mask = _attention_mask(valid, meta["causal"])
    h, r, dists = _side_by_side(teacher, _fold(w, C), C, h0, r0, mask, meta["scale"], weight)
    U = meta["unembed"]
    return h @ U, r @ (C.T @ U), dists


def _embed(w, ids):
    return w["tok"][ids] + w["pos"][None]


def _run_ids(teacher, w, meta, ids, valid, weight):
    """Teacher and student on token ids (BOS first): as :func:`_run`."""
    return _run(teacher, w, meta, _embed(teacher, ids), _embed(w, ids) @ w["C"], valid, weight)


def group_outputs(packed: Packed, params: Mapping[str, np.ndarray], ids: np.ndarray):
    """Padded teacher and student output logits [S, B, T, outputs] and per-layer
    distances [S, L, 2] (mean over batch and positions) on ids [B, T] of full
    length ``max_seq_len + 1``; for tests of the padding."""
    ids = jnp.asarray(ids, jnp.int32)
    valid = jnp.ones(ids.shape, bool)
    weight = jnp.full(ids.shape, 1.0 / ids.size)

    def one(teacher, params, masks, meta):
        return _run_ids(teacher, _masked(params, teacher, masks), meta, ids, valid, weight)

    return jax.jit(jax.vmap(one))(packed.teacher, dict(params), packed.masks, packed.meta)


def _masked_logits(out, out_mask):
    """Padded output dims pushed out of every softmax and argmax (finite: no NaN gradients)."""
    return jnp.where(out_mask, out, -1e30)


def _output_loss(t_out, s_out, meta, weight):
    """Weighted mean over positions: soft cross-entropy (categorical) or squared error."""
    out_mask = meta["out_mask"]
    target = jax.nn.softmax(_masked_logits(t_out, out_mask), axis=-1)
    logq = jax.nn.log_softmax(_masked_logits(s_out, out_mask), axis=-1)
    ce = -jnp.sum(jnp.where(out_mask, target * logq, 0.0), axis=-1)
    se = jnp.square(t_out[..., 0] - s_out[..., 0])
    return jnp.sum(weight * jnp.where(meta["categorical"], ce, se))


def _agreement(t_out, s_out, meta, out_pos, atol):
    """Fraction of inputs decoded like the teacher at every compared position."""
    t, s = _masked_logits(t_out, meta["out_mask"]), _masked_logits(s_out, meta["out_mask"])
    top2 = jax.lax.top_k(t, 2)[0] if t.shape[-1] > 1 else None
    decided = (top2[..., 0] - top2[..., 1] > MARGIN) if top2 is not None else True
    cat = (jnp.argmax(t, -1) == jnp.argmax(s, -1)) | ~decided
    num = jnp.abs(t_out[..., 0] - s_out[..., 0]) <= atol
    same = jnp.where(meta["categorical"], cat, num) | ~out_pos
    return jnp.mean(jnp.all(same, axis=-1))


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The hashable part of the config one compiled training chunk depends on."""

    eval_every: int
    batch_random: int
    batch_vocab: int
    random_scale: float
    optimizer: tuple
    min_agreement: float
    max_layer_loss: float
    atol: float
    random_layer_weight: float
    vocab_layer_weight: float
    output_weight: float

    @classmethod
    def of(cls, cfg: Mapping, atol: float) -> "_Settings":
        opt = {k: cfg[k] for k in ("learning_rate", "warmup_steps", "steps", "final_lr_fraction",
                                   "clip_norm", "weight_decay")}
        opt.update({k: cfg.get(k, v) for k, v in ADAM.items()})
        return cls(int(cfg["eval_every"]), int(cfg["batch_random"]), int(cfg["batch_vocab"]),
                   float(cfg["random_scale"]), tuple(sorted(opt.items())),
                   float(cfg["min_agreement"]), float(cfg["max_layer_loss"]), float(atol),
                   *(float(cfg.get(k, DEFAULTS[k])) for k in _WEIGHTS))

    def tx(self) -> optax.GradientTransformation:
        return nn.optimizer(dict(self.optimizer))


def _loss(params, teacher, masks, meta, word, step, shared, s: _Settings):
    """One student's loss: weighted residual distances on random embeddings (a) and on
    token sequences (c), plus the weighted output loss on the token sequences (b); one
    batch, random rows first, then ``batch_vocab`` rows per length."""
    w = _masked(params, teacher, masks)
    T, D = teacher["pos"].shape
    x0 = _normal(word, step, 1, (s.batch_random, T, D)) * s.random_scale * meta["width_mask"]
    ids, valid_v = _vocab_batch(word, step, shared, T, s.batch_vocab)
    valid = jnp.concatenate([jnp.ones((s.batch_random, T), bool), valid_v])
    weight = jnp.concatenate([
        jnp.full((s.batch_random, T), s.random_layer_weight / max(s.batch_random * T, 1)),
        s.vocab_layer_weight * valid_v / jnp.sum(valid_v)])
    h0 = jnp.concatenate([x0, _embed(teacher, ids)])
    r0 = jnp.concatenate([x0, _embed(w, ids)]) @ w["C"]
    t_out, s_out, dists = _run(teacher, w, meta, h0, r0, valid, weight)
    out_pos = valid_v.at[:, 0].set(False)
    out_loss = _output_loss(t_out[s.batch_random:], s_out[s.batch_random:], meta,
                            out_pos / jnp.sum(out_pos))
    return jnp.sum(meta["layer_mask"][:, None] * dists) + s.output_weight * out_loss


def _evaluate_domain(params, teacher, masks, meta, domain, s: _Settings):
    """(agreement, largest per-block residual loss) on the whole domain."""
    w = _masked(params, teacher, masks)
    valid = domain["valid"]
    t_out, s_out, dists = _run_ids(teacher, w, meta, domain["ids"], valid,
                                   valid / jnp.sum(valid))
    agreement = _agreement(t_out, s_out, meta, valid.at[:, 0].set(False), s.atol)
    return agreement, jnp.max(meta["layer_mask"][:, None] * dists)


@functools.lru_cache(maxsize=None)
def _chunk_fn(s: _Settings):
    """jit: ``eval_every`` steps for the whole group (none when ``train`` is false, for
    the evaluation of the initial students), a domain evaluation, snapshots."""
    tx = s.tx()
    grad = jax.vmap(jax.grad(_loss), in_axes=(0, 0, 0, 0, 0, None, None, None))
    evaluate_all = jax.vmap(_evaluate_domain, in_axes=(0, 0, 0, 0, None, None))

    def chunk(state, group, shared, domain, train):
        def step(carry, _):
            params, opt, i = carry
            grads = grad(params, group["teacher"], group["masks"], group["meta"], group["words"],
                         i, shared, s)
            updates, opt = jax.vmap(tx.update)(grads, opt, params)
            return (optax.apply_updates(params, updates), opt, i + 1), None

        def steps(carry):
            return jax.lax.scan(step, carry, None, length=s.eval_every)[0]

        params, opt, i = jax.lax.cond(train, steps, lambda carry: carry,
                                      (state["params"], state["opt"], state["step"]))
        agreement, layer_max = evaluate_all(params, group["teacher"], group["masks"],
                                            group["meta"], domain, s)
        ok = (agreement >= s.min_agreement) & (layer_max <= s.max_layer_loss)
        new = ok & ~state["accepted"]

        def keep(old, cur):
            return jnp.where(new.reshape((-1,) + (1,) * (cur.ndim - 1)), cur, old)

        return {"params": params, "opt": opt, "step": i,
                "snapshot": jax.tree_util.tree_map(keep, state["snapshot"], params),
                "accepted": state["accepted"] | ok,
                "steps_at": jnp.where(new, i, state["steps_at"])}

    return jax.jit(chunk)


def _run_chunks(packed: Packed, params: dict, words: np.ndarray, shared: dict, domain: dict,
                s: _Settings, steps: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Scores the initial students, then trains the padded group chunk by chunk until
    ``steps`` or until every student is accepted; returns (chosen params, accepted
    flags, steps trained per student)."""
    opt = jax.vmap(s.tx().init)(params)
    n = len(packed.dims)
    state = {"params": params, "opt": opt, "step": jnp.int32(0), "snapshot": params,
             "accepted": jnp.zeros(n, bool), "steps_at": jnp.zeros(n, jnp.int32)}
    group = {"teacher": packed.teacher, "masks": packed.masks, "meta": packed.meta, "words": words}
    chunk = _chunk_fn(s)
    for c in range(steps // s.eval_every + 1):
        state = chunk(state, group, shared, domain, c > 0)
        if bool(np.all(state["accepted"])):
            break
    accepted = np.asarray(state["accepted"])
    chosen = jax.tree_util.tree_map(
        lambda snap, cur: np.where(accepted.reshape((-1,) + (1,) * (cur.ndim - 1)), snap, cur),
        state["snapshot"], state["params"])
    steps_done = np.where(accepted, np.asarray(state["steps_at"]), int(state["step"]))
    return chosen, accepted, steps_done


def train_group(teachers: Sequence[CompiledModel], kind: str, cfg: Mapping, seeds: Sequence[int],
                inputs: Sequence[np.ndarray], atol: float
                ) -> tuple[Packed, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Packs one group of teachers and trains their students together.

    Returns (packed group, padded parameters per student -- the snapshot at
    acceptance or the final ones --, accepted flags as scored in JAX, steps trained).
    """
    _check_config(kind, cfg, len(teachers), len(seeds))
    _check_compatible(teachers, inputs)
    ratio = float(cfg["ratio"])
    packed = pack(teachers, ratio)
    c_init = cfg.get("c_init", DEFAULTS["c_init"])
    params = init_params(packed, [init_student(m, kind, ratio, int(seed), c_init, inputs)
                                  for m, seed in zip(teachers, seeds)])
    words = np.array([_seed_word(int(seed)) for seed in seeds], np.uint32)
    chosen, accepted, steps = _run_chunks(packed, params, words, _shared(teachers[0]),
                                          _domain(teachers[0], inputs),
                                          _Settings.of(cfg, atol), int(cfg["steps"]))
    return packed, chosen, accepted, steps


def _check_config(kind: str, cfg: Mapping, n_teachers: int, n_seeds: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n_seeds != n_teachers:
        raise ValueError(f"{n_teachers} teachers but {n_seeds} seeds")
    if int(cfg["steps"]) % int(cfg["eval_every"]):
        raise ValueError("steps must be a multiple of eval_every")


# ---------------------------------------------------------------------------
# Unpacking, folding, evaluation.
# ---------------------------------------------------------------------------


def _d_space_model(teacher: CompiledModel, arrays: Mapping[str, np.ndarray]) -> CompiledModel:
    """The teacher with its embeddings and block weights replaced by ``arrays``
    (per-head layout, unpadded)."""
    d = Dims.of(teacher, 1.0)
    flat = {"q": ("wq", "bq"), "k": ("wk", "bk"), "v": ("wv", "bv"), "o": ("wo", "bo"),
            "1": ("w1", "b1"), "2": ("w2", "b2")}
    params = {"token_embed": {"embeddings": arrays["tok"]},
              "pos_embed": {"embeddings": arrays["pos"]}}
    for layer in range(d.layers):
        for name, (wk, bk) in flat.items():
            w = arrays[wk][layer]
            w = w.reshape(-1, d.width) if name == "o" else w.reshape(w.shape[0], -1)
            params[f"transformer/layer_{layer}/{_MODULES[name]}"] = {
                "w": np.asarray(w, np.float32), "b": np.asarray(arrays[bk][layer].reshape(-1),
                                                                np.float32)}
    return dataclasses.replace(teacher, params=params)


def evaluate(teacher: CompiledModel, student: CompiledModel, C: np.ndarray,
             inputs: Sequence[np.ndarray], atol: float) -> dict:
    """Agreement and residual losses of a folded student (NumPy, float32).

    ``layer_loss[i]`` is the mean over inputs and positions (BOS included) of
    ``|h_i - r_i Cᵀ|²`` after block ``i`` (attention and MLP of every layer);
    ``embed_loss`` the same for the embedding.
    """
    fid = desparsify.agreement(teacher, student, inputs, atol, margin=MARGIN)
    C = np.asarray(C, np.float32)
    sums = np.zeros(2 * teacher.num_layers + 1)
    count = 0
    for x in inputs:
        if len(x):
            ids = encode(teacher, x.tolist())
            for i, (h, r) in enumerate(zip(forward_residuals(teacher, ids),
                                           forward_residuals(student, ids))):
                sums[i] += float(np.sum(np.square(h - r @ C.T), dtype=np.float64))
            count += ids.size
    losses = sums / max(count, 1)
    return {"agreement": float(fid["inputs"]), "position_agreement": float(fid["positions"]),
            "layer_loss": [float(v) for v in losses[1:]],
            "max_layer_loss": float(np.max(losses[1:])) if len(losses) > 1 else 0.0,
            "embed_loss": float(losses[0])}


def read_write_forward(model: CompiledModel, C: np.ndarray, ids: np.ndarray,
                       dtype=np.float64) -> tuple[list[np.ndarray], np.ndarray]:
    """The explicit read/write student in NumPy: (compressed residuals
    ``[r0, after attn_0, after mlp_0, ...]`` each [B, T, D'], output logits [B, T, O]).

    ``model`` supplies the D-space weights; a block reads ``r Cᵀ`` and writes
    ``block(r Cᵀ) C``. Equals ``forward_residuals(fold(model, C), ids)``.
    """
    C = np.asarray(C, dtype)
    w = {k: np.asarray(v, dtype) for k, v in teacher_arrays(model).items()}
    ids = np.asarray(ids)
    T = ids.shape[1]
    r = (w["tok"][ids] + w["pos"][:T][None]) @ C
    out = [r]
    mask = np.tril(np.ones((T, T), bool)) if model.causal else np.ones((T, T), bool)
    scale = math.sqrt(model.key_size)
    for layer in range(model.num_layers):
        lw = {k: w[k][layer] for k in LAYER_KEYS}
        x = r @ C.T
        q = np.einsum("btd,dhk->bthk", x, lw["wq"]) + lw["bq"]
        k = np.einsum("btd,dhk->bthk", x, lw["wk"]) + lw["bk"]
        v = np.einsum("btd,dhv->bthv", x, lw["wv"]) + lw["bv"]
        logits = np.where(mask, np.einsum("bthk,bshk->bhts", q, k) / scale, -1e30)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("bthv,hvd->btd", np.einsum("bhts,bshv->bthv", probs, v), lw["wo"])
        r = r + (attn + lw["bo"]) @ C
        out.append(r)
        x = r @ C.T
        hidden = np.maximum(x @ lw["w1"] + lw["b1"], 0)
        r = r + (hidden @ lw["w2"] + lw["b2"]) @ C
        out.append(r)
    return out, (r @ C.T) @ model.unembed_matrix().astype(dtype)


# ---------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------


def distill(teachers: Sequence[CompiledModel], kind: str, cfg: Mapping, seeds: Sequence[int],
            inputs: Sequence[np.ndarray], atol: float,
            progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Distils every teacher into a student of residual width ``D'`` (see the module docstring).

    ``seeds[i]`` seeds teacher ``i``'s student; ``inputs`` is the input domain
    (arrays [N, length] of token values) the students are scored on. Returns, in
    the teachers' order, ``{"model": folded CompiledModel, "C": [D, D'] compression,
    "accepted", "agreement", "position_agreement", "layer_loss", "max_layer_loss",
    "embed_loss", "steps", "residual_width", "group"}`` (figures from :func:`evaluate`).
    ``progress(done, total)`` is called after every group.
    """
    _check_config(kind, cfg, len(teachers), len(seeds))
    results: list[dict] = [{} for _ in teachers]
    done = 0
    for g, members in enumerate(groups(teachers, int(cfg["group_size"]))):
        group = [teachers[i] for i in members]
        packed, chosen, _, steps = train_group(group, kind, cfg, [seeds[i] for i in members],
                                               inputs, atol)
        for j, (i, teacher) in enumerate(zip(members, group)):
            shapes = packed.dims[j].shapes(packed.vocab, packed.positions)
            arrays = {k: _unpad(v[j], shapes[k]) for k, v in chosen.items()}
            base = teacher if kind == "compressed" else _d_space_model(teacher, arrays)
            student = desparsify.fold(base, arrays["C"])
            figures = evaluate(teacher, student, arrays["C"], inputs, atol)
            accepted = (figures["agreement"] >= float(cfg["min_agreement"])
                        and figures["max_layer_loss"] <= float(cfg["max_layer_loss"]))
            results[i] = {"model": student, "C": arrays["C"], "accepted": bool(accepted),
                          **figures, "steps": int(steps[j]),
                          "residual_width": packed.dims[j].compressed, "group": g}
        done += len(members)
        if progress is not None:
            progress(done, len(teachers))
    return results
