"""Fast NumPy compile vs stock tracr: bitwise-identical weights.

Stock tracr compiles cost a few seconds each (XLA-compiling haiku's init), so
every program is compiled with stock at most once per test session: the
results are memoised in this module (``stock_reference``) and reused by
``tests/test_forward.py`` when both files run in one session.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import json
import multiprocessing
import os
import random
import warnings
from typing import Any, Callable

import numpy as np
import pytest
from tracr.compiler import lib
from tracr.rasp import rasp

from metamodels.zoo.compiler import (
    CompiledModel,
    compile_program,
    compile_program_stock,
    model_differences,
    models_bitwise_equal,
)

# ---------------------------------------------------------------------------
# Programs.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], rasp.SOp]
    vocab: frozenset
    max_seq_len: int
    causal: bool = False


def _lib_cases() -> list[Case]:
    t = rasp.tokens
    abcd = frozenset("abcd")
    return [
        Case("length", lambda: rasp.categorical(lib.make_length()), abcd, 3),
        Case("reverse", lambda: lib.make_reverse(t), abcd, 5),
        Case("hist", lib.make_hist, abcd, 5),
        Case("sort_unique", lambda: lib.make_sort_unique(t, t), frozenset({1, 2, 3, 4}), 5),
        Case(
            "sort",
            lambda: lib.make_sort(t, t, max_seq_len=5, min_key=1),
            frozenset({1, 2, 3, 4}),
            5,
        ),
        Case("sort_freq", lambda: lib.make_sort_freq(max_seq_len=5), frozenset({1, 2, 3, 4}), 5),
        Case("frac_prevs", lambda: lib.make_frac_prevs(t == "l"), frozenset("helo"), 5),
        Case("pair_balance", lambda: lib.make_pair_balance(t, "(", ")"), frozenset("abc()"), 10),
        Case("shuffle_dyck2", lambda: lib.make_shuffle_dyck(["()", "{}"]), frozenset("(){}"), 5),
        Case("detect_pattern", lambda: lib.detect_pattern(t, "abc"), frozenset("abc"), 6),
        Case("count_less_freq", lambda: lib.make_count_less_freq(2), abcd, 6),
        Case("count", lambda: lib.make_count(t, "a"), frozenset("abc"), 8),
        Case("shift_by", lambda: lib.shift_by(2, t), abcd, 5),
        Case(
            "nary_sequencemap",
            lambda: lib.make_nary_sequencemap(lambda x, y, z: x + y - z, t, t, rasp.indices),
            frozenset({1, 2, 3}),
            5,
        ),
    ]


LIB_CASES = {c.name: c for c in _lib_cases()}

# Extra variants, only used by tests/test_forward.py (keeps this file fast).
EXTRA_CASES = {
    c.name: c
    for c in [
        Case("length_numerical", lambda: rasp.numerical(lib.make_length()), frozenset("abcd"), 3),
        # Attends to all positions, so the causal mask changes the result
        # (prefix mean instead of whole-sequence mean).
        Case(
            "frac_all_causal",
            lambda: rasp.numerical(
                rasp.Aggregate(
                    rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE),
                    rasp.numerical(rasp.Map(lambda x: 1 if x == "l" else 0, rasp.tokens)),
                    default=0,
                )
            ).named("frac_all"),
            frozenset("helo"),
            5,
            causal=True,
        ),
    ]
}

# --- random programs --------------------------------------------------------

_CAT_FUNS = [
    ("inc", lambda x: x + 1),
    ("mod3", lambda x: x % 3),
    ("gt2", lambda x: x > 2),
    ("min3", lambda x: min(x, 3)),
    ("half", lambda x: x // 2),
    ("sqmod7", lambda x: x * x % 7),
    ("neg", lambda x: -x),
]
_BIN_FUNS = [  # categorical -> numerical {0, 1}
    ("odd", lambda x: 1 if x % 2 else 0),
    ("ge3", lambda x: 1 if x >= 3 else 0),
    ("is2", lambda x: 1 if x == 2 else 0),
]
_NUM_FUNS = [  # categorical -> numerical, non-binary
    ("quarter", lambda x: x / 4),
    ("sq", lambda x: x * x),
]
_NUMNUM_FUNS = [  # numerical -> numerical
    ("dbl", lambda x: 2 * x),
    ("plus1", lambda x: x + 1),
]
_NUMCAT_FUNS = [  # numerical -> categorical
    ("pos", lambda x: x > 0),
    ("round", lambda x: round(x)),
]
_SEQ_FUNS = [
    ("add", lambda x, y: x + y),
    ("sub", lambda x, y: x - y),
    ("max", lambda x, y: max(x, y)),
    ("eq", lambda x, y: x == y),
    ("mulmod5", lambda x, y: x * y % 5),
]
_CMPS = list(rasp.Comparison)

RANDOM_VOCAB = frozenset({1, 2, 3, 4, 5})
RANDOM_MAX_SEQ_LEN = 5
N_RANDOM = 25


def random_program(seed: int) -> rasp.SOp:
    """A small random RASP program over vocab {1..5} (deterministic per seed).

    Mixes categorical / numerical Map, SequenceMap, LinearSequenceMap, Select +
    Aggregate (categorical and numerical) and SelectorWidth. Some programs are
    not compilable by tracr on purpose.
    """
    rng = random.Random(1000 + seed)
    cat: list[rasp.SOp] = [rasp.tokens, rasp.indices]
    binary: list[rasp.SOp] = []  # numerical with values in {0, 1}
    num: list[rasp.SOp] = []  # other numerical
    last = rasp.tokens  # start from tokens so most programs depend on them

    def pick(pool):
        # Prefer the most recent result so programs get deep, not wide.
        # (Identity check: `in` would call rasp's overloaded `==`.)
        if any(last is x for x in pool) and rng.random() < 0.6:
            return last
        return rng.choice(pool)

    def name(kind, i):
        return f"r{seed}_{i}_{kind}"

    n_ops = rng.randint(2, 5)
    for i in range(n_ops):
        kinds = ["map", "seqmap", "agg_cat", "width", "map_bin", "map_num"]
        if binary:
            kinds += ["agg_num", "agg_num"]
        if binary or num:
            kinds += ["map_numnum", "map_numcat", "linseq"]
        kind = rng.choice(kinds)
        anynum = binary + num
        if kind == "map":
            fname, f = rng.choice(_CAT_FUNS)
            out = rasp.Map(f, pick(cat)).named(name(fname, i))
            cat.append(out)
        elif kind == "map_bin":
            fname, f = rng.choice(_BIN_FUNS)
            out = rasp.numerical(rasp.Map(f, pick(cat))).named(name(fname, i))
            binary.append(out)
        elif kind == "map_num":
            fname, f = rng.choice(_NUM_FUNS)
            out = rasp.numerical(rasp.Map(f, pick(cat))).named(name(fname, i))
            num.append(out)
        elif kind == "map_numnum":
            fname, f = rng.choice(_NUMNUM_FUNS)
            out = rasp.numerical(rasp.Map(f, pick(anynum))).named(name(fname, i))
            num.append(out)
        elif kind == "map_numcat":
            fname, f = rng.choice(_NUMCAT_FUNS)
            out = rasp.categorical(rasp.Map(f, pick(anynum))).named(name(fname, i))
            cat.append(out)
        elif kind == "seqmap":
            fname, f = rng.choice(_SEQ_FUNS)
            a, b = pick(cat), rng.choice(cat)
            out = rasp.SequenceMap(f, a, b).named(name(fname, i))
            cat.append(out)
        elif kind == "linseq":
            a, b = pick(anynum), rng.choice(anynum)
            out = rasp.numerical(
                rasp.LinearSequenceMap(a, b, rng.choice([1, -1, 2]), rng.choice([1, -1, 0.5]))
            ).named(name("lin", i))
            num.append(out)
        elif kind in ("agg_cat", "agg_num", "width"):
            keys, queries = rng.choice(cat), pick(cat)
            sel = rasp.Select(keys, queries, rng.choice(_CMPS)).named(name("sel", i))
            if kind == "width":
                out = rasp.SelectorWidth(sel)
                if rng.random() < 0.3:
                    out = rasp.numerical(out).named(name("width", i))
                    num.append(out)
                else:
                    out = out.named(name("width", i))
                    cat.append(out)
            elif kind == "agg_cat":
                out = rasp.Aggregate(sel, pick(cat)).named(name("agg", i))
                cat.append(out)
            else:
                # Mostly binary values (supported); sometimes non-binary (unsupported).
                src = pick(binary) if (not num or rng.random() < 0.85) else pick(num)
                out = rasp.numerical(rasp.Aggregate(sel, src, default=0)).named(name("mean", i))
                num.append(out)
        last = out
    return last


RANDOM_CASES = {
    f"random_{s}": Case(
        f"random_{s}", functools.partial(random_program, s), RANDOM_VOCAB, RANDOM_MAX_SEQ_LEN
    )
    for s in range(N_RANDOM)
}
ALL_CASES = {**LIB_CASES, **EXTRA_CASES, **RANDOM_CASES}


# ---------------------------------------------------------------------------
# Session-wide memo of programs and stock compiles, and background workers.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class StockResult:
    program: rasp.SOp
    model: CompiledModel | None
    assembled: Any  # tracr AssembledTransformerModel, or None on failure
    error: BaseException | None


@functools.cache
def program_for(name: str) -> rasp.SOp:
    """The single program object for a case (labels are fixed on first use)."""
    return ALL_CASES[name].build()


def compile_kwargs(case: Case) -> dict:
    return dict(causal=case.causal)


@functools.cache
def stock_reference(name: str) -> StockResult:
    """Stock-compiles a case once per session (per process)."""
    case = ALL_CASES[name]
    program = program_for(name)
    try:
        model, assembled = compile_program_stock(
            program,
            set(case.vocab),
            case.max_seq_len,
            return_assembled=True,
            **compile_kwargs(case),
        )
    except Exception as e:  # pylint: disable=broad-except
        return StockResult(program, None, None, e)
    return StockResult(program, model, assembled, None)


def fast_compile(name: str) -> CompiledModel:
    case = ALL_CASES[name]
    return compile_program(
        program_for(name), set(case.vocab), case.max_seq_len, **compile_kwargs(case)
    )


@dataclasses.dataclass
class Failure:
    type_name: str
    message: str


@dataclasses.dataclass
class Reference:
    """Picklable result of compiling one case with stock and fast in one process.

    ``applied[i]`` is ``assembled.apply([BOS, *apply_inputs[i]]).decoded[1:]``;
    ``batched`` is tracr's forward function (jitted) on ``batch_inputs`` (all
    the same length): (decoded outputs without BOS, raw unembedded [B, T]).
    """

    name: str
    stock: CompiledModel | Failure
    fast: CompiledModel | Failure
    apply_inputs: list
    applied: list | None = None
    batch_inputs: list | None = None
    batched: tuple | None = None


def _attempt(fn):
    try:
        return fn()
    except Exception as e:  # pylint: disable=broad-except
        return Failure(type(e).__name__, str(e))


def reference_job(name: str, apply_inputs=(), batch_inputs=()) -> Reference:
    """Stock + fast compile of the same program object, plus tracr outputs."""
    ref = stock_reference(name)
    stock = ref.model if ref.error is None else Failure(type(ref.error).__name__, str(ref.error))
    out = Reference(
        name, stock, _attempt(lambda: fast_compile(name)), [list(s) for s in apply_inputs]
    )
    if ref.error is not None:
        return out
    asm = ref.assembled
    bos = asm.input_encoder.bos_token
    if apply_inputs:
        out.applied = [asm.apply([bos, *s]).decoded[1:] for s in apply_inputs]
    if batch_inputs:
        import jax
        import jax.numpy as jnp

        ids = jnp.asarray([asm.input_encoder.encode([bos, *s]) for s in batch_inputs])
        unemb = np.asarray(jax.jit(asm.forward)(asm.params, ids).unembedded_output)
        decoded = []
        for row in unemb:
            d = row.tolist()
            if asm.output_encoder:
                d = asm.output_encoder.decode(d)
            decoded.append(d[1:])
        out.batch_inputs = [list(s) for s in batch_inputs]
        out.batched = (decoded, unemb)
    return out


def run_jobs(jobs: list[tuple]) -> list[Reference]:
    return [reference_job(*job) for job in jobs]


class Background:
    """Runs reference jobs in one spawned worker process while tests go on.

    Stock tracr compiles are slow (XLA), so the random-program references are
    computed on the second core while the main process handles the others.
    Falls back to computing in-process if the worker cannot be used (or with
    METAMODELS_TEST_NO_SUBPROCESS=1).
    """

    def __init__(self, jobs: list[tuple], start: bool = True):
        self.jobs = list(jobs)
        self._results: dict[str, Reference] | None = None
        self._pool = self._future = None
        if not start or os.environ.get("METAMODELS_TEST_NO_SUBPROCESS") == "1":
            return
        try:
            ctx = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx)
            self._future = self._pool.submit(run_jobs, self.jobs)
        except Exception as e:  # pylint: disable=broad-except
            warnings.warn(f"background worker unavailable ({e!r}); running inline")
            self.close()

    def results(self) -> dict[str, Reference]:
        if self._results is None:
            res = None
            if self._future is not None:
                try:
                    res = self._future.result()
                except Exception as e:  # pylint: disable=broad-except
                    warnings.warn(f"background worker failed ({e!r}); running inline")
            if res is None:
                res = run_jobs(self.jobs)
            self._results = {r.name: r for r in res}
            self.close()
        return self._results

    def close(self):
        if self._pool is None:
            return
        if self._future is not None and not self._future.done():
            # Results not needed any more (e.g. test deselected or failed early):
            # stop our own worker instead of waiting for it.
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._future = None


def names_selected(request, *names: str) -> bool:
    """Whether any selected test item's function name is in ``names``."""
    return any(getattr(item, "originalname", item.name) in names for item in request.session.items)


@pytest.fixture(scope="module", autouse=True)
def random_references(request):
    """Starts the random-program stock compiles before the first test."""
    start = names_selected(request, "test_random_programs_bitwise_equal")
    bg = Background([(name,) for name in RANDOM_CASES], start=start)
    yield bg
    bg.close()


# ---------------------------------------------------------------------------
# Bitwise equality.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LIB_CASES))
def test_lib_program_bitwise_equal(name):
    ref = stock_reference(name)
    assert ref.error is None, f"stock failed on lib program {name}: {ref.error!r}"
    fast = fast_compile(name)
    assert model_differences(fast, ref.model) == []
    assert models_bitwise_equal(fast, ref.model)
    assert fast.causal == ALL_CASES[name].causal


def test_random_programs_cover_all_features():
    kinds = set()
    for name in RANDOM_CASES:
        stack = [program_for(name)]
        while stack:
            e = stack.pop()
            kinds.add(
                (type(e).__name__, rasp.get_encoding(e).value if isinstance(e, rasp.SOp) else None)
            )
            stack.extend(e.children)
    names = {k for k, _ in kinds}
    for needed in (
        "Map",
        "SequenceMap",
        "LinearSequenceMap",
        "Select",
        "Aggregate",
        "SelectorWidth",
    ):
        assert needed in names, (needed, kinds)
    assert ("Aggregate", "numerical") in kinds
    assert ("Aggregate", "categorical") in kinds
    assert ("Map", "numerical") in kinds


def test_compile_is_deterministic_and_does_not_mutate_program():
    # The fast compile before and after a stock compile of the same object,
    # and a second fast compile, must all agree.
    name = "sort_freq"
    case = LIB_CASES[name]
    program = program_for(name)
    labels_before = _labels(program)
    first = compile_program(program, set(case.vocab), case.max_seq_len)
    ref = stock_reference(name)
    second = compile_program(program, set(case.vocab), case.max_seq_len)
    assert models_bitwise_equal(first, second)
    assert models_bitwise_equal(first, ref.model)
    assert _labels(program) == labels_before


def _labels(program):
    out, stack = [], [program]
    while stack:
        e = stack.pop()
        out.append(e.label)
        stack.extend(e.children)
    return out


# ---------------------------------------------------------------------------
# Failure modes (fast must fail exactly where stock fails).
# ---------------------------------------------------------------------------


def _both_raise(program, vocab, max_seq_len, exc, match=None, **kw):
    with pytest.raises(exc, match=match):
        compile_program(program, vocab, max_seq_len, **kw)
    with pytest.raises(exc, match=match):
        compile_program_stock(program, vocab, max_seq_len, **kw)


def test_bos_or_pad_in_vocab_raises():
    prog = lib.make_hist()
    _both_raise(prog, {"a", "compiler_bos"}, 4, ValueError, "BOS")
    _both_raise(prog, {"a", "compiler_pad"}, 4, ValueError, "PAD")
    _both_raise(prog, {"a", "x"}, 4, ValueError, "BOS", compiler_bos="x")


def test_unsupported_program_raises():
    num = rasp.numerical(rasp.Map(lambda x: x, rasp.tokens))
    prog = rasp.Aggregate(rasp.Select(num, num, rasp.Comparison.EQ), rasp.tokens)
    _both_raise(prog, {1, 2}, 4, NotImplementedError, "Unsupported RASP")


def test_program_without_tokens_raises():
    prog = rasp.Map(lambda x: x + 1, rasp.indices)
    _both_raise(prog, {1, 2}, 3, ValueError, "rasp.tokens")


def test_program_without_blocks_raises():
    _both_raise(rasp.tokens, {1, 2}, 3, ValueError)


def test_empty_categorical_output_space_raises():
    # No possible output value: stock fails inside haiku init (argmax over an
    # empty unembedding).
    _both_raise(
        rasp.Map(lambda x: None, rasp.tokens), {1, 2}, 3, ValueError, "argmax of an empty sequence"
    )


def test_value_size_larger_than_key_size_raises():
    # A categorical Aggregate whose value space (10 token values) is larger than
    # any W_QK dimension (query/key spaces over 3 indices): stock tracr fails in
    # assemble.py with a NumPy broadcasting ValueError after haiku init.
    prog = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ), rasp.tokens)
    with pytest.raises(ValueError, match="value size"):
        compile_program(prog, set(range(10)), 3)
    with pytest.raises(ValueError, match="broadcast"):
        compile_program_stock(prog, set(range(10)), 3)


# ---------------------------------------------------------------------------
# Container helpers.
# ---------------------------------------------------------------------------


def test_layout_and_flat():
    m = fast_compile("sort_freq")
    layout = m.layout()
    names = [e["name"] for e in layout]
    assert names[:2] == ["token_embed/embeddings", "pos_embed/embeddings"]
    expected_layer = [
        f"transformer/layer_0/{s}/{p}"
        for s in (
            "attn/query",
            "attn/key",
            "attn/value",
            "attn/linear",
            "mlp/linear_1",
            "mlp/linear_2",
        )
        for p in ("w", "b")
    ]
    assert names[2:14] == expected_layer
    assert len(names) == 2 + 12 * m.num_layers
    assert len(set(names)) == len(names)
    assert {e["type"] for e in layout} == {"embed", "attn", "mlp"}
    assert [e["layer"] for e in layout[:2]] == [-1, -1]
    assert layout[-1]["layer"] == m.num_layers - 1
    flat = m.flat()
    assert flat.dtype == np.float32 and flat.ndim == 1
    assert flat.size == sum(e["size"] for e in layout) == m.num_params
    for e in layout:
        arr = m.params[e["module"]][e["param"]]
        assert list(arr.shape) == e["shape"]
        np.testing.assert_array_equal(flat[e["offset"] : e["offset"] + e["size"]], arr.reshape(-1))
    # Layout and flat agree between stock and fast.
    ref = stock_reference("sort_freq").model
    assert ref.layout() == layout
    assert ref.flat().tobytes() == flat.tobytes()
    # dtypes / shapes of the haiku parameter tree.
    for mod, d in m.params.items():
        for p, a in d.items():
            assert a.dtype == np.float32, (mod, p)
    d_model = m.residual_size
    assert m.params["token_embed"]["embeddings"].shape == (m.vocab_size, d_model)
    assert m.params["pos_embed"]["embeddings"].shape == (6, d_model)
    assert m.max_seq_len == 5


def test_unembed_matrix_is_projection_onto_output_space():
    for name in ("sort_freq", "frac_prevs"):
        m = fast_compile(name)
        u = m.unembed_matrix()
        assert u.shape == (m.residual_size, len(m.unembed_indices))
        assert [m.residual_labels[i] for i in m.unembed_indices] == m.output_labels
        if m.categorical_output:
            assert len(m.output_values) == u.shape[1]
        else:
            assert m.output_values is None and u.shape[1] == 1


@pytest.mark.parametrize("name", ["sort_freq", "frac_prevs", "detect_pattern"])
def test_npz_round_trip(name, tmp_path):
    m = fast_compile(name)
    d = m.to_npz_dict()
    assert d["meta_json"].shape == () and d["meta_json"].dtype.kind == "U"
    json.loads(str(d["meta_json"]))
    path = tmp_path / "m.npz"
    np.savez(path, **d)
    with np.load(path, allow_pickle=False) as z:
        back = CompiledModel.from_npz_dict(z)
    assert model_differences(m, back) == []
    assert [type(v) for v in back.input_tokens] == [type(v) for v in m.input_tokens]
    if m.output_values is not None:
        assert [type(v) for v in back.output_values] == [type(v) for v in m.output_values]
    # Also via to_arrays / from_arrays and an in-memory buffer.
    buf = io.BytesIO()
    np.savez_compressed(buf, **m.to_npz_dict())
    buf.seek(0)
    back2 = CompiledModel.from_npz_dict(np.load(buf, allow_pickle=False))
    assert models_bitwise_equal(m, back2)
    back3 = CompiledModel.from_arrays(m.to_arrays(), m.metadata())
    assert models_bitwise_equal(m, back3)


def test_value_types_survive_json():
    from metamodels.zoo.compiler import decode_value, encode_value

    values = [
        1,
        True,
        False,
        0,
        1.0,
        -2.5,
        "1",
        "compiler_bos",
        None,
        (1, "a"),
        float("inf"),
        np.int64(3),
        np.float32(0.5),
    ]
    enc = json.loads(json.dumps([encode_value(v) for v in values]))
    dec = [decode_value(v) for v in enc]
    assert [type(v) for v in dec] == [type(v) for v in values]
    assert dec == values


def test_random_programs_bitwise_equal(random_references):
    """>= 20 random programs; where stock fails, fast must fail the same way."""
    n_ok = n_fail = 0
    refs = random_references.results()
    for name in RANDOM_CASES:
        ref = refs[name]
        if isinstance(ref.stock, Failure):
            assert isinstance(ref.fast, Failure), (name, ref.stock)
            assert ref.fast.type_name == ref.stock.type_name, (name, ref.fast, ref.stock)
            n_fail += 1
            continue
        assert not isinstance(ref.fast, Failure), (name, ref.fast)
        assert model_differences(ref.fast, ref.stock) == [], name
        n_ok += 1
    # The generator must mostly produce compilable programs.
    assert n_ok >= 20, (n_ok, n_fail)
