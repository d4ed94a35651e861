"""Verbs of the hyperparameter-prediction experiment: hparam-zoo-shard, predict-hparam,
hparam-report, figure4."""

from __future__ import annotations

from metamodels.backdoor.cli import dataset_errors
from metamodels.core.cli import add_params, params_of
from metamodels.hparams import HPARAMS


def cmd_hparam_zoo_shard(args) -> None:
    from metamodels.hparams.stage import run_zoo_shard
    run_zoo_shard(params_of(args), args.shard, args.out)


def cmd_predict_hparam(args) -> None:
    from metamodels.hparams.stage import run_predict
    run_predict(params_of(args), args.zoo, args.target, args.scores, args.history)


def cmd_hparam_report(args) -> None:
    from metamodels.hparams.stage import run_report
    run_report(params_of(args), args.scores, args.zoo, args.metrics)


def cmd_figure4(args) -> None:
    from metamodels.hparams.figure import figure4
    figure4(args.metrics, args.out)


def register(sub) -> None:
    """Declare the hyperparameter experiment's verbs (rules/hparams.smk)."""
    p = sub.add_parser("hparam-zoo-shard",
                       help="hparams 1: train one shard of the hyperparameter zoo")
    add_params(p)
    p.add_argument("--shard", type=int, required=True,
                   help="shard index, 0 .. hparam_zoo.shards - 1 (seeds its models)")
    p.add_argument("--out", required=True, help="zoo shard (.npz)")
    p.set_defaults(func=cmd_hparam_zoo_shard, expected=dataset_errors)

    p = sub.add_parser("predict-hparam",
                       help="hparams 2: meta-model, 1-D CNN and majority class for one target")
    add_params(p)
    p.add_argument("--zoo", nargs="+", required=True, help="hyperparameter-zoo shards")
    p.add_argument("--target", required=True, choices=HPARAMS,
                   help="the hyperparameter to predict (one of hparams.targets)")
    p.add_argument("--scores", required=True, help="output test predictions (JSON)")
    p.add_argument("--history", required=True, help="output training histories (JSON)")
    p.set_defaults(func=cmd_predict_hparam)

    p = sub.add_parser("hparam-report", help="hparams 3: accuracy per target and method")
    add_params(p)
    p.add_argument("--scores", nargs="+", required=True, help="targets' prediction files")
    p.add_argument("--zoo", nargs="+", required=True, help="hyperparameter-zoo shards")
    p.add_argument("--metrics", required=True, help="output metrics (JSON)")
    p.set_defaults(func=cmd_hparam_report)

    p = sub.add_parser("figure4", help="draw figure 4 (accuracy per hyperparameter)")
    p.add_argument("--metrics", required=True, help="results/metrics/hparams.json")
    p.add_argument("--out", required=True, help="output PDF")
    p.set_defaults(func=cmd_figure4)
