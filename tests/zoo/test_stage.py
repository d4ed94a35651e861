"""Compile stage: every stored program is verified; failures are recorded, not dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metamodels.core import shards as S
from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import Op, Program, render, to_rasp
from metamodels.rasp.sampler import SamplerConfig, sample_shard
from metamodels.rasp.tokenizer import Vocab, decode
from metamodels.zoo import stage as zoo
from metamodels.zoo.compiler import compile_program, compile_program_stock, model_differences


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_params):
    import copy
    params = copy.deepcopy(default_params)
    params["zoo"]["programs_per_shard"] = 14
    d = tmp_path_factory.mktemp("zoo")
    S.write_bytes(d / "vocab.json", Vocab.from_params(params).dumps().encode())
    zoo.run_sample(params, 0, str(d / "programs.json"))
    # Append two programs that must fail: one tracr rejects, one it compiles wrong.
    doc = S.read_json(d / "programs.json")
    tables = L.Tables(params["sampler"]["map_constants"])
    bad = [
        Program((Op("v1", "Map", "x+1", ("tokens",), "numerical"),
                 Op("v2", "Aggregate", "EQ", ("tokens", "tokens", "v1"), "numerical"))),
        Program((Op("v1", "Map", "x==1", ("tokens",), "numerical"),
                 Op("v2", "Aggregate", "LEQ", ("tokens", "tokens", "v1"), "numerical"),
                 Op("v3", "Map", "x+1", ("v2",), "numerical"))),
    ]
    for p in bad:
        doc["programs"].append({"program": p.to_json(), "length": len(p), "ops_rewritten": 0,
                                "none_fraction": 0.0, "source": render(p, tables)})
    S.write_json(d / "programs.json", doc)
    zoo.run_compile(params, str(d / "programs.json"), str(d / "vocab.json"),
                    str(d / "compiled.npz"), str(d / "timing.json"))
    return params, d


def test_every_stored_program_is_verified(tiny):
    params, d = tiny
    with np.load(d / "compiled.npz", allow_pickle=False) as z:  # readable without our code
        arrays = {k: z[k] for k in z.files}
    tables = L.Tables(params["sampler"]["map_constants"])
    vocab = Vocab.load(d / "vocab.json")
    n = len(arrays["length"])
    assert n >= 10
    inputs = E.all_inputs(params["zoo"]["vocab"], params["zoo"]["max_seq_len"])
    for i in range(n):
        r = zoo.row(arrays, i)
        program = Program.from_json(r["program"])
        assert decode(vocab.strs(r["tokens"].tolist()), tables) == program
        assert r["meta"]["verification"]["passed"] is True
        assert r["meta"]["verification"]["exhaustive"] is True
        assert r["meta"]["verification"]["inputs"] == sum(x.shape[0] for x in inputs)
        assert r["meta"]["n_params"] == r["weights"].size == arrays["n_params"][i]
        assert r["layout"][-1]["offset"] + r["layout"][-1]["size"] == r["weights"].size
        # Independently re-verify the stored weights against RASP on the whole domain.
        model = zoo.model_of(arrays, i)
        check = zoo.verify(model, to_rasp(program, tables), inputs, params["verify"]["atol"])
        assert check["passed"] and check["mismatched_positions"] == 0


def test_failures_are_recorded_with_reasons(tiny):
    _, d = tiny
    arrays = S.load_npz(d / "compiled.npz")
    stats = json.loads(str(arrays["shard_json"][0]))
    assert stats["sampled"] == 16
    assert stats["kept"] == len(arrays["length"])
    assert stats["kept"] + sum(stats["compile_failures"].values()) == stats["sampled"]
    reasons = {f["index"]: f["reason"] for f in stats["failed"]}
    assert reasons[14] == "compile_error"
    assert reasons[15] == "wrong_output"
    assert set(stats["sampling"]["rejected"]) >= {"constant", "identity", "mostly_none"}
    timing = S.read_json(d / "timing.json")
    assert len(timing["programs"]) == stats["kept"]


def test_compile_is_bitwise_deterministic(tiny, tmp_path):
    params, d = tiny
    zoo.run_compile(params, str(d / "programs.json"), str(d / "vocab.json"),
                    str(tmp_path / "again.npz"))
    assert (tmp_path / "again.npz").read_bytes() == (d / "compiled.npz").read_bytes()


def test_weights_do_not_depend_on_process_history(default_params):
    """tracr labels carry a process-global counter; our labels must not."""
    tables = L.Tables(default_params["sampler"]["map_constants"])
    p = Program((Op("v1", "Map", "x+1", ("tokens",), "categorical"),
                 Op("v2", "SelectorWidth", "LT", ("v1", "indices"), "categorical"),
                 Op("v3", "SequenceMap", "x*y", ("v1", "v2"), "categorical")))
    first = compile_program(to_rasp(p, tables), {1, 2, 3, 4, 5}, 5).flat()
    for _ in range(50):  # burn tracr's global id counter
        to_rasp(p, tables).label
    second = compile_program(to_rasp(p, tables), {1, 2, 3, 4, 5}, 5).flat()
    assert first.tobytes() == second.tobytes()


def test_sampled_programs_compile_bitwise_equal_to_stock(default_params):
    """The fast path on >= 20 programs from the project's own sampler (default params)."""
    cfg = SamplerConfig.from_params(default_params)
    tables = L.Tables(cfg.map_constants)
    sampled, _ = sample_shard(cfg, seed=2024, shard=0, n_programs=20)
    for s in sampled:
        expr = to_rasp(s.program, tables)
        fast = compile_program(expr, set(cfg.vocab), cfg.max_seq_len)
        stock = compile_program_stock(expr, set(cfg.vocab), cfg.max_seq_len)
        assert model_differences(fast, stock) == [], render(s.program, tables)
