"""Compile the same sampled programs with stock tracr and with metamodels' fast path.

    .venv/bin/python benchmarks/compile_throughput.py --programs 200

Samples N distinct programs with the default sampler (reporting its acceptance
rate), then compiles all N in one warm process per path (each process first
compiles one extra program that is not timed) and prints one JSON line:
{"programs", "stock_s_per_program", "ours_s_per_program", "speedup",
"bitwise_equal", "sampler_acceptance_rate", ...}. Programs that stock tracr
fails on must fail on our path too; they are counted, not timed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _model_digest(model) -> str:
    h = hashlib.sha256()
    for name, arr in sorted(model.to_arrays().items()):
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    h.update(json.dumps(model.metadata(), sort_keys=True).encode())
    return h.hexdigest()


def _compile_all(path: str, params: dict, programs: list, warmup: list, queue) -> None:
    from metamodels.rasp import lambdas
    from metamodels.rasp.program import Program, to_rasp
    from metamodels.zoo import compiler
    fn = compiler.compile_program_stock if path == "stock" else compiler.compile_program
    tables = lambdas.Tables(params["sampler"]["map_constants"])
    z = params["zoo"]
    kw = dict(mlp_exactness=params["compile"]["mlp_exactness"])

    def one(p):
        expr = to_rasp(Program.from_json(p), tables)
        t0 = time.perf_counter()
        try:
            model = fn(expr, set(z["vocab"]), z["max_seq_len"], **kw)
        except Exception as e:  # noqa: BLE001 - recorded, compared across paths
            return time.perf_counter() - t0, f"error: {type(e).__name__}"
        return time.perf_counter() - t0, _model_digest(model)

    one(warmup)
    results = [one(p) for p in programs]
    queue.put(results)


def _in_process(path, params, programs, warmup):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_compile_all, args=(path, params, programs, warmup, q))
    proc.start()
    results = q.get()
    proc.join()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()

    from metamodels.core import config
    from metamodels.rasp.sampler import SamplerConfig, sample_shard
    params = config.load(args.params)
    cfg = SamplerConfig.from_params(params)
    t0 = time.perf_counter()
    sampled, stats = sample_shard(cfg, args.seed, 0, args.programs + 1)
    sample_s = time.perf_counter() - t0
    programs = [s.program.to_json() for s in sampled]
    warmup, programs = programs[0], programs[1:]

    ours = _in_process("ours", params, programs, warmup)
    stock = _in_process("stock", params, programs, warmup)

    ok = [i for i, (s, o) in enumerate(zip(stock, ours)) if not s[1].startswith("error")]
    stock_s = sum(stock[i][0] for i in ok) / max(1, len(ok))
    ours_s = sum(ours[i][0] for i in ok) / max(1, len(ok))
    equal = all(s[1] == o[1] for s, o in zip(stock, ours))
    print(json.dumps({
        "programs": len(programs),
        "stock_s_per_program": round(stock_s, 5),
        "ours_s_per_program": round(ours_s, 5),
        "speedup": round(stock_s / ours_s, 1) if ours_s else None,
        "bitwise_equal": equal,
        "stock_failures": len(programs) - len(ok),
        "sampler_acceptance_rate": round(stats["acceptance_rate"], 4),
        "sampler_rejected": stats["rejected"],
        "sampler_programs_per_s": round((args.programs + 1) / sample_s, 2),
    }))
    sys.exit(0 if equal else 1)


if __name__ == "__main__":
    main()
