"""JAX's persistent compilation cache, on for every verb.

XLA on the CPU takes 1.5-4.5 s to compile one small CNN's training step, longer than training
it (the hyperparameter zoo compiles one step per architecture, optimizer and batch size), and
every job of a rule compiles the same functions again. With the cache on, what one job
compiled is loaded (well under a second) by every later job on the machine. The cache holds
compiled executables only: what a job computes is the same with or without it.

``python -m metamodels`` calls :func:`export` before JAX loads: it sets JAX's own variables
(``JAX_COMPILATION_CACHE_DIR``, ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``), which this
process and the processes it starts read when they import JAX. :func:`enable` does the same
in a process where JAX is already loaded (tests, notebooks).

Where: ``$METAMODELS_JAX_CACHE`` if set (``off`` disables it), else JAX's own
``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/metamodels/jax``
(``~/.cache/metamodels/jax``). Safe to delete at any time. On a cluster whose nodes have
different CPUs, XLA refuses another CPU's executables and compiles anew (no harm, no gain):
point the variable at a node-local folder there. Like any code cache it is trusted: never
point it at a folder that others can write to.

Executables are kept apart by the size of XLA's CPU compute pool (``PJRT_NPROC``, which
:mod:`metamodels.core.threads` sets from the rule's threads): a subfolder ``threads-N`` (or
``threads-all``), so a job never runs code compiled in a process with another pool, and its
results do not depend on which job compiled first.
"""

from __future__ import annotations

import os
import pathlib

ENV = "METAMODELS_JAX_CACHE"
MIN_COMPILE_S = 0.2
"""Compilations shorter than this are not stored (JAX's default, 1 s, would skip most of the
small programs a tiny run compiles)."""


def directory(environ=os.environ) -> pathlib.Path | None:
    """The cache's base folder, or None when ``$METAMODELS_JAX_CACHE=off``."""
    value = environ.get(ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return pathlib.Path(value).expanduser()
    jax_own = environ.get("JAX_COMPILATION_CACHE_DIR", "").strip()
    if jax_own:
        return pathlib.Path(jax_own).expanduser()
    base = environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "metamodels" / "jax"


def pool_folder(base: pathlib.Path, environ=os.environ) -> pathlib.Path:
    """``base/threads-N`` for this process's XLA CPU pool (``threads-all`` when unlimited). A
    ``base`` that is already such a folder (inherited from a process that exported it, whose
    pool may differ) is replaced by its sibling for this pool."""
    if base.name.startswith("threads-"):
        base = base.parent
    n = environ.get("PJRT_NPROC", "").strip() or "all"
    return base / f"threads-{n}"


def _folder(environ) -> pathlib.Path | None:
    d = directory(environ)
    if d is None:
        return None
    d = pool_folder(d, environ)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return d


def export(environ=os.environ) -> pathlib.Path | None:
    """Point JAX at the cache through its environment variables, in a process that has not
    imported JAX yet; call after :func:`metamodels.core.threads.limit`. Returns the folder, or
    None when disabled, when the folder cannot be created (then JAX compiles as usual) or when
    JAX is already loaded (the variables would not reach it; use :func:`enable`)."""
    import sys
    if "jax" in sys.modules:
        return None
    d = _folder(environ)
    if d is None:
        return None
    environ["JAX_COMPILATION_CACHE_DIR"] = str(d)
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_S))
    return d


def enable(environ=os.environ) -> pathlib.Path | None:
    """Turn the cache on in a process where JAX may already be loaded (:func:`export`'s
    folder). Returns the folder, or None when disabled or not creatable."""
    d = _folder(environ)
    if d is None:
        return None
    import jax
    jax.config.update("jax_compilation_cache_dir", str(d))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return d
