"""Canonical token sequences for programs, and back.

A program in canonical form (:func:`metamodels.rasp.program.canonicalize`) is written
half-layer by half-layer as tracr allocates it (attention 0, MLP 0, attention 1,
...): each op as ``NAME ENCODING KIND FN ARG... EOO`` (function first, then
variables), ``EOL`` after every half-layer, the whole between ``BOS`` and
``EOS``. Select is fused into ``SelectAggregate`` / ``SelectorWidth``. An op
that spans two half-layers (SelectorWidth: attention then MLP) is written in
its first. Example (two layers)::

    BOS v1 categorical SelectorWidth LT tokens tokens EOO EOL EOL
        v2 categorical SelectAggregate EQ v1 indices tokens EOO EOL EOL EOS
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from metamodels.rasp import lambdas as L
from metamodels.rasp.program import (
    ARITY,
    CAT,
    ENCODINGS,
    NUM,
    Op,
    Program,
    UnsupportedProgram,
    layer_allocation,
    num_layers,
    validate_structure,
)

PAD, BOS, EOS, EOO, EOL = "PAD", "BOS", "EOS", "EOO", "EOL"
SPECIALS = (PAD, BOS, EOS, EOO, EOL)
KIND_TOKENS = {"Map": "Map", "SequenceMap": "SequenceMap",
               "LinearSequenceMap": "LinearSequenceMap",
               "Aggregate": "SelectAggregate", "SelectorWidth": "SelectorWidth"}
KIND_OF_TOKEN = {v: k for k, v in KIND_TOKENS.items()}


class DecodeError(ValueError):
    """A token sequence that is not a well-formed program."""


class Vocab:
    """Token <-> id mapping for one set of sampler params (PAD is id 0)."""

    def __init__(self, tables: L.Tables, max_ops: int):
        self.tables = tables
        self.max_ops = max_ops
        self.variables = [f"v{i}" for i in range(1, max_ops + 1)]
        self.tokens: list[str] = (list(SPECIALS) + list(ENCODINGS) + list(KIND_TOKENS.values())
                                  + ["tokens", "indices"] + self.variables
                                  + tables.function_tokens())
        if len(set(self.tokens)) != len(self.tokens):
            raise AssertionError("token collision in vocabulary")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        try:
            return [self.index[t] for t in tokens]
        except KeyError as e:
            raise DecodeError(f"token {e.args[0]!r} is not in the vocabulary") from None

    def strs(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "specials": {"PAD": PAD, "BOS": BOS, "EOS": EOS,
                                                    "EOO": EOO, "EOL": EOL},
                "max_ops": self.max_ops, "map_constants": list(self.tables.map_constants)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"

    @classmethod
    def from_params(cls, params) -> "Vocab":
        s = params["sampler"]
        return cls(L.Tables(s["map_constants"]), s["max_length"])

    @classmethod
    def load(cls, path) -> "Vocab":
        """Rebuild from vocab.json; fails if the file was written by other tables."""
        from metamodels.core.shards import FileFormatError, read_json
        d = read_json(path)
        try:
            vocab = cls(L.Tables(d["map_constants"]), d["max_ops"])
        except (KeyError, TypeError) as e:
            raise FileFormatError(path, f"not a vocab.json (no {e} field); rerun the vocab "
                                  "rule") from None
        if vocab.tokens != d["tokens"]:
            raise ValueError(f"{path}: token list differs from this version of metamodels; "
                             "rerun the vocab rule")
        return vocab


def encode(program: Program) -> list[str]:
    """Tokens of a program that is already in canonical form."""
    alloc = layer_allocation(program)
    n_half = 2 * num_layers(program, alloc)
    out = [BOS]
    for h in range(n_half):
        for op in program.ops:
            if alloc[op.name] == h:
                out += [op.name, op.encoding, KIND_TOKENS[op.kind], op.fn, *op.args, EOO]
        out.append(EOL)
    out.append(EOS)
    return out


def decode(tokens: Sequence[str], tables: L.Tables) -> Program:
    """Parse tokens (with or without BOS/EOS/PAD) into a Program; raise DecodeError."""
    toks = [t for t in tokens if t != PAD]
    if toks and toks[0] == BOS:
        toks = toks[1:]
    if EOS in toks:
        toks = toks[:toks.index(EOS)]
    ops: list[Op] = []
    cur: list[str] = []
    for t in toks:
        if t == EOL:
            if cur:
                raise DecodeError(f"EOL inside an op: {cur}")
            continue
        if t == EOO:
            ops.append(_parse_op(cur))
            cur = []
        else:
            cur.append(t)
    if cur:
        raise DecodeError(f"unterminated op: {cur}")
    if not ops:
        raise DecodeError("no ops")
    program = Program(tuple(ops))
    try:
        validate_structure(program, tables)
    except UnsupportedProgram as e:
        raise DecodeError(str(e)) from None
    return program


def _parse_op(t: list[str]) -> Op:
    if len(t) < 4:
        raise DecodeError(f"op too short: {t}")
    name, enc, kind_tok, fn, *args = t
    if enc not in (CAT, NUM):
        raise DecodeError(f"bad encoding {enc!r} in {t}")
    if kind_tok not in KIND_OF_TOKEN:
        raise DecodeError(f"bad op kind {kind_tok!r} in {t}")
    kind = KIND_OF_TOKEN[kind_tok]
    if len(args) != ARITY[kind]:
        raise DecodeError(f"{kind} takes {ARITY[kind]} arguments: {t}")
    return Op(name, kind, fn, tuple(args), enc)
