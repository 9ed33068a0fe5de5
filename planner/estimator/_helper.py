"""A forked copy of this process that runs tasks beside it, so that a fit uses two cores.

Used by :func:`planner.estimator.fit`: the copy builds and traces the full-depth model while this
process probes shallow ones, and both share the fix candidates. A task is a module-level
function and picklable arguments. The heap is frozen while a helper lives (see
:func:`heap_frozen`): the copy then shares its pages with this process instead of copying them.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from typing import Any

from planner.errors import PlannerError


class Helper:
    """A forked copy of this process that runs tasks beside it, so a fit uses two cores.

    A task is a module-level function and picklable arguments; the copy runs tasks in the order
    sent and answers in that order. It starts with everything this process had imported and
    traced, and keeps what it traces itself (its copy of the shared trace cache) between tasks.
    Should it die, the tasks it still owed are run here instead.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end,), daemon=True)
        self._process.start()
        child_end.close()
        self._tasks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._answers: dict[int, tuple[str, Any]] = {}
        self._sent = 0
        self._received = 0

    @classmethod
    @contextmanager
    def fork(cls, *, worth_it: bool) -> Iterator[Helper | None]:
        """A helper while the block runs, or None on one core, without ``fork``, or when not ``worth_it``."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if not worth_it or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
            yield None
            return
        with heap_frozen():
            helper = cls()
            try:
                yield helper
            finally:
                helper.close()

    @property
    def busy(self) -> int:
        """Tasks sent and not answered yet."""
        return self._sent - self._received

    def submit(self, function: Callable[..., Any], *args: Any) -> int:
        """Send a task; returns its id for :meth:`result`."""
        task = self._sent
        self._tasks[task] = (function, args)
        self._sent += 1
        # Should the copy be gone, the task runs here when its answer is asked for.
        with suppress(OSError):
            self._conn.send((function, args))
        return task

    def poll(self) -> None:
        """Take in the answers that have arrived, without waiting."""
        while self.busy and self._conn.poll():
            self._receive()

    def result(self, task: int) -> Any:
        """The task's return value (waiting for it), or its exception raised here."""
        while task not in self._answers:
            self._receive()
        self._tasks.pop(task)
        return _unwrap(self._answers.pop(task))

    def _receive(self) -> None:
        try:
            answer = self._conn.recv()
        except (EOFError, OSError):
            answer = _run(*self._tasks[self._received])
        self._answers[self._received] = answer
        self._received += 1

    def close(self) -> None:
        if self.busy:
            # Leaving early (an error here): nothing will read what it is still tracing.
            self._process.terminate()
        else:
            with suppress(OSError):
                self._conn.send(None)
        self._process.join()
        self._conn.close()


def spare_core(samples: int = 5, interval: float = 0.01) -> bool:
    """Whether a CPU this process may use is wanted by no other runnable task now.

    Linux counts the runnable tasks in ``/proc/loadavg``'s fourth field (this process included);
    the least of a few samples is taken, so that a kernel thread's blip is not load. A helper on
    a machine whose cores are all busy with other work only competes with this process (its
    duplicated warm-up then costs more than the parallel part saves). Where ``/proc`` cannot
    tell, the core counts as spare.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    running = []
    try:
        for _ in range(samples):
            with open("/proc/loadavg") as handle:
                running.append(int(handle.read().split()[3].split("/")[0]))
            time.sleep(interval)
    except (OSError, IndexError, ValueError):
        return True
    return cores - (min(running) - 1) >= 2


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Keep the garbage collector off every object that exists now, for the block's duration.

    A multi-second trace triggers full collections, each walking the whole heap of torch and
    transformers; frozen, they skip it. A forked copy keeps it frozen for life, which is Python's
    advice for fork (its collections then touch none of the pages it shares). Garbage among the
    frozen objects waits for the block's end. A heap someone else froze is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _serve(conn: Connection) -> None:
    """The helper's loop: run each task received, send back its answer; stop on None or EOF."""
    import torch

    # Traces allocate nothing; real ops in a forked child must not wait on the parent's thread pool.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent handles it and ends this copy.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(_run(*task))


def _run(function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", function(*args)
    except PlannerError as exc:
        # PlannerError does not survive pickling (its constructor takes three arguments).
        return "user-error", (type(exc), exc.field, exc.problem, exc.fix)
    except Exception:
        return "error", traceback.format_exc()


def _unwrap(answer: tuple[str, Any]) -> Any:
    status, value = answer
    if status == "ok":
        return value
    if status == "user-error":
        error_type, field, problem, fix = value
        raise error_type(field, problem, fix)
    raise RuntimeError(f"the trace helper process failed:\n{value}")


def share(helper: Helper | None, tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """Run independent tasks on both processes: the helper from the front, this one from the back.

    The helper is kept a task ahead (one running, one queued), so it seldom waits on this process;
    this one takes tasks from the back until the two meet, the last task always (two tasks: one
    each). Results come back in task order.
    """
    if helper is None:
        return [function(*args) for function, args in tasks]
    results: list[Any] = [None] * len(tasks)
    sent: dict[int, int] = {}
    front, back = 0, len(tasks)
    while front < back:
        helper.poll()
        while helper.busy < 2 and front < back - 1:
            function, args = tasks[front]
            sent[front] = helper.submit(function, *args)
            front += 1
        if front < back:
            back -= 1
            function, args = tasks[back]
            results[back] = function(*args)
    for index, task in sent.items():
        results[index] = helper.result(task)
    return results
