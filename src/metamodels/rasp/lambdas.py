"""The finite tables of elementwise functions and predicates programs may use.

Every function a sampled program applies is named by a token from these tables,
so a program is plain data (JSON, tokens) and its Python callables are rebuilt
from the names. The tables follow the lambda/predicate lists of the source
papers (Table 2 of "Detecting Backdoors with Meta-Models", Table 4.1 of the
Inverse Tracr thesis): comparison lambdas ``x < c``, ``x <= c``, ``x > c``,
``x >= c``, ``x != c``, ``x == c``, ``not x``; numeric lambdas ``x + c``,
``x * c``, ``x - c``, ``x or c``, ``x and c``; their two-argument forms for
SequenceMap; the linear forms ``x + y`` and ``x - y`` for LinearSequenceMap;
and the eight tracr comparisons for Select.

The constants ``c`` come from ``params.yaml`` (``sampler.map_constants``).

Behaviour canonicalisation: two table entries that agree on every value that
actually reaches them compile to identical weights, so no meta-model can tell
them apart. :func:`canonical_map`, :func:`canonical_sequence_map` and
:func:`canonical_predicate` return the first table entry (in table order) that
behaves identically on the given input value sets.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tracr.rasp import rasp

# ---------------------------------------------------------------------------
# One-argument families for Map: name template and a factory taking c.
_MAP_FAMILIES: tuple[tuple[str, str, Callable[[Any], Callable[[Any], Any]]], ...] = (
    # (family, template, factory)
    ("lt", "x<{c}", lambda c: lambda x: x < c),
    ("le", "x<={c}", lambda c: lambda x: x <= c),
    ("gt", "x>{c}", lambda c: lambda x: x > c),
    ("ge", "x>={c}", lambda c: lambda x: x >= c),
    ("ne", "x!={c}", lambda c: lambda x: x != c),
    ("eq", "x=={c}", lambda c: lambda x: x == c),
    ("add", "x+{c}", lambda c: lambda x: x + c),
    ("mul", "x*{c}", lambda c: lambda x: x * c),
    ("sub", "x-{c}", lambda c: lambda x: x - c),
    ("or", "x_or_{c}", lambda c: lambda x: x or c),
    ("and", "x_and_{c}", lambda c: lambda x: x and c),
)
_NOT = ("not", "not_x", lambda x: not x)

# Python source for each family, used by the human-readable rendering.
_MAP_SOURCE = {
    "lt": "x < {c}", "le": "x <= {c}", "gt": "x > {c}", "ge": "x >= {c}",
    "ne": "x != {c}", "eq": "x == {c}", "add": "x + {c}", "mul": "x * {c}",
    "sub": "x - {c}", "or": "x or {c}", "and": "x and {c}", "not": "not x",
}

# Two-argument lambdas for (categorical) SequenceMap.
_SEQUENCE_MAP: tuple[tuple[str, str, Callable[[Any, Any], Any], bool], ...] = (
    # (token, source, function, commutative)
    ("x+y", "x + y", operator.add, True),
    ("x*y", "x * y", operator.mul, True),
    ("x-y", "x - y", operator.sub, False),
    ("x_or_y", "x or y", lambda x, y: x or y, False),
    ("x_and_y", "x and y", lambda x, y: x and y, False),
    ("x<y", "x < y", operator.lt, False),
    ("x<=y", "x <= y", operator.le, False),
    ("x>y", "x > y", operator.gt, False),
    ("x>=y", "x >= y", operator.ge, False),
    ("x!=y", "x != y", operator.ne, True),
    ("x==y", "x == y", operator.eq, True),
)

# LinearSequenceMap coefficient pairs (numerical inputs and output).
_LINEAR: tuple[tuple[str, float, float], ...] = (
    ("lin_x+y", 1, 1),
    ("lin_x-y", 1, -1),
)

# tracr's Select comparisons, in the order used for canonicalisation.
PREDICATES: tuple[str, ...] = ("TRUE", "FALSE", "EQ", "LT", "LEQ", "GT", "GEQ", "NEQ")
_COMMUTATIVE_PREDICATES = frozenset({"EQ", "NEQ", "TRUE", "FALSE"})


@dataclasses.dataclass(frozen=True)
class MapFn:
    token: str
    family: str
    const: Any
    fn: Callable[[Any], Any]

    def source(self) -> str:
        return "lambda x: " + _MAP_SOURCE[self.family].format(c=self.const)


@dataclasses.dataclass(frozen=True)
class SeqFn:
    token: str
    src: str
    fn: Callable[[Any, Any], Any]
    commutative: bool

    def source(self) -> str:
        return "lambda x, y: " + self.src


@dataclasses.dataclass(frozen=True)
class LinearFn:
    token: str
    fst_fac: float
    snd_fac: float


class Tables:
    """All lambda/predicate tokens available for one set of sampler params."""

    def __init__(self, map_constants: Sequence[int]):
        if len(set(map_constants)) != len(map_constants):
            raise ValueError(f"sampler.map_constants has duplicates: {list(map_constants)}")
        self.map_constants = tuple(map_constants)
        maps: list[MapFn] = []
        for family, template, factory in _MAP_FAMILIES:
            for c in self.map_constants:
                maps.append(MapFn(template.format(c=c), family, c, factory(c)))
        maps.append(MapFn(_NOT[1], _NOT[0], None, _NOT[2]))
        self.maps: tuple[MapFn, ...] = tuple(maps)
        self.map_by_token = {m.token: m for m in self.maps}
        self.sequence_maps = tuple(SeqFn(*row) for row in _SEQUENCE_MAP)
        self.sequence_map_by_token = {s.token: s for s in self.sequence_maps}
        self.linear = tuple(LinearFn(*row) for row in _LINEAR)
        self.linear_by_token = {s.token: s for s in self.linear}
        self.predicates = PREDICATES
        self._cache: dict[tuple, str] = {}

    def cached(self, key: tuple, compute: Callable[[], str]) -> str:
        """Memoise a canonicalisation result (pure in its key)."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = compute()
            return value

    # -- tokens -------------------------------------------------------------
    def function_tokens(self) -> list[str]:
        """Every lambda and predicate token, in table order."""
        return ([m.token for m in self.maps] + [s.token for s in self.sequence_maps]
                + [s.token for s in self.linear] + list(self.predicates))

    def map_families(self) -> list[str]:
        return [f for f, _, _ in _MAP_FAMILIES] + [_NOT[0]]

    def maps_of_family(self, family: str) -> list[MapFn]:
        return [m for m in self.maps if m.family == family]


def predicate(name: str) -> rasp.Comparison:
    return rasp.Comparison[name]


def predicate_is_commutative(name: str) -> bool:
    return name in _COMMUTATIVE_PREDICATES


def _safe(fn: Callable, *args) -> tuple[bool, Any]:
    """(ok, value): like tracr's basis inference, arithmetic errors drop out."""
    try:
        return True, fn(*args)
    except ArithmeticError:
        return False, None


def _behaviour(fn: Callable, points: Iterable[tuple]) -> tuple:
    out = []
    for p in points:
        ok, v = _safe(fn, *p)
        out.append((ok, value_key(v)))
    return tuple(out)


def value_key(v: Any) -> Any:
    """A hashable key under which == values coincide (True == 1 == 1.0).

    rasp and tracr compare values with ==, so 0, 0.0 and False are one value
    for every check here (the evaluator keeps them apart as Python objects).
    """
    if isinstance(v, (bool, int, float)):
        return ("n", float(v))
    return ("o", v)


def key_ids(values: Sequence[Any], codes: np.ndarray, index: dict) -> np.ndarray:
    """Map evaluator codes (-1 = None) to ids of their value_key in `index`.

    `index` (value_key -> id) is shared between the arrays being compared and
    grows as new values appear; None stays -1.
    """
    lut = np.empty(len(values) + 1, dtype=np.int64)
    for i, v in enumerate(values):
        lut[i] = index.setdefault(value_key(v), len(index))
    lut[-1] = -1
    return lut[codes]


def sorted_values(values: Iterable[Any]) -> list[Any]:
    """A deterministic order for a value set: numbers by value, then strings."""
    return sorted(values, key=lambda v: (0, float(v), type(v).__name__)
                  if isinstance(v, (bool, int, float)) else (1, 0.0, str(v)))


def _vkey(values: Iterable[Any]) -> frozenset:
    return frozenset((value_key(v), type(v).__name__) for v in values)


def _points1(values: Iterable[Any]) -> list[tuple]:
    return [(x,) for x in sorted_values(values)]


def _points2(fst_values: Iterable[Any], snd_values: Iterable[Any]) -> list[tuple]:
    return list(itertools.product(sorted_values(fst_values), sorted_values(snd_values)))


def _first_match(candidates: Iterable[tuple[str, Callable]], fn: Callable,
                 points: list[tuple]) -> str | None:
    """Token of the first (token, function) candidate behaving like `fn` on `points`.

    None if no candidate does, or if `fn` (a foreign lambda) raises anything
    but an arithmetic error.
    """
    try:
        target = _behaviour(fn, points)
    except Exception:  # noqa: BLE001 - foreign lambdas may raise anything
        return None
    for token, candidate in candidates:
        if _behaviour(candidate, points) == target:
            return token
    return None


def _map_candidates(tables: Tables):
    return [(m.token, m.fn) for m in tables.maps]


def _sequence_map_candidates(tables: Tables):
    return [(s.token, s.fn) for s in tables.sequence_maps]


def _predicate_candidates():
    return [(p, predicate(p)) for p in PREDICATES]


def canonical_map(tables: Tables, token: str, in_values: Iterable[Any]) -> str:
    """First Map token in table order that agrees with `token` on `in_values`."""
    in_values = list(in_values)
    return tables.cached(("map", token, _vkey(in_values)), lambda: _first_match(
        _map_candidates(tables), tables.map_by_token[token].fn, _points1(in_values)))


def canonical_sequence_map(tables: Tables, token: str, fst_values, snd_values) -> str:
    fst_values, snd_values = list(fst_values), list(snd_values)
    return tables.cached(
        ("seq", token, _vkey(fst_values), _vkey(snd_values)),
        lambda: _first_match(_sequence_map_candidates(tables),
                             tables.sequence_map_by_token[token].fn,
                             _points2(fst_values, snd_values)))


def canonical_predicate(tables: Tables, name: str, key_values, query_values) -> str:
    key_values, query_values = list(key_values), list(query_values)
    return tables.cached(
        ("pred", name, _vkey(key_values), _vkey(query_values)),
        lambda: _first_match(_predicate_candidates(), predicate(name),
                             _points2(key_values, query_values)))


def match_map(tables: Tables, fn: Callable[[Any], Any], in_values) -> str | None:
    """The canonical table token behaving like an arbitrary `fn`, or None."""
    return _first_match(_map_candidates(tables), fn, _points1(in_values))


def match_sequence_map(tables: Tables, fn, fst_values, snd_values) -> str | None:
    return _first_match(_sequence_map_candidates(tables), fn, _points2(fst_values, snd_values))


def match_predicate(fn, key_values, query_values) -> str | None:
    """The canonical predicate behaving like `fn(key, query)` on the value sets, or None."""
    return _first_match(_predicate_candidates(), lambda k, q: bool(fn(k, q)),
                        _points2(key_values, query_values))


def map_outputs(fn: Callable, in_values: Iterable[Any]) -> set:
    """Output value set the way tracr's basis inference computes it."""
    out = set()
    for x in in_values:
        ok, v = _safe(fn, x)
        if ok and v is not None:
            out.add(v)
    return out


def sequence_map_outputs(fn: Callable, fst_values, snd_values) -> set:
    out = set()
    for x, y in itertools.product(fst_values, snd_values):
        ok, v = _safe(fn, x, y)
        if ok and v is not None:
            out.add(v)
    return out
