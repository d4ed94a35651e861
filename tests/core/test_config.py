"""params.yaml validation: bad keys, types and ranges fail with the key named."""

from __future__ import annotations

import json
import pathlib

import pytest

from metamodels.core import config


def test_default_params_are_valid(default_params):
    config.validate(default_params)


@pytest.mark.parametrize("path,value,needle", [
    (("zoo", "seeed"), 1, "unknown key 'zoo.seeed'"),
    (("zoo", "max_seq_len"), 0, "'zoo.max_seq_len'"),
    (("zoo", "vocab"), [1, 1], "'zoo.vocab'"),
    (("sampler", "p_numerical"), 1.5, "'sampler.p_numerical'"),
    (("sampler", "op_weights"), {"Map": 1}, "'sampler.op_weights"),
    (("compile", "timeout_s"), "60", "'compile.timeout_s'"),
    (("dataset", "split"), {"train": 0.5, "val": 0.1, "test": 0.1}, "'dataset.split' fractions"),
    (("extra",), {}, "unknown key 'extra'"),
])
def test_invalid_params_name_the_key(params, path, value, needle):
    target = params
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(config.ParamsError) as e:
        config.validate(params)
    assert needle in str(e.value)


def test_missing_key_is_named(params):
    del params["verify"]["atol"]
    with pytest.raises(config.ParamsError, match="missing key 'verify.atol'"):
        config.validate(params)


def test_sections_and_partial_validation(params):
    text = config.sections(params, zoo=["seed"], verify=True)
    assert json.loads(text) == {"zoo": {"seed": params["zoo"]["seed"]}, "verify": params["verify"]}
    config.validate_partial(json.loads(text))
    with pytest.raises(config.ParamsError, match="'zoo.seed'"):
        config.validate_partial({"zoo": {"seed": -1}})
    with pytest.raises(config.ParamsError, match="unknown key 'zoo.sed'"):
        config.validate_partial({"zoo": {"sed": 1}})


def test_cli_reports_bad_params(tmp_path, capsys):
    from metamodels.__main__ import main
    bad = tmp_path / "p.yaml"
    bad.write_text("zoo: {seed: 0}\n")
    assert main(["check-params", "--params", str(bad)]) == 2
    assert "missing key" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["paper", "cpu-long"])
def test_params_files_are_valid_over_the_defaults(name):
    import yaml

    root = pathlib.Path(__file__).resolve().parents[2]
    p = config.merged(yaml.safe_load((root / "params.yaml").read_text()),
              yaml.safe_load((root / "params" / f"{name}.yaml").read_text()))
    config.validate(p, f"params/{name}.yaml")
    if name == "paper":
        d = p["decompiler"]
        assert d["model"]["d_model"] == 256 and d["train"]["batch_size"] == 256
        assert p["zoo"]["shards"] * p["zoo"]["programs_per_shard"] == 1_600_000


def test_paper_params_follow_seeds_000_and_002():
    import yaml
    root = pathlib.Path(__file__).resolve().parents[2]
    paper = yaml.safe_load((root / "params" / "paper.yaml").read_text())
    assert paper["images"]["dataset"] == "cifar10" and paper["images"]["train_limit"] == 0
    assert paper["modadd"]["train"]["p0"] == 113
    assert paper["modadd"]["train"]["train_fraction"] == 0.3


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p["modadd"].update(patching_task="mod5"), "modadd.patching_task"),
    (lambda p: p["modadd"]["runs"].update(mod0=1), "modadd.runs"),
    (lambda p: p["cnn_zoo"].update(models_per_shard={"clean": 4, "patch4": 0}),
     "cnn_zoo.models_per_shard"),
    (lambda p: p["detector"].update(split={"val": 0.5, "test": 0.5}), "detector.split"),
    (lambda p: p["hparam_zoo"].update(shards=1, models_per_shard=2), "hparams.split"),
    (lambda p: p["hparam_zoo"].update(test_limit=1000), "hparam_zoo.test_limit"),
    (lambda p: p["hparam_zoo"]["choices"].update(dataset=["digits"]), "hparams.targets"),
    (lambda p: p["hparams"]["meta_model"].update(heads=3), "hparams.meta_model.d_model"),
    (lambda p: p["images"].update(dataset="svhn"), "images.dataset"),
    (lambda p: p["detector"].update(ood_train_attacks=["ood_square"]),
     "detector.ood_train_attacks"),
    (lambda p: p["variants"].update(decompile=["standard", "sparse"]), "variants.decompile"),
    (lambda p: p["variants"]["pca"].update(ratio=1.5), "variants.pca.ratio"),
    (lambda p: p["variants"]["decompiler"].update(layers=2), "variants.decompiler"),
    (lambda p: p["variants"]["distill"].update(steps=1001), "variants.distill.steps"),
])
def test_backdoor_and_modadd_params_are_checked(params, edit, needle):
    edit(params)
    with pytest.raises(config.ParamsError, match=needle.replace(".", r"\.")):
        config.validate(params)
