"""The verified search (decompiler/search.py) and the cached decoding it needs
(decompiler/incremental.py): cached logits equal the full model's; cached greedy decoding
gives the tokens the uncached decoder gives; the checker accepts the model's own program and
rejects one that differs on a single input position; a lower-ranked right candidate is
found, verified, when the best one is wrong; an unverified result is marked so."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metamodels.decompiler import decode as D
from metamodels.decompiler import search as SE
from metamodels.decompiler import stage as decompiler
from metamodels.decompiler import transformer as T
from metamodels.decompiler.incremental import Cached
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import Op, Program, to_rasp
from metamodels.rasp.tokenizer import Vocab, encode
from metamodels.zoo.compiler import compile_program

VOCAB, MAX_LEN = [1, 2, 3], 4


def _random_model(default_params, architecture: str, vocab_size: int = 40):
    cfg = copy.deepcopy(default_params["decompiler"])
    cfg["model"].update(architecture=architecture, d_model=32, heads=2, mlp=64, layers=2,
                        decoder_layers=2)
    model = T.build(cfg, vocab_size)
    rng = np.random.default_rng(0)
    b, tw = 3, 9
    batch = {"features": rng.normal(size=(b, tw, 96)).astype(np.float32),
             "kind": rng.integers(0, 3, (b, tw)), "layer": rng.integers(0, 5, (b, tw)),
             "index": rng.integers(0, 9, (b, tw)),
             "mask": np.arange(tw)[None] < np.array([9, 5, 7])[:, None]}
    params = model.init(jax.random.PRNGKey(1), batch, jnp.zeros((b, 12), jnp.int32))["params"]
    return model, params, batch


@pytest.mark.parametrize("architecture", ["encoder_decoder", "prefix_lm"])
def test_cached_decoding_equals_the_full_model(default_params, architecture):
    model, params, batch = _random_model(default_params, architecture)
    tp = 12
    prog = np.random.default_rng(2).integers(0, 40, (3, tp)).astype(np.int32)
    full = np.asarray(model.apply({"params": params}, batch, prog))
    cached = Cached(model).bind(params)
    state = cached.start(batch, tp)
    steps = []
    for t in range(tp):
        logits, state = cached.step(state, prog[:, t], t)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4, rtol=1e-4)
    # greedy decoding through the cache picks the tokens the uncached decoder picks (the
    # whole buffer through the full model at every step, as decoding used to run)
    buf = np.zeros((3, tp), np.int32)
    for t in range(tp - 1):
        buf[:, t + 1] = np.asarray(model.apply({"params": params}, batch, buf))[:, t].argmax(-1)
    got = D.greedy(cached, batch, tp, bos=0, eos=39, pad=38)
    # (rows that emit EOS are PAD after it in the cached decoder; compare up to EOS)
    for r in range(3):
        stop = next((t for t in range(1, tp) if buf[r, t] == 39), tp - 1) + 1
        np.testing.assert_array_equal(got[r, :stop], buf[r, :stop])


def _vocab(default_params) -> Vocab:
    return Vocab(L.Tables(default_params["sampler"]["map_constants"]), 6)


def _compiled(tables, fn: str = "x+1"):
    program = Program((Op("v1", "Map", fn, ("tokens",), "categorical"),))
    return program, compile_program(to_rasp(program, tables), set(VOCAB), MAX_LEN)


def _checker(default_params, model) -> SE.Checker:
    domain = {"vocab": VOCAB, "max_seq_len": MAX_LEN}
    inputs, exhaustive = SE.verification_inputs(domain, default_params)
    assert exhaustive
    return SE.Checker(model, inputs, default_params["verify"], exhaustive)


def test_checker_accepts_the_program_and_rejects_one_differing_input(default_params):
    tables = L.Tables(default_params["sampler"]["map_constants"])
    program, model = _compiled(tables)
    checker = _checker(default_params, model)
    rec = checker.check(to_rasp(program, tables))
    assert rec["passed"] and rec["inputs"] == sum(3 ** n for n in range(1, 5))
    other = Program((Op("v1", "Map", "x+2", ("tokens",), "categorical"),))
    assert not checker.check(to_rasp(other, tables))["passed"]
    numerical = Program((Op("v1", "Map", "x+1", ("tokens",), "numerical"),))
    assert "encoding" in checker.check(to_rasp(numerical, tables))["reason"]
    # the model now differs from the program at one position of one input that the probe
    # does not hold: only the full check can see it, and it must
    j = len(checker.inputs) - 1
    probe_rows = {tuple(x) for x in checker.probe_inputs[j].tolist()}
    row = next(i for i, x in enumerate(checker.inputs[j].tolist()) if tuple(x) not in probe_rows)
    checker.outputs[j] = checker.outputs[j].copy()
    checker.outputs[j][row, 2] = (checker.outputs[j][row, 2] + 1) % len(model.output_values)
    rec = checker.check(to_rasp(program, tables))
    assert not rec["passed"] and rec["mismatched_positions"] == 1


def _ids(vocab: Vocab, tokens: list[str], width: int) -> np.ndarray:
    ids = [vocab.index[t] for t in tokens]
    return np.array(ids + [vocab.index["PAD"]] * (width - len(ids)), np.int32)


def test_search_returns_the_lower_ranked_right_candidate_verified(default_params):
    vocab = _vocab(default_params)
    tables = vocab.tables
    program, model = _compiled(tables)
    wrong = Program((Op("v1", "Map", "x+2", ("tokens",), "categorical"),))
    seqs = np.stack([_ids(vocab, encode(p), 32) for p in (wrong, program)])
    checker = _checker(default_params, model)
    recompile = {"vocab": VOCAB, "max_seq_len": MAX_LEN,
                 "mlp_exactness": default_params["compile"]["mlp_exactness"]}
    res = SE.search(checker, seqs, np.array([-0.5, -1.5]), vocab, None, recompile)
    assert res.verified and res.rank == 2 and res.tried == 2 and res.candidates == 2
    assert res.tokens == encode(program) and res.identical_weights is True
    assert res.exhaustive and res.positions > 0
    text = decompiler.certificate_text(res)
    assert text.startswith("# VERIFIED") and "candidate 2 of 2" in text
    assert "bitwise identical" in text
    # only the wrong program (and an unfinished beam): the best guess, marked unverified
    res = SE.search(checker, seqs[:1].repeat(2, 0), np.array([-0.5, -np.inf]), vocab)
    assert not res.verified and res.rank is None and res.tokens == encode(wrong)
    assert res.tried == 1 and res.candidates == 1 and "none of the 1" in res.reason
    text = decompiler.certificate_text(res)
    assert text.startswith("# UNVERIFIED best guess") and "VERIFIED:" not in text


def test_summary_counts_verified_exact_and_ranks(default_params):
    vocab = _vocab(default_params)
    program, model = _compiled(vocab.tables)
    checker = _checker(default_params, model)
    seq = _ids(vocab, encode(program), 32)[None]
    hit = SE.search(checker, seq, np.array([0.0]), vocab)
    miss = SE.search(checker, seq, np.array([-np.inf]), vocab)
    s = SE.summarize([hit, miss, hit], [True, False, False], [1, 2, 2])
    assert s["verified_accuracy"] == pytest.approx(2 / 3)
    assert s["verified_exact"] == 0.5 and s["rank_histogram"] == {"1": 2}
    assert s["by_length"] == {"1": {"programs": 1, "verified_accuracy": 1.0},
                              "2": {"programs": 2, "verified_accuracy": 0.5}}
