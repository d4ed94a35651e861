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
    """Seed 000 Fig. 2: each method's ROC per trigger type in the ``iid`` setting (top row:
    the meta-model, the weight-statistics baseline, ULP and MNTD); AUC per trigger, setting and
    method (bottom).

    In-distribution triggers come from the ``iid`` setting (detectors trained on every
    training attack); each hand-crafted OOD patch and, for every ``ood_<a>`` setting, the
    attacks it did not train on are marked OOD (dashed ROC curves, hatched bars). A method
    missing from a setting (the query methods in ``iid_noaug`` / ``iid_aug``) has no bar there.
    """
    from metamodels.backdoor.stage import FLIPPED, METHODS
    metrics = S.read_json(metrics_path)
    curves = _read_roc(roc_path)
    settings = metrics["settings"]
    if "iid" not in settings:
        raise ValueError(f"{metrics_path}: no 'iid' setting; rerun the backdoor rules")
    # (label, setting, attack, ood) of every bar group: iid triggers, then OOD ones per setting.
    bars = []
    for setting in sorted(settings, key=lambda s: (s != "iid", s not in FLIPPED, s)):
        by = settings[setting]["meta_model"]["by_attack"]
        for attack in sorted(by, key=lambda a: (by[a]["ood"], a)):
            if setting in FLIPPED and by[attack]["ood"]:
                continue
            tag = {"iid": "", "iid_noaug": " (no aug.)", "iid_aug": " (aug.)"}.get(
                setting, f" (train {setting[4:]})")
            ood = " OOD" if by[attack]["ood"] else ""
            bars.append((f"{attack}{ood}{tag}", setting, attack, bool(by[attack]["ood"])))
    methods = [m for m in METHODS if any(m in settings[s] for s in settings)]

    fig = plt.figure(figsize=(16, 10))
    grid = fig.add_gridspec(2, len(methods), height_ratios=[1, 1.25], hspace=0.55, wspace=0.25)
    for k, method in enumerate(methods):
        ax = fig.add_subplot(grid[0, k])
        table = settings["iid"].get(method, {"by_attack": {}})["by_attack"]
        for label, setting, attack, ood in bars:
            key = (setting, method, attack)
            if setting == "iid" and key in curves and attack in table:
                ax.plot(*curves[key], label=f"{label} ({table[attack]['auc']:.2f})",
                        ls="--" if ood else "-", lw=1.2)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("false positive rate")
        if k == 0:
            ax.set_ylabel("true positive rate")
        ax.set_title(f"{METHOD_NAMES.get(method, method)}: ROC per trigger (iid)", fontsize=10)
        ax.legend(fontsize=6.5, loc="lower right", title="trigger (AUC)", title_fontsize=7)
        ax.grid(alpha=0.3)

    right = fig.add_subplot(grid[1, :])
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
    right.set_xticks(list(range(len(bars))), [b[0] for b in bars], rotation=50, ha="right",
                     fontsize=8)
    right.set_ylabel("test AUC (clean vs poisoned)")
    right.set_ylim(0, 1.02)
    right.set_title("AUC per trigger, setting and method (hatched: OOD trigger; dotted: chance)",
                    fontsize=10)
    right.legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), fontsize=9, ncol=len(methods),
                 frameon=False)
    right.grid(axis="y", alpha=0.3)
    z = metrics["zoo"]
    fig.text(0.5, 0.005,
             f"{z['models']} CNNs ({z['clean_models']} clean, {z['poisoned_models']} of "
             f"{z['poison_attempts']} poisoned with ASR >= {z['asr_threshold']}); median clean "
             f"accuracy {z['clean_acc'].get('median', float('nan')):.3f}",
             ha="center", va="bottom", fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.96, bottom=0.21)
    save_pdf(fig, out)
