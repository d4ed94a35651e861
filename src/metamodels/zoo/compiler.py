"""Fast, JAX-free compilation of RASP programs to tracr transformer weights.

Stock ``tracr.compiler.compiling.compile_rasp_to_model`` spends most of its
time inside haiku's ``forward.init`` (XLA-compiling random initialisers for
every new parameter shape) although the result of that call is only used as a
set of zero arrays of the right shapes.  :func:`compile_program` runs tracr's
own pure-Python compiler stages (validation, graph extraction, basis
inference, craft components, craft model) and then assembles the parameter
arrays with NumPy only, reproducing ``tracr.compiler.assemble`` bit for bit:
same parameter names, shapes, dtypes (float32) and values.

:func:`compile_program_stock` wraps the stock compiler and converts its output
to the same :class:`CompiledModel` container, and :func:`models_bitwise_equal`
compares two models.

The fast path never calls JAX or haiku (importing any tracr.compiler
submodule still imports them, via tracr.compiler.__init__).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from typing import Any, Iterable, Sequence

import numpy as np
from tracr.compiler import (
    basis_inference,
    craft_graph_to_model,
    expr_to_craft_graph,
    nodes,
    rasp_to_graph,
    validating,
)
from tracr.craft import bases, transformers, vectorspace_fns
from tracr.rasp import rasp

__all__ = [
    "COMPILER_BOS",
    "COMPILER_PAD",
    "CompiledModel",
    "compile_program",
    "compile_program_stock",
    "from_assembled",
    "model_differences",
    "models_bitwise_equal",
    "param_order",
    "encode_value",
    "decode_value",
]

COMPILER_BOS = "compiler_bos"
COMPILER_PAD = "compiler_pad"

_FORMAT = "metamodels.compiled_model/1"

# Canonical order of the sub-modules of one transformer layer and of the
# parameters inside each of them.
_ATTN_MODULES = ("query", "key", "value", "linear")
_MLP_MODULES = ("linear_1", "linear_2")
_PARAMS = ("w", "b")


# ---------------------------------------------------------------------------
# JSON encoding of token / output values (keeps the Python type).
# ---------------------------------------------------------------------------


def encode_value(v: Any) -> list:
    """Encodes a RASP value as a JSON-able ``[type, value]`` pair."""
    # bool before int: bool is a subclass of int.
    if v is None:
        return ["none", None]
    if isinstance(v, (bool, np.bool_)):
        return ["bool", bool(v)] if isinstance(v, bool) else ["np.bool_", bool(v)]
    if isinstance(v, np.generic):
        return [f"np.{v.dtype.name}", v.item()]
    if isinstance(v, int):
        return ["int", int(v)]
    if isinstance(v, float):
        if math.isfinite(v):
            return ["float", v]
        return ["float", repr(v)]  # 'nan', 'inf', '-inf'
    if isinstance(v, str):
        return ["str", v]
    if isinstance(v, tuple):
        return ["tuple", [encode_value(x) for x in v]]
    if isinstance(v, frozenset):
        return ["frozenset", [encode_value(x) for x in v]]
    raise TypeError(f"Cannot JSON-encode value {v!r} of type {type(v).__name__}")


def decode_value(pair: Sequence) -> Any:
    """Inverse of :func:`encode_value`."""
    kind, v = pair
    if kind == "none":
        return None
    if kind == "bool":
        return bool(v)
    if kind == "int":
        return int(v)
    if kind == "float":
        return float(v)
    if kind == "str":
        return str(v)
    if kind == "tuple":
        return tuple(decode_value(x) for x in v)
    if kind == "frozenset":
        return frozenset(decode_value(x) for x in v)
    if kind.startswith("np."):
        return np.dtype(kind[3:]).type(v)
    raise ValueError(f"Unknown encoded value kind {kind!r}")


def _same_values(a: Sequence | None, b: Sequence | None) -> bool:
    """Equality of value lists that also distinguishes 1 / 1.0 / True."""
    if a is None or b is None:
        return a is None and b is None
    return [encode_value(x) for x in a] == [encode_value(x) for x in b]


# ---------------------------------------------------------------------------
# Container.
# ---------------------------------------------------------------------------


def param_order(num_layers: int) -> list[tuple[str, str]]:
    """Canonical (module, param) order for a model with ``num_layers`` layers."""
    order = [("token_embed", "embeddings"), ("pos_embed", "embeddings")]
    for layer in range(num_layers):
        for mod in _ATTN_MODULES:
            for par in _PARAMS:
                order.append((f"transformer/layer_{layer}/attn/{mod}", par))
        for mod in _MLP_MODULES:
            for par in _PARAMS:
                order.append((f"transformer/layer_{layer}/mlp/{mod}", par))
    return order


@dataclasses.dataclass
class CompiledModel:
    """A compiled tracr model as plain NumPy arrays plus metadata.

    ``params`` uses haiku's naming: ``params[module][param]``, e.g.
    ``params["transformer/layer_0/attn/query"]["w"]``.

    ``unembed_indices[j]`` is the residual dimension read by output dimension
    ``j``; tracr's unembedding is the 0/1 projection matrix
    ``P[unembed_indices[j], j] = 1`` (see :meth:`unembed_matrix`).

    ``unembed`` replaces that projection with an explicit [residual, output]
    matrix in models whose residual stream was rotated or compressed
    (:mod:`metamodels.variants.desparsify`, :mod:`metamodels.variants.distill`); their
    ``residual_labels`` are then plain coordinate names.
    """

    params: dict[str, dict[str, np.ndarray]]
    num_layers: int
    num_heads: int
    key_size: int
    mlp_hidden_size: int
    causal: bool
    residual_labels: list[str]
    input_tokens: list
    bos_token: str
    pad_token: str
    output_values: list | None
    categorical_output: bool
    unembed_indices: list[int] = dataclasses.field(default_factory=list)
    output_labels: list[str] = dataclasses.field(default_factory=list)
    unembed: np.ndarray | None = None

    # -- derived properties ---------------------------------------------------

    @property
    def residual_size(self) -> int:
        return len(self.residual_labels)

    @property
    def max_seq_len(self) -> int:
        """Maximum number of input tokens, not counting the BOS token."""
        return int(self.params["pos_embed"]["embeddings"].shape[0]) - 1

    @property
    def vocab_size(self) -> int:
        """Number of input ids (including BOS and PAD)."""
        return len(self.input_tokens)

    @property
    def bos_id(self) -> int:
        return _index_of(self.input_tokens, self.bos_token)

    @property
    def pad_id(self) -> int:
        return _index_of(self.input_tokens, self.pad_token)

    def unembed_matrix(self) -> np.ndarray:
        """The [residual, output] matrix the model unembeds with (tracr's is 0/1)."""
        if self.unembed is not None:
            return np.asarray(self.unembed, np.float32)
        m = np.zeros((self.residual_size, len(self.unembed_indices)), np.float32)
        m[self.unembed_indices, np.arange(len(self.unembed_indices))] = 1.0
        return m

    # -- flat views -----------------------------------------------------------

    def layout(self) -> list[dict]:
        """Canonical order and description of every weight array.

        Order: token_embed, pos_embed, then for each layer the attention
        parameters (query w,b; key w,b; value w,b; linear w,b) followed by the MLP
        parameters (linear_1 w,b; linear_2 w,b) -- whatever exists in ``params``.
        Each entry has ``name`` ("module/param"), ``module``, ``param``, ``shape``,
        ``size``, ``offset`` (into :meth:`flat`), ``layer`` (-1 for the
        embeddings), ``type`` ("embed" | "attn" | "mlp") and ``sublayer``
        ("token_embed", "pos_embed", "query", ..., "linear_2").
        """
        entries = []
        offset = 0
        for module, par in param_order(self.num_layers):
            if module not in self.params or par not in self.params[module]:
                continue
            arr = self.params[module][par]
            if module.startswith("transformer/"):
                _, layer_s, kind, sub = module.split("/")
                layer = int(layer_s.split("_")[1])
            else:
                layer, kind, sub = -1, "embed", module
            size = int(arr.size)
            entries.append(
                dict(
                    name=f"{module}/{par}",
                    module=module,
                    param=par,
                    shape=[int(s) for s in arr.shape],
                    size=size,
                    offset=offset,
                    layer=layer,
                    type=kind,
                    sublayer=sub,
                )
            )
            offset += size
        known = {(e["module"], e["param"]) for e in entries}
        extra = [(m, p) for m, d in self.params.items() for p in d if (m, p) not in known]
        if extra:
            raise ValueError(f"Parameters outside the canonical layout: {extra}")
        return entries

    def flat(self) -> np.ndarray:
        """float32 1-D concatenation of all arrays in :meth:`layout` order."""
        parts = [
            np.asarray(self.params[e["module"]][e["param"]], np.float32).reshape(-1)
            for e in self.layout()
        ]
        if not parts:
            return np.zeros((0,), np.float32)
        return np.concatenate(parts)

    @property
    def num_params(self) -> int:
        return sum(int(a.size) for d in self.params.values() for a in d.values())

    # -- (de)serialisation ----------------------------------------------------

    def metadata(self) -> dict:
        """JSON-able metadata (everything except the arrays)."""
        return dict(
            format=_FORMAT,
            num_layers=int(self.num_layers),
            num_heads=int(self.num_heads),
            key_size=int(self.key_size),
            mlp_hidden_size=int(self.mlp_hidden_size),
            causal=bool(self.causal),
            residual_labels=list(self.residual_labels),
            input_tokens=[encode_value(v) for v in self.input_tokens],
            bos_token=encode_value(self.bos_token),
            pad_token=encode_value(self.pad_token),
            output_values=(
                None
                if self.output_values is None
                else [encode_value(v) for v in self.output_values]
            ),
            categorical_output=bool(self.categorical_output),
            unembed_indices=[int(i) for i in self.unembed_indices],
            output_labels=list(self.output_labels),
            param_names=[e["name"] for e in self.layout()],
            **({} if self.unembed is None else
               {"unembed": np.asarray(self.unembed, np.float32).tolist()}),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array dict ("module/param" names), layout order."""
        return {e["name"]: np.asarray(self.params[e["module"]][e["param"]]) for e in self.layout()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> "CompiledModel":
        """Rebuilds a model from :meth:`to_arrays` output and :meth:`metadata`."""
        if meta.get("format") != _FORMAT:
            raise ValueError(f"Unknown compiled-model format {meta.get('format')!r}")
        params: dict[str, dict[str, np.ndarray]] = {}
        for name in meta["param_names"]:
            module, par = name.rsplit("/", 1)
            params.setdefault(module, {})[par] = np.array(arrays[name], dtype=np.float32)
        outs = meta["output_values"]
        return cls(
            params=params,
            num_layers=int(meta["num_layers"]),
            num_heads=int(meta["num_heads"]),
            key_size=int(meta["key_size"]),
            mlp_hidden_size=int(meta["mlp_hidden_size"]),
            causal=bool(meta["causal"]),
            residual_labels=list(meta["residual_labels"]),
            input_tokens=[decode_value(v) for v in meta["input_tokens"]],
            bos_token=decode_value(meta["bos_token"]),
            pad_token=decode_value(meta["pad_token"]),
            output_values=None if outs is None else [decode_value(v) for v in outs],
            categorical_output=bool(meta["categorical_output"]),
            unembed_indices=[int(i) for i in meta["unembed_indices"]],
            output_labels=list(meta["output_labels"]),
            unembed=(None if meta.get("unembed") is None
                     else np.asarray(meta["unembed"], np.float32)),
        )

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays + ``meta_json`` (0-d unicode array); ``np.savez``-ready.

        Loading never needs ``allow_pickle``.
        """
        d = self.to_arrays()
        d["meta_json"] = np.array(json.dumps(self.metadata()))
        return d

    @classmethod
    def from_npz_dict(cls, d) -> "CompiledModel":
        """Inverse of :meth:`to_npz_dict`; ``d`` may be an ``NpzFile``."""
        meta = json.loads(str(np.asarray(d["meta_json"]).item()))
        names = meta["param_names"]
        return cls.from_arrays({n: d[n] for n in names}, meta)


def _index_of(values: Sequence, v: Any) -> int:
    for i, x in enumerate(values):
        if type(x) is type(v) and x == v:
            return i
    raise ValueError(f"{v!r} not found")


# ---------------------------------------------------------------------------
# Fast compile.
# ---------------------------------------------------------------------------


def _validate_program(program, vocab, compiler_bos, compiler_pad) -> None:
    """Exactly the checks ``compile_rasp_to_model`` does before compiling."""
    if compiler_bos in vocab:
        raise ValueError(
            "Compiler BOS token must not be present in the vocab. "
            f"Found '{compiler_bos}' in {vocab}"
        )
    if compiler_pad in vocab:
        raise ValueError(
            "Compiler PAD token must not be present in the vocab. "
            f"Found '{compiler_pad}' in {vocab}"
        )
    unsupported = validating.static_validate(program)
    if unsupported:
        msg = "\n".join(f"{e.expr.name}: {e.reason}" for e in unsupported)
        raise NotImplementedError(f"Unsupported RASP expressions:\n{msg}")


def _one_hot(self: bases.VectorSpaceWithBasis, basis_direction: bases.BasisDirection):
    """``VectorSpaceWithBasis.vector_from_basis_direction`` without its ``np.eye(num_dims)``.

    tracr builds a whole identity matrix for every basis vector it asks for (and keeps it
    alive as the vector's base array): quadratic time and memory in the space's size, which
    made a 3,240-unit SequenceMap MLP take minutes. The same float64 one-hot values, so the
    weights stay bitwise identical to stock tracr's.
    """
    magnitudes = np.zeros(self.num_dims)
    magnitudes[self.index_by_direction[basis_direction]] = 1.0
    return self.make_vector(magnitudes)


@contextlib.contextmanager
def _fast_one_hot():
    """Use :func:`_one_hot` inside tracr's craft stages (the stock path keeps tracr's own)."""
    stock = bases.VectorSpaceWithBasis.vector_from_basis_direction
    bases.VectorSpaceWithBasis.vector_from_basis_direction = _one_hot
    try:
        yield
    finally:
        bases.VectorSpaceWithBasis.vector_from_basis_direction = stock


def _build_craft(program, vocab, max_seq_len, compiler_bos, compiler_pad, mlp_exactness):
    """tracr's pure-Python stages; returns (craft_model, graph, sink)."""
    with _fast_one_hot():
        return _build_craft_stages(program, vocab, max_seq_len, compiler_bos, compiler_pad,
                                   mlp_exactness)


def _build_craft_stages(program, vocab, max_seq_len, compiler_bos, compiler_pad,
                        mlp_exactness):
    _validate_program(program, vocab, compiler_bos, compiler_pad)
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, vocab, max_seq_len)
    # NB: like stock, the craft graph is always built non-causally; `causal`
    # only ends up in the model config.
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph,
        bos_dir=bases.BasisDirection(rasp.tokens.label, compiler_bos),
        mlp_exactness=mlp_exactness,
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    return craft_model, graph, sink


def _model_config(craft_model: transformers.SeriesWithResiduals):
    """Same logic as assemble._get_model_config_and_module_names."""
    blocks = list(craft_model.blocks)
    if not blocks:
        # Stock fails here with an IndexError (module_names[-1] on an empty list).
        raise IndexError(
            "The compiled craft model has no blocks (the program performs no "
            "computation, e.g. it is just rasp.tokens / rasp.indices); tracr "
            "cannot assemble a transformer without layers."
        )
    module_names: list[str] = []
    multi_heads: list[list[transformers.AttentionHead]] = []
    mlps: list[transformers.MLP] = []
    # Half-layer slots: attn_0, mlp_0, attn_1, mlp_1, ... Each block takes the
    # next free slot of its type; skipped slots stay all-zero.
    slot = 0
    for block in blocks:
        if isinstance(block, transformers.MLP):
            mlps.append(block)
            want = 1
        else:
            multi_heads.append(list(block.as_multi().heads()))
            want = 0
        while slot % 2 != want:
            slot += 1
        kind = "mlp" if want else "attn"
        module_names.append(f"transformer/layer_{slot // 2}/{kind}")
        slot += 1
    num_layers = int(module_names[-1].split("_")[1].split("/")[0]) + 1
    heads = sum(multi_heads, [])
    if multi_heads:
        num_heads = max(len(h) for h in multi_heads)
        key_size = max(max(h.w_qk.matrix.shape) for h in heads)
    else:
        num_heads, key_size = 1, 1
    if mlps:
        mlp_hidden_size = max(m.fst.output_space.num_dims for m in mlps)
    else:
        mlp_hidden_size = 1
    return dict(
        num_layers=num_layers,
        num_heads=num_heads,
        key_size=key_size,
        mlp_hidden_size=mlp_hidden_size,
    ), module_names


def _assemble(craft_model, tokens_space, indices_space, output_space, categorical_output, causal):
    """NumPy re-implementation of assemble.assemble_craft_model (params only)."""
    cfg, module_names = _model_config(craft_model)
    num_layers, num_heads = cfg["num_layers"], cfg["num_heads"]
    key_size, mlp_hidden = cfg["key_size"], cfg["mlp_hidden_size"]

    residual_space = bases.join_vector_spaces(
        craft_model.residual_space, tokens_space, indices_space, output_space
    )
    residual_labels = [str(d) for d in residual_space.basis]
    d_model = residual_space.num_dims

    if categorical_output and output_space.num_dims == 0:
        # Stock runs the whole model once inside haiku's init; the categorical
        # unembedding takes an argmax over the (empty) output space and fails.
        raise ValueError(
            "attempt to get argmax of an empty sequence: the program's "
            "categorical output has no possible values (empty output space), so "
            "tracr cannot build its unembedding."
        )

    # --- embeddings (hk.Embed stores jnp.asarray(float64 matrix) -> float32).
    tokens_to_res = vectorspace_fns.project(tokens_space, residual_space)
    one_dir = bases.BasisDirection("one")
    if one_dir in residual_space:
        one_to_res = vectorspace_fns.Linear.from_action(
            tokens_space,
            residual_space,
            lambda x: residual_space.vector_from_basis_direction(one_dir),
        )
        tokens_to_res = vectorspace_fns.Linear.combine_in_parallel([tokens_to_res, one_to_res])
    index_to_res = vectorspace_fns.project(indices_space, residual_space)
    pos_matrix = np.concatenate([np.zeros((1, d_model)), index_to_res.matrix], axis=0)

    params: dict[str, dict[str, np.ndarray]] = {
        "token_embed": {"embeddings": np.asarray(tokens_to_res.matrix, dtype=np.float32)},
        "pos_embed": {"embeddings": np.asarray(pos_matrix, dtype=np.float32)},
    }
    hk = num_heads * key_size
    shapes = {
        "attn/query": ((d_model, hk), (hk,)),
        "attn/key": ((d_model, hk), (hk,)),
        "attn/value": ((d_model, hk), (hk,)),
        "attn/linear": ((hk, d_model), (d_model,)),
        "mlp/linear_1": ((d_model, mlp_hidden), (mlp_hidden,)),
        "mlp/linear_2": ((mlp_hidden, d_model), (d_model,)),
    }
    for layer in range(num_layers):
        for sub, (wshape, bshape) in shapes.items():
            params[f"transformer/layer_{layer}/{sub}"] = {
                "w": np.zeros(wshape, np.float32),
                "b": np.zeros(bshape, np.float32),
            }

    def project(space):
        return vectorspace_fns.project(residual_space, space).matrix

    for module_name, module in zip(module_names, craft_model.blocks):
        if isinstance(module, transformers.MLP):
            hidden = module.fst.output_space.num_dims
            res_to_fst = project(module.fst.input_space)
            snd_to_res = project(module.snd.output_space).T
            params[f"{module_name}/linear_1"]["w"][:, :hidden] = res_to_fst @ module.fst.matrix
            params[f"{module_name}/linear_2"]["w"][:hidden, :] = module.snd.matrix @ snd_to_res
            continue

        multi = module.as_multi()
        query, key, value, linear = [], [], [], []
        for head in multi.heads():
            qk_size = head.w_qk.matrix.shape[1]
            q = np.zeros((d_model, key_size))
            q[:, :qk_size] = project(head.w_qk.left_space) @ head.w_qk.matrix
            query.append(q)
            k = np.zeros((d_model, key_size))
            k[:, :qk_size] = project(head.w_qk.right_space)
            key.append(k)
            value_size = head.w_ov.matrix.shape[1]
            if value_size > key_size:
                # Stock fails with a NumPy broadcasting ValueError at this point.
                raise ValueError(
                    f"Attention head in {module_name} has value size {value_size} "
                    f"(dimension of its output space) larger than the model key size "
                    f"{key_size} (max dimension of any W_QK); tracr's assembler cannot "
                    f"fit it into the value/output projections."
                )
            v = np.zeros((d_model, key_size))
            v[:, :value_size] = project(head.w_ov.input_space) @ head.w_ov.matrix
            value.append(v)
            o = np.zeros((key_size, d_model))
            o[:value_size, :] = project(head.w_ov.output_space).T
            linear.append(o)
        for _ in range(num_heads - multi.num_heads):
            query.append(np.zeros_like(query[0]))
            key.append(np.zeros_like(key[0]))
            value.append(np.zeros_like(value[0]))
            linear.append(np.zeros_like(linear[0]))
        # "heads input output -> input (heads output)" / "-> (heads input) output"
        params[f"{module_name}/query"]["w"][:, :] = np.concatenate(query, axis=1)
        params[f"{module_name}/key"]["w"][:, :] = np.concatenate(key, axis=1)
        params[f"{module_name}/value"]["w"][:, :] = np.concatenate(value, axis=1)
        params[f"{module_name}/linear"]["w"][:, :] = np.concatenate(linear, axis=0)

    # tracr unembeds with x @ project(residual_space, output_space).matrix.
    res_to_out = vectorspace_fns.project(residual_space, output_space).matrix
    unembed_indices = _projection_indices(res_to_out)
    return dict(
        params=params,
        residual_labels=residual_labels,
        unembed_indices=unembed_indices,
        causal=causal,
        categorical_output=categorical_output,
        **cfg,
    )


def _projection_indices(matrix: np.ndarray) -> list[int]:
    """Row index of the single 1 in each column of a 0/1 projection matrix."""
    m = np.asarray(matrix)
    idx = []
    for j in range(m.shape[1]):
        rows = np.flatnonzero(m[:, j])
        if len(rows) != 1 or m[rows[0], j] != 1:
            raise ValueError("Unembedding matrix is not a 0/1 projection.")
        idx.append(int(rows[0]))
    if np.count_nonzero(m) != len(idx):
        raise ValueError("Unembedding matrix is not a 0/1 projection.")
    return idx


def compile_program(
    program: rasp.SOp,
    vocab: set,
    max_seq_len: int,
    *,
    compiler_bos: str = COMPILER_BOS,
    compiler_pad: str = COMPILER_PAD,
    mlp_exactness: int = 100,
    causal: bool = False,
) -> CompiledModel:
    """Compiles ``program`` like ``compile_rasp_to_model``, without JAX/haiku.

    Produces parameters bitwise identical to stock tracr and raises whenever
    stock tracr raises (same exception types where stock raises deliberately).
    """
    craft_model, graph, sink = _build_craft(
        program, vocab, max_seq_len, compiler_bos, compiler_pad, mlp_exactness
    )

    # --- craft_model_to_transformer.
    if rasp.tokens.label not in graph.nodes:
        raise ValueError(
            f"Failed to find a node with label {rasp.tokens.label}. "
            "This is probably because your RASP program does not include "
            "rasp.tokens. A program must include rasp.tokens to be compiled."
        )
    tokens_value_set = graph.nodes[rasp.tokens.label][nodes.VALUE_SET].union(
        {compiler_bos, compiler_pad}
    )
    tokens_space = bases.VectorSpaceWithBasis.from_values(rasp.tokens.label, tokens_value_set)
    indices_space = bases.VectorSpaceWithBasis.from_values(rasp.indices.label, range(max_seq_len))
    categorical_output = rasp.is_categorical(sink[nodes.EXPR])
    output_space = bases.VectorSpaceWithBasis(sink[nodes.OUTPUT_BASIS])

    asm = _assemble(
        craft_model, tokens_space, indices_space, output_space, categorical_output, causal
    )

    input_tokens = _encoder_values(tokens_space.basis)
    output_values = _encoder_values(output_space.basis) if categorical_output else None

    return CompiledModel(
        params=asm["params"],
        num_layers=asm["num_layers"],
        num_heads=asm["num_heads"],
        key_size=asm["key_size"],
        mlp_hidden_size=asm["mlp_hidden_size"],
        causal=bool(causal),
        residual_labels=asm["residual_labels"],
        input_tokens=input_tokens,
        bos_token=compiler_bos,
        pad_token=compiler_pad,
        output_values=output_values,
        categorical_output=bool(categorical_output),
        unembed_indices=asm["unembed_indices"],
        output_labels=[str(d) for d in output_space.basis],
    )


def _encoder_values(basis: Iterable[bases.BasisDirection]) -> list:
    """Values in id order, as tracr's CategoricalEncoder assigns them.

    The encoder builds ``{value: index}`` by enumerating the basis, so a value
    that compares equal to an earlier one (e.g. ``1`` and ``True``) keeps the
    first key but gets the later index.
    """
    encoding_map: dict = {}
    for i, direction in enumerate(basis):
        encoding_map[direction.value] = i
    return [v for v, _ in sorted(encoding_map.items(), key=lambda kv: kv[1])]


# ---------------------------------------------------------------------------
# Stock compile (reference).
# ---------------------------------------------------------------------------


def compile_program_stock(
    program: rasp.SOp,
    vocab: set,
    max_seq_len: int,
    *,
    compiler_bos: str = COMPILER_BOS,
    compiler_pad: str = COMPILER_PAD,
    mlp_exactness: int = 100,
    causal: bool = False,
    return_assembled: bool = False,
):
    """Compiles with stock ``compile_rasp_to_model`` and converts the result.

    With ``return_assembled=True`` returns ``(CompiledModel, assembled)`` where
    ``assembled`` is tracr's ``AssembledTransformerModel``.
    """
    from tracr.compiler import compiling  # imports JAX / haiku (slow)

    assembled = compiling.compile_rasp_to_model(
        program,
        vocab,
        max_seq_len,
        causal=causal,
        compiler_bos=compiler_bos,
        compiler_pad=compiler_pad,
        mlp_exactness=mlp_exactness,
    )
    model = from_assembled(assembled)
    return (model, assembled) if return_assembled else model


def from_assembled(assembled) -> CompiledModel:
    """Converts a tracr ``AssembledTransformerModel`` to a CompiledModel."""
    import haiku as hk
    import jax.numpy as jnp

    params = {m: {p: np.asarray(a) for p, a in d.items()} for m, d in assembled.params.items()}
    cfg = assembled.model_config
    in_enc, out_enc = assembled.input_encoder, assembled.output_encoder
    input_tokens = [v for v, _ in sorted(in_enc.encoding_map.items(), key=lambda kv: kv[1])]
    categorical = hasattr(out_enc, "encoding_map")
    output_values = (
        [v for v, _ in sorted(out_enc.encoding_map.items(), key=lambda kv: kv[1])]
        if categorical
        else None
    )

    # Recover tracr's unembedding matrix by applying its unembed module to the
    # identity (it has no parameters; the projection is closed over).
    d_model = len(assembled.residual_labels)

    @hk.without_apply_rng
    @hk.transform
    def _unembed(x):
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    eye = jnp.eye(d_model, dtype=jnp.float32)
    res_to_out = np.asarray(_unembed.apply({}, eye), dtype=np.float64)
    if res_to_out.ndim == 1:  # squeezed single output dimension
        res_to_out = res_to_out[:, None]
    unembed_indices = _projection_indices(res_to_out)

    return CompiledModel(
        params=params,
        num_layers=int(cfg.num_layers),
        num_heads=int(cfg.num_heads),
        key_size=int(cfg.key_size),
        mlp_hidden_size=int(cfg.mlp_hidden_size),
        causal=bool(cfg.causal),
        residual_labels=list(assembled.residual_labels),
        input_tokens=input_tokens,
        bos_token=in_enc.bos_token,
        pad_token=in_enc.pad_token,
        output_values=output_values,
        categorical_output=bool(categorical),
        unembed_indices=unembed_indices,
        output_labels=[assembled.residual_labels[i] for i in unembed_indices],
    )


# ---------------------------------------------------------------------------
# Comparison.
# ---------------------------------------------------------------------------


def models_bitwise_equal(a: CompiledModel, b: CompiledModel) -> bool:
    """Same parameter names, shapes, dtypes and bytes, and same metadata."""
    return not model_differences(a, b)


def model_differences(a: CompiledModel, b: CompiledModel) -> list[str]:
    """Human-readable list of differences (empty if bitwise equal)."""
    diffs = []
    if set(a.params) != set(b.params):
        diffs.append(f"modules differ: {sorted(set(a.params) ^ set(b.params))}")
    for m in sorted(set(a.params) & set(b.params)):
        if set(a.params[m]) != set(b.params[m]):
            diffs.append(f"{m}: params differ {sorted(a.params[m])} vs {sorted(b.params[m])}")
            continue
        for p in sorted(a.params[m]):
            x, y = np.asarray(a.params[m][p]), np.asarray(b.params[m][p])
            if x.shape != y.shape or x.dtype != y.dtype:
                diffs.append(f"{m}/{p}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
            elif np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes():
                n = int(np.sum(x.view(np.uint8) != y.view(np.uint8)))
                diffs.append(f"{m}/{p}: values differ ({n} bytes)")
    for f in (
        "num_layers",
        "num_heads",
        "key_size",
        "mlp_hidden_size",
        "causal",
        "residual_labels",
        "categorical_output",
        "unembed_indices",
        "output_labels",
    ):
        if getattr(a, f) != getattr(b, f):
            diffs.append(f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}")
    for f in ("input_tokens", "output_values"):
        if not _same_values(getattr(a, f), getattr(b, f)):
            diffs.append(f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}")
    for f in ("bos_token", "pad_token"):
        if not _same_values([getattr(a, f)], [getattr(b, f)]):
            diffs.append(f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}")
    return diffs
