"""Command line: ``python -m metamodels VERB ...`` — one verb per pipeline stage.

Pipeline verbs take their parameters either from a params file (``--params
params.yaml``, the whole file) or as JSON sections (``--config '{...}'``, what
the Snakemake rules pass, so each rule's rerun trigger sees exactly the
parameters it uses).
"""

from __future__ import annotations

import argparse
import json
import sys

from metamodels import config as C


def _params(args) -> dict:
    if args.config is not None:
        params = json.loads(args.config)
        C.validate_partial(params, "--config")
        return params
    return C.load(args.params)


def _add_params(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    g.add_argument("--config", help="JSON object with the params sections this verb needs")


def cmd_check_params(args) -> None:
    C.load(args.params)
    print(f"{args.params}: valid")


def cmd_vocab(args) -> None:
    from metamodels import shards
    from metamodels.tokenizer import Vocab
    vocab = Vocab.from_params(_params(args))
    shards.write_bytes(args.out, vocab.dumps().encode())
    print(f"[vocab] {len(vocab)} tokens -> {args.out}", file=sys.stderr)


def cmd_sample(args) -> None:
    from metamodels.zoo import run_sample
    run_sample(_params(args), args.shard, args.out)


def cmd_compile_shard(args) -> None:
    from metamodels.zoo import run_compile
    run_compile(_params(args), args.programs, args.vocab, args.out, args.timing, args.workers)


def cmd_split(args) -> None:
    from metamodels.dataset import run_split
    run_split(_params(args), args.inputs, args.vocab, args.outdir)


def cmd_show(args) -> None:
    from metamodels import shards
    from metamodels.tokenizer import Vocab
    from metamodels.zoo import row
    arrays = shards.load_npz(args.shard)
    n = len(arrays["length"])
    if not 0 <= args.index < n:
        sys.exit(f"{args.shard}: index {args.index} out of range (0..{n - 1})")
    r = row(arrays, args.index)
    print(r["source"])
    if args.vocab:
        print(" ".join(Vocab.load(args.vocab).strs(r["tokens"].tolist())))
    meta = {k: v for k, v in r["meta"].items() if k != "model"}
    print(json.dumps(meta, indent=1))


def cmd_dvc_yaml(args) -> None:
    from metamodels import versioning
    extra = ["--configfile", args.configfile] if args.configfile else []
    versioning.write(args.out, ".", extra)
    print(f"[dvc-yaml] wrote {args.out}", file=sys.stderr)


def cmd_dvc_stages(args) -> None:
    from metamodels import versioning
    found = versioning.stages(".", args.which)
    items = sorted({p for outs in found.values() for p in outs}) if args.outputs else sorted(found)
    print("\n".join(items))


def cmd_train_decompiler(args) -> None:
    from metamodels.decompiler import run_train
    run_train(_params(args), args.train, args.val, args.vocab, args.model, args.history,
              args.curve, args.workdir, args.timing)


def cmd_evaluate_decompiler(args) -> None:
    from metamodels.decompiler import run_evaluate
    run_evaluate(_params(args), args.model, args.test, args.metrics, args.predictions,
                 args.reference, args.timing)


def cmd_figure3(args) -> None:
    from metamodels.figures import figure3
    figure3(args.history, args.metrics, args.out)


def cmd_decompile(args) -> None:
    from metamodels.decompiler import decompile_file
    print(decompile_file(args.model, args.weights, args.index, args.beam), end="")


def cmd_compile(args) -> None:
    from metamodels.decompiler import compile_file
    info = compile_file(_params(args), args.program, args.out)
    print(info.pop("source"), end="")
    print(f"[compile] {json.dumps(info)} -> {args.out}", file=sys.stderr)
    if not info["verified"]:
        sys.exit(f"{args.program}: the compiled model disagrees with RASP on some inputs "
                 "(a known tracr limitation); the file was written but is not a faithful model")


def cmd_cnn_zoo_shard(args) -> None:
    from metamodels.backdoor import run_zoo_shard
    run_zoo_shard(_params(args), args.shard, args.out)


def cmd_detect_backdoors(args) -> None:
    from metamodels.backdoor import run_detect
    run_detect(_params(args), args.zoo, args.setting, args.scores, args.history)


def cmd_backdoor_report(args) -> None:
    from metamodels.backdoor import run_report
    run_report(_params(args), args.scores, args.zoo, args.metrics, args.roc)


def cmd_figure2(args) -> None:
    from metamodels.figures import figure2
    figure2(args.metrics, args.roc, args.out)


def cmd_modadd_train(args) -> None:
    from metamodels.modadd import run_train
    run_train(_params(args), args.task, args.model, args.history)


def cmd_modadd_analyse(args) -> None:
    from metamodels.modadd import run_analyse
    run_analyse(_params(args), args.models, args.patching, args.attribution, args.metrics)


def cmd_figure_backdoor_heads(args) -> None:
    from metamodels.figures import figure_backdoor_heads
    figure_backdoor_heads(args.histories, args.attribution, args.patching, args.out)


def cmd_make_variant(args) -> None:
    from metamodels.variants import run_variant
    run_variant(_params(args), args.variant, args.split, args.shard, args.input, args.out,
                args.timing)


def cmd_variants_report(args) -> None:
    from metamodels.variants import run_report
    run_report(args.names, args.shards, args.metrics, args.histories, args.csv, args.out)


def cmd_figure_variants(args) -> None:
    from metamodels.figures import figure_variants
    figure_variants(args.metrics, args.out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metamodels", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("check-params", help="validate a params file against the schema")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_check_params)

    p = sub.add_parser("vocab", help="write the program token vocabulary (JSON)")
    _add_params(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("sample", help="stage 1: sample one shard of RASP programs")
    _add_params(p)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("compile-shard", help="stage 2: compile and verify one shard")
    _add_params(p)
    p.add_argument("--programs", required=True, help="sampled shard (JSON)")
    p.add_argument("--vocab", required=True, help="vocab.json")
    p.add_argument("--out", required=True)
    p.add_argument("--timing", help="where to write per-program timings (JSON)")
    p.add_argument("--workers", type=int, default=1, help="compile worker processes")
    p.set_defaults(func=cmd_compile_shard)

    p = sub.add_parser("split", help="stage 3: deduplicate and split compiled shards")
    _add_params(p)
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--vocab", required=True)
    p.add_argument("--outdir", required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train-decompiler", help="stage 4: train the decompiler meta-model")
    _add_params(p)
    p.add_argument("--train", nargs="+", required=True, help="train split shards")
    p.add_argument("--val", nargs="+", required=True, help="validation split shards")
    p.add_argument("--vocab", required=True)
    p.add_argument("--model", required=True, help="output model file (.npz)")
    p.add_argument("--history", required=True, help="output learning curve and run facts (JSON)")
    p.add_argument("--curve", required=True, help="output learning curve (CSV, for dvc plots)")
    p.add_argument("--workdir", required=True, help="checkpoints (resumed when present)")
    p.add_argument("--timing", help="where to write timing (JSON)")
    p.set_defaults(func=cmd_train_decompiler)

    p = sub.add_parser("evaluate-decompiler", help="stage 5: score the decompiler on test")
    _add_params(p)
    p.add_argument("--model", required=True)
    p.add_argument("--test", nargs="+", required=True, help="test split shards")
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

    p = sub.add_parser("cnn-zoo-shard", help="backdoors 1: train one shard of the CNN zoo")
    _add_params(p)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", required=True, help="zoo shard (.npz)")
    p.set_defaults(func=cmd_cnn_zoo_shard)

    p = sub.add_parser("detect-backdoors",
                       help="backdoors 2: train the detector and baseline for one setting")
    _add_params(p)
    p.add_argument("--zoo", nargs="+", required=True, help="CNN zoo shards")
    p.add_argument("--setting", required=True, help="iid | iid_noaug | ood_<attack>")
    p.add_argument("--scores", required=True, help="output test scores (JSON)")
    p.add_argument("--history", required=True, help="output training history (JSON)")
    p.set_defaults(func=cmd_detect_backdoors)

    p = sub.add_parser("backdoor-report", help="backdoors 3: AUC per trigger, ROC table")
    _add_params(p)
    p.add_argument("--scores", nargs="+", required=True, help="settings' score files")
    p.add_argument("--zoo", nargs="+", required=True, help="CNN zoo shards")
    p.add_argument("--metrics", required=True, help="output metrics (JSON)")
    p.add_argument("--roc", required=True, help="output ROC curves (CSV)")
    p.set_defaults(func=cmd_backdoor_report)

    p = sub.add_parser("figure2", help="draw figure 2 (ROC per trigger, AUC bars)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--roc", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_figure2)

    p = sub.add_parser("modadd-train", help="modadd 1: train every run of one task")
    _add_params(p)
    p.add_argument("--task", required=True, help="clean | mod<P1> (a key of modadd.runs)")
    p.add_argument("--model", required=True, help="output runs' parameters (.npz)")
    p.add_argument("--history", required=True, help="output per-epoch history (CSV)")
    p.set_defaults(func=cmd_modadd_train)

    p = sub.add_parser("modadd-analyse", help="modadd 2: head attribution and patching")
    _add_params(p)
    p.add_argument("--models", nargs="+", required=True, help="tasks' model files")
    p.add_argument("--patching", required=True, help="output patching table (CSV)")
    p.add_argument("--attribution", required=True, help="output head attribution (JSON)")
    p.add_argument("--metrics", required=True, help="output metrics (JSON)")
    p.set_defaults(func=cmd_modadd_analyse)

    p = sub.add_parser("figure-backdoor-heads",
                       help="draw results/backdoor_heads.pdf (curves, attribution, patching)")
    p.add_argument("--histories", nargs="+", required=True)
    p.add_argument("--attribution", required=True)
    p.add_argument("--patching", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_figure_backdoor_heads)

    p = sub.add_parser("make-variant",
                       help="variants 1: a de-sparsified or distilled copy of a dataset shard")
    _add_params(p)
    p.add_argument("--variant", required=True,
                   help="standard | orthogonal | pca | compressed | natural")
    p.add_argument("--split", required=True, help="train | val | test")
    p.add_argument("--shard", type=int, required=True, help="dataset shard number")
    p.add_argument("--input", required=True, help="data/dataset/{split}/shard_JJJ.npz")
    p.add_argument("--out", required=True, help="output shard (zoo format)")
    p.add_argument("--timing", help="where to write CPU and wall seconds (JSON)")
    p.set_defaults(func=cmd_make_variant)

    p = sub.add_parser("variants-report",
                       help="variants 2: results/variants.csv from the zoos and decompilers")
    p.add_argument("--names", nargs="+", required=True, help="variants, in table order")
    p.add_argument("--shards", nargs="+", required=True, help="every variant shard")
    p.add_argument("--metrics", nargs="+", required=True, help="test metrics, one per name")
    p.add_argument("--histories", nargs="+", required=True, help="train histories, one per name")
    p.add_argument("--csv", required=True, help="output table (CSV)")
    p.add_argument("--out", required=True, help="output metrics (JSON)")
    p.set_defaults(func=cmd_variants_report)

    p = sub.add_parser("figure-variants", help="draw results/figure_variants.pdf")
    p.add_argument("--metrics", required=True, help="results/metrics/variants.json")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_figure_variants)

    p = sub.add_parser("decompile", help="print the RASP program recovered from a weights file")
    p.add_argument("weights", help="zoo-format weights file (.npz), e.g. from `compile`")
    p.add_argument("--model", default="models/decompiler.npz", help="trained decompiler")
    p.add_argument("--index", type=int, default=0, help="row of the weights file")
    p.add_argument("--beam", type=int, default=1, help="beam width")
    p.set_defaults(func=cmd_decompile)

    p = sub.add_parser("compile", help="compile a Python file defining a RASP `program`")
    p.add_argument("program", help="Python file that assigns a tracr RASP SOp to `program`")
    p.add_argument("--out", required=True, help="output weights file (.npz, zoo format)")
    p.add_argument("--params", default="params.yaml", help="vocab/max_seq_len/lambda tables")
    p.set_defaults(func=cmd_compile, config=None)

    p = sub.add_parser("show", help="print one program of a shard (source, tokens, metadata)")
    p.add_argument("shard")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--vocab", help="vocab.json, to print tokens")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--configfile", help="params file the DAG is built from (default params.yaml)")
    p.set_defaults(func=cmd_dvc_yaml)

    p = sub.add_parser("dvc-stages", help="list dvc.yaml stages that are built or locked")
    p.add_argument("which", choices=["built", "locked"])
    p.add_argument("--outputs", action="store_true", help="print their outputs instead")
    p.set_defaults(func=cmd_dvc_stages)

    args = ap.parse_args(argv)
    try:
        args.func(args)
    except C.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from metamodels.images import DatasetError
        if not isinstance(e, DatasetError):
            raise
        print(f"error: {e}", file=sys.stderr)  # missing image data: where to put it, which param
        return 2
    except (ValueError, FileNotFoundError) as e:
        if args.verb not in ("decompile", "compile"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
