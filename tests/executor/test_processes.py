"""Real worker processes: kill -9 mid-trial then rerun, two workers sharing SQLite and PostgreSQL, and a
worker stalled inside one step seen from another host.

Workers are forked from the test process, which has imported torch and transformers already: a
fresh interpreter would spend ~5 s importing them per worker. Each fork is a separate process with
its own PID, storage connection and Trainer, which is what these tests are about.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from transformers import TrainerCallback

from planner.executor import _monitor, _study, delete_study, load_results, open_storage, run_sweep
from planner.executor._study import recover
from planner.executor._trial import checkpoint_step, last_checkpoint
from planner.schema import Plan, SweepSpec
from planner.sweep import load_spec
from tests.executor.conftest import Notes, hand_plan, write_spec

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
FORK = multiprocessing.get_context("fork")


class SlowSteps(TrainerCallback):
    """Every optimizer step takes ``seconds`` longer: a window to kill a worker mid-trial, or for
    the other worker to take its share."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def _setup(tmp_path: Path, model_dir: Path, learning_rates: list[float]) -> tuple[SweepSpec, Plan]:
    """Trials of 4 optimizer steps (16 examples, micro-batch 4), a checkpoint every 2."""
    spec = load_spec(
        write_spec(
            tmp_path,
            model_dir,
            train=16,
            eval_examples=4,
            search={"learning_rate": learning_rates},
            checkpoint_every_steps=2,
        )
    )
    return spec, hand_plan(spec, micro_batch=4)


def _fork(target: Callable[[], object]) -> multiprocessing.process.BaseProcess:
    # Connections of storages the test process no longer uses must not be closed from a child
    # (a PostgreSQL socket is shared after fork): collect them here first.
    gc.collect()
    process = FORK.Process(target=target, daemon=True)
    process.start()
    return process


def _finish(process: multiprocessing.process.BaseProcess, timeout: float = 120) -> None:
    process.join(timeout)
    assert process.exitcode == 0, f"worker exit code {process.exitcode} (its traceback is in stderr)"


def test_kill_9_mid_trial_then_rerun_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec, plan = _setup(tmp_path, tiny_model_dir, [1e-3, 2e-3, 3e-3])
    storage, name = spec.storage_url, spec.name
    worker = _fork(lambda: run_sweep(spec, plan, callbacks=[SlowSteps(0.3)]))
    # Kill it once the second trial has a complete checkpoint (Trainer writes trainer_state.json
    # last, and not atomically: the file exists a moment before it is whole): mid-trial, with one
    # trial finished and two steps left in this one.
    trial_dir = spec.output_dir / "trial-001"
    deadline = time.monotonic() + 120
    while checkpoint_step(last_checkpoint(trial_dir)) != 2:
        assert worker.is_alive() and time.monotonic() < deadline, f"worker exit code {worker.exitcode}"
        time.sleep(0.02)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    before = {r.number: r for r in load_results(storage, name).trials}
    assert before[0].status == "complete" and before[1].status == "running"

    observer = Notes()
    rerun = run_sweep(spec, plan, observer=observer)  # this process: the killed worker's PID is gone
    assert observer.notes[0] == "trial 1 was interrupted: continuing it from its checkpoint at step 2"
    assert [t.params["learning_rate"] for t in rerun.trials] == [2e-3, 3e-3]
    after = load_results(storage, name)
    by_number = {r.number: r for r in after.trials}
    assert by_number[0].model_dump() == before[0].model_dump()  # the finished trial is untouched
    assert by_number[1].status == "interrupted" and by_number[1].state == "FAIL"
    continuation = by_number[by_number[1].continued_as]
    assert continuation.continues == 1 and continuation.status == "complete"
    assert (continuation.resumed_from_step or 0) >= 2  # resumed from its checkpoint, not restarted
    assert continuation.steps_done == 4
    completed = Counter(r.params["learning_rate"] for r in after.trials if r.state == "COMPLETE")
    assert completed == {1e-3: 1, 2e-3: 1, 3e-3: 1}
    assert run_sweep(spec, plan).trials == []  # and a third run has nothing left to do


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_split_the_trials_without_duplicates(
    tmp_path: Path, tiny_model_dir: Path, backend: str
) -> None:
    learning_rates = [1e-3, 2e-3, 3e-3, 4e-3]
    spec, plan = _setup(tmp_path, tiny_model_dir, learning_rates)
    storage = spec.storage_url if backend == "sqlite" else POSTGRES
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    go = FORK.Event()

    def work() -> None:
        go.wait()  # both start together
        run_sweep(spec, plan, storage_url=storage, study_name=name, callbacks=[SlowSteps(0.1)])

    try:
        workers = [_fork(work) for _ in range(2)]
        go.set()
        for worker in workers:
            _finish(worker)
        trials = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()
        assert len(trials) == len(learning_rates)
        assert all(t.state is TrialState.COMPLETE for t in trials)
        assert sorted(t.params["learning_rate"] for t in trials) == learning_rates
        pids = {t.user_attrs["worker"]["pid"] for t in trials}
        assert pids == {w.pid for w in workers}  # both workers took trials
    finally:
        delete_study(storage, name)


class StallOnce(TrainerCallback):
    """The second optimizer step takes ``seconds`` more, as a long eval or checkpoint save would;
    ``stalled`` is set when it starts."""

    def __init__(self, seconds: float, stalled: Any) -> None:
        self.seconds, self.stalled = seconds, stalled

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            self.stalled.set()
            time.sleep(self.seconds)


def test_a_worker_stalled_inside_one_step_is_not_taken_for_dead_by_another_host(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grace = 1.0
    monkeypatch.setattr(_monitor, "HEARTBEAT_SECONDS", grace / 5)  # the forked worker inherits it
    monkeypatch.setattr(_study, "STALE_SECONDS", grace)
    spec, plan = _setup(tmp_path, tiny_model_dir, [1e-3])
    stalled = FORK.Event()
    worker = _fork(lambda: run_sweep(spec, plan, callbacks=[StallOnce(4 * grace, stalled)]))
    assert stalled.wait(120), f"worker exit code {worker.exitcode}"
    stall_began = time.monotonic()  # or a little later: seen from here
    # This process plays a second worker on another host: it sees the trial's worker by its
    # heartbeat only (no PID to check), all through the stall.
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url))
    checked_at = []  # seconds into the stall (at least), of checks a grace period before its end
    while time.monotonic() < stall_began + 3 * grace:
        checked_at.append(time.monotonic() - stall_began)
        assert recover(study, spec.storage_url) == [], "a live worker's trial was failed as dead"
        time.sleep(grace / 5)
    monkeypatch.undo()
    _finish(worker)
    (trial,) = load_results(spec.storage_url, spec.name).trials
    # At least one check came over a grace period into the stall: by then only a heartbeat
    # refreshed during the step kept the trial alive (however slow the checks were under load).
    assert max(checked_at) > grace and trial.status == "complete" and trial.steps_done == 4
