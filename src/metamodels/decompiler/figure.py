"""Seed 001 Fig. 3, drawn from the decompiler's training history and test metrics."""

from __future__ import annotations

from metamodels.core import shards as S
from metamodels.core.plotting import plt, save_pdf


def figure3(history_path: str, metrics_path: str, out: str) -> None:
    """Seed 001 Fig. 3: validation accuracy over training; test accuracy by program length
    (greedy exact, verified by the search of :mod:`metamodels.decompiler.search` when the
    metrics have it, and greedy functionally equivalent)."""
    hist = S.read_json(history_path)
    metrics = S.read_json(metrics_path)
    h = hist["history"]
    if not h:
        raise ValueError(f"{history_path}: empty training history; rerun the train rule")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [e["step"] for e in h]
    left.plot(steps, [e["val_exact_accuracy"] for e in h], "o-", label="exact program (decoded)")
    left.plot(steps, [e["val_token_accuracy"] for e in h], "s--", label="token (teacher-forced)")
    left.set_xlabel("training step")
    left.set_ylabel("validation accuracy")
    left.set_ylim(0, 1.02)
    left.set_title("Validation accuracy during training")
    left.legend(loc="lower right")
    left.grid(alpha=0.3)

    by_len = metrics["by_length"]
    lengths = sorted(by_len, key=int)
    x = range(len(lengths))
    exact = [by_len[k]["exact_accuracy"] for k in lengths]
    func = [by_len[k]["functional_equivalence"] for k in lengths]
    bars = [(exact, "exact program (greedy)"), (func, "functionally equivalent (greedy)")]
    if all("verified_accuracy" in by_len[k] for k in lengths):
        verified = [by_len[k]["verified_accuracy"] for k in lengths]
        bars.insert(1, (verified, "verified (search, "
                                  f"{metrics['verified_search']['candidates']} candidates)"))
    w = 0.8 / len(bars)
    for j, (values, label) in enumerate(bars):
        right.bar([i + (j - (len(bars) - 1) / 2) * w for i in x], values, w, label=label)
    right.set_xticks(list(x), [f"{k}\n(n={by_len[k]['programs']})" for k in lengths])
    right.set_xlabel("program length (number of operations)")
    right.set_ylabel("test accuracy")
    right.set_ylim(0, 1.02)
    right.set_title("Test accuracy by program length")
    right.legend(loc="upper right", fontsize=8)
    right.grid(axis="y", alpha=0.3)

    cfg = hist["config"]
    m = cfg["model"]
    fig.text(0.5, 0.005,
             f"train {hist['train_programs']} / val {hist['val_programs']} / test "
             f"{metrics['test_programs']} programs; {m['architecture']} "
             f"d={m['d_model']}, {m['layers']}+{m['decoder_layers'] if m['architecture'] == 'encoder_decoder' else 0} "
             f"layers, {hist['parameters']:,} parameters, {cfg['input']['tokenization']} input; "
             f"test exact {metrics['test_exact_accuracy']:.1%}, token "
             f"{metrics['test_token_accuracy']:.1%} ({metrics['decoding']} decoding)"
             + (f", verified {metrics['test_verified_accuracy']:.1%}"
                if "test_verified_accuracy" in metrics else ""),
             ha="center", va="bottom", fontsize=7.5)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_pdf(fig, out)
