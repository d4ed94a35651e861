"""Seed 000 Fig. 2, drawn from the detectors' metrics and ROC table."""

from __future__ import annotations

from metamodels.core import shards as S
from metamodels.core.plotting import plt, save_pdf


def _read_roc(path: str) -> dict:
    """ROC table (setting,method,attack,ood,fpr,tpr) -> {(setting, method, attack): (fpr, tpr)}."""
    import csv
    curves: dict = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            key = (r["setting"], r["method"], r["attack"])
            fpr, tpr = curves.setdefault(key, ([], []))
            fpr.append(float(r["fpr"]))
            tpr.append(float(r["tpr"]))
    return curves


def figure2(metrics_path: str, roc_path: str, out: str) -> None:
    """Seed 000 Fig. 2: ROC per trigger type (left); AUC, meta-model vs baseline (right).

    In-distribution triggers come from the ``iid`` setting (meta-model trained on every
    training attack); each hand-crafted OOD patch and, for every ``ood_<a>`` setting, the
    attacks it did not train on are marked OOD.
    """
    metrics = S.read_json(metrics_path)
    curves = _read_roc(roc_path)
    settings = metrics["settings"]
    if "iid" not in settings:
        raise ValueError(f"{metrics_path}: no 'iid' setting; rerun the backdoor rules")
    # (label, setting, attack) of every bar: iid triggers, then OOD ones per setting.
    bars = []
    for setting in sorted(settings, key=lambda s: (s != "iid", s != "iid_noaug", s)):
        by = settings[setting]["meta_model"]["by_attack"]
        for attack in sorted(by, key=lambda a: (by[a]["ood"], a)):
            if setting == "iid_noaug" and by[attack]["ood"]:
                continue
            tag = {"iid": "", "iid_noaug": " (no aug.)"}.get(setting, f" (train {setting[4:]})")
            ood = " OOD" if by[attack]["ood"] else ""
            bars.append((f"{attack}{ood}{tag}", setting, attack))

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    for label, setting, attack in bars:
        key = (setting, "meta_model", attack)
        if setting == "iid" and key in curves:
            auc = settings[setting]["meta_model"]["by_attack"][attack]["auc"]
            left.plot(*curves[key], label=f"{label} (AUC {auc:.2f})",
                      ls="--" if "OOD" in label else "-")
    left.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    left.set_xlabel("false positive rate")
    left.set_ylabel("true positive rate")
    left.set_title("Meta-model ROC by trigger type (trained on all training attacks)")
    left.legend(fontsize=7, loc="lower right")
    left.grid(alpha=0.3)

    x = range(len(bars))
    w = 0.4
    for k, (method, name) in enumerate((("meta_model", "meta-model"),
                                        ("baseline", "weight-statistics baseline"))):
        vals = [settings[s][method]["by_attack"][a]["auc"] for _, s, a in bars]
        right.bar([i + (k - 0.5) * w for i in x], vals, w, label=name)
    right.axhline(0.5, color="grey", lw=0.8, ls=":")
    right.set_xticks(list(x), [b[0] for b in bars], rotation=60, ha="right", fontsize=7)
    right.set_ylabel("test AUC (clean vs poisoned)")
    right.set_ylim(0, 1.02)
    right.set_title("AUC per trigger: meta-model vs baseline")
    right.legend(loc="lower right", fontsize=8)
    right.grid(axis="y", alpha=0.3)
    z = metrics["zoo"]
    fig.text(0.5, 0.005,
             f"{z['models']} CNNs ({z['clean_models']} clean, {z['poisoned_models']} of "
             f"{z['poison_attempts']} poisoned with ASR >= {z['asr_threshold']}); median clean "
             f"accuracy {z['clean_acc'].get('median', float('nan')):.3f}",
             ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_pdf(fig, out)
