"""Meta-model input: a compiled model's weights as a sequence of feature tokens.

Two tokenizations, selected by ``decompiler.input.tokenization``:

``chunks`` (seed 001, App. B.2)
    The flat weight vector (layout order, see docs/data-formats.md) is
    symlog-transformed and cut into consecutive chunks of ``chunk_size``
    floats; the last chunk is filled with ``pad_value``. Each token is tagged
    with the kind and layer of the array its first float belongs to.

``residual``
    Every weight array that reads from or writes to the residual stream is cut
    along its other axis, so each token is a vector over residual dimensions
    (zero-filled to ``max_residual``) and all tokens of one model share the
    same residual coordinates: an embedding row; a query/key column pair
    (``[W_Q[:, j], W_K[:, j]]``); a value column with the matching output row
    (``[W_V[:, j], W_O[j, :]]``); an MLP hidden neuron (``[W_in[:, j],
    W_out[j, :]]`` plus its bias); a residual bias. Tokens that are all zero
    (tracr pads every layer to the widest one) carry nothing and are dropped.

For the auxiliary residual supervision (``decompiler.train.residual_supervision``),
:func:`residual_slots` names what each residual dimension holds, from the labels the compiler
gives it (``tokens:3``, ``indices:0``, ``one``, ``v2_5:True``): the variable, as a *slot*
(:data:`SLOTS`).

Both return :class:`WeightTokens`: ``features`` (n, width) float32 after the
symmetric log transform, and integer ``kind``, ``layer`` (0 = embeddings,
l + 1 = transformer layer l) and ``index`` (position within its array, capped)
tags that the meta-model embeds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Sequence

import numpy as np

TOKENIZATIONS = ("chunks", "residual")
# Token kinds (embedded by the meta-model); "pad" marks padding positions.
KINDS = ("pad", "token_embed", "pos_embed", "query_key", "value_output", "mlp", "bias",
         "query", "key", "value", "output", "mlp_in", "mlp_out",
         # decompiler.input.value_tables only (the kind embedding grows only then, so model
         # files trained without them keep their shapes):
         "output_value", "output_bool", "output_numerical")
BASE_KINDS = 13
KIND_ID = {k: i for i, k in enumerate(KINDS)}
_SUBLAYER_KIND = {"token_embed": "token_embed", "pos_embed": "pos_embed", "query": "query",
                  "key": "key", "value": "value", "linear": "output", "linear_1": "mlp_in",
                  "linear_2": "mlp_out"}

# What a residual dimension holds, for the auxiliary supervision: slot 0 is "not known" (a
# padding dimension, a rotated or distilled model's plain coordinates), then the input
# variables and the program's variables v1, v2, ... by their canonical number.
MAX_VARIABLES = 12
SLOTS = (("unknown", "tokens", "indices", "one")
         + tuple(f"v{i}" for i in range(1, MAX_VARIABLES + 1)))
_VARIABLE = re.compile(r"v(\d+)(?:_|$)")


def residual_slots(labels: Sequence[str], max_residual: int) -> np.ndarray:
    """(max_residual,) int8: the :data:`SLOTS` index of each residual dimension of a compiled
    model, from its ``residual_labels`` (tracr's ``name:value`` basis directions; a
    variable's label starts with its canonical name, ``v3_7:True``, as do its hidden
    dimensions, ``v1_2_selector_width_attn_output``). Dimensions beyond ``len(labels)``, labels
    that name no variable and variables past ``MAX_VARIABLES`` are 0 (not supervised)."""
    out = np.zeros(max_residual, np.int8)
    for d, label in enumerate(labels[:max_residual]):
        name = str(label).split(":", 1)[0]
        if name in ("tokens", "indices", "one"):
            out[d] = SLOTS.index(name)
        elif (m := _VARIABLE.match(name)) and 1 <= int(m.group(1)) <= MAX_VARIABLES:
            out[d] = SLOTS.index(f"v{int(m.group(1))}")
    return out


def symlog(x: np.ndarray) -> np.ndarray:
    """Seed 001 App. B.2: sign(x)·log|x| for |x| > 2, x·log(2)/2 otherwise (continuous)."""
    x = np.asarray(x, np.float32)
    ax = np.abs(x)
    big = np.sign(x) * np.log(np.maximum(ax, 2.0))
    return np.where(ax > 2.0, big, x * np.float32(math.log(2.0) / 2.0)).astype(np.float32)


@dataclasses.dataclass
class WeightTokens:
    features: np.ndarray  # (n, width) float32
    kind: np.ndarray      # (n,) int32, index into KINDS
    layer: np.ndarray     # (n,) int32
    index: np.ndarray     # (n,) int32

    def __len__(self) -> int:
        return int(self.features.shape[0])


class InputTooLarge(ValueError):
    """A model whose weights do not fit the meta-model's input size."""


def feature_width(cfg: Mapping) -> int:
    if cfg["tokenization"] == "chunks":
        return int(cfg["chunk_size"])
    return 2 * int(cfg["max_residual"]) + 1


def kinds(cfg: Mapping) -> int:
    """Size of the meta-model's kind embedding under ``decompiler.input`` ``cfg``."""
    return len(KINDS) if cfg.get("value_tables") else BASE_KINDS


def tokenize(flat: np.ndarray, layout: Sequence[Mapping], cfg: Mapping,
             model_meta: Mapping | None = None) -> WeightTokens:
    """Tokens of one model (flat weights + layout) under the input config ``cfg``
    (``decompiler.input``). With ``cfg["value_tables"]`` the output encoder's value table is
    appended (:func:`value_table_tokens`), read from ``model_meta``, the compiled model's
    metadata (:meth:`metamodels.zoo.compiler.CompiledModel.metadata`; a zoo row's
    ``meta["model"]``); ValueError when it is missing.

    Raises :class:`InputTooLarge` when the model exceeds ``max_residual`` or ``max_tokens``."""
    if cfg["tokenization"] == "chunks":
        toks = _chunks(flat, layout, int(cfg["chunk_size"]), float(cfg["pad_value"]))
    elif cfg["tokenization"] == "residual":
        toks = _residual(flat, layout, int(cfg["max_residual"]))
        if cfg.get("value_tables"):
            if not model_meta:
                raise ValueError("decompiler.input.value_tables needs the compiled model's "
                                 "metadata (its output encoder); none was given")
            toks = _concat(toks, value_table_tokens(model_meta, int(cfg["max_residual"])))
    else:
        raise ValueError(f"decompiler.input.tokenization: unknown {cfg['tokenization']!r}; "
                         f"use one of {TOKENIZATIONS}")
    toks.index = np.minimum(toks.index, int(cfg["max_index"]) - 1).astype(np.int32)
    if len(toks) > int(cfg["max_tokens"]):
        raise InputTooLarge(f"{len(toks)} weight tokens > decompiler.input.max_tokens "
                            f"= {cfg['max_tokens']}")
    return toks


def _chunks(flat: np.ndarray, layout: Sequence[Mapping], size: int, pad: float) -> WeightTokens:
    flat = np.asarray(flat, np.float32)
    n = max(1, -(-flat.size // size))
    x = np.full(n * size, pad, np.float32)
    x[:flat.size] = symlog(flat)
    starts = np.arange(n) * size
    offsets = np.array([e["offset"] for e in layout])
    which = np.searchsorted(offsets, starts, side="right") - 1
    kind = np.array([KIND_ID[_SUBLAYER_KIND[layout[i]["sublayer"]]] for i in which], np.int32)
    layer = np.array([layout[i]["layer"] + 1 for i in which], np.int32)
    index = ((starts - offsets[which]) // size).astype(np.int32)
    return WeightTokens(x.reshape(n, size), kind, layer, index)


def arrays_of(flat: np.ndarray, layout: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """name -> array views of a flat weight vector."""
    out = {}
    for e in layout:
        out[e["name"]] = np.asarray(flat[e["offset"]:e["offset"] + e["size"]]).reshape(e["shape"])
    return out


def _residual(flat: np.ndarray, layout: Sequence[Mapping], max_residual: int) -> WeightTokens:
    a = arrays_of(np.asarray(flat, np.float32), layout)
    d = a["token_embed/embeddings"].shape[1]
    if d > max_residual:
        raise InputTooLarge(f"residual width {d} > decompiler.input.max_residual = {max_residual}")
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, str, int]] = []

    def add(left, right, scalar, kind, layer):
        n = left.shape[0]
        right = np.zeros((n, d), np.float32) if right is None else right
        scalar = np.zeros(n, np.float32) if scalar is None else scalar
        parts.append((left, right, scalar, kind, layer))

    add(a["token_embed/embeddings"], None, None, "token_embed", 0)
    add(a["pos_embed/embeddings"], None, None, "pos_embed", 0)
    layers = sorted({e["layer"] for e in layout if e["layer"] >= 0})
    for l in layers:
        p = f"transformer/layer_{l}/"
        if p + "attn/query/w" in a:
            q, k = a[p + "attn/query/w"], a[p + "attn/key/w"]
            v, o = a[p + "attn/value/w"], a[p + "attn/linear/w"]
            add(q.T, k.T, a[p + "attn/query/b"], "query_key", l + 1)
            add(v.T, o, a[p + "attn/value/b"], "value_output", l + 1)
            add(np.zeros((1, d), np.float32), a[p + "attn/linear/b"][None], None, "bias", l + 1)
        if p + "mlp/linear_1/w" in a:
            add(a[p + "mlp/linear_1/w"].T, a[p + "mlp/linear_2/w"], a[p + "mlp/linear_1/b"],
                "mlp", l + 1)
            add(np.zeros((1, d), np.float32), a[p + "mlp/linear_2/b"][None], None, "bias", l + 1)
    feats, kinds, lays, idx = [], [], [], []
    for left, right, scalar, kind, layer in parts:
        n = left.shape[0]
        f = np.zeros((n, 2 * max_residual + 1), np.float32)
        f[:, :d] = left
        f[:, max_residual:max_residual + d] = right
        f[:, -1] = scalar
        keep = np.any(f != 0, axis=1)
        feats.append(f[keep])
        kinds.append(np.full(int(keep.sum()), KIND_ID[kind], np.int32))
        lays.append(np.full(int(keep.sum()), layer, np.int32))
        idx.append(np.flatnonzero(keep).astype(np.int32))
    return WeightTokens(symlog(np.concatenate(feats)), np.concatenate(kinds),
                        np.concatenate(lays), np.concatenate(idx))


def _concat(a: WeightTokens, b: WeightTokens) -> WeightTokens:
    return WeightTokens(*(np.concatenate([getattr(a, f), getattr(b, f)])
                          for f in ("features", "kind", "layer", "index")))


def value_table_tokens(model_meta: Mapping, max_residual: int) -> WeightTokens:
    """The output encoder, which every compiled tracr model ships beside its weights, as
    residual-row tokens: one per output value j, its first half the residual direction the
    unembedding reads for j (tracr: one basis dimension; rotated or distilled models: the
    column of their ``unembed`` matrix), its scalar the value (booleans as 0/1, kind
    ``output_bool``; other values ``output_value``); a numerical output is one token of kind
    ``output_numerical`` (scalar 0). Layer tag 0, as the embeddings (the encoders). After
    symlog, as :func:`tokenize`. Shapes: (outputs, 2 * max_residual + 1)."""
    d = len(model_meta["residual_labels"])
    if d > max_residual:
        raise InputTooLarge(f"residual width {d} > decompiler.input.max_residual = {max_residual}")
    if model_meta.get("unembed") is not None:
        u = np.asarray(model_meta["unembed"], np.float32)
    else:
        idx = [int(i) for i in model_meta["unembed_indices"]]
        u = np.zeros((d, len(idx)), np.float32)
        u[idx, np.arange(len(idx))] = 1.0
    n = u.shape[1]
    f = np.zeros((n, 2 * max_residual + 1), np.float32)
    f[:, :d] = u.T
    values = model_meta.get("output_values")
    if values is None or not model_meta.get("categorical_output", True):
        kind = np.full(n, KIND_ID["output_numerical"], np.int32)
    else:
        kind = np.empty(n, np.int32)
        for j, (typ, v) in enumerate(values):
            is_bool = "bool" in str(typ)
            kind[j] = KIND_ID["output_bool" if is_bool else "output_value"]
            f[j, -1] = float(v) if isinstance(v, (int, float)) else 0.0
    return WeightTokens(symlog(f), kind, np.zeros(n, np.int32), np.arange(n, dtype=np.int32))
