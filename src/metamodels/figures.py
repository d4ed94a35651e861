"""The papers' figures, drawn from files the pipeline wrote (never from constants)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metamodels import shards as S  # noqa: E402


def _save(fig, out: str) -> None:
    # Fixed metadata: the same inputs give the same bytes.
    with S.atomic_path(out) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Producer": "metamodels"})
    plt.close(fig)


def figure3(history_path: str, metrics_path: str, out: str) -> None:
    """Seed 001 Fig. 3: validation accuracy over training; test accuracy by program length."""
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
    w = 0.38
    right.bar([i - w / 2 for i in x], exact, w, label="exact program")
    right.bar([i + w / 2 for i in x], func, w, label="functionally equivalent")
    right.set_xticks(list(x), [f"{k}\n(n={by_len[k]['programs']})" for k in lengths])
    right.set_xlabel("program length (number of operations)")
    right.set_ylabel("test accuracy")
    right.set_ylim(0, 1.02)
    right.set_title("Test accuracy by program length")
    right.legend(loc="upper right")
    right.grid(axis="y", alpha=0.3)

    cfg = hist["config"]
    m = cfg["model"]
    fig.text(0.5, 0.005,
             f"train {hist['train_programs']} / val {hist['val_programs']} / test "
             f"{metrics['test_programs']} programs; {m['architecture']} "
             f"d={m['d_model']}, {m['layers']}+{m['decoder_layers'] if m['architecture'] == 'encoder_decoder' else 0} "
             f"layers, {hist['parameters']:,} parameters, {cfg['input']['tokenization']} input; "
             f"test exact {metrics['test_exact_accuracy']:.1%}, token "
             f"{metrics['test_token_accuracy']:.1%} ({metrics['decoding']} decoding)",
             ha="center", va="bottom", fontsize=7.5)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _save(fig, out)


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
    _save(fig, out)


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
    _save(fig, out)


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
    w = 0.27
    bars = [("test_token_accuracy", "token"), ("test_exact_accuracy", "exact program"),
            ("test_functional_equivalence", "functionally equivalent")]
    for j, (key, label) in enumerate(bars):
        right.bar([i + (j - 1) * w for i in x], [doc[n]["decompiler"][key] for n in names], w,
                  label=label)
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
    _save(fig, out)
