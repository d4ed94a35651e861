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


#: Legend names of the methods (stage.METHODS order).
METHOD_NAMES = {"meta_model": "meta-model (weights)", "weight_stats": "weight statistics",
                "ulp": "ULP (Kolouri et al.)", "mntd": "MNTD (Xu et al.)"}


def figure2(metrics_path: str, roc_path: str, out: str) -> None:
    """Seed 000 Fig. 2: the meta-model's ROC per trigger type (left); AUC per trigger and
    setting for the meta-model, the weight-statistics baseline, ULP and MNTD (right).

    In-distribution triggers come from the ``iid`` setting (detectors trained on every
    training attack); each hand-crafted OOD patch and, for every ``ood_<a>`` setting, the
    attacks it did not train on are marked OOD (dashed ROC curves, hatched bars). A method
    missing from a setting (the query methods in ``iid_noaug``) has no bar there.
    """
    from metamodels.backdoor.stage import METHODS
    metrics = S.read_json(metrics_path)
    curves = _read_roc(roc_path)
    settings = metrics["settings"]
    if "iid" not in settings:
        raise ValueError(f"{metrics_path}: no 'iid' setting; rerun the backdoor rules")
    # (label, setting, attack, ood) of every bar group: iid triggers, then OOD ones per setting.
    bars = []
    for setting in sorted(settings, key=lambda s: (s != "iid", s != "iid_noaug", s)):
        by = settings[setting]["meta_model"]["by_attack"]
        for attack in sorted(by, key=lambda a: (by[a]["ood"], a)):
            if setting == "iid_noaug" and by[attack]["ood"]:
                continue
            tag = {"iid": "", "iid_noaug": " (no aug.)"}.get(setting, f" (train {setting[4:]})")
            ood = " OOD" if by[attack]["ood"] else ""
            bars.append((f"{attack}{ood}{tag}", setting, attack, bool(by[attack]["ood"])))
    methods = [m for m in METHODS if any(m in settings[s] for s in settings)]

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.6),
                                      gridspec_kw={"width_ratios": [1, 2]})
    for label, setting, attack, ood in bars:
        key = (setting, "meta_model", attack)
        if setting == "iid" and key in curves:
            auc = settings[setting]["meta_model"]["by_attack"][attack]["auc"]
            left.plot(*curves[key], label=f"{label} (AUC {auc:.2f})", ls="--" if ood else "-")
    left.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    left.set_xlabel("false positive rate")
    left.set_ylabel("true positive rate")
    left.set_title("Meta-model ROC per trigger (trained on all training attacks)", fontsize=10)
    left.legend(fontsize=7.5, loc="lower right")
    left.grid(alpha=0.3)

    w = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        xs, vals, hatches = [], [], []
        for i, (_, setting, attack, ood) in enumerate(bars):
            table = settings[setting].get(method)
            if table and attack in table["by_attack"]:
                xs.append(i + (k - (len(methods) - 1) / 2) * w)
                vals.append(table["by_attack"][attack]["auc"])
                hatches.append("//" if ood else "")
        drawn = right.bar(xs, vals, w, label=METHOD_NAMES.get(method, method), color=f"C{k}")
        for patch, hatch in zip(drawn, hatches):
            patch.set_hatch(hatch)
    right.axhline(0.5, color="grey", lw=0.8, ls=":")
    right.set_xticks(list(range(len(bars))), [b[0] for b in bars], rotation=55, ha="right",
                     fontsize=8)
    right.set_ylabel("test AUC (clean vs poisoned)")
    right.set_ylim(0, 1.02)
    right.set_title("AUC per trigger and method (hatched: OOD trigger)", fontsize=10)
    right.legend(loc="lower left", fontsize=8, ncol=len(methods))
    right.grid(axis="y", alpha=0.3)
    z = metrics["zoo"]
    fig.text(0.5, 0.005,
             f"{z['models']} CNNs ({z['clean_models']} clean, {z['poisoned_models']} of "
             f"{z['poison_attempts']} poisoned with ASR >= {z['asr_threshold']}); median clean "
             f"accuracy {z['clean_acc'].get('median', float('nan')):.3f}",
             ha="center", va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_pdf(fig, out)
