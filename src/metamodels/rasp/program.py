"""RASP programs as plain data, and everything derived from their structure.

A :class:`Program` is a tuple of :class:`Op` in topological order; its last op
is the output. Each op names its function by a token of :mod:`metamodels.rasp.lambdas`
so a program round-trips through JSON and tokens without any Python callables.
Select is fused into the op that consumes it (``Aggregate`` = SelectAggregate,
``SelectorWidth``), with ``args = (keys, queries[, sop])``.

This module converts programs to tracr RASP expressions (:func:`to_rasp`) and
back (:func:`from_rasp`), infers value sets exactly as tracr's basis inference
does, computes computational depth and tracr's layer allocation without
compiling, canonicalises (behaviour classes of lambdas, common subexpressions,
depth order, variable names) and renders readable Python source.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Iterable, Mapping

from tracr.rasp import rasp

from metamodels.rasp import lambdas as L

PRIMITIVES = ("tokens", "indices")
KINDS = ("Map", "SequenceMap", "LinearSequenceMap", "Aggregate", "SelectorWidth")
CAT, NUM = "categorical", "numerical"
ENCODINGS = (CAT, NUM)
# Number of SOp arguments of each kind (selector args included).
ARITY = {"Map": 1, "SequenceMap": 2, "LinearSequenceMap": 2, "Aggregate": 3, "SelectorWidth": 2}


class UnsupportedProgram(ValueError):
    """A RASP expression that the program tables cannot represent.

    ``expr`` is the offending tracr expression when one is known (``from_rasp``), so a
    caller can name it in the user's terms.
    """

    def __init__(self, message: str, expr: Any = None):
        super().__init__(message)
        self.expr = expr


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    kind: str
    fn: str  # lambda token (maps) or predicate name (Aggregate, SelectorWidth)
    args: tuple[str, ...]
    encoding: str

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "fn": self.fn,
                "args": list(self.args), "encoding": self.encoding}

    @classmethod
    def from_json(cls, d: Mapping) -> "Op":
        return cls(d["name"], d["kind"], d["fn"], tuple(d["args"]), d["encoding"])


@dataclasses.dataclass(frozen=True)
class Program:
    ops: tuple[Op, ...]

    @property
    def output(self) -> str:
        return self.ops[-1].name

    def __len__(self) -> int:
        return len(self.ops)

    def by_name(self) -> dict[str, Op]:
        return {op.name: op for op in self.ops}

    def to_json(self) -> list:
        return [op.to_json() for op in self.ops]

    @classmethod
    def from_json(cls, ops: Iterable[Mapping]) -> "Program":
        return cls(tuple(Op.from_json(o) for o in ops))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------
# Structure

def validate_structure(program: Program, tables: L.Tables) -> None:
    """Raise UnsupportedProgram unless ops are well-typed and topologically ordered."""
    if not program.ops:
        raise UnsupportedProgram("empty program")
    enc = {"tokens": CAT, "indices": CAT}
    for op in program.ops:
        if op.name in enc:
            raise UnsupportedProgram(f"duplicate variable {op.name}")
        if op.kind not in KINDS or op.encoding not in ENCODINGS:
            raise UnsupportedProgram(f"bad op {op}")
        if len(op.args) != ARITY[op.kind]:
            raise UnsupportedProgram(f"{op.name}: {op.kind} takes {ARITY[op.kind]} args")
        for a in op.args:
            if a not in enc:
                raise UnsupportedProgram(f"{op.name}: argument {a} is not defined before use")
        arg_enc = [enc[a] for a in op.args]
        if op.kind == "Map":
            ok = op.fn in tables.map_by_token
        elif op.kind == "SequenceMap":
            ok = op.fn in tables.sequence_map_by_token and arg_enc == [CAT, CAT] and op.encoding == CAT
        elif op.kind == "LinearSequenceMap":
            ok = op.fn in tables.linear_by_token and arg_enc == [NUM, NUM] and op.encoding == NUM
        elif op.kind == "Aggregate":
            ok = (op.fn in L.PREDICATES and arg_enc[:2] == [CAT, CAT]
                  and arg_enc[2] == op.encoding)
        else:  # SelectorWidth
            ok = op.fn in L.PREDICATES and arg_enc == [CAT, CAT]
        if not ok:
            raise UnsupportedProgram(f"{op.name}: ill-typed {op}")
        enc[op.name] = op.encoding


def ancestors(program: Program, name: str) -> set[str]:
    ops = program.by_name()
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen or n in PRIMITIVES:
            continue
        seen.add(n)
        stack.extend(ops[n].args)
    return seen


def prune(program: Program) -> Program:
    """Drop ops the output does not depend on."""
    keep = ancestors(program, program.output)
    return Program(tuple(op for op in program.ops if op.name in keep))


def subprogram(program: Program, name: str) -> Program:
    """The program computing variable `name` (its ancestors, `name` last)."""
    idx = [op.name for op in program.ops].index(name)
    return prune(Program(program.ops[:idx + 1]))


def depths(program: Program) -> dict[str, int]:
    """Computational depth: longest path from an input, counting SOps (Selects are free)."""
    d = {"tokens": 0, "indices": 0}
    for op in program.ops:
        d[op.name] = 1 + max(d[a] for a in op.args)
    return d


def block_type(op: Op) -> str:
    if op.kind == "Aggregate":
        return "attn"
    if op.kind == "SelectorWidth":
        return "attn+mlp"
    return "mlp"


def layer_allocation(program: Program) -> dict[str, int]:
    """Half-layer index of each op (0 attn, 1 mlp, 2 attn, ...), as tracr allocates it.

    Mirrors tracr.compiler.craft_graph_to_model._allocate_modules_to_layers
    (longest-path depth, the attention-then-MLP condensation heuristic, then
    alternation); tests check it against tracr on sampled programs. A
    SelectorWidth occupies its half-layer and the MLP half-layer after it.
    """
    depth = depths(program)
    by_depth: dict[int, list[Op]] = collections.defaultdict(list)
    node_depth = {}
    for op in program.ops:
        node_depth[op.name] = depth[op.name]
        by_depth[depth[op.name]].append(op)
    lo, hi = min(by_depth), max(by_depth)
    d = lo
    while d < hi:
        if (all(block_type(o) == "attn" for o in by_depth[d])
                and all(block_type(o) == "mlp" for o in by_depth[d + 1])):
            for upd in range(d + 1, hi + 1):
                for o in by_depth[upd]:
                    node_depth[o.name] = upd - 1
                by_depth[upd - 1].extend(by_depth[upd])
                by_depth[upd] = []
            hi -= 1
        d += 1
    alloc = {}
    layer, cur = 0, 1
    for name, dd in sorted(node_depth.items(), key=lambda kv: kv[1]):
        while dd > cur:
            cur += 1
            layer += 2
        op_type = block_type(program.by_name()[name])
        alloc[name] = layer + (1 if op_type == "mlp" else 0)
    return alloc


def num_layers(program: Program, alloc: Mapping[str, int] | None = None) -> int:
    """Number of transformer layers (attention + MLP pairs) tracr builds."""
    alloc = alloc if alloc is not None else layer_allocation(program)
    ops = program.by_name()
    last = max(h + (1 if block_type(ops[n]) == "attn+mlp" else 0) for n, h in alloc.items())
    return last // 2 + 1


# ---------------------------------------------------------------------------
# Value sets (tracr's basis inference, on plain data)

def value_sets(program: Program, tables: L.Tables, vocab: Iterable[Any],
               max_seq_len: int) -> dict[str, set]:
    vs: dict[str, set] = {"tokens": set(vocab), "indices": set(range(max_seq_len))}
    for op in program.ops:
        vs[op.name] = op_value_set(op, vs, tables, max_seq_len)
    return vs


def op_value_set(op: Op, vs: Mapping[str, set], tables: L.Tables, max_seq_len: int) -> set:
    if op.kind == "Map":
        return L.map_outputs(tables.map_by_token[op.fn].fn, vs[op.args[0]])
    if op.kind == "SequenceMap":
        return L.sequence_map_outputs(tables.sequence_map_by_token[op.fn].fn,
                                      vs[op.args[0]], vs[op.args[1]])
    if op.kind == "LinearSequenceMap":
        lin = tables.linear_by_token[op.fn]
        return L.sequence_map_outputs(lambda x, y: lin.fst_fac * x + lin.snd_fac * y,
                                      vs[op.args[0]], vs[op.args[1]])
    if op.kind == "SelectorWidth":
        return set(range(0, max_seq_len + 1))
    # Aggregate
    inner = vs[op.args[2]]
    if op.encoding == CAT:
        return set(inner)
    if not {int(x) for x in inner}.issubset({0, 1}):
        raise UnsupportedProgram(
            f"{op.name}: numerical Aggregate averages only 0/1 values, got {sorted(inner)}")
    return {v / n for v in inner for n in range(1, max_seq_len + 1)}


# ---------------------------------------------------------------------------
# tracr conversion

def _select_label(name: str) -> str:
    return f"{name}_select"


def _fix_id(expr: rasp.RASPExpr, uid: int) -> rasp.RASPExpr:
    """Pin tracr's process-global expression id, so labels depend only on the program.

    tracr labels an expression ``f"{name}_{unique_id}"`` with ``unique_id``
    drawn from a global counter on first use, and orders the residual stream
    by label: without this, weights would depend on how many expressions the
    process had built before.
    """
    expr.__dict__["unique_id"] = uid
    return expr


def to_rasp(program: Program, tables: L.Tables) -> rasp.SOp:
    """Build the tracr RASP expression; labels are ``{name}_{k}`` with k fixed by op order."""
    env: dict[str, rasp.SOp] = {"tokens": rasp.tokens, "indices": rasp.indices}
    uid = 0
    for op in program.ops:
        a = [env[x] for x in op.args]
        if op.kind == "Map":
            expr = rasp.Map(tables.map_by_token[op.fn].fn, a[0], simplify=False)
        elif op.kind == "SequenceMap":
            expr = rasp.SequenceMap(tables.sequence_map_by_token[op.fn].fn, a[0], a[1])
        elif op.kind == "LinearSequenceMap":
            lin = tables.linear_by_token[op.fn]
            expr = rasp.LinearSequenceMap(a[0], a[1], lin.fst_fac, lin.snd_fac)
        else:
            uid += 1
            sel = _fix_id(rasp.Select(a[0], a[1], L.predicate(op.fn)).named(_select_label(op.name)),
                          uid)
            if op.kind == "SelectorWidth":
                expr = rasp.SelectorWidth(sel)
            else:
                expr = rasp.Aggregate(sel, a[2], default=0 if op.encoding == NUM else None)
        expr = rasp.numerical(expr) if op.encoding == NUM else rasp.categorical(expr)
        uid += 1
        env[op.name] = _fix_id(expr.named(op.name), uid)
    return env[program.output]


def _no_match(fn, points: list[tuple], kind: str) -> str:
    """Why a lambda matched no table entry: it raises on a value that reaches it, or not."""
    for pt in sorted(points, key=repr):
        try:
            fn(*pt)
        except Exception as err:  # noqa: BLE001 - any exception of the user's lambda
            args = ", ".join(f"{n}={v!r}" for n, v in zip("xy", pt))
            return (f"its lambda raised {type(err).__name__}: {err} on {args}, a value that "
                    f"reaches this {kind}; a lambda must accept every value that can reach it")
    return f"no table lambda behaves like this {kind}"


def from_rasp(sop: rasp.SOp, tables: L.Tables, vocab: Iterable[Any],
              max_seq_len: int, exprs: dict[str, rasp.SOp] | None = None) -> Program:
    """Convert a tracr RASP expression whose functions behave like table entries.

    Lambdas are matched by behaviour on the value set that reaches them, so any
    program written with equivalent Python lambdas converts. Raises
    UnsupportedProgram for anything outside the grammar (Full, ConstantSOp,
    composite selectors, lambdas no table entry matches, ...), with the offending
    expression in its ``expr``. ``exprs``, when given, is filled with op name -> the tracr
    expression it came from.
    """
    vocab = set(vocab)
    vs: dict[str, set] = {"tokens": vocab, "indices": set(range(max_seq_len))}
    names: dict[int, str] = {}
    ops: list[Op] = []

    def enc(e) -> str:
        return NUM if rasp.is_numerical(e) else CAT

    def visit(e: rasp.SOp) -> str:
        if isinstance(e, rasp.TokensType):
            return "tokens"
        if isinstance(e, rasp.IndicesType):
            return "indices"
        if e.unique_id in names:
            return names[e.unique_id]
        if isinstance(e, rasp.Map):
            x = visit(e.inner)
            tok = L.match_map(tables, e.f, vs[x])
            if tok is None:
                raise UnsupportedProgram(f"{e.label}: " + _no_match(e.f, [(v,) for v in vs[x]],
                                                                     "Map"), e)
            op = Op("", "Map", tok, (x,), enc(e))
        elif isinstance(e, rasp.LinearSequenceMap):
            x, y = visit(e.fst), visit(e.snd)
            match = [t for t in tables.linear if (t.fst_fac, t.snd_fac) == (e.fst_fac, e.snd_fac)]
            if not match:
                raise UnsupportedProgram(f"{e.label}: LinearSequenceMap factors not in table", e)
            op = Op("", "LinearSequenceMap", match[0].token, (x, y), enc(e))
        elif isinstance(e, rasp.SequenceMap):
            x, y = visit(e.fst), visit(e.snd)
            tok = L.match_sequence_map(tables, e.f, vs[x], vs[y])
            if tok is None:
                pairs = [(a, b) for a in vs[x] for b in vs[y]]
                raise UnsupportedProgram(f"{e.label}: " + _no_match(e.f, pairs, "SequenceMap"), e)
            op = Op("", "SequenceMap", tok, (x, y), enc(e))
        elif isinstance(e, (rasp.Aggregate, rasp.SelectorWidth)):
            sel = e.selector
            if not isinstance(sel, rasp.Select):
                raise UnsupportedProgram(f"{e.label}: composite selectors are not supported", e)
            k, q = visit(sel.keys), visit(sel.queries)
            pred = L.match_predicate(sel.predicate, vs[k], vs[q])
            if pred is None:
                raise UnsupportedProgram(f"{e.label}: no table predicate behaves like this Select",
                                         e)
            if isinstance(e, rasp.SelectorWidth):
                op = Op("", "SelectorWidth", pred, (k, q), enc(e))
            else:
                s = visit(e.sop)
                op = Op("", "Aggregate", pred, (k, q, s), enc(e))
        else:
            raise UnsupportedProgram(f"{type(e).__name__} is outside the program grammar", e)
        name = f"t{len(ops)}"
        op = dataclasses.replace(op, name=name)
        ops.append(op)
        try:
            validate_structure(Program(tuple(ops)), tables)
            vs[name] = op_value_set(op, vs, tables, max_seq_len)
        except UnsupportedProgram as err:
            raise UnsupportedProgram(str(err), e) from None
        names[e.unique_id] = name
        if exprs is not None:
            exprs[name] = e
        return name

    visit(sop)
    return Program(tuple(ops))


# ---------------------------------------------------------------------------
# Canonical form

def canonical_fn(op: Op, vs: Mapping[str, set], tables: L.Tables) -> str:
    """The first table entry behaving like op.fn on the values that reach it."""
    if op.kind == "Map":
        return L.canonical_map(tables, op.fn, vs[op.args[0]])
    if op.kind == "SequenceMap":
        return L.canonical_sequence_map(tables, op.fn, vs[op.args[0]], vs[op.args[1]])
    if op.kind in ("Aggregate", "SelectorWidth"):
        return L.canonical_predicate(tables, op.fn, vs[op.args[0]], vs[op.args[1]])
    return op.fn


def _commutative(op: Op, tables: L.Tables) -> bool:
    return op.kind == "SequenceMap" and tables.sequence_map_by_token[op.fn].commutative


def op_signature(op: Op, tables: L.Tables) -> tuple:
    """What makes two ops the same computation (name aside; commutative args unordered)."""
    args = tuple(sorted(op.args)) if _commutative(op, tables) else op.args
    return (op.kind, op.fn, op.encoding, args)


def canonicalize(program: Program, tables: L.Tables, vocab: Iterable[Any],
                 max_seq_len: int, names: dict[str, str] | None = None) -> tuple[Program, int]:
    """Canonical form and the number of ops whose function was rewritten.

    1. prune to the output's ancestors; 2. rewrite each lambda/predicate to
    the first table entry with the same behaviour on its input value sets;
    3. merge identical ops; 4. order ops by (tracr half-layer, computational
    depth, op signature) and rename them v1, v2, ... in that order, ordering
    the arguments of commutative lambdas by that rank.

    ``names``, when given, is filled with each input op name -> its canonical name (merged
    duplicates map to the op they merged into; pruned ops are left out).
    """
    program = prune(program)
    validate_structure(program, tables)
    vs: dict[str, set] = {"tokens": set(vocab), "indices": set(range(max_seq_len))}
    rewrites = 0
    alias: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    ops: list[Op] = []
    for op in program.ops:
        op = dataclasses.replace(op, args=tuple(alias.get(a, a) for a in op.args))
        fn = canonical_fn(op, vs, tables)
        if fn != op.fn:
            rewrites += 1
            op = dataclasses.replace(op, fn=fn)
        key = op_signature(op, tables)
        if key in seen:
            alias[op.name] = seen[key]
            continue
        seen[key] = op.name
        vs[op.name] = op_value_set(op, vs, tables, max_seq_len)
        ops.append(op)
    # An alias of the output (merged duplicate) keeps the program's output last.
    merged = Program(tuple(ops))
    out = alias.get(program.output, program.output)
    if merged.output != out:
        merged = Program(tuple(o for o in ops if o.name != out) + (merged.by_name()[out],))
    merged = prune(merged)

    alloc = layer_allocation(merged)
    depth = depths(merged)
    rank = {"tokens": 0, "indices": 1}
    new_name: dict[str, str] = {"tokens": "tokens", "indices": "indices"}
    remaining = list(merged.ops)
    ordered: list[Op] = []
    while remaining:
        # Args always sit in an earlier (layer, depth) group, so their ranks exist.
        head = min((alloc[o.name], depth[o.name]) for o in remaining)
        group = [o for o in remaining if (alloc[o.name], depth[o.name]) == head]

        def sig(o: Op) -> tuple:
            args = tuple(rank[a] for a in o.args)
            if _commutative(o, tables):
                args = tuple(sorted(args))
            return (KINDS.index(o.kind), o.encoding, o.fn, args)

        for o in sorted(group, key=sig):
            name = f"v{len(ordered) + 1}"
            args = o.args
            if _commutative(o, tables):
                args = tuple(sorted(args, key=lambda a: rank[a]))
            ordered.append(Op(name, o.kind, o.fn, tuple(new_name[a] for a in args), o.encoding))
            rank[o.name] = len(rank)
            new_name[o.name] = name
        remaining = [o for o in remaining if o not in group]
    if names is not None:
        for op in program.ops:
            target = alias.get(op.name, op.name)
            if target in new_name:
                names[op.name] = new_name[target]
    return Program(tuple(ordered)), rewrites


# ---------------------------------------------------------------------------
# Readable source

def render(program: Program, tables: L.Tables) -> str:
    """Python source that rebuilds the program with tracr (``exec`` it, read ``program``)."""
    lines = ["from tracr.rasp import rasp", ""]
    ref = {"tokens": "rasp.tokens", "indices": "rasp.indices"}
    for op in program.ops:
        a = [ref.get(x, x) for x in op.args]
        if op.kind == "Map":
            body = f"rasp.Map({tables.map_by_token[op.fn].source()}, {a[0]}, simplify=False)"
        elif op.kind == "SequenceMap":
            body = f"rasp.SequenceMap({tables.sequence_map_by_token[op.fn].source()}, {a[0]}, {a[1]})"
        elif op.kind == "LinearSequenceMap":
            lin = tables.linear_by_token[op.fn]
            body = f"rasp.LinearSequenceMap({a[0]}, {a[1]}, {lin.fst_fac}, {lin.snd_fac})"
        else:
            sel = f"rasp.Select({a[0]}, {a[1]}, rasp.Comparison.{op.fn})"
            if op.kind == "SelectorWidth":
                body = f"rasp.SelectorWidth({sel})"
            else:
                default = "0" if op.encoding == NUM else "None"
                body = f"rasp.Aggregate({sel}, {a[2]}, default={default})"
        lines.append(f'{op.name} = rasp.{op.encoding}({body}).named("{op.name}")')
        ref[op.name] = op.name
    lines += ["", f"program = {program.output}", ""]
    return "\n".join(lines)


def load_source(source: str) -> rasp.SOp:
    """Execute RASP source (as written by :func:`render` or a user) and return ``program``."""
    scope: dict[str, Any] = {}
    exec(compile(source, "<rasp program>", "exec"), scope)  # noqa: S102 - user's own file
    prog = scope.get("program")
    if not isinstance(prog, rasp.SOp):
        raise UnsupportedProgram("the source must assign a RASP SOp to a variable named `program`")
    return prog
