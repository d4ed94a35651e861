"""Decompiler metrics on decoded token sequences.

For one predicted sequence against its target (both token strings):

``exact``
    The predicted tokens up to and including EOS equal the target tokens.
``wellformed``
    The prediction parses into a well-typed program
    (:func:`metamodels.rasp.tokenizer.decode`) that tracr compiles.
``functional``
    The predicted program, evaluated with RASP on the whole input domain,
    gives the same output as the target program on every input: the same
    value (compared with ``==`` as RASP does) or None at every position, and
    it fails on exactly the inputs where the target fails. Exact implies
    functional; a program can be functionally equivalent without being exact
    (e.g. ``x+1`` then ``x-1`` versus the identity route to the same output).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import Program, to_rasp
from metamodels.rasp.tokenizer import BOS, EOS, PAD, decode
from metamodels.zoo.compiler import compile_program


def strip(tokens: Sequence[str]) -> list[str]:
    """BOS..EOS (inclusive) of a sequence: drop padding and anything after EOS."""
    out = []
    for t in tokens:
        if t == PAD:
            continue
        out.append(t)
        if t == EOS:
            break
    if not out or out[0] != BOS:
        out = [BOS] + out
    return out


@dataclasses.dataclass
class Verdict:
    exact: bool
    wellformed: bool
    functional: bool
    error: str | None = None


class Domain:
    """The input domain (every sequence of length 1..max_seq_len over vocab)."""

    def __init__(self, vocab: Iterable[Any], max_seq_len: int, tables: L.Tables):
        self.vocab = set(vocab)
        self.max_seq_len = max_seq_len
        self.tables = tables
        self.inputs = E.all_inputs(sorted(self.vocab), max_seq_len)

    def outputs(self, program: Program) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per input length: (value ids with None = -1 and error rows = -2, values)."""
        expr = to_rasp(program, self.tables)
        return [_ids(E.evaluate_batch(expr, x, errors="mask")) for x in self.inputs]

    def equivalent(self, a: Program, b: Program) -> bool:
        for (ca, va), (cb, vb) in zip(self.outputs(a), self.outputs(b)):
            index: dict = {}
            ka = _keyed(ca, va, index)
            kb = _keyed(cb, vb, index)
            if not np.array_equal(ka, kb):
                return False
        return True


def _ids(res: E.EvalResult) -> tuple[np.ndarray, list]:
    codes = res.codes.copy()
    if res.error_rows is not None:
        codes[res.error_rows] = -2
    return codes, res.values


def _keyed(codes: np.ndarray, values: list, index: dict) -> np.ndarray:
    """Codes re-keyed into a shared value index (== equality, as RASP compares)."""
    keys = np.asarray(L.key_ids(values, np.maximum(codes, 0), index)) if values else \
        np.zeros(codes.shape, np.int64)
    return np.where(codes < 0, codes, keys)


def judge(pred: Sequence[str], target: Sequence[str], domain: Domain,
          compile_check: bool = True) -> Verdict:
    pred, target = strip(pred), strip(target)
    exact = pred == target
    try:
        program = decode(pred, domain.tables)
        if compile_check:
            compile_program(to_rasp(program, domain.tables), domain.vocab, domain.max_seq_len)
    except Exception as e:  # noqa: BLE001 - DecodeError, and tracr raises many types
        if exact:
            raise AssertionError(f"target does not compile: {target}") from e
        return Verdict(False, False, False, f"{type(e).__name__}: {e}"[:200])
    if exact:
        return Verdict(True, True, True)
    try:
        functional = domain.equivalent(program, decode(target, domain.tables))
    except Exception as e:  # noqa: BLE001 - evaluation errors make it non-equivalent
        return Verdict(False, True, False, f"{type(e).__name__}: {e}"[:200])
    return Verdict(False, True, functional)


def summarize(verdicts: Sequence[Verdict], lengths: Sequence[int],
              token_correct: Sequence[int], token_total: Sequence[int]) -> dict:
    """Totals and per program length of the four test metrics."""
    lengths = np.asarray(lengths)

    def agg(mask: np.ndarray) -> dict:
        v = [verdicts[i] for i in np.flatnonzero(mask)]
        n = len(v)
        tc = int(np.sum(np.asarray(token_correct)[mask]))
        tt = int(np.sum(np.asarray(token_total)[mask]))
        return {"programs": n,
                "exact_accuracy": sum(x.exact for x in v) / n if n else None,
                "functional_equivalence": sum(x.functional for x in v) / n if n else None,
                "wellformed": sum(x.wellformed for x in v) / n if n else None,
                "token_accuracy": tc / tt if tt else None}

    out = agg(np.ones(len(verdicts), bool))
    out["by_length"] = {str(int(k)): agg(lengths == k) for k in np.unique(lengths)}
    return out
