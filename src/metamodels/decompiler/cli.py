"""Verbs of the decompiler: tokenize, train-decompiler, evaluate-decompiler, figure3,
decompiler-scaling-figure, decompile."""

from __future__ import annotations

from metamodels.core.cli import add_params, file_errors, params_of


def cmd_tokenize(args) -> None:
    from metamodels.decompiler.tokens import tokenize_shard
    d = params_of(args)["decompiler"]
    tokenize_shard(d["input"], d["max_program_tokens"], args.input, args.out)


def cmd_train_decompiler(args) -> None:
    from metamodels.decompiler.stage import run_train
    run_train(params_of(args), args.train, args.val, args.vocab, args.model, args.history,
              args.curve, args.workdir, args.timing)


def cmd_evaluate_decompiler(args) -> None:
    from metamodels.decompiler.stage import run_evaluate
    run_evaluate(params_of(args), args.model, args.test, args.metrics, args.predictions,
                 args.reference, args.timing, models=args.models)


def cmd_figure3(args) -> None:
    from metamodels.decompiler.figure import figure3
    figure3(args.history, args.metrics, args.out)


def cmd_decompiler_scaling_figure(args) -> None:
    from metamodels.decompiler.scaling import figure
    figure(args.records, args.out)


def cmd_decompile(args) -> None:
    from metamodels.decompiler.stage import decompile_file
    params = params_of(args)
    search = dict(params["decompiler"]["search"])
    if args.candidates is not None:
        search["candidates"] = args.candidates
    if args.seconds is not None:
        search["seconds"] = args.seconds
    params = dict(params, decompiler=dict(params["decompiler"], search=search))
    print(decompile_file(args.model, args.weights, params, args.index, args.force), end="")


def register(sub) -> None:
    """Declare the decompiler's verbs (rules/decompiler.smk, rules/variants.smk) and ``decompile``."""
    p = sub.add_parser("tokenize", help="the decompiler's input tokens of one dataset or "
                       "variant shard, as a token shard (read on demand by training)")
    add_params(p)
    p.add_argument("--input", required=True, help="zoo-format shard (data/dataset/..., "
                   "data/variants/...)")
    p.add_argument("--out", required=True, help="output token shard (.npz, uncompressed)")
    p.set_defaults(func=cmd_tokenize, expected=file_errors)

    p = sub.add_parser("train-decompiler", help="stage 4: train the decompiler meta-model")
    add_params(p)
    p.add_argument("--train", nargs="+", required=True,
                   help="train split: token shards (read on demand) or zoo-format shards "
                        "(tokenized in memory)")
    p.add_argument("--val", nargs="+", required=True, help="validation split shards (same kinds)")
    p.add_argument("--vocab", required=True)
    p.add_argument("--model", required=True, help="output model file (.npz)")
    p.add_argument("--history", required=True, help="output learning curve and run facts (JSON)")
    p.add_argument("--curve", required=True, help="output learning curve (CSV, for dvc plots)")
    p.add_argument("--workdir", required=True, help="checkpoints (resumed when present)")
    p.add_argument("--timing", help="where to write timing (JSON)")
    p.set_defaults(func=cmd_train_decompiler)

    p = sub.add_parser("evaluate-decompiler", help="stage 5: score the decompiler on test")
    add_params(p)
    p.add_argument("--model", required=True)
    p.add_argument("--test", nargs="+", required=True,
                   help="test split: token shards or zoo-format shards")
    p.add_argument("--models", nargs="+",
                   help="the zoo-format shards the test programs' models come from (the "
                        "verified search runs each model's forward pass); default: those "
                        "the test shards name")
    p.add_argument("--metrics", required=True, help="output metrics (JSON)")
    p.add_argument("--predictions", required=True, help="output per-program predictions (JSON)")
    p.add_argument("--reference", required=True, help="output table of tracr lib programs (CSV)")
    p.add_argument("--timing", help="where to write decoding times (JSON)")
    p.set_defaults(func=cmd_evaluate_decompiler)

    p = sub.add_parser("figure3", help="draw figure 3 (accuracy over training and by length)")
    p.add_argument("--history", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_figure3)

    p = sub.add_parser("decompiler-scaling-figure", help="draw the decompiler's scaling "
                       "(benchmarks/decompiler_scaling.py records: data x model size, equal "
                       "steps and equal CPU time)")
    p.add_argument("--records", required=True, help="benchmark records (.jsonl)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_decompiler_scaling_figure)

    p = sub.add_parser("decompile", help="print the RASP program recovered from a weights "
                       "file, and whether it is verified against the model's own outputs")
    p.add_argument("weights", help="zoo-format weights file (.npz), e.g. from `compile`")
    p.add_argument("--model", default="models/decompiler.npz", help="trained decompiler")
    p.add_argument("--index", type=int, default=0, help="row of the weights file")
    add_params(p)
    p.add_argument("--candidates", type=int, help="programs the verified search checks "
                   "against the model, best first (default: decompiler.search.candidates)")
    p.add_argument("--seconds", type=float, help="time limit of the search per model "
                   "(default: decompiler.search.seconds)")
    p.add_argument("--force", action="store_true",
                   help="decompile a model from another input domain (vocab, max_seq_len) than "
                        "the decompiler's training domain, with a warning, instead of refusing")
    p.set_defaults(func=cmd_decompile, expected=file_errors)
