"""Shared fixtures: the default params (a fresh copy per test). Small configurations: tests/tiny.py."""

from __future__ import annotations

import copy
import pathlib

import pytest

from metamodels.core import config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_params() -> dict:
    return config.load(ROOT / "params.yaml")


@pytest.fixture()
def params(default_params) -> dict:
    return copy.deepcopy(default_params)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The tiny pipeline (tests/tiny.py) built to target ``everything`` once per session, for
    the workflow tests (test_pipeline.py, test_report.py); treat it as read-only."""
    from tests.tiny import snakemake, tiny_params, workspace
    ws = workspace(tmp_path_factory.mktemp("ws2"), tiny_params())
    snakemake(ws, "everything", "--cores", "2", "--quiet")
    return ws


@pytest.fixture()
def no_thread_limit(monkeypatch):
    """For tests that call ``metamodels.__main__.main`` in-process: no OMP_NUM_THREADS, so the
    verb sets no thread limit and prints no ``[threads]`` line."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
