"""Decompiler scaling (issue 13 §3): the records of ``benchmarks/decompiler_scaling.py``
compared at equal steps and at equal CPU time, and their figure
(``results/decompiler_scaling.pdf``, ``python -m metamodels decompiler-scaling-figure``).

A record is one training run (one JSON line): ``train_programs`` (N), ``model`` (``small`` |
``default``), ``residual_supervision``, its learning ``curve`` (``step``, ``cpu_s``: training
CPU seconds, ``val_token_accuracy``, ``val_exact_accuracy``) and its test metrics
(``test_token_accuracy``, ``test_exact_accuracy``, ``test_verified_accuracy``, ...).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

# The benchmark's smaller decompiler (decompiler.model keys it changes).
SMALL_MODEL = {"d_model": 64, "layers": 2, "decoder_layers": 1, "heads": 4, "mlp": 256}


def run_key(rec: Mapping) -> str:
    """What identifies a run: data size, model, auxiliary weight, value tables, steps."""
    return (f"N={rec['train_programs']} model={rec['model']} "
            f"residual={float(rec['residual_supervision']):g}"
            + (" value_tables" if rec.get("value_tables") else "") + f" steps={rec['steps']}")


def load(path: str) -> list[dict]:
    """The records of a ``.jsonl`` file (the newest record of each :func:`run_key`).

    Raises ValueError naming ``path`` when it holds none."""
    recs: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                recs[run_key(r)] = r
    if not recs:
        raise ValueError(f"{path}: no records; run benchmarks/decompiler_scaling.py first")
    return list(recs.values())


def at_cpu(curve: Sequence[Mapping], cpu_s: float, key: str = "val_token_accuracy"):
    """``key`` at the last evaluation within ``cpu_s`` training CPU seconds (None when the
    run's first evaluation came later)."""
    within = [e for e in curve if e["cpu_s"] <= cpu_s * 1.02]
    return within[-1][key] if within else None


def summary(records: Sequence[Mapping]) -> list[dict]:
    """One row per data size: each model's validation token accuracy at equal steps (the
    runs' ends) and at equal CPU time (the CPU seconds of the cheapest run at that size), and
    the test metrics at the end. Rows sorted by size."""
    rows = []
    for n in sorted({r["train_programs"] for r in records}):
        runs = [r for r in records if r["train_programs"] == n]
        budget = min(r["train_cpu_s"] for r in runs)
        row = {"train_programs": n, "equal_cpu_s": budget}
        for r in runs:
            name = variant(r)
            row[name] = {"val_token_accuracy_equal_steps": r["curve"][-1]["val_token_accuracy"],
                         "val_token_accuracy_equal_cpu": at_cpu(r["curve"], budget),
                         **{k: r[k] for k in ("test_token_accuracy", "test_exact_accuracy",
                                              "test_verified_accuracy", "train_cpu_s",
                                              "parameters")}}
        rows.append(row)
    return rows


def variant(r: Mapping) -> str:
    """``small``, ``default``, ``default+residual1``, ``default+value_tables``, ..."""
    return (r["model"] + (f"+residual{r['residual_supervision']:g}"
                          if r["residual_supervision"] else "")
            + ("+value_tables" if r.get("value_tables") else ""))


def _label(r: Mapping) -> str:
    s = f"{r['model']} ({r['parameters'] / 1e6:.2f}M)"
    return (s + (f", residual sup. {r['residual_supervision']:g}"
                 if r["residual_supervision"] else "")
            + (", value tables" if r.get("value_tables") else ""))


def _style(r: Mapping) -> str:
    if r.get("value_tables"):
        return "-."
    return "--" if r["residual_supervision"] else {"small": ":"}.get(r["model"], "-")


def figure(records_path: str, out: str) -> None:
    """Three panels: validation token accuracy over steps and over training CPU seconds (one
    line per run, colour = data size, style = variant), and the test metrics at the end of each
    run against the training-set size."""
    from metamodels.core.plotting import plt, save_pdf
    recs = sorted(load(records_path), key=lambda r: (variant(r), r["train_programs"]))
    sizes = sorted({r["train_programs"] for r in recs})
    colours = dict(zip(sizes, plt.cm.viridis(np.linspace(0.1, 0.85, len(sizes)))))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2))
    for r in recs:
        cv = r["curve"]
        kw = dict(color=colours[r["train_programs"]], ls=_style(r), marker="o", ms=3,
                  label=f"N={r['train_programs']:,}, {_label(r)}")
        a.plot([e["step"] for e in cv], [e["val_token_accuracy"] for e in cv], **kw)
        b.plot([e["cpu_s"] / 60 for e in cv], [e["val_token_accuracy"] for e in cv], **kw)
    for ax, xl, title in ((a, "training step", "Equal steps"),
                          (b, "training CPU minutes", "Equal CPU time")):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation token accuracy (teacher-forced)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a.legend(fontsize=6.5, loc="lower right")
    groups = sorted({variant(r) for r in recs})
    marks = {"test_exact_accuracy": ("o", "greedy exact"),
             "test_verified_accuracy": ("s", "verified (search)")}
    for g, name in enumerate(groups):
        rs = sorted((r for r in recs if variant(r) == name), key=lambda r: r["train_programs"])
        for key, (mk, what) in marks.items():
            c.plot([r["train_programs"] for r in rs], [r[key] for r in rs],
                   marker=mk, ls=_style(rs[0]), color=f"C{g}", label=f"{what}: {_label(rs[0])}")
    c.set_xscale("log")
    c.set_xticks(sizes, [f"{n:,}" for n in sizes])
    c.minorticks_off()
    c.set_xlabel("distinct training programs")
    c.set_ylabel(f"test accuracy ({recs[0]['test_programs']} programs)")
    c.set_ylim(0, 1.02)
    c.set_title(f"At the end ({recs[0]['steps']} steps of {recs[0]['batch_size']})")
    c.legend(fontsize=6.5, loc="upper left")
    c.grid(alpha=0.3)
    fig.text(0.5, 0.005, f"benchmarks/decompiler_scaling.py, {recs[0].get('device', '')}, "
             f"{recs[0].get('date', '')}; each run from scratch; val "
             f"{recs[0]['val_programs']} programs", ha="center", va="bottom", fontsize=7.5)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_pdf(fig, out)
