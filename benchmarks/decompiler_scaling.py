"""Decompiler scaling, measured: training-set size x model size, at equal steps and at equal
CPU time, and the auxiliary residual supervision at equal data (issue 13 §3).

    .venv/bin/python benchmarks/decompiler_scaling.py --dataset data/dataset \\
        [--vocab data/vocab.json] [--sizes 1000 3000 10000] [--models small default] \\
        [--steps 400] [--residual 1.0 --residual-sizes 3000] [--value-tables-sizes 3000] \\
        [--test-programs 100] \\
        [--work /tmp/decompiler_scaling] [--out benchmarks/results/decompiler_scaling.cpu.jsonl]

``--dataset`` is a pipeline dataset folder (``train/``, ``val/``, ``test/`` zoo-format shards,
from ``snakemake data/dataset/summary.json``; a ``--configfile params/cpu-long.yaml`` run gives
about 14,000 distinct programs). Its shards are tokenized once into ``--work`` (the pipeline's
``tokenize``, with the residual slots). Every run trains the decompiler of params.yaml
(``--params``), changed only as named, from scratch:

* training set: the first N programs of the train split (N in ``--sizes``), so the sets are
  nested; validation: the first ``--val-programs`` of the val split; test: the first
  ``--test-programs`` of the test split, the same for every run;
* model: ``default`` (params.yaml's ``decompiler.model``) or ``small`` (d_model 64, 2 encoder
  and 1 decoder layer, MLP 256);
* ``--steps`` steps of ``decompiler.train.batch_size`` with its schedule (warmup scaled to 10%);
* with ``--residual W``, the runs at ``--residual-sizes`` are repeated with
  ``decompiler.train.residual_supervision: W`` (default model);
* at ``--value-tables-sizes`` the default model is also trained with
  ``decompiler.input.value_tables: true`` (the output encoder's value table as extra tokens;
  tokenized apart).

Each run appends one JSON line: its configuration, its learning curve (every
``--eval-every`` steps: validation token and exact-program accuracy, with the training process's
CPU seconds up to that step, evaluation excluded) and, at the end, on the test programs:
teacher-forced token accuracy, greedy exact (grammar-constrained), functionally equivalent, and
the verified search's accuracy (``decompiler.search.candidates`` candidates checked against each
test program's own model). "Equal steps" compares the runs' ends; "equal CPU time" compares the
learning curves at the same CPU seconds (:func:`metamodels.decompiler.scaling.summary`; drawn
by ``python -m metamodels decompiler-scaling-figure``). Runs already in ``--out`` (same
configuration) are skipped, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import copy
import functools
import glob
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

from metamodels.core import config as C
from metamodels.decompiler import tokens as TK
from metamodels.decompiler.scaling import SMALL_MODEL, run_key
from metamodels.decompiler.stage import TRAIN_KEYS, _domain, _grammar, verified_search
from metamodels.rasp.tokenizer import Vocab


class Head:
    """The first ``n`` programs of a :class:`~metamodels.decompiler.tokens.TokenStore`, with
    its interface (a nested training set, a fixed test set)."""

    def __init__(self, store, n: int):
        self.store, self.n = store, min(int(n), len(store))
        self.n_tokens = store.n_tokens[:self.n]
        self.length = store.length[:self.n]
        self.skipped = store.skipped
        self.program_width = store.program_width

    def __len__(self) -> int:
        return self.n

    @property
    def programs(self):
        return self.store.programs[:self.n]

    @functools.cached_property
    def ids(self):
        return self.store.ids[:self.n]

    def read(self, idx):
        return self.store.read(idx)


def tokenize_all(dataset: str, work: pathlib.Path, dec: dict) -> dict[str, list[str]]:
    out = {}
    folder = "tokens_value_tables" if dec["input"].get("value_tables") else "tokens"
    for split in ("train", "val", "test"):
        paths = []
        for src in sorted(glob.glob(os.path.join(dataset, split, "*.npz"))):
            dst = work / folder / split / os.path.basename(src)
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                TK.tokenize_shard(dec["input"], dec["max_program_tokens"], src, str(dst))
            paths.append(str(dst))
        if not paths:
            sys.exit(f"--dataset {dataset}: no {split}/*.npz shards; build them with "
                     "`snakemake data/dataset/summary.json`")
        out[split] = paths
    return out


class CpuClock:
    """CPU seconds of this process spent training, from the training loop's log lines: the
    time between a step's log line and the next evaluation's line is evaluation, not
    training."""

    def __init__(self):
        self.start = time.process_time()
        self.eval_cpu = 0.0
        self.last_step_cpu = None
        self.at_step: dict[int, float] = {}

    def log(self, line: str) -> None:
        now = time.process_time()
        if line.startswith("[train] step "):
            step = int(line.split()[2].split("/")[0])
            self.last_step_cpu = now
            self.at_step[step] = now - self.start - self.eval_cpu
        elif line.startswith("[train] eval ") and self.last_step_cpu is not None:
            self.eval_cpu += now - self.last_step_cpu
        print(line, file=sys.stderr, flush=True)


def run_one(params: dict, cfg: dict, train, val, test, vocab, work: pathlib.Path) -> dict:
    import jax
    from metamodels.decompiler import search as SE
    from metamodels.decompiler.metrics import Domain, judge
    from metamodels.decompiler.train import Trainer, train_and_evaluate
    workdir = work / "runs"
    shutil.rmtree(workdir, ignore_errors=True)  # from scratch, never resumed
    clock = CpuClock()
    wall0 = time.perf_counter()
    grammar = _grammar(vocab, _domain(params))
    res = train_and_evaluate(cfg, workdir, train, val, vocab, grammar=grammar, log=clock.log)
    train_wall = time.perf_counter() - wall0
    curve = [dict(step=e["step"], cpu_s=round(clock.at_step[e["step"]], 1),
                  val_token_accuracy=round(e["val_token_accuracy"], 4),
                  val_exact_accuracy=round(e["val_exact_accuracy"], 4)) for e in res["history"]]
    trainer = Trainer(cfg, vocab)
    p, edges = res["params"], res["edges"]
    bs = cfg["train"]["eval_batch_size"]
    tf = trainer.teacher_forced(p, test, edges, bs)
    decoded = trainer.decode(p, test, edges, bs, grammar)
    z = params["zoo"]
    domain = Domain(z["vocab"], z["max_seq_len"], vocab.tables)
    verdicts = [judge(vocab.strs(decoded[i].tolist()), vocab.strs(test.programs[i].tolist()),
                      domain) for i in range(len(test))]
    t0 = time.perf_counter()
    found = verified_search(params, trainer, p, dict(cfg, domain=_domain(params)), vocab,
                            edges, test, grammar)
    exact_of = [SE.is_exact(r, vocab.strs(test.programs[i].tolist()))
                for i, r in enumerate(found)]
    searched = SE.summarize(found, exact_of, test.length)
    return {
        "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(p))),
        "curve": curve,
        "train_cpu_s": curve[-1]["cpu_s"], "train_wall_s": round(train_wall, 1),
        "test_token_accuracy": round(tf["token_accuracy"], 4),
        "test_exact_accuracy": round(float(np.mean([v.exact for v in verdicts])), 4),
        "test_functional_equivalence": round(float(np.mean([v.functional for v in verdicts])), 4),
        "test_verified_accuracy": round(searched["verified_accuracy"], 4),
        "verified_exact": round(searched["verified_exact"], 4),
        "search_s": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="data/dataset")
    ap.add_argument("--vocab", default="data/vocab.json")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--configfile", help="a params file merged over --params (as snakemake's "
                    "--configfile), e.g. the one the dataset was built with")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--models", nargs="+", default=["small", "default"],
                    choices=["small", "default"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--residual", type=float, default=None,
                    help="residual_supervision weight of the extra runs (default: none)")
    ap.add_argument("--residual-sizes", type=int, nargs="+", default=[3000])
    ap.add_argument("--value-tables-sizes", type=int, nargs="*", default=[])
    ap.add_argument("--val-programs", type=int, default=200)
    ap.add_argument("--test-programs", type=int, default=100)
    ap.add_argument("--work", default="/tmp/decompiler_scaling")
    ap.add_argument("--out", default="benchmarks/results/decompiler_scaling.cpu.jsonl")
    a = ap.parse_args(argv)
    params = C.load(a.params)
    if a.configfile:
        import yaml
        params = C.merged(params, yaml.safe_load(pathlib.Path(a.configfile).read_text()))
    C.validate(params)
    work = pathlib.Path(a.work)
    base = {k: copy.deepcopy(params["decompiler"][k]) for k in TRAIN_KEYS}
    base["input"]["value_tables"] = False
    vocab = Vocab.load(a.vocab)
    splits = {}

    def splits_of(value_tables: bool):
        """(train, val, test) of the dataset tokenized with or without value tables."""
        if value_tables not in splits:
            dec = copy.deepcopy(base)
            dec["input"]["value_tables"] = value_tables
            paths = tokenize_all(a.dataset, work, dec)
            open_ = functools.partial(TK.TokenStore, input_cfg=dec["input"],
                                      max_program_tokens=dec["max_program_tokens"])
            splits[value_tables] = (open_(paths["train"]), Head(open_(paths["val"]),
                                    a.val_programs), Head(open_(paths["test"]), a.test_programs))
        return splits[value_tables]

    train_all, val, test = splits_of(False)
    print(f"[scaling] {len(train_all)} train programs available; val {len(val)}, test "
          f"{len(test)}", file=sys.stderr)
    runs = [(n, m, 0.0, False) for n in a.sizes for m in a.models]
    if a.residual:
        runs += [(n, "default", a.residual, False) for n in a.residual_sizes]
    runs += [(n, "default", 0.0, True) for n in a.value_tables_sizes]
    done = set()
    if os.path.exists(a.out):
        done = {run_key(json.loads(line)) for line in open(a.out) if line.strip()}
    for n, model, residual, value_tables in runs:
        if n > len(train_all):
            print(f"[scaling] skipping N={n}: only {len(train_all)} train programs",
                  file=sys.stderr)
            continue
        cfg = copy.deepcopy(base)
        cfg["input"]["value_tables"] = value_tables
        if model == "small":
            cfg["model"].update(SMALL_MODEL)
        cfg["train"].update(steps=a.steps, warmup_steps=max(1, a.steps // 10),
                            eval_every=a.eval_every, log_every=a.eval_every,
                            residual_supervision=residual)
        rec = {"benchmark": "decompiler_scaling", "train_programs": n, "model": model,
               "residual_supervision": residual, "value_tables": value_tables,
               "steps": a.steps,
               "batch_size": cfg["train"]["batch_size"], "val_programs": len(val),
               "test_programs": len(test),
               "candidates": params["decompiler"]["search"]["candidates"],
               "d_model": cfg["model"]["d_model"], "layers": cfg["model"]["layers"],
               "decoder_layers": cfg["model"]["decoder_layers"], "dataset": a.dataset,
               "available_train_programs": len(train_all)}
        if run_key(rec) in done:
            print(f"[scaling] already measured: {run_key(rec)}", file=sys.stderr)
            continue
        print(f"[scaling] run {run_key(rec)}", file=sys.stderr, flush=True)
        train_set, val_set, test_set = splits_of(value_tables)
        rec.update(run_one(params, cfg, Head(train_set, n), val_set, test_set, vocab, work))
        import jax
        rec.update(date=time.strftime("%Y-%m-%d"),
                   device=f"{jax.default_backend().upper()} ({os.cpu_count()} cores)")
        line = json.dumps(rec)
        print(line, flush=True)
        with open(a.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
