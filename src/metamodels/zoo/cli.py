"""Verbs of the program zoo: vocab, sample, compile-shard, split, show, compile."""

from __future__ import annotations

import json
import sys

from metamodels.core.cli import add_params, file_errors, params_of


def cmd_vocab(args) -> None:
    from metamodels.core import shards
    from metamodels.rasp.tokenizer import Vocab
    vocab = Vocab.from_params(params_of(args))
    shards.write_bytes(args.out, vocab.dumps().encode())
    print(f"[vocab] {len(vocab)} tokens -> {args.out}", file=sys.stderr)


def cmd_sample(args) -> None:
    from metamodels.zoo.stage import run_sample
    run_sample(params_of(args), args.shard, args.out)


def cmd_compile_shard(args) -> None:
    from metamodels.zoo.stage import run_compile
    run_compile(params_of(args), args.programs, args.vocab, args.out, args.timing, args.workers)


def cmd_split(args) -> None:
    from metamodels.zoo.dataset import run_split
    run_split(params_of(args), args.inputs, args.vocab, args.outdir)


def cmd_show(args) -> None:
    from metamodels.core import shards
    from metamodels.rasp.tokenizer import Vocab
    from metamodels.zoo.stage import row
    arrays = shards.load_npz(args.shard)
    n = len(arrays["length"])
    if not 0 <= args.index < n:
        raise ValueError(f"{args.shard}: --index {args.index} is out of range (0..{n - 1})")
    r = row(arrays, args.index)
    print(r["source"])
    if args.vocab:
        print(" ".join(Vocab.load(args.vocab).strs(r["tokens"].tolist())))
    meta = {k: v for k, v in r["meta"].items() if k != "model"}
    print(json.dumps(meta, indent=1))


def cmd_compile(args) -> None:
    from metamodels.zoo.stage import compile_file
    from metamodels.zoo.user_program import format_diagnosis
    info = compile_file(params_of(args), args.program, args.out, args.keep_unverified)
    print(info.pop("source"), end="")
    diagnosis = info.pop("diagnosis")
    print(f"[compile] {json.dumps(info)}" + (f" -> {args.out}" if info["written"] else ""),
          file=sys.stderr)
    if not info["verified"]:
        kept = (f"written to {args.out}, marked unverified (--keep-unverified)"
                if info["written"] else "no model file written (--keep-unverified writes one, "
                "marked unverified)")
        sys.exit(f"error: {args.program}: NOT VERIFIED: {info['reason']}; {kept}"
                 + (f"\n{format_diagnosis(diagnosis)}" if diagnosis else ""))


def register(sub) -> None:
    """Declare the program zoo's verbs (rules/zoo.smk) and ``compile``, ``show``."""
    p = sub.add_parser("vocab", help="write the program token vocabulary (JSON)")
    add_params(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("sample", help="stage 1: sample one shard of RASP programs")
    add_params(p)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("compile-shard", help="stage 2: compile and verify one shard")
    add_params(p)
    p.add_argument("--programs", required=True, help="sampled shard (JSON)")
    p.add_argument("--vocab", required=True, help="vocab.json")
    p.add_argument("--out", required=True)
    p.add_argument("--timing", help="where to write per-program timings (JSON)")
    p.add_argument("--workers", type=int, default=1, help="compile worker processes")
    p.set_defaults(func=cmd_compile_shard)

    p = sub.add_parser("split", help="stage 3: deduplicate and split compiled shards")
    add_params(p)
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--vocab", required=True)
    p.add_argument("--outdir", required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("compile", help="compile a Python file defining a RASP `program`")
    p.add_argument("program", help="Python file that assigns a tracr RASP SOp to `program`")
    p.add_argument("--out", required=True, help="output weights file (.npz, zoo format)")
    p.add_argument("--params", default="params.yaml", help="vocab/max_seq_len/lambda tables")
    p.add_argument("--keep-unverified", action="store_true",
                   help="write the model file even when it is not verified (marked so)")
    p.set_defaults(func=cmd_compile, config=None, expected=file_errors)

    p = sub.add_parser("show", help="print one program of a shard (source, tokens, metadata)")
    p.add_argument("shard")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--vocab", help="vocab.json, to print tokens")
    p.set_defaults(func=cmd_show, expected=file_errors)
