"""Programs as data: canonical form, tokens round trip, layer allocation, tracr conversion."""

from __future__ import annotations

import numpy as np
import pytest
from tracr.compiler import basis_inference, craft_graph_to_model, expr_to_craft_graph, rasp_to_graph
from tracr.craft import bases
from tracr.rasp import rasp

from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import (
    Op,
    Program,
    UnsupportedProgram,
    canonicalize,
    from_rasp,
    layer_allocation,
    load_source,
    render,
    to_rasp,
)
from metamodels.rasp.sampler import _DeadEnd, construct, domain
from metamodels.rasp.tokenizer import DecodeError, Vocab, decode, encode
from tests.tiny import small_cfg


def _random_programs(cfg, n, seed, canonical_fns=True):
    tables = L.Tables(cfg.map_constants)
    rng = np.random.default_rng(seed)
    inputs = domain(cfg.vocab, cfg.max_seq_len, cfg.exhaustive_limit, cfg.eval_samples,
                    np.random.SeedSequence(seed))
    out = []
    while len(out) < n:
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        try:
            out.append(construct(rng, cfg, tables, length, inputs,
                                 canonical_fns=canonical_fns)[0])
        except _DeadEnd:
            continue
    return tables, inputs, out


def _outputs(program, tables, inputs):
    expr = to_rasp(program, tables)
    try:
        return [E.evaluate_batch(expr, x).to_lists() for x in inputs]
    except Exception as e:  # noqa: BLE001 - both sides must fail alike
        return type(e).__name__


def test_round_trip_thousands_of_programs(default_params):
    """raw program -> canonicalize -> tokens -> decode: same function on the whole domain."""
    cfg = small_cfg(default_params)
    tables, inputs, programs = _random_programs(cfg, 2000, seed=1, canonical_fns=False)
    assert sum(x.shape[0] for x in inputs) == 3 + 9 + 27 + 81  # the whole domain
    vocab = Vocab(tables, cfg.max_length)
    rewritten = 0
    for raw in programs:
        canon, n_rewrites = canonicalize(raw, tables, cfg.vocab, cfg.max_seq_len)
        rewritten += n_rewrites > 0
        tokens = encode(canon)
        back = decode(vocab.strs(vocab.ids(tokens)), tables)
        assert back == canon
        assert _outputs(back, tables, inputs) == _outputs(raw, tables, inputs), render(raw, tables)
    assert rewritten > 0  # the raw lambdas really were rewritten sometimes


def test_round_trip_default_domain(default_params):
    cfg = small_cfg(default_params, vocab=[1, 2, 3, 4, 5], max_seq_len=5)
    tables, inputs, programs = _random_programs(cfg, 150, seed=2, canonical_fns=False)
    for raw in programs:
        canon, _ = canonicalize(raw, tables, cfg.vocab, cfg.max_seq_len)
        assert _outputs(decode(encode(canon), tables), tables, inputs) == _outputs(raw, tables, inputs)


def test_canonical_form_is_invariant_to_naming_and_order(default_params):
    cfg = small_cfg(default_params)
    tables = L.Tables(cfg.map_constants)
    a = Program((Op("a", "Map", "x+1", ("tokens",), "categorical"),
                 Op("b", "SelectorWidth", "EQ", ("tokens", "tokens"), "categorical"),
                 Op("c", "SequenceMap", "x+y", ("a", "b"), "categorical")))
    b = Program((Op("q", "SelectorWidth", "EQ", ("tokens", "tokens"), "categorical"),
                 Op("p", "Map", "x+1", ("tokens",), "categorical"),
                 Op("r", "SequenceMap", "x+y", ("q", "p"), "categorical")))
    ca, _ = canonicalize(a, tables, cfg.vocab, cfg.max_seq_len)
    cb, _ = canonicalize(b, tables, cfg.vocab, cfg.max_seq_len)
    assert ca == cb
    assert [op.name for op in ca.ops] == ["v1", "v2", "v3"]


def test_behaviour_classes_are_merged(default_params):
    """x<1 and x==0 on {0,1,2,...} behave alike on indices >= 0 only where they agree."""
    cfg = small_cfg(default_params)
    tables = L.Tables(cfg.map_constants)
    # On tokens {1,2,3}: x>0 is always True, x<1 always False -> rewritten to the
    # first table entry with that behaviour; x<=1 and x==1 agree -> one class.
    assert L.canonical_map(tables, "x==1", {1, 2, 3}) == L.canonical_map(tables, "x<=1", {1, 2, 3})
    assert L.canonical_map(tables, "x+1", {1, 2, 3}) == "x+1"
    assert (L.canonical_predicate(tables, "LEQ", {0}, {0})
            == L.canonical_predicate(tables, "TRUE", {0}, {0}) == "TRUE")
    # Duplicate ops that become identical after rewriting are merged.
    p = Program((Op("a", "Map", "x==1", ("tokens",), "categorical"),
                 Op("b", "Map", "x<=1", ("tokens",), "categorical"),
                 Op("c", "SequenceMap", "x_and_y", ("a", "b"), "categorical"),
                 Op("d", "SelectorWidth", "EQ", ("c", "tokens"), "categorical")))
    canon, rewrites = canonicalize(p, tables, cfg.vocab, cfg.max_seq_len)
    assert rewrites >= 1
    assert len(canon) == 3


def test_layer_allocation_matches_tracr(default_params):
    cfg = small_cfg(default_params, vocab=[1, 2, 3, 4, 5], max_seq_len=5, max_length=8)
    tables, _, programs = _random_programs(cfg, 150, seed=3)
    checked = 0
    for program in programs:
        program, _ = canonicalize(program, tables, cfg.vocab, cfg.max_seq_len)
        if "tokens" not in {a for op in program.ops for a in op.args}:
            continue  # tracr compiles only programs that read tokens (sampler rejects these)
        checked += 1
        expr = to_rasp(program, tables)
        ex = rasp_to_graph.extract_rasp_graph(expr)
        basis_inference.infer_bases(ex.graph, ex.sink, set(cfg.vocab), cfg.max_seq_len)
        expr_to_craft_graph.add_craft_components_to_rasp_graph(
            ex.graph, bos_dir=bases.BasisDirection(rasp.tokens.label, "compiler_bos"))
        tracr_alloc = craft_graph_to_model._allocate_modules_to_layers(ex.graph, ex.sources)
        ours = layer_allocation(program)
        by_name = {ex.graph.nodes[k]["EXPR"].name: v for k, v in tracr_alloc.items()}
        assert by_name == ours, render(program, tables)
    assert checked >= 100


def test_value_sets_match_tracr(default_params):
    from tracr.compiler import nodes

    from metamodels.rasp.program import value_sets
    cfg = small_cfg(default_params, vocab=[1, 2, 3, 4, 5], max_seq_len=5)
    tables, _, programs = _random_programs(cfg, 60, seed=4)
    for program in programs:
        ex = rasp_to_graph.extract_rasp_graph(to_rasp(program, tables))
        basis_inference.infer_bases(ex.graph, ex.sink, set(cfg.vocab), cfg.max_seq_len)
        ours = value_sets(program, tables, cfg.vocab, cfg.max_seq_len)
        theirs = {n["EXPR"].name: n.get(nodes.VALUE_SET) for n in ex.graph.nodes.values()}
        for op in program.ops:
            assert ours[op.name] == theirs[op.name]


def test_render_executes_to_the_same_program(default_params):
    cfg = small_cfg(default_params)
    tables, inputs, programs = _random_programs(cfg, 50, seed=5)
    for program in programs:
        program, _ = canonicalize(program, tables, cfg.vocab, cfg.max_seq_len)
        src = render(program, tables)
        expr = load_source(src)
        back = from_rasp(expr, tables, cfg.vocab, cfg.max_seq_len)
        assert canonicalize(back, tables, cfg.vocab, cfg.max_seq_len)[0] == program
        want = _outputs(program, tables, inputs)
        got = [E.evaluate_batch(expr, x).to_lists() for x in inputs]
        assert got == want


def test_from_rasp_matches_lambdas_by_behaviour(default_params):
    tables = L.Tables(default_params["sampler"]["map_constants"])
    sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT)
    expr = rasp.numerical(rasp.Aggregate(sel, rasp.numerical(
        rasp.Map(lambda t: 1 if t == 3 else 0, rasp.tokens)), default=0))
    program = from_rasp(expr, tables, [1, 2, 3, 4, 5], 5)
    assert [op.kind for op in program.ops] == ["Map", "Aggregate"]
    assert program.ops[0].fn == L.canonical_map(tables, "x==3", {1, 2, 3, 4, 5})
    with pytest.raises(UnsupportedProgram):
        from_rasp(rasp.Map(lambda t: t * 7 + 100, rasp.tokens), tables, [1, 2, 3], 3)
    with pytest.raises(UnsupportedProgram):
        from_rasp(rasp.Full(1), tables, [1, 2, 3], 3)


@pytest.mark.parametrize("tokens", [
    ["BOS", "v1", "categorical", "Map", "x+1", "EOO", "EOS"],                 # missing arg
    ["BOS", "v1", "categorical", "Map", "x+1", "tokens", "EOS"],              # no EOO
    ["BOS", "v1", "sideways", "Map", "x+1", "tokens", "EOO", "EOS"],          # encoding
    ["BOS", "v1", "categorical", "Map", "x+1", "v7", "EOO", "EOS"],           # undefined var
    ["BOS", "v1", "categorical", "SequenceMap", "x+y", "tokens", "EOL", "EOS"],
    ["BOS", "EOS"],
])
def test_decode_rejects_malformed(default_params, tokens):
    tables = L.Tables(default_params["sampler"]["map_constants"])
    with pytest.raises(DecodeError):
        decode(tokens, tables)


def test_vocab_is_stable_and_complete(default_params, tmp_path):
    vocab = Vocab.from_params(default_params)
    path = tmp_path / "vocab.json"
    path.write_text(vocab.dumps())
    again = Vocab.load(path)
    assert again.tokens == vocab.tokens and vocab.tokens[0] == "PAD"
    tables = L.Tables(default_params["sampler"]["map_constants"])
    assert set(tables.function_tokens()) <= set(vocab.tokens)
