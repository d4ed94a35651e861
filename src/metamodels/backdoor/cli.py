"""Verbs of the backdoor experiment: cnn-zoo-shard, detect-backdoors, backdoor-report, figure2."""

from __future__ import annotations

from metamodels.core.cli import add_params, params_of


def cmd_cnn_zoo_shard(args) -> None:
    from metamodels.backdoor.stage import run_zoo_shard
    run_zoo_shard(params_of(args), args.shard, args.out)


def cmd_detect_backdoors(args) -> None:
    from metamodels.backdoor.stage import run_detect
    run_detect(params_of(args), args.zoo, args.setting, args.scores, args.history, args.timing)


def cmd_backdoor_report(args) -> None:
    from metamodels.backdoor.stage import run_report
    run_report(params_of(args), args.scores, args.zoo, args.metrics, args.roc)


def cmd_figure2(args) -> None:
    from metamodels.backdoor.figure import figure2
    figure2(args.metrics, args.roc, args.out)


def dataset_errors() -> tuple[type[Exception], ...]:
    """Missing image data is the user's to fix (where to put it, which param): no traceback."""
    from metamodels.backdoor.images import DatasetError
    return (DatasetError,)


def register(sub) -> None:
    """Declare the backdoor experiment's verbs (rules/backdoor.smk)."""
    p = sub.add_parser("cnn-zoo-shard", help="backdoors 1: train one shard of the CNN zoo")
    add_params(p)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", required=True, help="zoo shard (.npz)")
    p.set_defaults(func=cmd_cnn_zoo_shard, expected=dataset_errors)

    p = sub.add_parser("detect-backdoors",
                       help="backdoors 2: train the detector and baseline for one setting")
    add_params(p)
    p.add_argument("--zoo", nargs="+", required=True, help="CNN zoo shards")
    p.add_argument("--setting", required=True, help="iid | iid_noaug | iid_aug | ood_<attack>")
    p.add_argument("--scores", required=True, help="output test scores (JSON)")
    p.add_argument("--history", required=True, help="output training history (JSON)")
    p.add_argument("--timing", help="where to write training seconds and throughput (JSON)")
    p.set_defaults(func=cmd_detect_backdoors, expected=dataset_errors)

    p = sub.add_parser("backdoor-report", help="backdoors 3: AUC per trigger, ROC table")
    add_params(p)
    p.add_argument("--scores", nargs="+", required=True, help="settings' score files")
    p.add_argument("--zoo", nargs="+", required=True, help="CNN zoo shards")
    p.add_argument("--metrics", required=True, help="output metrics (JSON)")
    p.add_argument("--roc", required=True, help="output ROC curves (CSV)")
    p.set_defaults(func=cmd_backdoor_report, expected=dataset_errors)

    p = sub.add_parser("figure2", help="draw figure 2 (ROC per trigger, AUC bars)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--roc", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_figure2)
