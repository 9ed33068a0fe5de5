"""Real worker processes: kill -9 mid-trial then rerun, and two workers sharing SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from planner.executor import delete_study, load_results, open_storage
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec

REPO = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _worker(spec: Path, plan: Path, storage: str, study: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.executor._worker", str(spec), str(plan), storage, study, *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes], timeout: float = 240) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode()[-3000:]


def _setup(
    tmp_path: Path, model_dir: Path, learning_rates: list[float], micro_batch: int = 4
) -> tuple[Path, Path]:
    spec_path = write_spec(
        tmp_path, model_dir, train=32, search={"learning_rate": learning_rates}, checkpoint_every_steps=2
    )
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(hand_plan(load_spec(spec_path), micro_batch=micro_batch).model_dump_json())
    return spec_path, plan_path


def test_kill_9_mid_trial_then_rerun_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec_path, plan_path = _setup(tmp_path, tiny_model_dir, [1e-3, 2e-3, 3e-3])
    spec = load_spec(spec_path)
    storage, name = spec.storage_url, spec.name
    worker = _worker(spec_path, plan_path, storage, name, "--step-seconds", "0.3")
    # Kill it once the second trial has a checkpoint: mid-trial, with one trial finished.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if list((spec.output_dir / "trial-001").glob("checkpoint-*")):
            break
        assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    before = {r.number: r for r in load_results(storage, name).trials}
    assert before[0].status == "complete" and before[1].status == "running"

    _finish(_worker(spec_path, plan_path, storage, name))
    after = load_results(storage, name)
    by_number = {r.number: r for r in after.trials}
    assert by_number[0].model_dump() == before[0].model_dump()  # the finished trial is untouched
    assert by_number[1].status == "interrupted" and by_number[1].state == "FAIL"
    continuation = by_number[by_number[1].continued_as]
    assert continuation.continues == 1 and continuation.status == "complete"
    assert (continuation.resumed_from_step or 0) >= 2  # resumed from its checkpoint, not restarted
    completed = Counter(r.params["learning_rate"] for r in after.trials if r.state == "COMPLETE")
    assert completed == {1e-3: 1, 2e-3: 1, 3e-3: 1}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_split_the_trials_without_duplicates(
    tmp_path: Path, tiny_model_dir: Path, backend: str
) -> None:
    learning_rates = [1e-3, 2e-3, 3e-3, 4e-3]
    spec_path, plan_path = _setup(tmp_path, tiny_model_dir, learning_rates)
    storage = load_spec(spec_path).storage_url if backend == "sqlite" else POSTGRES
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    try:
        workers = [
            _worker(spec_path, plan_path, storage, name, "--step-seconds", "0.15", "--wait", str(go))
            for _ in range(2)
        ]
        go.touch()
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
