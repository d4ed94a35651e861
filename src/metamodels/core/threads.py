"""Keep a job's process to the CPU threads its Snakemake rule declares.

Snakemake schedules jobs so that the ``threads:`` of the jobs running at once add up to at most
``--cores``; that only helps when each job's process then uses that many threads. Left alone,
XLA's CPU client sizes its compute pool to every core of the machine, and so do OpenBLAS, MKL
and OpenMP inside NumPy: 64 jobs on a 64-core node would each start 64 busy threads.

:func:`limit` sets, before NumPy or JAX is imported, the thread count of
  * XLA's CPU client (``PJRT_NPROC``: the size of its intra-op compute pool),
  * OpenBLAS, MKL, OpenMP, Apple Accelerate and numexpr (their ``*_NUM_THREADS`` variables),
and every worker process a verb starts inherits them. ``python -m metamodels`` calls it once for
every verb (``__main__.main``), with the count from :func:`wanted`:

1. the ``threads`` section the rule passes in ``--config`` (one key, the rule's group in
   ``params.yaml``'s ``threads``): the thread count is a parameter, so a job's outputs are a
   function of params alone, whatever ``--cores`` (Snakemake lowers a rule's threads to
   ``--cores`` when it has fewer; the process keeps the params value, so the results stay the
   same and at most ``threads - cores`` threads share a core);
2. else ``OMP_NUM_THREADS``, which Snakemake sets to each job's threads (rules whose verb takes
   no params: reports, figures);
3. else nothing is limited (a verb typed by hand uses the whole machine).

Why the count matters for results too: XLA splits convolutions across its pool, so a CNN trained
with 1 thread and with 2 can differ in the last bits (measured: the CNN zoo's shards did; the
decompiler, the modadd runs and the variant zoos did not).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

#: Environment variables read by the thread pools of XLA's CPU client and NumPy's BLAS/OpenMP.
POOL_VARIABLES = ("PJRT_NPROC", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                  "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

#: Name of the threads of XLA's CPU compute pool (Eigen's thread pool, as Linux reports it).
XLA_POOL_THREAD = "tf_XLAEigen"


def wanted(config_json: str | None, environ=os.environ) -> int | None:
    """The thread count a verb's process keeps to, or None for no limit.

    ``config_json``: the verb's ``--config`` (JSON sections of params.yaml) or None. Its
    ``threads`` section, when present, must hold exactly one group (what one rule passes).
    Raises ValueError when it holds several, or when a count is not a positive integer.
    """
    if config_json:
        groups = json.loads(config_json).get("threads")
        if groups:
            if len(groups) != 1:
                raise ValueError(f"--config: 'threads' must name one group (the rule's), got "
                                 f"{sorted(groups)}; pass section_params(threads=[GROUP], ...)")
            (n,) = groups.values()
            return _positive(n, "--config threads")
    if environ.get("OMP_NUM_THREADS"):
        return _positive(environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS")
    return None


def _positive(value, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"{name}: {value!r} is not a positive whole number of threads")
    return n


def limit(n: int | None, environ=os.environ) -> bool:
    """Make this process (and the processes it starts) use ``n`` CPU threads for compute.

    Works only before NumPy or JAX is imported (their pools are sized when they load): then it
    sets the variables of :data:`POOL_VARIABLES` and returns True. Called later (``main()``
    run inside a process that already computes, as tests do), it changes nothing, says so on
    stderr and returns False. ``n`` None: nothing to do, returns False.
    """
    if n is None:
        return False
    loaded = [m for m in ("numpy", "jax", "jaxlib", "torch") if m in sys.modules]
    if loaded:
        print(f"[threads] {', '.join(loaded)} already loaded in this process: its thread pools "
              f"stay as they are (wanted {n})", file=sys.stderr)
        return False
    for name in POOL_VARIABLES:
        environ[name] = str(n)
    return True


def census() -> dict[str, int]:
    """This process's threads now: ``os`` (all, from /proc/self/status), ``xla_pool`` (threads
    of XLA's CPU compute pool; 0 before JAX first computes; absent when JAX is not loaded) and
    ``blas`` (the largest pool of
    the BLAS/OpenMP libraries loaded, as threadpoolctl reads them; absent when none is loaded).
    Linux only: {} where /proc is missing."""
    try:
        status = pathlib.Path("/proc/self/status").read_text()
        names = [pathlib.Path(t, "comm").read_text().strip()
                 for t in pathlib.Path("/proc/self/task").iterdir()]
    except OSError:
        return {}
    out = {"os": int(status.split("Threads:")[1].split()[0])}
    if "jaxlib" in sys.modules:  # a verb that never loads JAX has no XLA pool to report
        out["xla_pool"] = names.count(XLA_POOL_THREAD)
    from threadpoolctl import threadpool_info
    pools = [p["num_threads"] for p in threadpool_info()]
    if pools:
        out["blas"] = max(pools)
    return out
