"""The vectorised evaluator must agree exactly with tracr's rasp.evaluate."""

from __future__ import annotations

import itertools
import math
import os
import random

import numpy as np
import pytest
from tracr.compiler import lib
from tracr.rasp import rasp

from metamodels.rasp.evaluator import (
    EvalResult,
    all_inputs,
    evaluate_batch,
    evaluate_many,
    none_fraction,
    sample_inputs,
)

VOCAB = [1, 2, 3, 4, 5]

# --------------------------------------------------------------------------
# Helpers.


def _same_value(a, b) -> bool:
    """Equal value AND equal type; floats compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()  # bitwise (also -0.0 vs 0.0, NaN == NaN)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_lists(got, ref, ctx=""):
    assert len(got) == len(ref), ctx
    for i, (g, r) in enumerate(zip(got, ref)):
        assert len(g) == len(r), (ctx, i)
        for j, (x, y) in enumerate(zip(g, r)):
            assert _same_value(x, y), (
                f"{ctx} input #{i} pos {j}: got {x!r} ({type(x).__name__}), "
                f"rasp.evaluate gave {y!r} ({type(y).__name__})"
            )


def _reference(program, rows):
    """rasp.evaluate on each row: (outputs or None, raised flags)."""
    outs, raised = [], []
    for row in rows:
        try:
            outs.append(rasp.evaluate(program, row))
            raised.append(False)
        except Exception:  # noqa: BLE001
            outs.append(None)
            raised.append(True)
    return outs, np.array(raised, dtype=bool)


def _check_batch(program, X: np.ndarray, ctx="", slow_mean=False):
    """Checks evaluate_batch on one same-length batch against rasp.evaluate.

    Returns True if some input raised under rasp.evaluate.
    """
    rows = X.tolist()
    ref, raised = _reference(program, rows)
    if raised.any():
        with pytest.raises(Exception):
            evaluate_batch(program, X, _force_slow_mean=slow_mean)
    else:
        res = evaluate_batch(program, X, _force_slow_mean=slow_mean)
        assert res.codes.shape == X.shape and res.codes.dtype == np.int32
        _assert_same_lists(res.to_lists(), ref, ctx)
    # Masked mode flags exactly the failing inputs and is exact elsewhere.
    res = evaluate_batch(program, X, errors="mask", _force_slow_mean=slow_mean)
    np.testing.assert_array_equal(res.error_rows, raised, err_msg=ctx)
    got = res.to_lists()
    ok = ~raised
    _assert_same_lists([g for g, k in zip(got, ok) if k], [r for r, k in zip(ref, ok) if k], ctx)
    assert all(g is None for g, k in zip(got, ok) if not k)
    return bool(raised.any())


def _check_domain(program, vocab, max_seq_len, ctx="", slow_mean=False):
    any_raised = False
    for X in all_inputs(vocab, max_seq_len):
        any_raised |= _check_batch(program, X, ctx, slow_mean=slow_mean)
    return any_raised


# --------------------------------------------------------------------------
# tracr library programs on their whole input domain.

_INT = (VOCAB, 5)
_PARENS = (["(", ")", "x"], 5)
_DYCK = (["(", ")", "{", "}"], 5)
_ABC = (["a", "b", "c"], 5)

LIB_PROGRAMS = {
    "length": (lambda: lib.make_length(), _INT),
    "reverse": (lambda: lib.make_reverse(rasp.tokens), _INT),
    "reverse_str": (lambda: lib.make_reverse(rasp.tokens), _ABC),
    "hist": (lambda: lib.make_hist(), _INT),
    "sort_unique": (lambda: lib.make_sort_unique(rasp.tokens, rasp.tokens), _INT),
    "sort_unique_str": (lambda: lib.make_sort_unique(rasp.tokens, rasp.tokens), _ABC),
    "sort": (lambda: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1), _INT),
    "sort_freq": (lambda: lib.make_sort_freq(max_seq_len=5), _INT),
    "frac_prevs": (lambda: lib.make_frac_prevs(rasp.tokens == 3), _INT),
    "pair_balance": (lambda: lib.make_pair_balance(rasp.tokens, "(", ")"), _PARENS),
    "shuffle_dyck": (lambda: lib.make_shuffle_dyck(["()", "{}"]), _DYCK),
    "shuffle_dyck1": (lambda: lib.make_shuffle_dyck(["()"]), _PARENS),
    "detect_pattern": (lambda: lib.detect_pattern(rasp.tokens, "abc"), _ABC),
    "detect_pattern_int": (lambda: lib.detect_pattern(rasp.tokens, [1, 2]), _INT),
    "count_less_freq": (lambda: lib.make_count_less_freq(2), _INT),
    "count": (lambda: lib.make_count(rasp.tokens, 3), _INT),
    "shift_by": (lambda: lib.shift_by(2, rasp.tokens), _INT),
    "nary_sequencemap": (
        lambda: lib.make_nary_sequencemap(
            lambda x, y, z: x + y * z, rasp.tokens, rasp.indices, rasp.tokens
        ),
        _INT,
    ),
    "nary_tuple": (
        lambda: lib.make_nary_sequencemap(lambda x, y: (x, y), rasp.tokens == 2, rasp.tokens),
        _INT,
    ),
}


@pytest.mark.parametrize("name", sorted(LIB_PROGRAMS))
def test_lib_program_whole_domain(name):
    make, (vocab, max_len) = LIB_PROGRAMS[name]
    program = make()
    _check_domain(program, vocab, max_len, ctx=name)


@pytest.mark.parametrize(
    "name", ["sort_unique", "frac_prevs", "pair_balance", "shuffle_dyck", "sort"]
)
def test_lib_program_generic_mean_path(name):
    make, (vocab, max_len) = LIB_PROGRAMS[name]
    _check_domain(make(), vocab, 4, ctx=name, slow_mean=True)


# --------------------------------------------------------------------------
# Random programs.

_MAP_FNS = [
    ("x+c", lambda c: lambda x: x + c),
    ("x*c", lambda c: lambda x: x * c),
    ("x-c", lambda c: lambda x: x - c),
    ("x<c", lambda c: lambda x: x < c),
    ("x==c", lambda c: lambda x: x == c),
    ("not x", lambda c: lambda x: not x),
    ("x or c", lambda c: lambda x: x or c),
    ("x and c", lambda c: lambda x: x and c),
]
_DIV_CONSTS = [2, 0.5, -3]
_SEQ_FNS = [
    ("x+y", lambda x, y: x + y),
    ("x*y", lambda x, y: x * y),
    ("x-y", lambda x, y: x - y),
    ("x<y", lambda x, y: x < y),
    ("x/y", lambda x, y: x / y),  # may raise ZeroDivisionError
]
_CONSTS = [-1, 0, 1, 2, 3, 0.5, 1.5, True]
_PREDS = list(rasp.Comparison)


def random_program(seed: int, n_ops: int | None = None) -> rasp.SOp:
    """A random DAG of 5-8 ops over tokens and indices."""
    rnd = random.Random(seed)
    n_ops = n_ops or rnd.randint(5, 8)
    pool: list[rasp.SOp] = [rasp.tokens, rasp.indices]
    if rnd.random() < 0.2:
        pool.append(rasp.length)

    def pick():
        # Prefer recent nodes so programs are deep, but allow reuse (DAG).
        if rnd.random() < 0.6:
            return pool[-1]
        return rnd.choice(pool)

    def pick_two():
        a = pick()
        b = rnd.choice(pool)
        tries = 0
        while b is a and tries < 10:
            b = rnd.choice(pool)
            tries += 1
        if b is a:
            b = rasp.indices if a is not rasp.indices else rasp.tokens
        return a, b

    def make_select():
        k, q = rnd.choice(pool), pick()
        sel = rasp.Select(k, q, rnd.choice(_PREDS))
        r = rnd.random()
        if r < 0.1:
            sel = ~sel if isinstance(sel, rasp.Select) else sel
            sel = rasp.SelectorNot(sel) if rnd.random() < 0.5 else sel
        elif r < 0.2:
            other = rasp.Select(rnd.choice(pool), rnd.choice(pool), rnd.choice(_PREDS))
            sel = (
                rasp.SelectorAnd(sel, other)
                if rnd.random() < 0.5
                else (rasp.SelectorOr(sel, other))
            )
        elif r < 0.25:
            other = rasp.Select(k, q, rnd.choice(_PREDS))
            sel = (sel & other) if rnd.random() < 0.5 else (sel | other)
        return sel

    while len(pool) < n_ops + 2:
        op = rnd.choices(
            ["map", "seqmap", "linmap", "agg", "width", "full"], weights=[4, 3, 1, 4, 2, 0.3]
        )[0]
        if op == "map":
            if rnd.random() < 0.08:
                c = rnd.choice(_DIV_CONSTS)
                node = rasp.Map(lambda x, c=c: x / c, pick())
            else:
                _, mk = rnd.choice(_MAP_FNS)
                node = rasp.Map(mk(rnd.choice(_CONSTS)), pick())
        elif op == "seqmap":
            a, b = pick_two()
            node = rasp.SequenceMap(rnd.choice(_SEQ_FNS)[1], a, b)
        elif op == "linmap":
            a, b = pick_two()
            node = rasp.LinearSequenceMap(a, b, rnd.choice([1, -1, 2, 0.5]), rnd.choice([1, -1, 3]))
        elif op == "agg":
            default = rnd.choice([None, 0, 0, 0.0, False])
            node = rasp.Aggregate(make_select(), pick(), default=default)
            node = rasp.numerical(node) if rnd.random() < 0.5 else (rasp.categorical(node))
        elif op == "width":
            node = rasp.SelectorWidth(make_select())
        else:
            if len(pool) == n_ops + 1:
                continue  # a constant is a boring output
            node = rasp.Full(rnd.choice([0, 1, 2.5, None]))
        pool.append(node)
    return pool[-1]


N_RANDOM = 250
_CHUNK = 25
# Set METAMODELS_EVAL_FULL_DOMAIN=1 to check every random program on all 3,905
# inputs of length <= 5 (about 3 minutes instead of about 30 s).
_FULL_DOMAIN = os.environ.get("METAMODELS_EVAL_FULL_DOMAIN", "") not in ("", "0")


@pytest.mark.parametrize("chunk", range(N_RANDOM // _CHUNK))
def test_random_programs_whole_domain(chunk):
    """Several hundred random programs, exact on the whole domain.

    Every program is checked on every input of length <= 4 (780 inputs); every
    fifteenth (or all, with METAMODELS_EVAL_FULL_DOMAIN=1) also on all 3,125
    inputs of length 5.  Every seventh uses the generic (tracr `_mean`)
    aggregation path instead of the int64/float64 fast path.
    """
    for seed in range(chunk * _CHUNK, (chunk + 1) * _CHUNK):
        program = random_program(seed)
        max_len = 5 if (_FULL_DOMAIN or seed % 15 == 0) else 4
        _check_domain(program, VOCAB, max_len, ctx=f"seed={seed}", slow_mean=(seed % 7 == 3))


def test_random_generator_coverage():
    """The random programs exercise raising, None outputs and float means."""
    n_raised = n_partial = n_none = n_float = 0
    for seed in range(N_RANDOM):
        program = random_program(seed)
        res = [evaluate_batch(program, X, errors="mask") for X in all_inputs(VOCAB, 4)]
        err = np.concatenate([r.error_rows for r in res])
        n_raised += err.any()
        n_partial += err.any() and not err.all()
        n_none += none_fraction(res) > 0
        n_float += any(type(v) is float for r in res for v in r.values)
    assert 20 < n_raised < N_RANDOM // 3, n_raised
    assert n_partial >= 5, n_partial
    assert n_none >= 10, n_none
    assert n_float >= 50, n_float


def test_random_programs_mixed_length_samples():
    rng = np.random.default_rng(0)
    for seed in range(1000, 1060):
        program = random_program(seed)
        groups = sample_inputs(VOCAB, 8, 60, rng)
        seqs = [row for X in groups for row in X.tolist()]
        random.Random(seed).shuffle(seqs)
        ref, raised = _reference(program, seqs)
        if raised.any():
            with pytest.raises(Exception):
                evaluate_many(program, seqs)
        else:
            _assert_same_lists(evaluate_many(program, seqs), ref, f"seed={seed}")


def test_evaluate_many_lib_programs_mixed_lengths():
    rnd = random.Random(1)
    seqs = [[rnd.choice(VOCAB) for _ in range(rnd.randint(0, 8))] for _ in range(300)]
    for name in [
        "sort",
        "sort_freq",
        "frac_prevs",
        "hist",
        "shift_by",
        "reverse",
        "nary_sequencemap",
    ]:
        program = LIB_PROGRAMS[name][0]()
        ref = [rasp.evaluate(program, s) for s in seqs]
        _assert_same_lists(evaluate_many(program, seqs), ref, name)


# --------------------------------------------------------------------------
# Targeted semantics.


def _check_small(program, vocab=VOCAB, max_len=4):
    _check_domain(program, vocab, max_len, ctx=repr(program))


def test_bool_int_float_stay_distinct():
    # 1, 1.0 and True are equal dict keys; the outputs must keep their types.
    m = rasp.Map(lambda x: {1: True, 2: 1, 3: 1.0}.get(x, 0), rasp.tokens)
    _check_small(m)
    _check_small(rasp.Map(lambda x: type(x).__name__, m))
    _check_small(rasp.Map(lambda x: x + 1, m))
    sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ)
    _check_small(rasp.Aggregate(sel, m))  # one selected -> same object type


def test_negative_zero_kept():
    z = rasp.Map(lambda x: -0.0 if x == 1 else 0.0, rasp.tokens)
    _check_small(rasp.Map(lambda x: math.copysign(1.0, x), z))
    _check_small(z)


def test_float_mean_bitwise():
    vals = {1: 0.1, 2: 0.2, 3: 0.7, 4: 1e16, 5: 3}
    x = rasp.numerical(rasp.Map(lambda t: vals[t], rasp.tokens))
    for pred in [rasp.Comparison.TRUE, rasp.Comparison.LEQ, rasp.Comparison.GT]:
        sel = rasp.Select(rasp.indices, rasp.indices, pred)
        agg = rasp.numerical(rasp.Aggregate(sel, x, default=0))
        _check_domain(agg, VOCAB, 5)
        _check_domain(rasp.Map(lambda v: v.hex() if isinstance(v, float) else v, agg), VOCAB, 4)


def test_big_ints_use_exact_path():
    x = rasp.Map(lambda t: 10**t * (2**60), rasp.tokens)
    sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE)
    _check_small(rasp.Aggregate(sel, x))
    y = rasp.Map(lambda t: 2**53 + t, rasp.tokens)
    _check_small(rasp.Aggregate(sel, y))


def test_aggregate_non_numeric_raises():
    sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE)
    agg = rasp.Aggregate(sel, rasp.Map(str, rasp.tokens))
    X = all_inputs(VOCAB, 2)[1]
    with pytest.raises(ValueError, match="Only types int, bool, and float"):
        evaluate_batch(agg, X)
    # Length 1: exactly one selected -> the string itself, no error.
    _check_batch(agg, all_inputs(VOCAB, 1)[0])


def test_select_on_none_raises_like_tracr():
    shifted = lib.shift_by(1, rasp.tokens)  # None at position 0
    sel = rasp.Select(shifted, rasp.tokens, rasp.Comparison.EQ)
    prog = rasp.SelectorWidth(sel)
    X = all_inputs(VOCAB, 3)[2]
    with pytest.raises(ValueError, match="key is None"):
        rasp.evaluate(prog, X[0].tolist())
    with pytest.raises(ValueError, match="key is None"):
        evaluate_batch(prog, X)
    res = evaluate_batch(prog, X, errors="mask")
    assert res.error_rows.all()
    # A custom predicate that tolerates None is called with None.
    sel2 = rasp.Select(shifted, rasp.tokens, lambda k, q: k is None)
    _check_small(rasp.SelectorWidth(sel2))


def test_errors_only_for_inputs_that_raise():
    # Raises only for inputs containing a 3 (1 / (t - 3)).
    m = rasp.Map(lambda t: 1 / (t - 3), rasp.tokens)
    X = all_inputs(VOCAB, 2)[1]
    with pytest.raises(ZeroDivisionError):
        evaluate_batch(m, X)
    res = evaluate_batch(m, X, errors="mask")
    np.testing.assert_array_equal(res.error_rows, (X == 3).any(axis=1))
    ok = X[~(X == 3).any(axis=1)]
    assert evaluate_batch(m, ok).to_lists() == [rasp.evaluate(m, r) for r in ok.tolist()]

    # Predicate failing on a (key, query) pair that never co-occurs in one
    # input must not raise.
    def pred(k, q):
        if k == 1 and q == 5:
            raise RuntimeError("boom")
        return k < q

    prog = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, pred))
    X1 = all_inputs(VOCAB, 1)[0]
    _check_batch(prog, X1)  # length 1: pairs (t, t) only -> no error
    _check_small(prog)


def test_sequence_map_pairs_only_at_same_position():
    def f(x, y):
        if x == 1 and y == 1:  # tokens==1 at index 1 ... never (x=tok, y=idx+5)
            raise RuntimeError("never happens")
        return x * 10 + y

    prog = rasp.SequenceMap(f, rasp.tokens, rasp.Map(lambda i: i + 5, rasp.indices))
    _check_small(prog)


def test_each_node_evaluated_once_per_batch():
    calls = []

    def f(x):
        calls.append(x)
        return x * 2

    m = rasp.Map(f, rasp.tokens)
    prog = rasp.SequenceMap(lambda a, b: a + b, m, rasp.SequenceMap(lambda a, b: a - b, m, m))
    X = all_inputs(VOCAB, 4)[3]
    out = evaluate_batch(prog, X).to_lists()
    assert sorted(calls) == VOCAB  # once per distinct value, node shared
    assert out == [[2 * t for t in row] for row in X.tolist()]


def test_full_constant_length_and_selector_ops():
    sel = rasp.Select(rasp.tokens, rasp.indices, rasp.Comparison.GT)
    progs = [
        rasp.Full(7),
        rasp.Full(None),
        rasp.SequenceMap(lambda a, b: a + b, rasp.Full(0.5), rasp.tokens),
        rasp.length,
        rasp.SelectorWidth(rasp.SelectorNot(sel)),
        rasp.SelectorWidth(
            rasp.SelectorAnd(sel, rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.NEQ))
        ),
        rasp.SelectorWidth(
            rasp.SelectorOr(sel, rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ))
        ),
        rasp.Aggregate(
            rasp.Select(rasp.Full(1), rasp.tokens, rasp.Comparison.LEQ)
            & rasp.Select(rasp.indices, rasp.tokens, rasp.Comparison.LT),
            rasp.tokens,
            default=-1,
        ),
    ]
    for p in progs:
        _check_small(p)
    const = rasp.ConstantSOp([1, 2.0, "a"])
    _check_batch(const, all_inputs(VOCAB, 3)[2])
    with pytest.raises(ValueError):
        evaluate_batch(const, all_inputs(VOCAB, 2)[1])
    csel = rasp.ConstantSelector([[True, False], [True, True]])
    _check_batch(rasp.Aggregate(csel, rasp.tokens), all_inputs(VOCAB, 2)[1])


def test_object_and_int_inputs_agree():
    prog = lib.make_sort_freq(max_seq_len=5)
    X = all_inputs(VOCAB, 4)[3]
    a = evaluate_batch(prog, X).to_lists()
    b = evaluate_batch(prog, X.astype(object)).to_lists()
    c = evaluate_batch(prog, X.tolist()).to_lists()
    _assert_same_lists(a, b)
    _assert_same_lists(a, c)


def test_empty_sequences_and_batches():
    prog = lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1)
    assert evaluate_many(prog, [[], [2, 1], []]) == [
        rasp.evaluate(prog, []),
        rasp.evaluate(prog, [2, 1]),
        rasp.evaluate(prog, []),
    ]
    res = evaluate_batch(prog, np.zeros((0, 3), dtype=np.int64))
    assert res.to_lists() == []


# --------------------------------------------------------------------------
# Input domain helpers and result object.


def test_all_inputs_order_and_shapes():
    for vocab in [[3, 1, 2], ["b", "a"]]:
        groups = all_inputs(vocab, 3)
        assert [g.shape for g in groups] == [(len(vocab) ** L, L) for L in (1, 2, 3)]
        for L, g in zip((1, 2, 3), groups):
            assert g.tolist() == [list(t) for t in itertools.product(sorted(vocab), repeat=L)]
    groups = all_inputs(VOCAB, 5, min_len=4)
    assert [g.shape[1] for g in groups] == [4, 5]
    assert sum(len(g) for g in all_inputs(VOCAB, 5)) == 3905


def test_sample_inputs_deterministic():
    a = sample_inputs(VOCAB, 8, 500, np.random.default_rng(3))
    b = sample_inputs(VOCAB, 8, 500, np.random.default_rng(3))
    assert sum(len(g) for g in a) == 500
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert all(set(np.unique(g)) <= set(VOCAB) for g in a)
    lens = [g.shape[1] for g in a]
    assert lens == sorted(lens) and set(lens) <= set(range(1, 9))


def test_eval_result_helpers():
    prog = lib.shift_by(1, rasp.tokens)
    res = evaluate_batch(prog, all_inputs(VOCAB, 4)[3])
    assert isinstance(res, EvalResult)
    assert res.codes.dtype == np.int32
    assert res.none_fraction == pytest.approx(0.25)
    assert none_fraction([res, res]) == pytest.approx(0.25)
    assert (res.codes == -1).sum() == len(res.codes)
    assert sorted(res.values) == VOCAB
    assert res.to_object_array().shape == res.codes.shape
