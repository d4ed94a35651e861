"""Seed 000 Figure 4: test accuracy per training hyperparameter, three predictors side by side."""

from __future__ import annotations

import numpy as np

from metamodels.core import shards as S
from metamodels.core.plotting import plt, save_pdf

#: Legend names of the predictors (stage.METHODS order).
METHOD_NAMES = {"meta_model": "meta-model (chunked weights, seed 000)",
                "segment_cnn": "1-D CNN on 5,000-weight segments (Eilertsen et al.)",
                "majority": "majority class"}


def figure4(metrics_path: str, out: str) -> None:
    """One group of bars per target hyperparameter in ``results/metrics/hparams.json``: each
    method's test accuracy, chance (1 / K) as a black tick over the group; the zoo's size and
    the test-set size in the title. Raises ValueError when the metrics hold no target."""
    from metamodels.hparams.stage import METHODS
    m = S.read_json(metrics_path)
    targets = list(m.get("target_order") or m["targets"])
    if not targets:
        raise ValueError(f"{metrics_path}: no targets; rerun the hparams rules")
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(targets), 4.2))
    width = 0.8 / len(METHODS)
    x = np.arange(len(targets))
    for k, method in enumerate(METHODS):
        acc = [m["targets"][t]["accuracy"][method] for t in targets]
        bars = ax.bar(x + (k - (len(METHODS) - 1) / 2) * width, acc, width,
                      label=METHOD_NAMES.get(method, method))
        for b, a in zip(bars, acc):
            ax.text(b.get_x() + b.get_width() / 2, a + 0.01, f"{a:.2f}", ha="center",
                    va="bottom", fontsize=6)
    for i, t in enumerate(targets):
        c = m["targets"][t]["chance"]
        ax.hlines(c, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="chance (1 / K)" if i == 0 else None)
    ax.set_xticks(x, [f"{t}\n(K = {len(m['targets'][t]['classes'])})" for t in targets],
                  fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    n_test = m["targets"][targets[0]]["n"]["test"]
    ax.set_title(f"Predicting training hyperparameters from weights: {m['zoo']['models']} CNNs "
                 f"({n_test} test)", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    save_pdf(fig, out)
