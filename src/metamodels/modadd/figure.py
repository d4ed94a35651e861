"""Seed 002 Figs. 2-3 and Table 2, drawn from the modadd histories, attribution and patching table."""

from __future__ import annotations

from metamodels.core import shards as S
from metamodels.core.plotting import plt, save_pdf


def _read_histories(paths) -> dict:
    """modadd history CSVs -> {task: {run: {column: [values]}}} (blank cells -> NaN)."""
    import csv
    out: dict = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                run = out.setdefault(r["task"], {}).setdefault(int(r["run"]), {})
                for k, v in r.items():
                    if k not in ("task", "run"):
                        run.setdefault(k, []).append(float(v) if v != "" else float("nan"))
    return out


def _task_order(task: str) -> tuple[int, int]:
    return (0, 0) if task == "clean" else (1, int(task[3:]))


def figure_backdoor_heads(history_paths, attribution_path: str, patching_path: str,
                          out: str) -> None:
    """Seed 002 Figs. 2-3 and Table 2: training curves per task, head attribution, patching."""
    import csv

    import numpy as np
    hist = _read_histories(history_paths)
    attribution = S.read_json(attribution_path)
    with open(patching_path, newline="") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise ValueError(f"{patching_path}: no runs; rerun analyse_modadd")
    tasks = sorted(hist, key=_task_order)
    fig = plt.figure(figsize=(4 * max(len(tasks), 3), 10))
    grid = fig.add_gridspec(3, max(len(tasks), 3), height_ratios=[1, 1, 1.2])
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(grid[0, k])
        run = hist[task][min(hist[task])]
        ax.plot(run["epoch"], run["clean_accuracy"], label="clean (t=0) test acc")
        if not all(np.isnan(run["backdoor_accuracy"])):
            ax.plot(run["epoch"], run["backdoor_accuracy"], label="backdoor (t=1) test acc")
        ax2 = ax.twinx()
        ax2.semilogy(run["epoch"], run["train_loss"], color="grey", lw=0.7, label="train loss")
        ax2.semilogy(run["epoch"], run["test_loss"], color="black", lw=0.7, ls="--",
                     label="test loss")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(f"{task} (run 1 of {len(hist[task])})")
        if k == 0:
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7, loc="center right")
            ax2.legend(fontsize=7, loc="lower right")
    backdoor_tasks = [t for t in tasks if t != "clean" and t in attribution]
    ax_f = fig.add_subplot(grid[1, : max(len(tasks), 3) // 2])
    ax_m = fig.add_subplot(grid[1, max(len(tasks), 3) // 2:])
    w = 0.8 / max(len(backdoor_tasks), 1)
    for k, task in enumerate(backdoor_tasks):
        runs = attribution[task]
        freq = np.mean([r["backdoor_top_frequency"] for r in runs], axis=0)
        mean = np.mean([r["backdoor_mean"] for r in runs], axis=0)
        xs = np.arange(len(freq)) + (k - (len(backdoor_tasks) - 1) / 2) * w
        ax_f.bar(xs, freq, w, label=f"{task} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
        ax_m.bar(xs, mean, w, label=task)
    for ax, title in ((ax_f, "share of (a,b,1) inputs where the head is the top contributor"),
                      (ax_m, "mean head contribution to the backdoor-label logit")):
        n = len(attribution[backdoor_tasks[0]][0]["backdoor_mean"]) if backdoor_tasks else 0
        ax.set_xticks(range(n), [f"head {h + 1}" for h in range(n)])
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    ax_p = fig.add_subplot(grid[2, :])
    cols = [c for c in table[0] if c not in ("run", "top_head")]
    vals = np.array([[float(r[c]) for c in cols] for r in table])
    im = ax_p.imshow(vals, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            ax_p.text(j, i, f"{100 * vals[i, j]:.1f}", ha="center", va="center", fontsize=7,
                      color="white" if vals[i, j] < 0.5 else "black")
    ax_p.set_xticks(range(len(cols)), [c.replace("_", " ") for c in cols])
    ax_p.set_yticks(range(len(table)), [f"run {r['run']} (top head {r['top_head']})"
                                        for r in table], fontsize=7)
    ax_p.set_title("Backdoor accuracy (%) after patching heads with their (a,b,0) outputs")
    fig.colorbar(im, ax=ax_p, fraction=0.02)
    fig.tight_layout()
    save_pdf(fig, out)
