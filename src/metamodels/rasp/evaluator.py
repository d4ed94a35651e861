"""Vectorised NumPy evaluation of tracr RASP programs over whole batches.

``tracr.rasp.rasp.evaluate`` runs one input at a time in pure Python.  This
module evaluates a program on a batch ``[B, L]`` of inputs that all have the
same length ``L`` and reproduces ``rasp.evaluate`` exactly: the same values,
the same Python types (``int`` vs ``float`` vs ``bool``), the same ``None``
positions, and an exception wherever ``rasp.evaluate`` would raise.

Representation
--------------
Every SOp value is held as ``codes: int32[B, L]`` into a *table* of distinct
Python value objects (``-1`` means ``None``).  Tables are always *compact*:
every entry occurs somewhere in the batch, so a user function that raises on
a table entry raises for some input of the batch, just as ``rasp.evaluate``
would.  Selectors are ``bool[B, Lq, Lk]`` arrays (``[query, key]`` like
tracr's ``out[row=query][col=key]``).

* ``Map``: ``f`` is called once per distinct value.
* ``SequenceMap`` / ``LinearSequenceMap``: ``f`` is called once per distinct
  ``(x, y)`` pair that occurs at the same position of some input.
* ``Select``: the predicate is called once per distinct ``(key, query)`` pair
  that occurs in the same input (``None`` included, as in tracr, where the
  ``Comparison`` predicates raise ``ValueError`` on ``None``).
* ``Aggregate``: tracr's ``_mean``: nothing selected -> default; one selected
  -> that value object itself; several -> ``sum(xs) / len(xs)`` if every
  selected value is an ``int``/``bool``/``float`` (else ``ValueError``).  The
  mean is computed with int64/float64 arithmetic that follows CPython's
  ``sum`` step by step (left to right, exact integer prefix, switch to double
  at the first float), so results are bit-identical.  Values of other types
  fall back to calling tracr's ``_mean`` once per distinct selected pattern.

Value identity: table entries are deduplicated by ``(type, value)`` (floats
by their exact bits), so ``1``, ``1.0`` and ``True`` stay distinct and
``-0.0`` stays distinct from ``0.0``.

Errors: with ``errors="raise"`` (default) the batch raises iff
``rasp.evaluate`` raises on at least one of its inputs: the first failing user
function / predicate / aggregation (in this evaluator's order) re-raises its
own exception, e.g. ``ValueError("key is None!")`` from a ``Comparison``.  With ``errors="mask"``
nothing is raised; instead ``EvalResult.error_rows`` marks exactly the inputs
on which ``rasp.evaluate`` raises.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from tracr.rasp import rasp

try:  # use tracr's own helper for the exotic-value fallback (exact semantics)
    from tracr.rasp.rasp import _mean as _tracr_mean
except ImportError:  # pragma: no cover - older/newer tracr

    def _tracr_mean(xs, default):
        if not xs:
            return default
        if len(xs) == 1:
            return xs[0]
        if all(isinstance(x, (int, bool, float)) for x in xs):
            return sum(xs) / len(xs)
        raise ValueError(
            "Only types int, bool, and float are supported for aggregation. "
            f"Received sequence: {xs}"
        )


__all__ = [
    "EvalResult",
    "evaluate_batch",
    "evaluate_many",
    "all_inputs",
    "sample_inputs",
    "none_fraction",
]

ErrorMode = Literal["raise", "mask"]

# Above this many (pair) ids use np.unique instead of a bincount lookup table.
_DENSE_LIMIT = 1 << 22
# Largest |int| allowed in the int64/float64 fast path of Aggregate, per
# summed element (the sum must stay exactly representable as a double).
_FAST_INT_LIMIT = 1 << 53
# CPython <= 3.11 sums floats naively left to right (what the fast path
# replicates); 3.12+ uses compensated summation, then floats take the generic
# path (tracr's own _mean).
_PLAIN_FLOAT_SUM = sum([1e16, 1.0, -1e16]) == 0.0


# --------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class EvalResult:
    """Batch value of an SOp.

    Attributes:
      codes: int32[B, L]; index into `values`, -1 means None.
      values: the distinct Python value objects (exact objects/types that
        rasp.evaluate returns).
      error_rows: bool[B] or None; only set with errors="mask": True where
        rasp.evaluate raises on that input (codes of such rows are -1).
    """

    codes: np.ndarray
    values: list
    error_rows: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.codes.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.codes.shape[1])

    def _object_table(self) -> np.ndarray:
        tab = np.empty(len(self.values) + 1, dtype=object)
        for i, v in enumerate(self.values):
            tab[i] = v
        tab[-1] = None  # code -1
        return tab

    def to_object_array(self) -> np.ndarray:
        """object[B, L] array of the value objects (None where code is -1)."""
        return self._object_table()[self.codes]

    def to_lists(self) -> list:
        """Per-input output lists, as rasp.evaluate returns them.

        Rows flagged in `error_rows` (errors="mask") are returned as None instead
        of a list.
        """
        out = self.to_object_array().tolist()
        if self.error_rows is not None and self.error_rows.any():
            for i in np.flatnonzero(self.error_rows):
                out[i] = None
        return out

    @property
    def none_mask(self) -> np.ndarray:
        return self.codes < 0

    @property
    def none_fraction(self) -> float:
        """Fraction of output positions that are None (error rows excluded)."""
        codes = self.codes
        if self.error_rows is not None:
            codes = codes[~self.error_rows]
        if codes.size == 0:
            return 0.0
        return float(np.count_nonzero(codes < 0)) / codes.size


def none_fraction(results: EvalResult | Iterable[EvalResult]) -> float:
    """Fraction of None outputs over one or several EvalResults (all positions)."""
    if isinstance(results, EvalResult):
        results = [results]
    n_none = 0
    n_all = 0
    for r in results:
        codes = r.codes
        if r.error_rows is not None:
            codes = codes[~r.error_rows]
        n_none += int(np.count_nonzero(codes < 0))
        n_all += codes.size
    return n_none / n_all if n_all else 0.0


# --------------------------------------------------------------------------
# Value tables.


def _value_key(v: Any):
    """Dedup key: equal keys <=> interchangeable value objects."""
    t = type(v)
    if t is int or t is str or t is bool:
        return (t, v)
    if isinstance(v, float):
        return (t, float(v).hex())  # keeps -0.0 apart from 0.0; all NaNs equal
    if t is tuple or t is list:
        # Element-wise keys so that (1,) / (True,) / (1.0,) stay distinct.
        return (t, tuple(_value_key(e) for e in v))
    try:
        hash(v)
    except TypeError:
        return (t, "id", id(v))
    return (t, v)


class _Interner:
    """Assigns codes to value objects (None -> -1)."""

    def __init__(self):
        self.table: list = []
        self._index: dict = {}

    def add(self, v: Any) -> int:
        if v is None:
            return -1
        k = _value_key(v)
        j = self._index.get(k)
        if j is None:
            j = len(self.table)
            self._index[k] = j
            self.table.append(v)
        return j

    def add_all(self, vs: Iterable[Any]) -> np.ndarray:
        return np.fromiter((self.add(v) for v in vs), dtype=np.int64)


@dataclasses.dataclass
class _SOpVal:
    codes: np.ndarray  # int32 [B, L], -1 = None
    table: list


def _lut_apply(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Maps codes through lut, keeping -1 as -1."""
    full = np.empty(len(lut) + 1, dtype=np.int32)
    full[:-1] = lut
    full[-1] = -1
    return full[codes]


def _compact(codes: np.ndarray, table: list) -> _SOpVal:
    """Drops table entries that no position uses."""
    n = len(table)
    if n == 0:
        return _SOpVal(codes.astype(np.int32, copy=False), table)
    used = np.bincount(codes.ravel() + 1, minlength=n + 1)[1:] > 0
    if used.all():
        return _SOpVal(codes.astype(np.int32, copy=False), table)
    keep = np.flatnonzero(used)
    lut = np.full(n, -1, dtype=np.int32)
    lut[keep] = np.arange(len(keep), dtype=np.int32)
    return _SOpVal(_lut_apply(lut, codes), [table[i] for i in keep])


def _unique_ids(ids: np.ndarray, size: int):
    """Distinct ids (sorted) and the inverse map (same shape as ids)."""
    if size <= _DENSE_LIMIT:
        counts = np.bincount(ids.ravel(), minlength=size)
        uniq = np.flatnonzero(counts)
        lut = np.zeros(size, dtype=np.int64)
        lut[uniq] = np.arange(len(uniq))
        return uniq, lut[ids]
    uniq, inv = np.unique(ids.ravel(), return_inverse=True)
    return uniq, inv.reshape(ids.shape)


# --------------------------------------------------------------------------
# The evaluator.


class _BatchEvaluator:
    def __init__(self, inputs: np.ndarray, errors: ErrorMode, force_slow_mean: bool = False):
        if errors not in ("raise", "mask"):
            raise ValueError(f"errors must be 'raise' or 'mask', got {errors!r}")
        self.inputs = inputs
        self.B, self.L = inputs.shape
        self.mask_mode = errors == "mask"
        self.err = np.zeros(self.B, dtype=bool)
        self.force_slow_mean = force_slow_mean
        self.cache: dict[int, Any] = {}
        self._dispatch = {
            rasp.TokensType: self._tokens,
            rasp.IndicesType: self._indices,
            rasp.LengthType: self._length,
            rasp.LinearSequenceMap: self._sequence_map,
            rasp.SequenceMap: self._sequence_map,
            rasp.Map: self._map,
            rasp.Full: self._full,
            rasp.ConstantSOp: self._constant_sop,
            rasp.SelectorWidth: self._selector_width,
            rasp.Aggregate: self._aggregate,
            rasp.Select: self._select,
            rasp.SelectorAnd: self._selector_and,
            rasp.SelectorOr: self._selector_or,
            rasp.SelectorNot: self._selector_not,
            rasp.ConstantSelector: self._constant_selector,
        }

    # ---- driver ------------------------------------------------------------

    def run(self, expr: rasp.RASPExpr):
        # Iterative post-order so deep programs do not hit the recursion limit.
        stack = [(expr, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in self.cache:
                continue
            if expanded:
                fn = self._dispatch.get(type(node))
                if fn is None:
                    # rasp.evaluate dispatches on the exact type too (and fails with a
                    # KeyError for anything else).
                    raise NotImplementedError(f"Evaluation of {node!r} is not defined.")
                self.cache[id(node)] = fn(node)
            else:
                stack.append((node, True))
                for child in reversed(list(node.children)):
                    if id(child) not in self.cache:
                        stack.append((child, False))
        return self.cache[id(expr)]

    def _get(self, expr):
        return self.cache[id(expr)]

    def _fail(self, exc: BaseException, rows: np.ndarray) -> None:
        """An operation raised `exc` on the inputs in bool[B] `rows`."""
        if not rows.any():
            return
        if not self.mask_mode:
            raise exc
        self.err |= rows

    # ---- primitives --------------------------------------------------------

    def _tokens(self, _):
        x = self.inputs
        B, L = x.shape
        if x.dtype != object:
            # Numeric array: the equivalent Python inputs are row.tolist().
            flat = x.ravel()
            uniq, inv = np.unique(flat, return_inverse=True)
            interner = _Interner()
            lut = interner.add_all(uniq.tolist())
            return _compact(_lut_apply(lut, inv.reshape(B, L)), interner.table)
        flat = x.ravel().tolist()
        types = set(map(type, flat))
        if types == {int}:
            try:
                arr = np.array(flat, dtype=np.int64)
            except OverflowError:
                arr = None
            if arr is not None:
                uniq, inv = np.unique(arr, return_inverse=True)
                # Keep the original objects (identity does not matter for ints).
                interner = _Interner()
                lut = interner.add_all(uniq.tolist())
                return _compact(_lut_apply(lut, inv.reshape(B, L)), interner.table)
        interner = _Interner()
        codes = interner.add_all(flat).reshape(B, L)
        return _SOpVal(codes.astype(np.int32), interner.table)

    def _indices(self, _):
        codes = np.broadcast_to(np.arange(self.L, dtype=np.int32), (self.B, self.L))
        return _compact(np.ascontiguousarray(codes), list(range(self.L)))

    def _length(self, _):
        return _compact(np.zeros((self.B, self.L), np.int32), [self.L])

    def _full(self, sop: rasp.Full):
        if sop.fill is None:
            return _SOpVal(np.full((self.B, self.L), -1, np.int32), [])
        return _compact(np.zeros((self.B, self.L), np.int32), [sop.fill])

    def _constant_sop(self, sop: rasp.ConstantSOp):
        value = list(sop.value)
        if len(value) != self.L:
            if sop.check_length:
                raise ValueError(f"Constant len {len(sop.value)} doesn't match input len {self.L}.")
            raise NotImplementedError(
                "ConstantSOp(check_length=False) with a length different from the "
                "input is not supported by the batch evaluator."
            )
        interner = _Interner()
        row = interner.add_all(value).astype(np.int32)
        codes = np.ascontiguousarray(np.broadcast_to(row, (self.B, self.L)))
        return _compact(codes, interner.table)

    # ---- elementwise maps ----------------------------------------------------

    def _map(self, sop: rasp.Map):
        x = self._get(sop.inner)
        f = sop.f
        interner = _Interner()
        lut = np.full(len(x.table), -1, dtype=np.int64)
        failed = []
        for i, v in enumerate(x.table):
            try:
                out = f(v)
            except Exception:  # noqa: BLE001 - replicate any user error
                if not self.mask_mode:
                    raise
                failed.append(i)
                continue
            lut[i] = interner.add(out)
        codes = _lut_apply(lut, x.codes)
        self._flag_rows(failed, len(x.table), x.codes)
        return _compact(codes, interner.table)

    def _sequence_map(self, sop: rasp.SequenceMap):
        a = self._get(sop.fst)
        b = self._get(sop.snd)
        f = sop.f
        na, nb = len(a.table) + 1, len(b.table) + 1  # slot 0 = None
        pid = (a.codes.astype(np.int64) + 1) * nb + (b.codes.astype(np.int64) + 1)
        uniq, inv = _unique_ids(pid, na * nb)
        interner = _Interner()
        out_codes = np.full(len(uniq), -1, dtype=np.int64)
        failed = []
        ta, tb = a.table, b.table
        for j, p in enumerate(uniq.tolist()):
            ia, ib = divmod(p, nb)
            if ia == 0 or ib == 0:
                continue  # None in either input -> None
            try:
                out = f(ta[ia - 1], tb[ib - 1])
            except Exception:  # noqa: BLE001
                if not self.mask_mode:
                    raise
                failed.append(j)
                continue
            out_codes[j] = interner.add(out)
        codes = _lut_apply(out_codes, inv)
        self._flag_rows(failed, len(uniq), inv)
        return _compact(codes, interner.table)

    def _flag_rows(self, failed: list[int], n: int, index: np.ndarray) -> None:
        """Mask mode: mark inputs whose row of `index` [B, L] uses a failed entry (of n)."""
        if failed:
            bad = np.zeros(n + 1, dtype=bool)
            bad[failed] = True
            self.err |= bad[index].any(axis=1)

    # ---- selectors -------------------------------------------------------------

    def _select(self, sel: rasp.Select):
        keys = self._get(sel.keys)
        queries = self._get(sel.queries)
        pred = sel.predicate
        nk, nq = len(keys.table) + 1, len(queries.table) + 1  # slot 0 = None
        kc = keys.codes.astype(np.int64) + 1  # [B, Lk]
        qc = queries.codes.astype(np.int64) + 1  # [B, Lq]
        pid = qc[:, :, None] * nk + kc[:, None, :]  # [B, Lq, Lk]
        uniq, inv = _unique_ids(pid, nk * nq)
        tk = [None] + list(keys.table)
        tq = [None] + list(queries.table)
        res = np.zeros(len(uniq) + 1, dtype=bool)
        failed = []
        for j, p in enumerate(uniq.tolist()):
            iq, ik = divmod(p, nk)
            try:
                res[j] = bool(pred(tk[ik], tq[iq]))
            except Exception:  # noqa: BLE001
                if not self.mask_mode:
                    raise
                failed.append(j)
        if failed:
            bad = np.zeros(len(uniq) + 1, dtype=bool)
            bad[failed] = True
            self.err |= bad[inv].reshape(self.B, -1).any(axis=1)
        return res[inv]

    def _constant_selector(self, sel: rasp.ConstantSelector):
        value = sel.value
        if len(value) != self.L:
            if sel.check_length:
                raise ValueError(f"Constant len {self.L} doesn't match input len {len(value)}.")
        arr = np.asarray(value)
        if arr.dtype != bool or arr.shape != (self.L, self.L):
            raise NotImplementedError(
                "Only square boolean ConstantSelectors matching the input length "
                "are supported by the batch evaluator."
            )
        return np.ascontiguousarray(np.broadcast_to(arr, (self.B, self.L, self.L)))

    def _selector_and(self, sel: rasp.SelectorAnd):
        return np.logical_and(self._get(sel.fst), self._get(sel.snd))

    def _selector_or(self, sel: rasp.SelectorOr):
        return np.logical_or(self._get(sel.fst), self._get(sel.snd))

    def _selector_not(self, sel: rasp.SelectorNot):
        return np.logical_not(self._get(sel.inner))

    def _selector_width(self, sop: rasp.SelectorWidth):
        s = self._get(sop.selector)
        counts = s.sum(axis=-1, dtype=np.int32)
        return _compact(counts, list(range(s.shape[-1] + 1)))

    # ---- aggregate -------------------------------------------------------------

    def _aggregate(self, sop: rasp.Aggregate):
        s = self._get(sop.selector)  # [B, Lq, Lk]
        v = self._get(sop.sop)  # codes [B, Lk]
        B, Lq, Lk = s.shape
        table = v.table
        default = sop.default
        count = s.sum(axis=-1)  # [B, Lq]

        # Output table: v.table entries, then the default, then new means.
        interner = _Interner()
        base_lut = interner.add_all(table)  # identity (table already distinct)
        default_code = interner.add(default)

        out = np.full((B, Lq), -1, dtype=np.int64)
        out[count == 0] = default_code
        one = count == 1
        if one.any():
            pos = np.argmax(s, axis=-1)  # first (only) selected key
            picked = np.take_along_axis(v.codes, pos, axis=1)  # [B, Lq]
            out[one] = _lut_apply(base_lut, picked[one])

        multi = count >= 2
        if multi.any():
            rows_b, rows_q = np.nonzero(multi)
            sm = s[rows_b, rows_q]  # [N, Lk]
            vm = v.codes[rows_b]  # [N, Lk]
            cnt = count[rows_b, rows_q]
            is_num = np.array([isinstance(x, (int, bool, float)) for x in table] + [False])
            bad = (sm & ~is_num[vm]).any(axis=1)  # non-numeric (or None) selected
            if bad.any():
                err_rows = np.zeros(B, dtype=bool)
                err_rows[rows_b[bad]] = True
                bad_row = int(np.flatnonzero(bad)[0])
                xs = [table[c] if c >= 0 else None for c, t in zip(vm[bad_row], sm[bad_row]) if t]
                self._fail(
                    ValueError(
                        "Only types int, bool, and float are supported for "
                        f"aggregation. Received sequence: {xs}"
                    ),
                    err_rows,
                )
                good = ~bad
                rows_b, rows_q, sm, vm, cnt = (
                    rows_b[good],
                    rows_q[good],
                    sm[good],
                    vm[good],
                    cnt[good],
                )
            if len(rows_b):
                codes, failed = self._means(sm, vm, cnt, table, default, interner)
                out[rows_b, rows_q] = codes
                if failed is not None:
                    self.err[rows_b[failed]] = True
        return _compact(out.astype(np.int32), interner.table)

    def _means(self, sm, vm, cnt, table, default, interner: _Interner):
        """Codes (into `interner`) of tracr's _mean for each selected row.

        Returns (codes[N], failed[N] bool or None); failed rows only in mask mode.
        """
        fast = not self.force_slow_mean
        if fast:
            int_val = np.zeros(len(table) + 1, dtype=np.int64)
            flt_val = np.zeros(len(table) + 1, dtype=np.float64)
            is_flt = np.zeros(len(table) + 1, dtype=bool)
            used = np.zeros(len(table) + 1, dtype=bool)
            used[vm[sm]] = True
            limit = _FAST_INT_LIMIT // max(1, sm.shape[1])
            for i, x in enumerate(table):
                if not used[i]:
                    continue
                t = type(x)
                if t is float:
                    flt_val[i] = x
                    is_flt[i] = True
                elif (t is int or t is bool) and -limit < x < limit:
                    int_val[i] = x
                    flt_val[i] = x
                else:
                    fast = False
                    break
            if fast and not _PLAIN_FLOAT_SUM and is_flt.any():
                fast = False
        if fast:
            means = self._fast_means(sm, vm, cnt, int_val, flt_val, is_flt)
            bits = means.view(np.int64)
            ubits, inv = np.unique(bits, return_inverse=True)
            lut = interner.add_all(float(x) for x in ubits.view(np.float64))
            return lut[inv.ravel()], None
        # Generic path: tracr's own _mean once per distinct selection pattern.
        pattern = np.where(sm, vm, -2)
        upat, inv = np.unique(pattern, axis=0, return_inverse=True)
        inv = inv.ravel()
        lut = np.full(len(upat), -1, dtype=np.int64)
        failed = []
        for j, row in enumerate(upat.tolist()):
            xs = [table[c] if c >= 0 else None for c in row if c != -2]
            try:
                lut[j] = interner.add(_tracr_mean(xs, default))
            except Exception:  # noqa: BLE001
                if not self.mask_mode:
                    raise
                failed.append(j)
        if failed:
            bad = np.zeros(len(upat), dtype=bool)
            bad[failed] = True
            return lut[inv], bad[inv]
        return lut[inv], None

    @staticmethod
    def _fast_means(sm, vm, cnt, int_val, flt_val, is_flt):
        """sum(xs) / len(xs) exactly as CPython 3.11 computes it.

        CPython's sum starts from int 0, adds ints exactly while the running total
        is an int, converts the total to double at the first float and from then
        on adds each item as a double, strictly left to right.  The int prefix is
        an exact int64 sum; the float tail uses np.cumsum, which accumulates
        sequentially.  Unselected slots contribute +0.0, an exact no-op because
        the running double can never be -0.0 (it starts as float(int) and IEEE
        addition only yields -0.0 from two -0.0 operands).
        """
        sel_f = sm & is_flt[vm]  # selected floats
        has_f = sel_f.any(axis=1)
        lk = sm.shape[1]
        # First selected float position (lk where none).
        first_f = np.where(has_f, np.argmax(sel_f, axis=1), lk)
        before = np.arange(lk)[None, :] < first_f[:, None]
        int_part = np.where(sm & before, int_val[vm], 0).sum(axis=1)
        total = int_part.astype(np.float64)
        if has_f.any():
            rows = np.flatnonzero(has_f)
            terms = np.zeros((len(rows), lk + 1), dtype=np.float64)
            terms[:, 0] = total[rows]
            tail = sm[rows] & ~before[rows]
            terms[:, 1:] = np.where(tail, flt_val[vm[rows]], 0.0)
            total[rows] = np.cumsum(terms, axis=1)[:, -1]
        return total / cnt.astype(np.float64)


# --------------------------------------------------------------------------
# Public API.


_SIMPLE_TYPES = frozenset({int, float, bool, str, type(None)})


def _object_matrix(rows: Sequence[Sequence], L: int) -> np.ndarray:
    """[len(rows), L] object array holding exactly the given element objects."""
    flat = list(itertools.chain.from_iterable(rows))
    arr = np.empty(len(flat), dtype=object)
    if set(map(type, flat)) <= _SIMPLE_TYPES:
        arr[:] = flat
    else:  # tuples etc. must not be unpacked by numpy
        for j, x in enumerate(flat):
            arr[j] = x
    return arr.reshape(len(rows), L)


def _as_batch(inputs) -> np.ndarray:
    if isinstance(inputs, np.ndarray):
        arr = inputs
    else:
        rows = [list(r) for r in inputs]
        lens = {len(r) for r in rows}
        if len(lens) > 1:
            raise ValueError(
                "evaluate_batch needs inputs of one length; use evaluate_many for mixed lengths."
            )
        arr = _object_matrix(rows, lens.pop() if lens else 0)
    if arr.ndim != 2:
        raise ValueError(f"inputs must be [B, L], got shape {arr.shape}")
    return arr


def evaluate_batch(
    program: rasp.SOp,
    inputs: np.ndarray,
    errors: ErrorMode = "raise",
    *,
    _force_slow_mean: bool = False,
) -> EvalResult:
    """Evaluates `program` on every row of `inputs` ([B, L], one length L).

    Equivalent to ``[rasp.evaluate(program, row.tolist()) for row in inputs]``
    (numeric arrays are read as the Python values of ``.tolist()``; object
    arrays are used as they are).

    Args:
      program: the output SOp.
      inputs: [B, L] token values.
      errors: "raise" (re-raise the first error any input triggers) or "mask"
        (flag failing inputs in `EvalResult.error_rows`).
    """
    if not isinstance(program, rasp.SOp):
        raise TypeError(f"program must be an SOp, got {type(program)}")
    arr = _as_batch(inputs)
    if arr.shape[0] == 0:
        return EvalResult(
            np.zeros(arr.shape, np.int32), [], np.zeros(0, bool) if errors == "mask" else None
        )
    ev = _BatchEvaluator(arr, errors, force_slow_mean=_force_slow_mean)
    val = ev.run(program)
    codes = np.array(val.codes, dtype=np.int32, order="C", copy=True)
    if ev.mask_mode:
        codes[ev.err] = -1
        res = _compact(codes, val.table)
        return EvalResult(res.codes, res.table, ev.err.copy())
    return EvalResult(codes, val.table, None)


def evaluate_many(program: rasp.SOp, seqs: Sequence[Sequence]) -> list[list]:
    """``[rasp.evaluate(program, s) for s in seqs]``, vectorised per length."""
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    out: list = [None] * len(seqs)
    for L, idx in by_len.items():
        arr = _object_matrix([seqs[i] for i in idx], L)
        lists = evaluate_batch(program, arr).to_lists()
        for r, i in enumerate(idx):
            out[i] = lists[r]
    return out


def _vocab_array(vocab) -> tuple[list, np.dtype]:
    vals = sorted(vocab)
    if all(type(v) is int for v in vals):
        return vals, np.dtype(np.int64)
    return vals, np.dtype(object)


def _value_table(vals: list, dtype: np.dtype) -> np.ndarray:
    """vals as an array indexable by digit arrays (object arrays keep the exact values)."""
    if dtype != object:
        return np.asarray(vals, dtype=np.int64)
    table = np.empty(len(vals), dtype=object)
    for i, v in enumerate(vals):
        table[i] = v
    return table


def all_inputs(vocab, max_seq_len: int, min_len: int = 1) -> list[np.ndarray]:
    """Whole input domain, one [|V|^L, L] array per L in min_len..max_seq_len.

    Rows are in lexicographic order of sorted(vocab) (itertools.product order).
    Int vocabularies give int64 arrays, anything else object arrays.
    """
    vals, dtype = _vocab_array(vocab)
    V = len(vals)
    out = []
    for L in range(min_len, max_seq_len + 1):
        n = V**L
        # Digit d of row r (most significant first) = (r // V^(L-1-d)) % V.
        r = np.arange(n, dtype=np.int64)
        digits = np.empty((n, L), dtype=np.int64)
        for d in range(L):
            digits[:, d] = (r // (V ** (L - 1 - d))) % V
        out.append(_value_table(vals, dtype)[digits])
    return out


def edge_inputs(vocab, max_seq_len: int) -> list[np.ndarray]:
    """Structured sequences of every length 1..max_seq_len that random samples almost never
    hold, grouped by length: each token repeated (the widest selectors: a SelectorWidth or a
    mean over every position) and the sorted vocabulary cycled up and down."""
    vals, dtype = _vocab_array(vocab)
    table = _value_table(vals, dtype)
    V = len(vals)
    out = []
    for L in range(1, max_seq_len + 1):
        rows = [np.full(L, v) for v in range(V)]
        rows.append(np.arange(L) % V)
        rows.append((V - 1 - np.arange(L)) % V)
        out.append(table[np.unique(np.stack(rows), axis=0)])
    return out


def sample_inputs(vocab, max_seq_len: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` random sequences grouped by length (ascending), deterministic in rng.

    Each sequence has a length uniform in 1..max_seq_len and i.i.d. uniform
    tokens from sorted(vocab).  Lengths that were never drawn are omitted.
    """
    vals, dtype = _vocab_array(vocab)
    lengths = rng.integers(1, max_seq_len + 1, size=n)
    out = []
    for L in range(1, max_seq_len + 1):
        m = int(np.count_nonzero(lengths == L))
        if m == 0:
            continue
        digits = rng.integers(0, len(vals), size=(m, L))
        out.append(_value_table(vals, dtype)[digits])
    return out
