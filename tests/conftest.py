"""Shared fixtures: the default params and small sampler configurations."""

from __future__ import annotations

import copy
import pathlib

import pytest

from metamodels import config
from metamodels.sampler import SamplerConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_params() -> dict:
    return config.load(ROOT / "params.yaml")


@pytest.fixture()
def params(default_params) -> dict:
    return copy.deepcopy(default_params)


def small_cfg(default_params: dict, **over) -> SamplerConfig:
    """The default sampler on a small domain (vocab {1,2,3}, length <= 4: 120 inputs)."""
    p = copy.deepcopy(default_params)
    p["zoo"]["vocab"] = over.pop("vocab", [1, 2, 3])
    p["zoo"]["max_seq_len"] = over.pop("max_seq_len", 4)
    for k, v in over.items():
        p["sampler"][k] = v
    return SamplerConfig.from_params(p)
