"""Users' own RASP programs through ``compile``: the user's program is the program.

``python -m metamodels compile PROGRAM.py --out MODEL.npz`` turns a Python file that
assigns a tracr RASP SOp to ``program`` into a one-row zoo shard (docs/data-formats.md),
in these steps (:func:`compile_user_program`, run in the zoo's worker process with
``compile.timeout_s`` and ``compile.memory_mb``, :mod:`metamodels.zoo.workers`):

1. **load**: run the file, remembering where each RASP expression was made (file, line,
   variable), so every message names the user's expression, not tracr's internal label;
2. **tracr's static validator** (``tracr.compiler.validating``) on the user's expression:
   e.g. a categorical Aggregate with ``default=0``, a Select on a numerical query;
3. **into the grammar**: :func:`metamodels.rasp.program.from_rasp` matches each lambda
   to a table lambda by behaviour, then :func:`~metamodels.rasp.program.canonicalize`;
   the canonical program must compute what the user's does on every verification
   input, otherwise it is refused (the user's program is never replaced by another);
4. **tracr's dynamic validator's conditions**, vectorised over the verification inputs:
   a categorical Aggregate must only move values (no averaging over a wide selector), a
   numerical Aggregate only averages 0/1 values;
5. **sizes** of every MLP from the value sets, before tracr builds them; a program whose
   layers would not fit in ``compile.memory_mb`` is refused with the sizes;
6. **compile** the canonical program (so the weights are those the zoo would hold), and
   **verify** the model against the *user's* expression on the verification inputs (the
   zoo's rule: the whole domain, or a fixed sample of it). Positions where RASP's value
   is None are not compared; a verification that compares fewer than
   ``verify.min_compared`` of the positions fails;
7. **diagnose** a wrong model: the first op (in the order the model computes them) whose
   value in the residual stream differs from RASP's on a failing input, with the cause
   when it is one of tracr's known ones (:func:`diagnose`).

Errors a user can fix raise :class:`ProgramError` (one message, exit 2 from the CLI).
"""

from __future__ import annotations

import dataclasses
import linecache
import math
import pathlib
import sys
import traceback
from typing import Any, Mapping

import numpy as np
from tracr.compiler import validating
from tracr.rasp import rasp

from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import (
    CAT,
    NUM,
    Program,
    UnsupportedProgram,
    canonicalize,
    from_rasp,
    render,
    to_rasp,
    value_sets,
)

__all__ = ["ProgramError", "UserProgram", "load_program", "static_check", "to_canonical",
           "dynamic_check", "layer_sizes", "check_sizes", "diagnose", "compile_user_program"]


class ProgramError(ValueError):
    """A user's program (or file) that cannot be compiled faithfully; the message says why."""


# ---------------------------------------------------------------------------
# 1. load, remembering where each expression was made


@dataclasses.dataclass
class UserProgram:
    """The user's ``program`` with where each of its expressions was made.

    ``origin[id(expr)] = (line, variable or None)``; ``path`` is the file.
    """

    path: pathlib.Path
    program: rasp.SOp
    origin: dict[int, tuple[int, str | None]]
    merged_maps: dict[int, rasp.Map]  # id(outer Map) -> the inner Map tracr merged into it

    def describe(self, expr: rasp.RASPExpr) -> str:
        """The expression in the user's terms: variable, its line of source, tracr's label."""
        line, var = self.origin.get(id(expr), (None, None))
        where = ""
        if line is not None:
            text = linecache.getline(str(self.path), line).strip()
            where = f" ({self.path.name}:{line}: `{text}`)" if text else f" ({self.path.name}:{line})"
        who = f"`{var}`" if var else f"the {type(expr).__name__}"
        return f"{who}{where} [tracr label {expr.label}]"


def _user_line(filename: str) -> int | None:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return frame.f_lineno
        frame = frame.f_back
    return None


def load_program(path: str | pathlib.Path) -> UserProgram:
    """Run a user's program file and return its ``program`` with the origin of each expression.

    Raises ProgramError (naming the file and line) for a missing file, a directory, a file
    that is not UTF-8 text, a syntax error, an exception while running it (e.g. a failing
    import), no ``program``, or a ``program`` that performs no operation.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise ProgramError(f"{path}: is a directory; give the Python file that assigns a "
                           "RASP SOp to `program`")
    try:
        source = path.read_text()
    except FileNotFoundError:
        raise ProgramError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ProgramError(f"{path}: not a UTF-8 text file (expected Python source)") from None
    except OSError as e:
        raise ProgramError(f"{path}: cannot read it ({e.strerror})") from None
    filename = str(path)
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as e:
        raise ProgramError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None

    origin: dict[int, tuple[int, str | None]] = {}
    merged: dict[int, rasp.Map] = {}
    base_init, base_copy, map_init = rasp.RASPExpr.__init__, rasp.RASPExpr.copy, rasp.Map.__init__

    def expr_init(self, *a, **k):
        base_init(self, *a, **k)
        origin.setdefault(id(self), (_user_line(filename), None))

    def expr_copy(self):  # rasp.categorical / numerical / named annotate a copy
        new = base_copy(self)
        origin[id(new)] = (_user_line(filename) or origin.get(id(self), (None,))[0], None)
        if id(self) in merged:
            merged[id(new)] = merged[id(self)]
        return new

    def tracked_map_init(self, f, inner, simplify=True, **k):
        map_init(self, f, inner, simplify=simplify, **k)
        if simplify and isinstance(inner, rasp.Map):
            merged[id(self)] = inner

    scope: dict[str, Any] = {"__name__": "__rasp_program__", "__file__": filename}
    rasp.RASPExpr.__init__, rasp.RASPExpr.copy, rasp.Map.__init__ = (
        expr_init, expr_copy, tracked_map_init)
    try:
        exec(code, scope)  # noqa: S102 - the user's own file, run as they asked
    except Exception as e:  # noqa: BLE001 - any failure of the user's file is theirs to fix
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
        line = f":{frames[-1].lineno}" if frames else ""
        raise ProgramError(f"{path}{line}: running the file raised "
                           f"{type(e).__name__}: {e}") from None
    finally:
        rasp.RASPExpr.__init__, rasp.RASPExpr.copy, rasp.Map.__init__ = (
            base_init, base_copy, map_init)

    for var, value in scope.items():
        if isinstance(value, rasp.RASPExpr) and id(value) in origin and origin[id(value)][1] is None:
            origin[id(value)] = (origin[id(value)][0], var)
    program = scope.get("program")
    if program is None:
        raise ProgramError(f"{path}: defines no `program`; assign the output RASP SOp to a "
                           "variable named `program`")
    if not isinstance(program, rasp.SOp):
        kind = type(program).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ProgramError(f"{path}: `program` is {article} {kind}, not a RASP SOp "
                           "(e.g. rasp.Map(...), rasp.Aggregate(...))")
    if isinstance(program, (rasp.TokensType, rasp.IndicesType)):
        raise ProgramError(f"{path}: `program` is rasp.{program.label} itself; a program needs "
                           "at least one operation (e.g. rasp.Map(lambda x: x, rasp.tokens))")
    return UserProgram(path, program, origin, merged)


def _subexpressions(expr: rasp.RASPExpr) -> list[rasp.RASPExpr]:
    """Every expression under ``expr``, children before parents, each once."""
    seen: set[int] = set()
    order: list[rasp.RASPExpr] = []

    def visit(e):
        if id(e) in seen:
            return
        seen.add(id(e))
        for c in e.children:
            visit(c)
        order.append(e)

    visit(expr)
    return order


# ---------------------------------------------------------------------------
# 2. tracr's static validator

_HINTS = {
    "Select keys must be categorical.":
        "build the keys from a categorical SOp (rasp.categorical(...))",
    "Select queries must be categorical.":
        "build the queries from a categorical SOp (rasp.categorical(...))",
    "Categorical aggregate only supports None as default value.":
        "write default=None (tracr cannot compile another default for a categorical "
        "Aggregate), or make it numerical with default=0",
    "Numerical aggregate only supports 0 as default value.":
        "write default=0 for a numerical Aggregate",
}


def static_check(user: UserProgram) -> None:
    """Refuse what tracr's static validator refuses, naming the user's expressions."""
    problems = validating.static_validate(user.program)
    if problems:
        lines = []
        for p in problems:
            line = f"{user.describe(p.expr)}: {p.reason.strip()}"
            if isinstance(p.expr, rasp.Select):
                part = "keys" if "keys" in p.reason else "queries"
                line += f" (its {part} are {user.describe(getattr(p.expr, part))}, numerical)"
            lines.append(line + (f" Fix: {_HINTS[p.reason]}." if p.reason in _HINTS else ""))
        raise ProgramError(f"{user.path}: tracr cannot compile this program: "
                           + "; ".join(lines))


# ---------------------------------------------------------------------------
# 3. into the grammar, never changing what the program computes


def to_canonical(user: UserProgram,
                 params: Mapping) -> tuple[Program, dict[str, rasp.SOp], int]:
    """The canonical program of the user's, the user's expression per canonical op name, and
    the number of lambdas/predicates canonicalisation rewrote (to the first table entry that
    behaves the same on the values that reach it).

    Raises ProgramError when the program is outside the grammar (naming the expression; a
    Map that tracr merged from two Maps is explained).
    """
    z, s = params["zoo"], params["sampler"]
    tables = L.Tables(s["map_constants"])
    exprs: dict[str, rasp.SOp] = {}
    try:
        program = from_rasp(user.program, tables, z["vocab"], z["max_seq_len"], exprs=exprs)
    except UnsupportedProgram as e:
        expr = getattr(e, "expr", None)
        if expr is None:
            raise ProgramError(f"{user.path}: {e}") from None
        reason = str(e).split(": ", 1)[-1]
        msg = f"{user.path}: {user.describe(expr)} is outside the program grammar: {reason}"
        inner = user.merged_maps.get(id(expr))
        if inner is not None:
            msg += (f". tracr merged it with the Map it reads, {user.describe(inner)}, into one "
                    "Map computing f(g(x)) (rasp.Map(..., simplify=True) is tracr's default), "
                    "and the composed lambda is not a table lambda although each step may be; "
                    "write the outer Map with rasp.Map(f, inner, simplify=False) to keep "
                    "them apart")
        elif "raised" not in reason:
            msg += (" (each lambda must behave like an entry of the lambda tables, "
                    "docs/zoo.md, on the values that reach it)")
        raise ProgramError(msg) from None
    names: dict[str, str] = {}
    canon, rewrites = canonicalize(program, tables, z["vocab"], z["max_seq_len"], names=names)
    by_canon = {}
    for old, new in names.items():
        by_canon.setdefault(new, exprs[old])
    return canon, by_canon, rewrites


def _same(a: E.EvalResult, b: E.EvalResult) -> np.ndarray:
    """bool[B, L]: equal values (as RASP compares them: 1 == 1.0 == True), None == None."""
    index: dict = {}
    ia = L.key_ids(a.values, a.codes, index)
    ib = L.key_ids(b.values, b.codes, index)
    return ia == ib


def _evaluate(user: UserProgram, expr: rasp.SOp, x: np.ndarray) -> E.EvalResult:
    try:
        return E.evaluate_batch(expr, x)
    except Exception as e:  # noqa: BLE001 - a lambda of the user's failing on an input
        raise ProgramError(f"{user.path}: evaluating {user.describe(expr)} with RASP raised "
                           f"{type(e).__name__}: {e} on some input of length {x.shape[1]}; "
                           "every lambda must accept every value that reaches it") from None


def check_same_behaviour(user: UserProgram, canon_expr: rasp.SOp,
                         inputs: list[np.ndarray]) -> None:
    """Refuse when the canonical program's output differs from the user's on any input."""
    for x in inputs:
        want, got = _evaluate(user, user.program, x), E.evaluate_batch(canon_expr, x)
        bad = ~_same(want, got)
        if bad.any():
            r = int(np.flatnonzero(bad.any(axis=1))[0])
            raise ProgramError(
                f"{user.path}: the program cannot be written in the project's grammar without "
                f"changing what it computes (input {x[r].tolist()}: your program gives "
                f"{want.to_lists()[r]}, the nearest grammar program gives {got.to_lists()[r]}); "
                "it was refused rather than compiled as a different program")


# ---------------------------------------------------------------------------
# 4. tracr's dynamic validator's conditions, on every verification input

def dynamic_check(user: UserProgram, inputs: list[np.ndarray]) -> list[str]:
    """Problems tracr's dynamic validator would report on these inputs (empty: none).

    A categorical Aggregate must only move values: each output is one of the values its
    selector selects, or None (else RASP averages, which tracr cannot compile). A numerical
    Aggregate must only average 0/1 values.
    """
    problems: list[str] = []
    aggregates = [e for e in _subexpressions(user.program) if isinstance(e, rasp.Aggregate)]
    for agg in aggregates:
        for x in inputs:
            out, inp = _evaluate(user, agg, x), _evaluate(user, agg.sop, x)
            if rasp.is_categorical(agg):
                index: dict = {}
                o = L.key_ids(out.values, out.codes, index)
                i = L.key_ids(inp.values, inp.codes, index)
                moved = (o[:, :, None] == i[:, None, :]).any(axis=2) | out.none_mask
                if not moved.all():
                    r, pos = (int(v[0]) for v in np.nonzero(~moved))
                    problems.append(
                        f"{user.describe(agg)} is a categorical Aggregate whose selector selects "
                        f"several positions with different values, which RASP averages (input "
                        f"{x[r].tolist()}, position {pos}: {out.to_lists()[r][pos]!r}); tracr: "
                        "'Categorical aggregate does not support Selectors with width > 1 that "
                        "require aggregation (eg. averaging)'. Fix: make it numerical over 0/1 "
                        "values (rasp.numerical(..., default=0)) or use a selector of width 1")
                    break
            else:
                values = {v for v in inp.values if v is not None}
                if not all(v == 0 or v == 1 for v in values):
                    problems.append(
                        f"{user.describe(agg)} is a numerical Aggregate over values "
                        f"{sorted(values, key=repr)[:8]}; tracr: 'Numerical aggregate only "
                        "supports binary inputs 0, 1'. Fix: aggregate a 0/1 numerical Map")
                    break
    return problems


# ---------------------------------------------------------------------------
# 5. layer sizes from value sets, before tracr builds them

def layer_sizes(program: Program, params: Mapping) -> list[dict]:
    """Per MLP op: its value-set sizes, hidden width and the bytes tracr's matrices need.

    Hidden widths follow tracr's MLP constructions (``tracr.craft.chamber``): a
    categorical Map's hidden layer has one unit per output value, a categorical-to-
    numerical Map one per input value, a numerical Map 2·|inputs| - 1 (the discretising
    layer; SelectorWidth reads a numerical mean the same way), a categorical SequenceMap one
    per pair of input values: an estimate, within a factor of 2 of what tracr builds on
    the zoo's programs (tests/zoo/test_user_program.py). ``bytes`` counts the
    float64 craft matrices (input×hidden + hidden×output) and the float32 assembled
    ones (residual×hidden twice).
    """
    z, s = params["zoo"], params["sampler"]
    tables = L.Tables(s["map_constants"])
    vs = value_sets(program, tables, z["vocab"], z["max_seq_len"])
    n_cat = sum(len(vs[o.name]) for o in program.ops if o.encoding == CAT)
    n_num = sum(1 for o in program.ops if o.encoding == NUM)
    residual = n_cat + n_num + len(vs["tokens"]) + 2 + z["max_seq_len"] + 1
    out: list[dict] = []
    for op in program.ops:
        sizes = [len(vs[a]) for a in op.args[:2]] if op.kind != "Map" else [len(vs[op.args[0]])]
        n_out = 1 if op.encoding == NUM else len(vs[op.name])
        arg_enc = None
        if op.kind == "Map":
            arg_enc = next((o.encoding for o in program.ops if o.name == op.args[0]), CAT)
            if arg_enc == NUM:
                hidden = max(1, 2 * sizes[0] - 1)
            elif op.encoding == CAT:
                hidden = n_out
            else:
                hidden = sizes[0]
            n_in = 1 if arg_enc == NUM else sizes[0]
        elif op.kind == "SequenceMap":
            hidden, n_in = sizes[0] * sizes[1], sizes[0] + sizes[1] + 1
        elif op.kind == "SelectorWidth":
            hidden, n_in = 2 * z["max_seq_len"] + 2, 1
        else:
            continue
        nbytes = 8 * hidden * (n_in + n_out) + 2 * 4 * residual * hidden
        out.append({"op": op.name, "kind": op.kind, "encoding": op.encoding,
                    "value_set_sizes": {"inputs": sizes, "output": len(vs[op.name])},
                    "hidden": hidden, "residual": residual, "bytes": nbytes})
    return out


def largest_layer(params: Mapping, source_path: str) -> str:
    """``", its largest MLP is ..."`` (for a message), or "" when that cannot be told."""
    try:
        user = load_program(source_path)
        program, exprs, _ = to_canonical(user, params)
        s = max(layer_sizes(program, params), key=lambda s: s["hidden"])
    except Exception:  # noqa: BLE001 - only a hint for a message; never fail on it
        return ""
    v = s["value_set_sizes"]
    return (f"; its largest MLP is {user.describe(exprs[s['op']])}, a {s['kind']} over "
            f"{' x '.join(map(str, v['inputs']))} input values with {v['output']} output values: "
            f"{s['hidden']:,} hidden units")


def check_sizes(user: UserProgram, program: Program, exprs: Mapping[str, rasp.SOp],
                params: Mapping) -> list[dict]:
    """Refuse a program one of whose MLPs would not fit in ``compile.memory_mb``."""
    budget = params["compile"]["memory_mb"] * 2 ** 20
    sizes = layer_sizes(program, params)
    for s in sizes:
        if s["bytes"] > budget / 2:
            v = s["value_set_sizes"]
            raise ProgramError(
                f"{user.path}: {user.describe(exprs[s['op']])} is too large to compile: a "
                f"{s['encoding']} {s['kind']} over value sets of {' x '.join(map(str, v['inputs']))}"
                f" values with {v['output']} output values needs an MLP of {s['hidden']:,} hidden "
                f"units, about {s['bytes'] / 2 ** 30:.1f} GiB, over half of compile.memory_mb="
                f"{params['compile']['memory_mb']}; shrink the value sets (fewer distinct values "
                "reaching it) or raise compile.memory_mb")
    return sizes


# ---------------------------------------------------------------------------
# 7. diagnose a wrong model

def _residual_value(model, labels: list[str], name: str, values: set, resid: np.ndarray,
                    encoding: str) -> list:
    """An op's value at each position, read from the residual stream [T, D] (BOS excluded)."""
    idx = [i for i, lab in enumerate(labels) if lab.split(":", 1)[0].rsplit("_", 1)[0] == name]
    if encoding == NUM:
        return [float(v) for v in resid[1:, idx[0]]]
    by_str = {str(v): v for v in values}
    keys = [labels[i].split(":", 1)[1] for i in idx]
    got = []
    for t in range(1, resid.shape[0]):
        vec = resid[t, idx]
        got.append(None if vec.max() < 0.5 else by_str.get(keys[int(np.argmax(vec))],
                                                             keys[int(np.argmax(vec))]))
    return got


def _tracr_value_set(user: UserProgram, expr: rasp.SOp, params: Mapping) -> set:
    """The value set tracr's basis inference gives ``expr`` within the user's program."""
    from tracr.compiler import basis_inference, nodes, rasp_to_graph
    z = params["zoo"]
    graph = rasp_to_graph.extract_rasp_graph(user.program)
    basis_inference.infer_bases(graph.graph, graph.sink, set(z["vocab"]), z["max_seq_len"])
    return set(graph.graph.nodes[expr.label][nodes.VALUE_SET])


def _cause(user: UserProgram, expr: rasp.SOp, x: np.ndarray, want: list, got: list,
           params: Mapping, dynamic: list[str]) -> str:
    """One of tracr's known causes of a wrong op on input ``x`` [1, L], or say it is none."""
    exactness = params["compile"]["mlp_exactness"]
    if isinstance(expr, rasp.Aggregate) and rasp.is_categorical(expr) and dynamic:
        return ("a categorical Aggregate averaging over a selector of width > 1: tracr computes "
                "a mean of one-hot vectors (tracr's dynamic validator refuses it)")
    if isinstance(expr, rasp.SelectorWidth):
        return (f"tracr's SelectorWidth MLP is too coarse for max_seq_len "
                f"{params['zoo']['max_seq_len']} at compile.mlp_exactness={exactness} "
                "(tracr PR #14); raise compile.mlp_exactness")
    if not isinstance(expr, rasp.Map):
        return "not one of tracr's known causes (please report it with this program)"
    if rasp.is_categorical(expr.inner):
        if rasp.is_numerical(expr) and any(
                w is not None and w < 0 and g is not None and abs(g) < 1e-3
                for w, g in zip(want, got)):
            return ("a numerical Map with negative outputs: tracr's MLP ends in a ReLU that "
                    "clips them to 0 (tracr PR #13); shift its values to be >= 0 or make the "
                    "Map categorical")
        return "not one of tracr's known causes (please report it with this program)"
    # A Map of a numerical SOp: tracr's discretising MLP knows only its inferred input values.
    grid = sorted(float(v) for v in _tracr_value_set(user, expr.inner, params))
    seen = [v for v in E.evaluate_batch(expr.inner, x).to_lists()[0] if v is not None]
    off = [v for v in seen if not any(abs(v - g) < 1e-9 for g in grid)]
    if off:
        return (f"a numerical MLP read off its input grid: tracr built this Map's MLP for the "
                f"values it infers for {user.describe(expr.inner)}, {_short(grid)}, but on this "
                f"input that SOp takes {_short(sorted(set(off)))}, which tracr does not know "
                "(e.g. a mean whose denominators it did not infer), so the MLP interpolates. "
                "Make the Map's input categorical, or compute the value another way")
    gap = min((b - a for a, b in zip(grid, grid[1:])), default=1.0)
    return (f"a numerical MLP too coarse for its input grid: {user.describe(expr.inner)} takes "
            f"values {gap:.4g} apart, finer than tracr's discretising MLP resolves at "
            f"compile.mlp_exactness={exactness}; raise compile.mlp_exactness (to about "
            f"{int(math.ceil(2 / max(gap, 1e-9)))} or more)")


def _short(values: list) -> str:
    text = ", ".join(f"{v:.4g}" if isinstance(v, float) else repr(v) for v in values[:8])
    return "{" + text + (", ..." if len(values) > 8 else "") + "}"


def diagnose(user: UserProgram, model, canon: Program, exprs: Mapping[str, rasp.SOp],
             failing_input: list, params: Mapping, dynamic: list[str]) -> dict:
    """The first op whose residual-stream value differs from RASP's on ``failing_input``.

    Ops are taken in the order the model computes them (the canonical order); each op's
    value is read from the last residual stream (tracr gives every SOp its own subspace and
    never overwrites it): argmax of its one-hot dimensions (categorical) or its dimension
    (numerical). Positions where RASP's value is None are skipped.
    """
    from metamodels.zoo.forward import encode, forward_residuals
    z, s = params["zoo"], params["sampler"]
    tables = L.Tables(s["map_constants"])
    vs = value_sets(canon, tables, z["vocab"], z["max_seq_len"])
    x = np.array([failing_input], dtype=object if any(isinstance(t, str) for t in failing_input)
                 else None)
    resid = forward_residuals(model, encode(model, [failing_input]))[-1][0]
    atol = params["verify"]["atol"]
    for op in canon.ops:
        expr = exprs[op.name]
        want = E.evaluate_batch(expr, x).to_lists()[0]
        got = _residual_value(model, model.residual_labels, op.name, vs[op.name], resid,
                              op.encoding)
        if op.encoding == NUM:
            wrong = [w is not None and not abs(float(g) - float(w)) <= atol
                     for w, g in zip(want, got)]
            got = [round(g, 4) for g in got]
        else:
            wrong = [w is not None and not (g is not None and g == w) for w, g in zip(want, got)]
        if any(wrong):
            return {"op": user.describe(expr), "cause": _cause(user, expr, x, want, got, params,
                                                                dynamic),
                    "input": list(failing_input), "expected": want, "got": got}
    return {"op": None, "cause": "every op's residual value matches RASP; the output readout "
            "differs (please report it with this program)", "input": list(failing_input)}


# ---------------------------------------------------------------------------
# the whole path (runs in a worker process)

def compile_user_program(params: Mapping, source_path: str, keep_unverified: bool) -> dict:
    """Load, check, compile and verify a user's program file (steps 1-7 of the module doc).

    Returns the zoo row's parts (``entry``, ``result``) and ``diagnosis`` (None when the
    model is verified), or raises ProgramError. With ``keep_unverified`` a dynamic-check
    failure does not stop the compile (the model is then verified, fails, and is diagnosed).
    """
    from metamodels.zoo.compiler import compile_program
    from metamodels.zoo.stage import model_record, verification_inputs, verify_as_params_say
    z = params["zoo"]
    tables = L.Tables(params["sampler"]["map_constants"])
    user = load_program(source_path)
    static_check(user)
    canon, exprs, rewrites = to_canonical(user, params)
    canon_expr = to_rasp(canon, tables)
    inputs = verification_inputs(params)
    check_same_behaviour(user, canon_expr, inputs)
    dynamic = dynamic_check(user, inputs)
    if dynamic and not keep_unverified:
        raise ProgramError(f"{user.path}: tracr cannot compile this program faithfully: "
                           + "; ".join(dynamic)
                           + " (--keep-unverified compiles it anyway, marked unverified)")
    sizes = check_sizes(user, canon, exprs, params)
    try:
        model = compile_program(canon_expr, set(z["vocab"]), z["max_seq_len"],
                                mlp_exactness=params["compile"]["mlp_exactness"])
    except (NotImplementedError, ValueError, IndexError, KeyError) as e:
        raise ProgramError(f"{user.path}: tracr failed to compile the program: "
                           f"{type(e).__name__}: {e}") from None
    check = verify_as_params_say(model, user.program, inputs, params)
    diagnosis = None
    if check["first_mismatch"] is not None:
        diagnosis = diagnose(user, model, canon, exprs, check["first_mismatch"]["input"],
                             params, dynamic)
    none_fraction = check["none_positions"] / max(1, check["positions"])
    entry = {"program": canon.to_json(), "source": render(canon, tables), "ops_rewritten": rewrites,
             "none_fraction": none_fraction}
    return {"entry": entry, "result": model_record(model, check), "diagnosis": diagnosis, "layer_sizes": sizes,
            "ops": len(canon), "inputs_checked": check["inputs"]}


def compile_task(state, task: dict) -> dict:
    """Worker entry (:func:`metamodels.zoo.workers.run_tasks`): a result, a refusal or a bug."""
    try:
        return {"ok": compile_user_program(task["params"], task["source"], task["keep"])}
    except ProgramError as e:
        return {"refused": str(e)}
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - a bug: bring the whole traceback back to the parent
        return {"bug": traceback.format_exc()}


def _fmt(values: list) -> str:
    return "[" + ", ".join("None" if v is None else repr(v) for v in values) + "]"


def format_diagnosis(d: Mapping) -> str:
    """The diagnosis as indented lines for the terminal."""
    lines = []
    if d.get("op"):
        lines.append(f"  first wrong op: {d['op']}")
    lines.append(f"  cause: {d['cause']}")
    if "expected" in d:
        lines.append(f"  input: {_fmt(d['input'])}   expected: {_fmt(d['expected'])}   "
                     f"got: {_fmt(d['got'])}")
    return "\n".join(lines)
