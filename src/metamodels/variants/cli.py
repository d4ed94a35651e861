"""Verbs of the variant zoos: make-variant, variants-report, figure-variants."""

from __future__ import annotations

from metamodels.core.cli import add_params, params_of


def cmd_make_variant(args) -> None:
    from metamodels.variants.stage import run_variant
    run_variant(params_of(args), args.variant, args.split, args.shard, args.input, args.out,
                args.timing)


def cmd_variants_report(args) -> None:
    from metamodels.variants.stage import run_report
    run_report(args.names, args.shards, args.metrics, args.histories, args.csv, args.out)


def cmd_figure_variants(args) -> None:
    from metamodels.variants.figure import figure_variants
    figure_variants(args.metrics, args.out)


def register(sub) -> None:
    """Declare the variant zoos' verbs (rules/variants.smk)."""
    p = sub.add_parser("make-variant",
                       help="variants 1: a de-sparsified or distilled copy of a dataset shard")
    add_params(p)
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
