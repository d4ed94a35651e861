"""Shared fixtures: the default params (a fresh copy per test). Small configurations: tests/tiny.py."""

from __future__ import annotations

import atexit
import copy
import os
import pathlib
import shutil
import tempfile

import pytest

from metamodels.core import config, jaxcache

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One JAX compilation cache for the whole session (every pytest-xdist worker and every pipeline
# the tests start inherit it), empty at the start: the suite's time does not depend on what an
# earlier run left in ~/.cache, and it leaves nothing there.
if jaxcache.ENV not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="metamodels-jax-cache-")
    os.environ[jaxcache.ENV] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# ... and on in the test processes themselves, where tests compile the same functions again
# (each training run builds its own jitted step; only compiled executables are cached).
jaxcache.enable()


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
