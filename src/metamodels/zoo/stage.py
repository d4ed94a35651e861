"""Stages 1–2 of the program zoo: sample a shard of programs, compile and verify it.

``sample``  -> ``data/programs/shard_KKKKK.json``: canonical programs (plain
              data, see :mod:`metamodels.rasp.program`) with their sampling facts and
              the shard's rejection counts.
``compile`` -> ``data/compiled/shard_KKKKK.npz``: every program that compiled
              and whose compiled model's decoded output equals the RASP
              evaluation on the verification inputs, with its weights, layout,
              tokens and metadata; the shard's failures by reason.

The shard format is documented in docs/data-formats.md.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
import time
from typing import Any, Mapping

import numpy as np

from metamodels.core import shards as S
from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import Program, layer_allocation, num_layers, render, to_rasp
from metamodels.rasp.sampler import SamplerConfig, domain, domain_size, sample_shard
from metamodels.rasp.tokenizer import Vocab
from metamodels.rasp.tokenizer import encode as encode_tokens
from metamodels.zoo.compiler import CompiledModel, compile_program
from metamodels.zoo.forward import encode, forward_ids
from metamodels.zoo.rows import row, shard_programs  # noqa: F401 (re-exported)
from metamodels.zoo.workers import run_tasks

FORMAT_VERSION = 1
COMPILE_FAILURES = ("compile_error", "timeout", "crash", "wrong_output")


def progress(label: str):
    """A ``report(done, total)`` callback printing '[label] done/total' at most every 5 s."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 5 or done == total:
            last[0] = now
            print(f"[{label}] {done}/{total}", file=sys.stderr, flush=True)
    return report


# ---------------------------------------------------------------------------
# sample

def run_sample(params: Mapping, shard: int, out_path: str) -> dict:
    cfg = SamplerConfig.from_params(params)
    z = params["zoo"]
    if not 0 <= shard < z["shards"]:
        raise ValueError(f"shard {shard} is outside 0..{z['shards'] - 1} (zoo.shards)")
    t0 = time.perf_counter()
    sampled, stats = sample_shard(cfg, z["seed"], shard, z["programs_per_shard"],
                                  progress=progress(f"sample shard {shard}"))
    tables = L.Tables(cfg.map_constants)
    doc = {
        "format_version": FORMAT_VERSION,
        "shard": shard,
        "programs": [{"program": s.program.to_json(), "length": len(s.program),
                      "ops_rewritten": s.rewrites, "none_fraction": s.none_fraction,
                      "source": render(s.program, tables)} for s in sampled],
        "stats": stats,
    }
    S.write_json(out_path, doc)
    stats = dict(stats, seconds=time.perf_counter() - t0)
    print(f"[sample shard {shard}] {json.dumps(stats)}", file=sys.stderr)
    return stats


# ---------------------------------------------------------------------------
# compile + verify (runs in worker processes)

def _worker_init(params: dict):
    return {"params": params, "tables": L.Tables(params["sampler"]["map_constants"]),
            "inputs": verification_inputs(params)}


def verification_inputs(params: Mapping) -> list[np.ndarray]:
    """The inputs every program is verified on: the whole domain, or one fixed sample of it."""
    z, v = params["zoo"], params["verify"]
    return domain(z["vocab"], z["max_seq_len"], v["exhaustive_limit"], v["samples"],
                  np.random.SeedSequence(entropy=z["seed"], spawn_key=(2 ** 31,)))


def model_output(model: CompiledModel, x: np.ndarray) -> np.ndarray:
    """The model's decoded output (B, L) on inputs x (B, L) of one length, BOS not included:
    output-value ids for a categorical output, floats for a numerical one."""
    return forward_ids(model, encode(model, x.tolist()))[:, 1:]


def verify(model: CompiledModel, expr, inputs: list[np.ndarray], atol: float,
           min_compared: float = 0.0, outputs: list[np.ndarray] | None = None) -> dict:
    """Compare the compiled model's decoded output with RASP on every input.

    Positions where RASP's output is None carry no value a transformer could
    produce and are not compared (their count is reported). A verification
    that compares no position, or fewer than ``min_compared`` (a share,
    ``verify.min_compared``) of them, fails: it would otherwise pass a model
    whatever its weights. ``reason`` says why a failed verification failed.
    ``outputs``: the model's :func:`model_output` on each of ``inputs``, when already
    computed (the verified search checks many programs against one model).
    """
    n_inputs = n_pos = n_none = n_bad = 0
    first_bad = None
    for j, x in enumerate(inputs):
        ref = E.evaluate_batch(expr, x)
        out = outputs[j] if outputs is not None else model_output(model, x)
        none = ref.codes < 0
        if model.categorical_output:
            index: dict = {}  # compare by ==, as rasp does (0 == 0.0 == False)
            want = L.key_ids(ref.values, ref.codes, index)
            got = L.key_ids(model.output_values, out, index)
            bad = (got != want) & ~none
        else:
            table = np.array([float(v) for v in ref.values] + [np.nan], dtype=np.float64)
            want = table[ref.codes]
            bad = ~(np.abs(out.astype(np.float64) - want) <= atol) & ~none
        n_inputs += x.shape[0]
        n_pos += x.size
        n_none += int(none.sum())
        n_bad += int(bad.sum())
        if first_bad is None and bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            first_bad = {"input": x[row].tolist(), "expected": ref.to_lists()[row],
                         "got": _decode_row(model, out[row])}
    compared = n_pos - n_none
    reason = None
    if n_bad:
        reason = f"the model's output differs from RASP's on {n_bad} of {compared} compared positions"
    elif compared == 0 or compared < min_compared * n_pos:
        reason = (f"RASP's output is None on {n_none} of {n_pos} positions, so only {compared} "
                  f"could be compared (verify.min_compared={min_compared} of them must be); "
                  "a verification that compares (almost) nothing proves nothing")
    return {"inputs": n_inputs, "positions": n_pos, "none_positions": n_none,
            "mismatched_positions": n_bad, "passed": reason is None, "reason": reason,
            "exhaustive": None, "first_mismatch": first_bad}


def _decode_row(model: CompiledModel, row: np.ndarray) -> list:
    if model.categorical_output:
        return [model.output_values[int(i)] for i in row]
    return [float(v) for v in row]


def compile_and_verify(state: dict, program_json: list) -> dict:
    """Worker task: compile one canonical program, verify it, return arrays + facts."""
    params, tables = state["params"], state["tables"]
    z = params["zoo"]
    program = Program.from_json(program_json)
    expr = to_rasp(program, tables)
    t0 = time.perf_counter()
    model = compile_program(expr, set(z["vocab"]), z["max_seq_len"],
                            mlp_exactness=params["compile"]["mlp_exactness"])
    compile_s = time.perf_counter() - t0
    if model.num_layers != num_layers(program):
        raise AssertionError(f"layer allocation mismatch: tracr built {model.num_layers} layers, "
                             f"tokenizer expected {num_layers(program)}")
    t1 = time.perf_counter()
    check = verify_as_params_say(model, expr, state["inputs"], params)
    return dict(model_record(model, check), compile_s=compile_s,
                verify_s=time.perf_counter() - t1)


def verify_as_params_say(model: CompiledModel, expr, inputs: list[np.ndarray],
                         params: Mapping) -> dict:
    """:func:`verify` with ``verify.atol`` and ``verify.min_compared``, and ``exhaustive``:
    whether ``inputs`` (:func:`verification_inputs`) are the whole domain."""
    z, v = params["zoo"], params["verify"]
    check = verify(model, expr, inputs, v["atol"], v["min_compared"])
    check["exhaustive"] = domain_size(z["vocab"], z["max_seq_len"]) <= v["exhaustive_limit"]
    return check


def model_record(model: CompiledModel, check: Mapping) -> dict:
    """What a zoo row keeps of a compiled model and its verification (see :func:`pack`)."""
    return {"model": model.metadata(), "num_layers": model.num_layers,
            "residual_width": model.residual_size, "flat": model.flat(),
            "layout": model.layout(), "verification": check}


# ---------------------------------------------------------------------------
# compile stage

def run_compile(params: Mapping, sampled_path: str, vocab_path: str, out_path: str,
                timing_path: str | None = None, workers: int = 1) -> dict:
    doc = S.read_json(sampled_path)
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{sampled_path}: format_version {doc.get('format_version')} != "
                         f"{FORMAT_VERSION}; rerun the sample rule")
    c = params["compile"]
    vocab = Vocab.load(vocab_path)
    entries = doc["programs"]
    kept: list[dict] = []
    failures: collections.Counter = collections.Counter()
    failed: list[dict] = []
    timings: list[dict] = []
    report = progress(f"compile {sampled_path}")
    t0 = time.perf_counter()
    outcomes = run_tasks(compile_and_verify, [e["program"] for e in entries],
                         init=_worker_init, init_args=(dict(params),), workers=workers,
                         timeout_s=c["timeout_s"], memory_mb=c["memory_mb"],
                         recycle_after=c["recycle_after"])
    for out in outcomes:
        entry = entries[out.index]
        if out.status == "ok" and out.value["verification"]["passed"]:
            kept.append({"entry": entry, "result": out.value})
            timings.append({"index": out.index, "compile_s": out.value["compile_s"],
                            "verify_s": out.value["verify_s"]})
        else:
            reason = {"error": "compile_error"}.get(out.status, out.status)
            if out.status == "ok":
                reason = "wrong_output"
            failures[reason] += 1
            detail = out.error or json.dumps(out.value["verification"]["first_mismatch"])
            failed.append({"index": out.index, "reason": reason, "detail": detail[:500],
                           "source": entry["source"]})
        report(out.index + 1, len(entries))
    arrays = pack(kept, vocab)
    shard_stats = {
        "format_version": FORMAT_VERSION,
        "sampled": len(entries),
        "kept": len(kept),
        "sampling": doc["stats"],
        "compile_failures": {r: failures.get(r, 0) for r in COMPILE_FAILURES},
        "failed": failed,
    }
    arrays["shard_json"] = S.text_array([S.dumps_json(shard_stats)])
    S.save_npz(out_path, arrays)
    total = time.perf_counter() - t0
    summary = {"kept": len(kept), "sampled": len(entries),
               "compile_failures": shard_stats["compile_failures"], "seconds": total,
               "compile_s_median": float(np.median([t["compile_s"] for t in timings])) if timings else None}
    if timing_path:
        S.write_json(timing_path, dict(summary, programs=timings))
    print(f"[compile {sampled_path}] {json.dumps(summary)}", file=sys.stderr)
    return summary


def pack(kept: list[dict], vocab: Vocab) -> dict[str, np.ndarray]:
    """Column arrays of one compiled shard (see docs/data-formats.md)."""
    programs = [Program.from_json(k["entry"]["program"]) for k in kept]
    tokens = [vocab.ids(encode_tokens(p)) for p in programs]
    tok_values, tok_off = S.ragged(tokens, np.int32)
    flats = [k["result"]["flat"] for k in kept]
    w_values, w_off = S.ragged(flats, np.float32)
    metas, layouts = [], []
    for k, p in zip(kept, programs):
        res = k["result"]
        metas.append({
            "length": len(p),
            "n_layers": res["num_layers"],
            "residual_width": res["residual_width"],
            "n_params": int(res["flat"].size),
            "ops_rewritten": k["entry"]["ops_rewritten"],
            "none_fraction": k["entry"]["none_fraction"],
            "layer_allocation": layer_allocation(p),
            "verification": res["verification"],
            "model": res["model"],
        })
        layouts.append(res["layout"])
    n = len(kept)
    return {
        "tokens": tok_values, "tokens_offsets": tok_off,
        "weights": w_values, "weights_offsets": w_off,
        "length": np.array([m["length"] for m in metas], np.int32).reshape(n),
        "n_layers": np.array([m["n_layers"] for m in metas], np.int32).reshape(n),
        "residual_width": np.array([m["residual_width"] for m in metas], np.int32).reshape(n),
        "n_params": np.array([m["n_params"] for m in metas], np.int64).reshape(n),
        "program_json": S.json_array([k["entry"]["program"] for k in kept]),
        "source": S.text_array([k["entry"]["source"] for k in kept]),
        "layout_json": S.json_array(layouts),
        "meta_json": S.json_array(metas),
    }


def model_of(arrays: Mapping[str, np.ndarray], i: int) -> CompiledModel:
    """Rebuild the CompiledModel of program i from its flat weights, layout and metadata."""
    return model_of_row(row(arrays, i))


def model_of_row(r: Mapping[str, Any]) -> CompiledModel:
    """The CompiledModel of a row already read by :func:`row`."""
    named = {}
    for item in r["layout"]:
        start, shape = item["offset"], item["shape"]
        size = int(np.prod(shape))
        named[item["name"]] = r["weights"][start:start + size].reshape(shape)
    return CompiledModel.from_arrays(named, r["meta"]["model"])


def compile_file(params: Mapping, source_path: str, out_path: str,
                 keep_unverified: bool = False) -> dict[str, Any]:
    """Compile a user's Python file defining a RASP ``program`` into a one-row zoo shard.

    The checks, compile and verification (:func:`metamodels.zoo.user_program.
    compile_user_program`) run in the zoo's worker process, under ``compile.timeout_s`` and
    ``compile.memory_mb``. Returns facts for the CLI: ``verified``, ``written``, ``diagnosis``.
    The file is written when the model is verified, or with ``keep_unverified`` (then its
    row's ``verification.passed`` is false and ``shard_json`` says ``"verified": false``).

    Raises ``ProgramError`` (a ValueError) for what the user can fix: the program file, a
    program tracr cannot compile faithfully, too large, a timeout or the memory cap.
    """
    from metamodels.zoo.user_program import ProgramError, compile_task, largest_layer
    c = params["compile"]
    out_file = pathlib.Path(out_path)
    if out_file.is_dir():
        raise ProgramError(f"{out_path}: is a directory; --out names the model file to write "
                           "(e.g. model.npz)")
    if out_file.parent.exists() and not out_file.parent.is_dir():
        raise ProgramError(f"{out_file.parent}: is not a directory (from --out {out_path})")
    task = {"params": dict(params), "source": str(source_path), "keep": keep_unverified}
    (out,) = run_tasks(compile_task, [task], timeout_s=c["timeout_s"], memory_mb=c["memory_mb"])
    if out.status == "timeout":
        raise ProgramError(f"{source_path}: compiling took longer than compile.timeout_s="
                           f"{c['timeout_s']} s and was stopped{largest_layer(params, source_path)}"
                           "; shrink the value sets that reach it, or raise compile.timeout_s")
    if out.status == "crash" or (out.status == "error" and "MemoryError" in out.error):
        raise ProgramError(f"{source_path}: compiling ran out of memory or crashed ({out.error}); "
                           f"compile.memory_mb={c['memory_mb']} caps it: raise it or shrink the "
                           "program's value sets")
    if out.status != "ok":
        raise RuntimeError(f"compiling {source_path} failed in the worker: {out.error}")
    if "bug" in out.value:
        raise RuntimeError(f"compiling {source_path} hit a bug in metamodels; the worker's "
                           f"traceback:\n{out.value['bug']}")
    if "refused" in out.value:
        raise ProgramError(out.value["refused"])
    done = out.value["ok"]
    check = done["result"]["verification"]
    written = check["passed"] or keep_unverified
    if written:
        vocab = Vocab.from_params(params)
        arrays = pack([{"entry": done["entry"], "result": done["result"]}], vocab)
        arrays["shard_json"] = S.text_array([S.dumps_json(
            {"source_file": str(source_path), "verified": check["passed"],
             "diagnosis": done["diagnosis"]})])
        S.save_npz(out_path, arrays)
    return {"ops": done["ops"], "layers": done["result"]["num_layers"],
            "params": int(done["result"]["flat"].size), "verified": check["passed"],
            "inputs_checked": check["inputs"],
            "inputs": "the whole domain" if check["exhaustive"] else
                      "sampled (verify.samples, plus each token repeated at every length)",
            "positions_compared":
                check["positions"] - check["none_positions"],
            "none_positions": check["none_positions"], "written": written,
            "reason": check["reason"], "diagnosis": done["diagnosis"],
            "source": done["entry"]["source"]}
