"""The sampler: requested lengths by construction, filters, determinism."""

from __future__ import annotations

import collections

import numpy as np

from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import CAT, KINDS, ancestors, to_rasp, value_sets
from metamodels.rasp.sampler import _DeadEnd, construct, domain, sample_shard
from metamodels.rasp.tokenizer import encode
from tests.tiny import small_cfg


def test_construction_hits_every_requested_length(default_params):
    cfg = small_cfg(default_params, vocab=[1, 2, 3, 4, 5], max_seq_len=5)
    tables = L.Tables(cfg.map_constants)
    inputs = domain(cfg.vocab, cfg.max_seq_len, cfg.exhaustive_limit, cfg.eval_samples,
                    np.random.SeedSequence(0))
    rng = np.random.default_rng(0)
    tries = collections.Counter()
    built = collections.Counter()
    for length in range(1, 10):
        while built[length] < 15:
            tries[length] += 1
            try:
                program, _ = construct(rng, cfg, tables, length, inputs)
            except _DeadEnd:
                continue
            built[length] += 1
            assert len(program) == length
            # no dead ops: everything is an ancestor of the output
            assert ancestors(program, program.output) == {op.name for op in program.ops}
        # construction, not rejection: most tries succeed
        assert built[length] / tries[length] > 0.3, (length, tries[length])


def test_sampled_shard_obeys_its_filters(default_params):
    cfg = small_cfg(default_params, vocab=[1, 2, 3, 4, 5], max_seq_len=5)
    tables = L.Tables(cfg.map_constants)
    sampled, stats = sample_shard(cfg, seed=7, shard=0, n_programs=40)
    assert len(sampled) == 40 == stats["accepted"]
    assert stats["tries"] == stats["accepted"] + sum(stats["rejected"].values())
    assert 0 < stats["acceptance_rate"] <= 1
    inputs = E.all_inputs(sorted(cfg.vocab), cfg.max_seq_len)
    seen = set()
    for s in sampled:
        p = s.program
        assert cfg.min_length <= len(p) <= cfg.max_length
        toks = tuple(encode(p))
        assert toks not in seen
        seen.add(toks)
        expr = to_rasp(p, tables)
        outs = [E.evaluate_batch(expr, x) for x in inputs]  # never raises
        assert E.none_fraction(outs) <= cfg.max_none_fraction
        assert abs(E.none_fraction(outs) - s.none_fraction) < 1e-12
        values = {L.value_key(v) for r in outs for row in r.to_lists() for v in row if v is not None}
        assert len(values) > 1  # not constant
        assert not all(r.to_lists() == x.tolist() for r, x in zip(outs, inputs))  # not identity
        assert any("tokens" in op.args for op in p.ops)
        vs = value_sets(p, tables, cfg.vocab, cfg.max_seq_len)
        assert all(len(vs[op.name]) <= cfg.max_value_set for op in p.ops)
    kinds = collections.Counter(op.kind for s in sampled for op in s.program.ops)
    assert set(kinds) == set(KINDS)  # every op kind occurs
    encs = collections.Counter(op.encoding for s in sampled for op in s.program.ops)
    assert encs[CAT] > 0 and encs["numerical"] > 0


def test_sampling_is_deterministic_per_seed_and_shard(default_params):
    cfg = small_cfg(default_params)
    a, sa = sample_shard(cfg, seed=3, shard=1, n_programs=10)
    b, sb = sample_shard(cfg, seed=3, shard=1, n_programs=10)
    c, _ = sample_shard(cfg, seed=3, shard=2, n_programs=10)
    assert [x.program for x in a] == [x.program for x in b] and sa == sb
    assert [x.program for x in a] != [x.program for x in c]


def test_op_weights_zero_excludes_an_op(default_params):
    weights = dict(default_params["sampler"]["op_weights"], SequenceMap=0, LinearSequenceMap=0)
    cfg = small_cfg(default_params, op_weights=weights)
    sampled, _ = sample_shard(cfg, seed=0, shard=0, n_programs=15)
    assert not any(op.kind in ("SequenceMap", "LinearSequenceMap")
                   for s in sampled for op in s.program.ops)
