"""NumPy forward pass vs tracr's own JAX model (``assembled_model.apply``).

Lib programs are compiled in this process, sharing the session memo of
tests/test_compiler.py (``stock_reference``), so running both files together
compiles each of them with stock tracr only once; random programs and their
tracr reference outputs are computed in one background worker process (the
fast model is compiled there from the same program object, then run here).
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from tracr.rasp import rasp  # noqa: E402

from metamodels.zoo.compiler import model_differences  # noqa: E402
from metamodels.zoo.forward import encode, forward_ids, run  # noqa: E402
from tests.zoo.test_compiler import (
    ALL_CASES,
    Background,
    Failure,
    Reference,
    fast_compile,
    names_selected,
    program_for,
    reference_job,
)

# Lib programs (computed in this process, sharing stock compiles with
# test_compiler.py) and random programs (computed in a background worker).
FORWARD_LIB = [
    "length_numerical",  # numerical SelectorWidth output
    "reverse",  # categorical Aggregate
    "sort_freq",  # 5 layers
    "frac_all_causal",  # causal mask, numerical Aggregate
    "shuffle_dyck2",  # numerical -> categorical MLPs
    "nary_sequencemap",  # large categorical MLPs
]
FORWARD_RANDOM = [
    "random_1",
    "random_3",
    "random_5",
    "random_6",
    "random_16",
    "random_20",
]
N_APPLY = 6  # inputs run one by one through assembled_model.apply
N_BATCH = 12  # inputs of another length run batched through tracr's forward


def forward_inputs(name: str) -> tuple[list[list], list[list]]:
    """(apply inputs at max length, batch inputs at a shorter length)."""
    case = ALL_CASES[name]
    rng = random.Random(name)
    vocab = sorted(case.vocab, key=repr)
    n = case.max_seq_len
    short = rng.randint(1, max(1, n - 1))
    make = lambda length, k: [[rng.choice(vocab) for _ in range(length)] for _ in range(k)]
    return make(n, N_APPLY), make(short, N_BATCH)


def _job(name: str) -> tuple:
    return (name, *forward_inputs(name))


@pytest.fixture(scope="module", autouse=True)
def random_forward_refs(request):
    start = names_selected(request, "test_run_matches_tracr_apply_random")
    bg = Background([_job(n) for n in FORWARD_RANDOM], start=start)
    yield bg
    bg.close()


# ---------------------------------------------------------------------------
# Which output positions are well defined?
#
# Where a categorical Aggregate selects several positions holding different
# values (or none, giving None), tracr's attention averages one-hot vectors
# and the decoded argmax is an exact tie broken by float32 rounding noise.
# tracr is not even consistent with itself there: its forward on a batch can
# decode differently from apply() on one input. Outputs at such positions
# (and everything computed from them) carry no meaning, so comparisons below
# are made on the remaining, "trusted" positions only.
# ---------------------------------------------------------------------------


def _safe(f, *args):
    if any(a is None for a in args):
        return None
    try:
        return f(*args)
    except Exception:  # pylint: disable=broad-except
        return None


def rasp_semantics(program: rasp.SOp, seq: list) -> tuple[list, list[bool]]:
    """RASP values of ``program`` on ``seq`` and which positions are trusted."""
    n = len(seq)
    memo: dict[int, tuple] = {}

    def visit(e):
        if id(e) in memo:
            return memo[id(e)]
        if isinstance(e, rasp.TokensType):
            vals, ill = list(seq), set()
        elif isinstance(e, rasp.IndicesType):
            vals, ill = list(range(n)), set()
        elif isinstance(e, rasp.Map):
            v, ill = visit(e.inner)
            vals = [_safe(e.f, x) for x in v]
        elif isinstance(e, rasp.SequenceMap):  # includes LinearSequenceMap
            a, ill_a = visit(e.fst)
            b, ill_b = visit(e.snd)
            vals, ill = [_safe(e.f, x, y) for x, y in zip(a, b)], ill_a | ill_b
        elif isinstance(e, rasp.Select):
            k, ill_k = visit(e.keys)
            q, ill_q = visit(e.queries)
            if ill_k or ill_q or None in k or None in q:
                memo[id(e)] = (None, set(range(n)))
            else:
                memo[id(e)] = ([[bool(e.predicate(x, y)) for x in k] for y in q], set())
            return memo[id(e)]
        elif isinstance(e, rasp.SelectorWidth):
            mat, ill = visit(e.selector)
            vals = [None] * n if mat is None else [sum(r) for r in mat]
        elif isinstance(e, rasp.Aggregate):
            mat, ill = visit(e.selector)
            v, ill_v = visit(e.sop)
            ill, vals = set(ill), [None] * n
            for i, row in enumerate(mat or []):
                sel = [j for j, s in enumerate(row) if s]
                if any(j in ill_v or v[j] is None for j in sel):
                    ill.add(i)
                elif rasp.is_categorical(e):
                    if len({repr(v[j]) for j in sel}) == 1:
                        vals[i] = v[sel[0]]
                else:
                    vals[i] = sum(v[j] for j in sel) / len(sel) if sel else e.default
        else:
            raise NotImplementedError(type(e).__name__)
        ill = set(ill) | {i for i, x in enumerate(vals) if x is None}
        memo[id(e)] = (vals, ill)
        return memo[id(e)]

    vals, ill = visit(program)
    return vals, [i not in ill for i in range(n)]


def semantics(name: str, seq: list) -> tuple[list, list[bool]]:
    """Like rasp_semantics; for causal cases position i sees only seq[:i+1]."""
    program = program_for(name)
    if not ALL_CASES[name].causal:
        return rasp_semantics(program, seq)
    vals, trusted = [], []
    for i in range(len(seq)):
        v, t = rasp_semantics(program, seq[: i + 1])
        vals.append(v[i])
        trusted.append(t[i])
    return vals, trusted


def _same(model, a, b) -> bool:
    if model.categorical_output:
        return a == b
    return bool(np.isclose(float(a), float(b), rtol=1e-5, atol=1e-5))


def _compare(model, name, seqs, ours, refs, where) -> int:
    """Asserts agreement on trusted positions; returns how many were checked."""
    checked = 0
    for seq, a, b in zip(seqs, ours, refs):
        assert len(a) == len(b) == len(seq)
        _, trusted = semantics(name, seq)
        for i, ok in enumerate(trusted):
            if ok:
                assert _same(model, a[i], b[i]), (where, seq, i, a, b)
                checked += 1
    return checked


def check_against_tracr(ref: Reference):
    assert not isinstance(ref.stock, Failure), ref.stock
    assert not isinstance(ref.fast, Failure), ref.fast
    assert model_differences(ref.fast, ref.stock) == []
    model = ref.fast
    checked = 0
    for dtype in (np.float32, np.float64):
        # 1) literal assembled_model.apply, one input at a time.
        ours = run(model, ref.apply_inputs, dtype=dtype)
        checked += _compare(
            model, ref.name, ref.apply_inputs, ours, ref.applied, f"apply/{dtype.__name__}"
        )
        # 2) tracr's forward on a batch at another length.
        decoded, unemb = ref.batched
        ours = run(model, ref.batch_inputs, dtype=dtype)
        checked += _compare(
            model, ref.name, ref.batch_inputs, ours, decoded, f"batched/{dtype.__name__}"
        )
        if not model.categorical_output:
            assert all(type(x) is float for o in ours for x in o)
    assert checked > 0, "no trusted positions in the sample"
    # Raw unembedded output (BOS position included) on fully trusted inputs.
    raw = forward_ids(model, encode(model, ref.batch_inputs))
    assert raw.shape == unemb.shape
    rows = [i for i, s in enumerate(ref.batch_inputs) if all(semantics(ref.name, s)[1])]
    if model.categorical_output:
        np.testing.assert_array_equal(raw[rows, 1:], unemb[rows, 1:])
    else:
        np.testing.assert_allclose(raw[rows], unemb[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FORWARD_LIB)
def test_run_matches_tracr_apply_lib(name):
    check_against_tracr(reference_job(*_job(name)))


@pytest.mark.parametrize("name", FORWARD_RANDOM)
def test_run_matches_tracr_apply_random(name, random_forward_refs):
    check_against_tracr(random_forward_refs.results()[name])


def test_forward_covers_output_kinds():
    models = [fast_compile(n) for n in FORWARD_LIB + FORWARD_RANDOM]
    assert any(m.categorical_output for m in models)
    assert any(not m.categorical_output for m in models)
    assert any(m.causal for m in models)


# ---------------------------------------------------------------------------
# Checks that need no stock compile.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_run_computes_the_rasp_program(name):
    """Fast weights + NumPy forward reproduce rasp.evaluate on every trusted
    position (no stock compile needed; 40 random inputs of random lengths)."""
    case = ALL_CASES[name]
    try:
        model = fast_compile(name)
    except Exception as e:  # pylint: disable=broad-except
        if name.startswith("random_"):
            pytest.skip(f"not compilable by tracr: {type(e).__name__}")
        raise
    program = program_for(name)
    rng = random.Random(name)
    vocab = sorted(case.vocab, key=repr)
    seqs = [[rng.choice(vocab) for _ in range(rng.randint(1, case.max_seq_len))] for _ in range(40)]
    outs = run(model, seqs)
    for seq, out in zip(seqs, outs):
        values, trusted = semantics(name, seq)
        if all(trusted) and not case.causal:
            assert values == rasp.evaluate(program, seq)
        for i, ok in enumerate(trusted):
            if not ok:
                continue
            if model.categorical_output:
                assert out[i] == values[i], (seq, i, out, values)
            else:
                assert abs(out[i] - values[i]) < 1e-3, (seq, i, out, values)


def test_run_mixed_lengths_keeps_order():
    model = fast_compile("reverse")
    seqs = [list("abcd"), ["c"], list("ab"), list("dcbaa"), list("ba"), ["a"]]
    outs = run(model, seqs)
    assert outs == [s[::-1] for s in seqs]
    for s, o in zip(seqs, outs):
        assert run(model, [s]) == [o]
    # Chunked batches give the same answer.
    assert run(model, seqs * 5, batch_size=2) == outs * 5


def test_encode_and_errors():
    model = fast_compile("reverse")
    ids = encode(model, [list("ab"), list("ba")])
    assert ids.shape == (2, 3)
    assert (ids[:, 0] == model.bos_id).all()
    assert [model.input_tokens[i] for i in ids[0, 1:]] == ["a", "b"]
    with pytest.raises(ValueError):
        encode(model, [["z"]])
    with pytest.raises(ValueError):
        run(model, [list("abcdab")])  # longer than max_seq_len=5
    with pytest.raises(ValueError):
        run(model, [[]])
    with pytest.raises(ValueError):
        encode(model, [list("ab"), list("abc")])


def test_causal_mask():
    """frac_all attends everywhere: causal -> prefix mean, else global mean."""
    causal = fast_compile("frac_all_causal")
    assert causal.causal
    non_causal = dataclasses.replace(causal, causal=False)
    seq = list("hello")
    (got_c,) = run(causal, [seq])
    (got_n,) = run(non_causal, [seq])
    prefix = [sum(c == "l" for c in seq[: i + 1]) / (i + 1) for i in range(5)]
    np.testing.assert_allclose(got_c, prefix, atol=1e-5)
    np.testing.assert_allclose(got_n, [2 / 5] * 5, atol=1e-5)


def test_numerical_output_and_float64():
    model = fast_compile("frac_prevs")
    seqs = [list("hello"), list("lll"), list("eh")]
    out32 = run(model, seqs)
    out64 = run(model, seqs, dtype=np.float64)
    for a, b, s in zip(out32, out64, seqs):
        exp = [sum(c == "l" for c in s[: i + 1]) / (i + 1) for i in range(len(s))]
        np.testing.assert_allclose(a, exp, atol=1e-5)
        np.testing.assert_allclose(b, exp, atol=1e-5)
    raw = forward_ids(model, encode(model, [list("hello")]))
    assert raw.shape == (1, 6) and raw.dtype == np.float32
