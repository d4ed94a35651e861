"""Verbs of the modular-addition backdoor: modadd-train, modadd-analyse, figure-backdoor-heads."""

from __future__ import annotations

from metamodels.core.cli import add_params, params_of


def cmd_modadd_train(args) -> None:
    from metamodels.modadd.stage import run_train
    run_train(params_of(args), args.task, args.model, args.history, args.timing)


def cmd_modadd_analyse(args) -> None:
    from metamodels.modadd.stage import run_analyse
    run_analyse(params_of(args), args.models, args.patching, args.attribution, args.metrics)


def cmd_figure_backdoor_heads(args) -> None:
    from metamodels.modadd.figure import figure_backdoor_heads
    figure_backdoor_heads(args.histories, args.attribution, args.patching, args.out)


def register(sub) -> None:
    """Declare the modular-addition experiment's verbs (rules/modadd.smk)."""
    p = sub.add_parser("modadd-train", help="modadd 1: train every run of one task")
    add_params(p)
    p.add_argument("--task", required=True, help="clean | mod<P1> (a key of modadd.runs)")
    p.add_argument("--model", required=True, help="output runs' parameters (.npz)")
    p.add_argument("--history", required=True, help="output per-epoch history (CSV)")
    p.add_argument("--timing", help="where to write training seconds (JSON)")
    p.set_defaults(func=cmd_modadd_train)

    p = sub.add_parser("modadd-analyse", help="modadd 2: head attribution and patching")
    add_params(p)
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
