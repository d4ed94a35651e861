"""How often are a test program's compiled weights also another canonical program's?

    .venv/bin/python benchmarks/label_identifiability.py --programs 100

The weights of a categorical Map carry only the pattern of its output values (the values
live in the model's output encoder), so e.g. ``x+1`` and ``x+2`` can compile to identical
weights, and no meta-model reading weights alone can tell them apart. For each of the first
``--programs`` test programs (data/dataset/test/, as the default pipeline splits them) this
substitutes every lambda / predicate, one op at a time, with every other entry of its table
(Map: every Map function; SequenceMap, LinearSequenceMap, Aggregate / SelectorWidth
predicates: theirs), canonicalises the result (skipping substitutes whose canonical form is
the label itself or that do not stay valid), compiles it, and compares its weights and
layout bit for bit with the stored model's (what the meta-model reads; the encoders'
value tables may differ).

Prints one JSON line (appended to benchmarks/results/label_identifiability.cpu.jsonl):
``ambiguous``: the share of programs with at least one other canonical program of identical
weights, so ``1 - ambiguous`` bounds exact accuracy from weights alone (the "ceiling
before"); ``ambiguous_same_outputs``: the share where some such program also has the same
decoded outputs on the whole domain, so that even the output encoder's value table cannot
separate them (``1 - ambiguous_same_outputs`` is the ceiling once the value tables are used,
as the verified search does); by program length and by the substituted op's kind.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def alternatives(op, tables) -> list[str]:
    if op.kind == "Map":
        return [m.token for m in tables.maps]
    if op.kind == "SequenceMap":
        return [s.token for s in tables.sequence_maps]
    if op.kind == "LinearSequenceMap":
        return [s.token for s in tables.linear]
    return list(tables.predicates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=100)
    ap.add_argument("--dataset", default=str(ROOT / "data/dataset/test"))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/"
                                         "label_identifiability.cpu.jsonl"))
    a = ap.parse_args()
    from metamodels.core import config as C
    from metamodels.core import shards as S
    from metamodels.decompiler.search import Checker, verification_inputs, weights_identical
    from metamodels.rasp import lambdas as L
    from metamodels.rasp.program import Program, canonicalize, to_rasp
    from metamodels.rasp.tokenizer import encode
    from metamodels.zoo.compiler import compile_program
    from metamodels.zoo.stage import model_of, row

    params = C.load(a.params)
    z = params["zoo"]
    tables = L.Tables(params["sampler"]["map_constants"])
    domain = {"vocab": z["vocab"], "max_seq_len": z["max_seq_len"]}
    inputs, exhaustive = verification_inputs(domain, params)
    paths = sorted(glob.glob(f"{a.dataset}/shard_*.npz"))
    if not paths:
        raise SystemExit(f"{a.dataset}: no shard_*.npz; run `snakemake data/dataset/summary.json`")
    t0 = time.perf_counter()
    n = amb = amb_out = compiled = 0
    by_len: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    by_kind: collections.Counter = collections.Counter()
    examples = []
    for path in paths:
        arrays = S.load_npz(path)
        for i in range(int(arrays["length"].shape[0])):
            if n >= a.programs:
                break
            r = row(arrays, i)
            program = Program.from_json(r["program"])
            label = encode(program)
            model = model_of(arrays, i)
            checker = Checker(model, inputs, params["verify"], exhaustive)
            seen = {tuple(label)}
            found = found_out = False
            for k, op in enumerate(program.ops):
                for fn in alternatives(op, tables):
                    if fn == op.fn:
                        continue
                    ops = list(program.ops)
                    ops[k] = type(op)(op.name, op.kind, fn, op.args, op.encoding)
                    try:
                        canon, _ = canonicalize(Program(tuple(ops)), tables, z["vocab"],
                                                z["max_seq_len"])
                        tokens = tuple(encode(canon))
                        if tokens in seen or len(canon.ops) != len(program.ops):
                            continue
                        seen.add(tokens)
                        expr = to_rasp(canon, tables)
                        other = compile_program(expr, set(z["vocab"]), z["max_seq_len"],
                                                mlp_exactness=params["compile"]["mlp_exactness"])
                    except Exception:  # noqa: BLE001 - not a valid or compilable substitute
                        continue
                    compiled += 1
                    if weights_identical(other, model):
                        found = True
                        by_kind[op.kind] += 1
                        same_out = checker.check(expr)["passed"]
                        found_out |= same_out
                        if len(examples) < 5:
                            examples.append({"label": " ".join(label),
                                             "identical_weights": " ".join(tokens),
                                             "same_outputs": same_out})
            n += 1
            amb += found
            amb_out += found_out
            e = by_len[len(program.ops)]
            e[0] += 1
            e[1] += found
            e[2] += found_out
            if n % 20 == 0:
                print(f"[identifiability] {n} programs, {amb} ambiguous, {compiled} compiled, "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rec = {"benchmark": "label_identifiability", "programs": n, "dataset": a.dataset,
           "substitutes_compiled": compiled,
           "ambiguous": round(amb / max(n, 1), 4),
           "ambiguous_same_outputs": round(amb_out / max(n, 1), 4),
           "ceiling_weights_only": round(1 - amb / max(n, 1), 4),
           "ceiling_with_value_tables": round(1 - amb_out / max(n, 1), 4),
           "by_length": {str(k): {"programs": v[0], "ambiguous": v[1],
                                  "ambiguous_same_outputs": v[2]}
                         for k, v in sorted(by_len.items())},
           "identical_weights_by_substituted_kind": dict(by_kind),
           "examples": examples, "seconds": round(time.perf_counter() - t0, 1)}
    line = json.dumps(rec)
    print(line)
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
