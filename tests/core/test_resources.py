"""Cluster resources per rule (src/metamodels/core/resources.py): every rule has them, they
grow with the params they are computed from, and a GPU cap or a retry changes them as said."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from metamodels.core import config
from metamodels.core import resources as R

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
WILDCARDS = {"variant_shard": {"variant": "natural", "split": "train", "vshard": "000"},
             "tokenize": {"source": "dataset", "split": "train", "vshard": "000"},
             "train_modadd": {"task": "mod1"}, "detect_backdoors": {"setting": "iid"}}


def merged(over: dict) -> dict:
    return config.merged(DEFAULT, over)


PAPER = merged(yaml.safe_load((ROOT / "params" / "paper.yaml").read_text()))


def res(rule, p=DEFAULT, **kw):
    return R.job_resources(rule, p, WILDCARDS.get(rule), **kw)


def test_every_rule_of_the_workflow_has_resources():
    rules = set()
    for f in (ROOT / "rules").glob("*.smk"):
        rules |= {line.split()[1].rstrip(":") for line in f.read_text().splitlines()
                  if line.startswith("rule ")}
    assert rules == set(R.RULES)
    for f in (ROOT / "rules").glob("*.smk"):
        text = f.read_text()
        assert text.count("**resources_of(") == text.count("\nrule ")
    for rule in R.RULES:
        r = res(rule)
        assert set(r) == {"mem_mb", "runtime", "cpus_per_task", "gpu"}
        assert all(isinstance(v, int) for v in r.values()), r
        assert r["mem_mb"] >= R.MIN_MB and r["runtime"] > R.STARTUP_MIN
        assert r["gpu"] == (rule in R.GPU_RULES or rule == "variant_shard")


def test_threads_are_the_cpus():
    p = merged({"threads": {"train": 8, "zoo": 3}})
    assert res("train_decompiler", p)["cpus_per_task"] == 8
    assert res("compile_shard", p)["cpus_per_task"] == 3
    assert res("figure3", p)["cpus_per_task"] == 1


def test_paper_scale_asks_for_more():
    for rule in ("sample", "compile_shard", "split", "tokenize", "train_decompiler",
                 "evaluate_decompiler",
                 "cnn_zoo_shard", "detect_backdoors", "train_modadd", "hparam_zoo_shard",
                 "predict_hparam"):
        small, big = res(rule), res(rule, PAPER)
        assert big["mem_mb"] >= small["mem_mb"] and big["runtime"] > small["runtime"], rule
    # split holds one compiled and one output shard at a time, not the 1.6M programs
    assert 2_000 < res("split", PAPER)["mem_mb"] < 10_000
    assert res("compile_shard", PAPER)["mem_mb"] >= DEFAULT["compile"]["memory_mb"]
    # training reads token shards on demand: 1.6M programs cost it offsets, not weights
    for rule in ("train_decompiler", "evaluate_decompiler", "train_variant_decompiler"):
        assert res(rule, PAPER)["mem_mb"] < 2 * res(rule)["mem_mb"], rule


def test_work_scales_the_runtime():
    base = res("train_decompiler", gpus=0)["runtime"]
    more = merged({"decompiler": {"train": {"steps": 7000}}})
    assert res("train_decompiler", more, gpus=0)["runtime"] > 5 * (base - R.STARTUP_MIN)
    shard = merged({"zoo": {"programs_per_shard": 3000}})
    assert res("compile_shard", shard)["runtime"] > res("compile_shard")["runtime"]


def test_gpu_cap_and_cpu_timing():
    assert res("train_decompiler")["gpu"] == 1
    cpu = res("train_decompiler", PAPER, gpus=0)
    assert cpu["gpu"] == 0 and cpu["runtime"] > res("train_decompiler", PAPER)["runtime"]
    pca = R.job_resources("variant_shard", DEFAULT, {"variant": "pca", "split": "train"})
    assert pca["gpu"] == 0


def test_a_retry_doubles_memory_and_time():
    one, two = res("compile_shard"), res("compile_shard", attempt=2)
    assert two["mem_mb"] == 2 * one["mem_mb"] and two["runtime"] == 2 * one["runtime"]
    assert two["cpus_per_task"] == one["cpus_per_task"]


def test_unknown_rule():
    with pytest.raises(KeyError):
        R.job_resources("nope", DEFAULT)
