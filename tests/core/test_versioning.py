"""Stage names of dvc.yaml (metamodels.core.versioning)."""

from __future__ import annotations

import pytest

from metamodels.core.versioning import _suffixes


def group(*firsts):
    return [{"rule": "r", "outs": [f]} for f in firsts]


def test_stage_names_tell_jobs_apart():
    assert _suffixes(group("data/compiled/shard_00000.npz", "data/compiled/shard_00001.npz")) \
        == ["00000", "00001"]
    assert _suffixes(group("results/backdoor/history_iid.json",
                           "results/backdoor/history_ood_noise.json")) == ["iid", "ood_noise"]
    # the same shard number under different variants and splits
    assert _suffixes(group("data/variants/pca/train/shard_000.npz",
                           "data/variants/pca/test/shard_000.npz",
                           "data/variants/natural/train/shard_000.npz")) \
        == ["pca_train", "pca_test", "natural_train"]


def test_stage_names_never_collide():
    with pytest.raises(ValueError, match="cannot name the stages"):
        _suffixes(group("a/x.npz", "a/x.npz"))
