"""The decompiler on every zoo variant, drawn from results/metrics/variants.json."""

from __future__ import annotations

from metamodels.core import shards as S
from metamodels.core.plotting import plt, save_pdf


def figure_variants(metrics_path: str, out: str) -> None:
    """The decompiler on every zoo variant: validation token accuracy over training (left),
    test accuracy per variant (right), with each zoo's acceptance and residual width."""
    doc = S.read_json(metrics_path)["variants"]
    if not doc:
        raise ValueError(f"{metrics_path}: no variants; rerun the variants_report rule")
    names = list(doc)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in names:
        h = doc[name]["history"]
        left.plot([e["step"] for e in h], [e["val_token_accuracy"] for e in h], "o-",
                  ms=3, label=name)
    left.set_xlabel("training step")
    left.set_ylabel("validation token accuracy (teacher-forced)")
    left.set_ylim(0, 1.02)
    left.set_title("Decompiler training on each zoo variant")
    left.legend(loc="lower right", fontsize=8)
    left.grid(alpha=0.3)

    x = range(len(names))
    bars = [("test_token_accuracy", "token"), ("test_exact_accuracy", "exact program"),
            ("test_functional_equivalence", "functionally equivalent"),
            ("test_verified_accuracy", "verified (search)")]
    w = 0.8 / len(bars)
    for j, (key, label) in enumerate(bars):
        right.bar([i + (j - (len(bars) - 1) / 2) * w for i in x],
                  [doc[n]["decompiler"][key] for n in names], w, label=label)
    ticks = []
    for n in names:
        z = doc[n]["zoo"]
        ticks.append(f"{n}\n{z['accepted']}/{z['programs']} kept\nD'/D {z['width_ratio_median']:.2f}")
    right.set_xticks(list(x), ticks, fontsize=7.5)
    right.set_ylabel("test accuracy")
    right.set_ylim(0, 1.02)
    right.set_title("Test accuracy by variant")
    right.legend(loc="upper right", fontsize=8)
    right.grid(axis="y", alpha=0.3)
    counts = ", ".join(f"{n} {doc[n]['train_programs']}/{doc[n]['decompiler']['test_programs']}"
                       for n in names)
    fig.text(0.5, 0.005, f"train/test programs: {counts}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_pdf(fig, out)
