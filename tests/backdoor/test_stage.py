"""Backdoor stage: zoo plan, splits, and a tiny zoo -> detector -> report -> figure 2 run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from metamodels.backdoor import images, poisons
from metamodels.backdoor import stage as B
from metamodels.core import shards as S


def test_shard_plan_counts_and_seeds(default_params):
    zoo = default_params["cnn_zoo"]
    plan = B.shard_plan(zoo, 3)
    assert [a for a, _ in plan].count("clean") == zoo["models_per_shard"]["clean"]
    assert len(plan) == sum(zoo["models_per_shard"].values())
    assert plan == B.shard_plan(zoo, 3)                     # deterministic
    seeds = [s for _, s in plan] + [s for _, s in B.shard_plan(zoo, 4)]
    assert len(set(seeds)) == len(seeds)                    # no two models share a seed
    # the mapping's order does not matter: params.yaml's order and the rules' sorted JSON
    reordered = dict(zoo, models_per_shard=dict(reversed(list(zoo["models_per_shard"].items()))))
    assert B.shard_plan(reordered, 3) == plan
    assert [a for a, _ in plan] == sorted(a for a, _ in plan)


def test_model_specs_poison_what_the_attack_says(default_params):
    zoo = default_params["cnn_zoo"]
    attacks, specs = B.model_specs(zoo, 0, (28, 28, 1), 4000, 10)
    for attack, spec in zip(attacks, specs):
        if attack == "clean":
            assert not spec["mask"].any() and len(spec["poison_idx"]) == 0
        else:
            assert len(spec["poison_idx"]) == poisons.num_poisoned(4000, zoo["poison_rate"])
            assert 0 <= spec["target"] < 10 and spec["mask"].any()


def test_poison_stream_is_no_epoch_order_stream(default_params):
    """A model's trigger and poisoned indices come from a stream of their own: until
    POISON_STREAM they came from ``[seed, 1]``, the stream of epoch 1's data order."""
    for _, seed in B.shard_plan(default_params["cnn_zoo"], 0):
        poison = B.poison_rng(seed).integers(2**62, size=4)
        for e in range(64):
            assert not np.array_equal(poison, np.random.default_rng([seed, e]).integers(2**62, size=4))


def test_init_seed_per_model_or_shared(default_params):
    zoo = copy.deepcopy(default_params["cnn_zoo"])
    zoo["init"] = "per_model"
    _, specs = B.model_specs(zoo, 0, (28, 28, 1), 4000, 10)
    assert [s["init_seed"] for s in specs] == [s["seed"] for s in specs]
    zoo["init"] = "shared"
    _, shared = B.model_specs(zoo, 0, (28, 28, 1), 4000, 10)
    _, shared4 = B.model_specs(zoo, 4, (28, 28, 1), 4000, 10)
    inits = {s["init_seed"] for s in shared + shared4}
    assert len(inits) == 1 and inits.isdisjoint(s["seed"] for s in shared)
    assert [s["seed"] for s in shared] == [s["seed"] for s in specs]   # data order unchanged
    zoo["seed"] += 1
    assert B.model_specs(zoo, 0, (28, 28, 1), 4000, 10)[1][0]["init_seed"] not in inits
    zoo["init"] = "pretrained"
    with pytest.raises(ValueError, match="cnn_zoo.init"):
        B.model_specs(zoo, 0, (28, 28, 1), 4000, 10)


def test_settings_flip_the_configured_augmentation(default_params):
    det = copy.deepcopy(default_params["detector"])
    det["model"]["augment"] = True
    assert B.setting_names(det)[:2] == ["iid", "iid_noaug"]
    det["model"]["augment"] = False
    assert B.setting_names(det) == ["iid", "iid_aug"] + [
        f"ood_{a}" for a in det["ood_train_attacks"]]


def test_roles_split_per_attack_and_keep_ood_for_test():
    attacks = ["clean"] * 20 + ["patch4"] * 10 + ["ood_square"] * 5
    role = B.roles(attacks, poisons.OOD_ATTACKS, {"val": 0.2, "test": 0.3}, seed=0)
    assert (role[30:] == "test").all()
    assert (role[:20] == "val").sum() == 4 and (role[:20] == "test").sum() == 6
    assert (role[20:30] == "val").sum() == 2 and (role[20:30] == "test").sum() == 3
    assert (role == B.roles(attacks, poisons.OOD_ATTACKS, {"val": 0.2, "test": 0.3}, 0)).all()


def _zoo(attacks, poisoned):
    a = np.array(attacks)
    return {"attack": a, "poisoned": np.array(poisoned), "model_index": np.arange(len(a))}


def test_setting_split_trains_on_the_right_attacks():
    attacks = (["clean"] * 20 + ["patch4"] * 10 + ["noise_blend"] * 10 + ["ood_cross"] * 4)
    poisoned = [False] * 20 + [True] * 9 + [False] + [True] * 10 + [True] * 4
    zoo = _zoo(attacks, poisoned)
    det = {"seed": 0, "split": {"val": 0.2, "test": 0.3}, "ood_train_attacks": ["noise_blend"]}
    iid = B.setting_split(zoo, det, "iid")
    ood = B.setting_split(zoo, det, "ood_noise_blend")
    a = zoo["attack"]
    assert set(a[iid["train"]]) == {"clean", "patch4", "noise_blend"}
    assert set(a[ood["train"]]) == {"clean", "noise_blend"}
    assert set(a[ood["test"]]) >= {"clean", "patch4", "ood_cross"}
    assert np.array_equal(iid["test"], ood["test"])          # one shared test set
    assert 29 not in np.concatenate(list(iid.values()))      # failed poisoning: left out
    for s in (iid, ood):
        assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])
    with pytest.raises(ValueError, match="ood_train_attacks"):
        B.setting_split(zoo, det, "ood_bogus")


@pytest.mark.xdist_group("backdoor")
def test_tiny_zoo_detector_report_and_figure(tmp_path, default_params):
    """Two CIFAR-layout fixture shards -> detector (iid + OOD) -> metrics -> figure 2."""
    root = tmp_path / "cifar"
    images.write_cifar10_fixture(root, n_train_per_batch=8, n_test=20, seed=0)
    p = copy.deepcopy(default_params)
    p["images"].update(dataset="cifar10", cifar10_root=str(root), download=False,
                       train_limit=0, test_limit=0)
    p["cnn_zoo"].update(models_per_shard={"clean": 3, "noise_blend": 3, "ood_square": 1},
                        asr_threshold=0.0, poison_rate=0.1)
    p["cnn_zoo"]["cnn"].update(channels=[2, 2, 2], epochs=1, batch_size=8)
    p["detector"].update(split={"val": 0.2, "test": 0.3}, ood_train_attacks=["noise_blend"])
    p["detector"]["model"].update(chunk_size=64, d_model=16, layers=1, heads=2, mlp=32, steps=4,
                                  warmup_steps=1, eval_every=4, log_every=2)
    for name in ("ulp", "mntd"):
        p["detector"][name].update(steps=4, batch_size=4, log_every=2)
    zoo = [str(tmp_path / f"shard_{k:03d}.npz") for k in range(2)]
    for k, path in enumerate(zoo):
        B.run_zoo_shard(p, k, path)
    z = S.load_npz(zoo[1])
    assert z["weights"].shape[0] == 7 and z["weights"].dtype == np.float32
    assert z["model_index"].tolist() == list(range(7, 14))
    assert np.isnan(z["asr"][z["attack"] == "clean"]).all()
    layout = json.loads(str(z["layout"][0]))
    assert sum(int(np.prod(s)) for _, s in layout) == z["weights"].shape[1]

    scores = []
    for setting in B.setting_names(p["detector"]):
        out = str(tmp_path / f"scores_{setting}.json")
        B.run_detect(p, zoo, setting, out, str(tmp_path / f"history_{setting}.json"))
        scores.append(out)
        sc = S.read_json(out)
        methods = B.METHODS if setting not in B.FLIPPED else ("meta_model", "weight_stats")
        assert set(sc["scores"]) == set(methods)
        for m in methods:
            assert len(sc["scores"][m]) == len(sc["label"])
            assert all(0.0 <= s <= 1.0 for s in sc["scores"][m])
    iid = S.read_json(scores[0])
    assert "ood_square" in iid["attack"] and "ood_square" not in iid["train_attacks"]

    metrics, roc = str(tmp_path / "backdoor.json"), str(tmp_path / "roc.csv")
    B.run_report(p, scores, zoo, metrics, roc)
    m = S.read_json(metrics)
    assert m["zoo"]["models"] == 14 and m["zoo"]["clean_models"] == 6
    by = m["settings"]["iid"]["meta_model"]["by_attack"]
    assert by["ood_square"]["ood"] and not by["noise_blend"]["ood"]
    assert set(m["settings"]["iid"]) >= set(B.METHODS)
    assert m["zoo"]["by_attack"]["noise_blend"]["asr"]["max"] <= 1.0
    assert 0.0 <= by["noise_blend"]["auc"] <= 1.0
    flipped = "iid_noaug" if p["detector"]["model"]["augment"] else "iid_aug"
    assert set(m["settings"]) == {"iid", flipped, "ood_noise_blend"}

    from metamodels.backdoor.figure import figure2
    pdf = tmp_path / "figure2.pdf"
    figure2(metrics, roc, str(pdf))
    first = pdf.read_bytes()
    assert first.startswith(b"%PDF")
    figure2(metrics, roc, str(pdf))
    assert pdf.read_bytes() == first                         # same inputs, same bytes


def test_missing_images_fail_with_where_to_put_them(tmp_path, default_params, capsys):
    from metamodels.__main__ import main
    cfg = {"images": {**default_params["images"], "fashion_mnist_root": str(tmp_path / "none")},
           "cnn_zoo": default_params["cnn_zoo"]}
    code = main(["cnn-zoo-shard", "--config", json.dumps(cfg), "--shard", "0",
                 "--out", str(tmp_path / "s.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "images.fashion_mnist_root" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "s.npz").exists()
