"""Run a function over tasks in recycled worker processes, with a timeout and a memory cap.

tracr can hang, crash or eat memory on some programs, and worker processes
grow with every compile. Each task here runs in a child process whose address
space is capped (``RLIMIT_AS``); a task that exceeds its time limit gets its
worker killed, a worker that dies (segfault, OOM kill) is replaced, and every
worker is replaced after ``recycle_after`` tasks. A failing task costs only
itself: it comes back as a :class:`Outcome` with ``status`` ``timeout``,
``crash`` or ``error`` and the run goes on. Results come back in task order.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import resource
import time
import traceback
from typing import Any, Callable, Iterable, Iterator

_CTX = mp.get_context("spawn")  # no forked JAX/XLA state in children


@dataclasses.dataclass
class Outcome:
    index: int
    status: str  # "ok" | "error" | "timeout" | "crash"
    value: Any = None
    error: str = ""
    seconds: float = 0.0


def _child(conn, fn: Callable, init: Callable | None, init_args: tuple, memory_mb: int) -> None:
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    state = init(*init_args) if init is not None else None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, task = msg
        t0 = time.perf_counter()
        try:
            value = fn(state, task)
            conn.send((index, "ok", value, "", time.perf_counter() - t0))
        except MemoryError:
            conn.send((index, "error", None, "MemoryError: exceeded compile.memory_mb",
                       time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - any failure is that task's result
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            conn.send((index, "error", None, tb, time.perf_counter() - t0))


class _Worker:
    def __init__(self, fn, init, init_args, memory_mb):
        self.parent, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_child, args=(child, fn, init, init_args, memory_mb),
                                 daemon=True)
        self.proc.start()
        child.close()
        self.done = 0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.parent.close()

    def stop(self) -> None:
        try:
            self.parent.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=10)
        self.kill()


def run_tasks(fn: Callable[[Any, Any], Any], tasks: Iterable[Any], *,
              init: Callable[..., Any] | None = None, init_args: tuple = (),
              workers: int = 1, timeout_s: float = 60.0, memory_mb: int = 4096,
              recycle_after: int = 100) -> Iterator[Outcome]:
    """Yield one Outcome per task, in task order.

    `fn(state, task)` runs in a child; `state = init(*init_args)` is built once
    per child (e.g. the verification inputs). `fn`, `init` and tasks must be
    importable/picklable for the 'spawn' start method (module-level functions,
    plain data).
    """
    tasks = list(tasks)
    pending = list(range(len(tasks)))[::-1]
    pool: list[_Worker | None] = [None] * max(1, workers)
    busy: dict[int, tuple[int, float]] = {}  # slot -> (task index, start time)
    results: dict[int, Outcome] = {}
    next_out = 0
    try:
        while next_out < len(tasks):
            for slot in range(len(pool)):
                if slot in busy or not pending:
                    continue
                w = pool[slot]
                if w is None or w.done >= recycle_after or not w.proc.is_alive():
                    if w is not None:
                        w.stop()
                    w = pool[slot] = _Worker(fn, init, init_args, memory_mb)
                i = pending.pop()
                w.parent.send((i, tasks[i]))
                busy[slot] = (i, time.perf_counter())
            ready = mp.connection.wait([pool[s].parent for s in busy] +
                                       [pool[s].proc.sentinel for s in busy], timeout=0.2)
            now = time.perf_counter()
            for slot, (i, t0) in list(busy.items()):
                w = pool[slot]
                if w.parent in ready or w.parent.poll():
                    try:
                        idx, status, value, err, secs = w.parent.recv()
                    except (EOFError, OSError):
                        results[i] = Outcome(i, "crash", error=_exit_reason(w), seconds=now - t0)
                        w.kill()
                        pool[slot] = None
                    else:
                        results[idx] = Outcome(idx, status, value, err, secs)
                        w.done += 1
                    del busy[slot]
                elif not w.proc.is_alive():
                    results[i] = Outcome(i, "crash", error=_exit_reason(w), seconds=now - t0)
                    w.kill()
                    pool[slot] = None
                    del busy[slot]
                elif now - t0 > timeout_s:
                    results[i] = Outcome(i, "timeout", error=f"exceeded compile.timeout_s={timeout_s}",
                                         seconds=now - t0)
                    w.kill()
                    pool[slot] = None
                    del busy[slot]
            while next_out in results:
                yield results.pop(next_out)
                next_out += 1
    finally:
        for w in pool:
            if w is not None:
                w.kill()


def _exit_reason(w: _Worker) -> str:
    w.proc.join(timeout=1)
    code = w.proc.exitcode
    if code is not None and code < 0:
        return f"worker killed by signal {-code} (likely out of memory or a segfault)"
    return f"worker exited with code {code}"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
