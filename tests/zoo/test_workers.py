"""Worker processes: a hang, crash, OOM or exception costs only its own task."""

from __future__ import annotations

import os
import time

from metamodels.zoo.workers import run_tasks


def _init(tag):
    return {"tag": tag, "pid": os.getpid()}


def _task(state, task):
    kind, value = task
    if kind == "sleep":
        time.sleep(value)
    elif kind == "raise":
        raise ValueError(f"bad task {value}")
    elif kind == "crash":
        os._exit(3)
    elif kind == "oom":
        bytearray(value * 1024 * 1024)  # more than the cap
    return (state["tag"], state["pid"], value)


def test_failures_are_isolated_and_ordered():
    tasks = [("ok", 0), ("sleep", 30), ("ok", 1), ("raise", 2), ("crash", 3),
             ("oom", 2048), ("ok", 4)]
    t0 = time.perf_counter()
    out = list(run_tasks(_task, tasks, init=_init, init_args=("x",), workers=2,
                         timeout_s=3, memory_mb=1024, recycle_after=100))
    assert time.perf_counter() - t0 < 25  # the hang was cut at its timeout
    assert [o.index for o in out] == list(range(len(tasks)))
    status = [o.status for o in out]
    assert status == ["ok", "timeout", "ok", "error", "crash", "error", "ok"]
    assert "bad task 2" in out[3].error
    assert "MemoryError" in out[5].error
    assert [o.value[2] for o in out if o.status == "ok"] == [0, 1, 4]
    assert all(o.value[0] == "x" for o in out if o.status == "ok")


def test_workers_are_recycled():
    out = list(run_tasks(_task, [("ok", i) for i in range(7)], init=_init, init_args=("r",),
                         workers=1, timeout_s=30, memory_mb=0, recycle_after=3))
    pids = [o.value[1] for o in out]
    assert len(set(pids)) == 3  # 3 + 3 + 1 tasks
    assert pids[0] == pids[2] != pids[3]
