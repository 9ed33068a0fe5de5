"""Trials across two ranks: real ``torch.distributed.run`` groups of Trainer processes, DDP over gloo.

Every test forces the CPU (``CUDA_VISIBLE_DEVICES=""``), so the ranks run the same on a GPU
machine. Each launch starts two interpreters that import torch and transformers: ~20-40 s on a
shared 2-core machine, so each test launches as few groups as it can.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from planner.executor import load_results, run_sweep
from planner.executor._group import GROUP_DIR, process_start, reap_group
from planner.executor._trial import checkpoint_step, last_checkpoint
from planner.schema import Plan, SweepSpec
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec
from tests.executor.test_processes import SlowSteps, _fork

RANKS = 2


@pytest.fixture(autouse=True)
def _cpu_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gloo on the CPU whatever the machine has: the ranks see no GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _ddp_spec(tmp_path: Path, model_dir: Path, *, train: int, **fields: Any) -> SweepSpec:
    base = {
        "model": str(model_dir),
        "method": "full",
        "precision": "fp32",
        "seq_len": 32,
        "parallelism": {"gpus": RANKS, "strategy": "ddp"},
    }
    return load_spec(write_spec(tmp_path, model_dir, train=train, eval_examples=4, base=base, **fields))


def _ranks_plan(spec: SweepSpec, micro_batch: int, seconds: float = 5.0) -> Plan:
    """:func:`hand_plan` with each rank's share: accumulation = effective / (micro-batch x ranks)."""
    plan = hand_plan(spec, micro_batch=micro_batch, seconds=seconds)
    trials = [
        t.model_copy(
            update={
                "config": t.config.with_changes(
                    gradient_accumulation=t.hyper.effective_batch // (micro_batch * RANKS)
                )
            }
        )
        for t in plan.trials
    ]
    return plan.model_copy(update={"trials": trials})


def _rank_files(spec: SweepSpec, number: int) -> list[dict[str, Any]]:
    folder = spec.output_dir / f"trial-{number:03d}" / GROUP_DIR
    return [json.loads((folder / f"rank-{rank}.json").read_text()) for rank in range(RANKS)]


def _gone(pid: int, started: str | None) -> bool:
    """Not running: exited, or dead and waiting to be reaped by whoever adopted it (a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return process_start(pid) != started or state in ("Z", "X")


def test_kill_9_of_the_worker_mid_trial_then_a_rerun_resumes_the_ddp_trial(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 32 rows, 2 per rank and micro-batch, effective batch 4: 8 optimizer steps, a checkpoint every 2.
    spec = _ddp_spec(
        tmp_path, tiny_model_dir, train=32, search={"learning_rate": [1e-3]}, checkpoint_every_steps=2
    )
    plan = _ranks_plan(spec, micro_batch=2)
    worker = _fork(lambda: run_sweep(spec, plan, callbacks=[SlowSteps(0.5)]))
    trial_dir = spec.output_dir / "trial-000"
    deadline = time.monotonic() + 300
    while checkpoint_step(last_checkpoint(trial_dir)) < 2:
        assert worker.is_alive() and time.monotonic() < deadline, f"worker exit code {worker.exitcode}"
        time.sleep(0.05)
    ranks = [json.loads(p.read_text()) for p in sorted((trial_dir / GROUP_DIR).glob("pid-*.json"))]
    assert len({r["pid"] for r in ranks}) == RANKS  # two processes train the trial
    # Frozen first, the ranks cannot see their worker die (they would stop at their next step):
    # they stand for ranks stuck in a long eval, which only the rerun's recovery can stop.
    for rank in ranks:
        os.kill(rank["pid"], signal.SIGSTOP)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    assert load_results(spec.storage_url, spec.name).trials[0].status == "running"

    with caplog.at_level("WARNING", logger="planner.executor._group"):
        rerun = run_sweep(spec, plan)  # recovery: the worker is dead; what is left of its group is killed
    assert all(_gone(r["pid"], r["started"]) for r in ranks)
    assert "killed 3 process(es) left by a dead worker's trial" in caplog.text  # torchrun and 2 ranks
    (continuation,) = rerun.trials
    assert continuation.continues == 0 and continuation.status == "complete"
    assert (continuation.resumed_from_step or 0) >= 2  # from its checkpoint, not from step 0
    assert (
        continuation.steps_done == 8 and continuation.value is not None and math.isfinite(continuation.value)
    )
    assert continuation.memory_kind.endswith(f"the largest of {RANKS} ranks")
    steps = [r["step"] for r in _rank_files(spec, 0)]
    assert steps == [8, 8]
    # Under DDP each rank trains on its half: 4 rows per optimizer step in all.
    assert continuation.training_arguments["per_device_train_batch_size"] == 2
    assert continuation.training_arguments["gradient_accumulation_steps"] == 1


class PaceToDeadline(TrainerCallback):
    """Paces each rank's steps so that the budget's deadline falls mid-trial, whatever the start-up
    took: a fifth of the time left at the start of training per step (at least 0.3 s)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        order = json.loads((Path(args.output_dir) / GROUP_DIR / "order.json").read_text())
        self.begin = time.monotonic()
        self.pace = max(0.3, (order["deadline_time"] - time.time()) / 5)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(max(0.0, self.begin + state.global_step * self.pace - time.monotonic()))


def test_the_budget_stops_every_rank_at_the_same_step_and_prunes_the_trial(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = _ddp_spec(tmp_path, tiny_model_dir, train=32, search={"learning_rate": [1e-3]})
    plan = _ranks_plan(spec, micro_batch=2, seconds=1.0)
    run = run_sweep(spec, plan, budget_seconds=45.0, callbacks=[PaceToDeadline()])
    (cut,) = run.trials
    assert cut.state == "PRUNED" and cut.status == "budget"
    assert cut.reason is not None and "inside the budget" in cut.reason
    assert 0 < (cut.steps_done or 0) < 8
    assert [r["step"] for r in _rank_files(spec, 0)] == [cut.steps_done] * RANKS
    checkpoint = spec.output_dir / "trial-000" / f"checkpoint-{cut.steps_done}"
    assert (checkpoint / "trainer_state.json").is_file()  # saved where every rank stopped


class OomOnRankOne(TrainerCallback):
    """Rank 1 runs out of memory at step 3 while its micro-batch is above 1 (the others wait in
    DDP's all-reduce until torch.distributed.run stops the group)."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        if args.process_index == 1 and state.global_step == 3 and args.per_device_train_batch_size > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (test)")


class StopFileAfter(TrainerCallback):
    """Rank 0 finds the worker's "stop" file (what the worker writes when Optuna's pruner says
    so) during step ``step`` + 1: every rank must stop at the end of that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.process_index == 0 and state.global_step == self.step:
            stop = Path(args.output_dir) / GROUP_DIR / "stop.json"
            stop.write_text(json.dumps({"reason": "the pruner stopped it (test)"}))


def test_out_of_memory_on_one_rank_halves_the_micro_batch_and_resumes_then_all_ranks_prune(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = _ddp_spec(
        tmp_path, tiny_model_dir, train=32, search={"learning_rate": [1e-3]}, checkpoint_every_steps=2
    )
    run = run_sweep(spec, _ranks_plan(spec, micro_batch=2), callbacks=[OomOnRankOne(), StopFileAfter(5)])
    (trial,) = run.trials
    assert trial.oom == [
        {
            "micro_batch": 2,
            "gradient_accumulation": 1,
            "new_micro_batch": 1,
            "new_gradient_accumulation": 2,
            "checkpoint_step": 2,
        }
    ]
    assert (trial.micro_batch, trial.gradient_accumulation) == (1, 2)  # same effective batch of 4
    assert trial.resumed_from_step is None  # a fresh trial; the retry resumed from checkpoint 2
    # The stop was found during step 6: the vote at its end stopped both ranks there, unsaved.
    assert trial.state == "PRUNED" and trial.status == "pruned"
    assert trial.reason == "the pruner stopped it (test)"
    assert trial.steps_done == 6 and [r["step"] for r in _rank_files(spec, 0)] == [6, 6]
    assert checkpoint_step(last_checkpoint(spec.output_dir / "trial-000")) == 4
    assert "rank 1 failed" in (spec.output_dir / "trial-000" / "ranks.log").read_text()  # not the display


def test_recovery_kills_the_ranks_a_dead_worker_left_and_only_those(tmp_path: Path) -> None:
    folder = tmp_path / GROUP_DIR
    folder.mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    orphan = subprocess.Popen(sleeper, start_new_session=True)  # a rank: a session of its own
    other = subprocess.Popen(sleeper, start_new_session=True)
    try:
        host = os.uname().nodename
        (folder / "pid-0.json").write_text(
            json.dumps({"pid": orphan.pid, "started": process_start(orphan.pid), "host": host})
        )
        # The same PID number with another start time is another process now: left alone.
        (folder / "pid-1.json").write_text(json.dumps({"pid": other.pid, "started": "0", "host": host}))
        assert reap_group(tmp_path) == [orphan.pid]
        assert orphan.wait(10) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
        orphan.kill()
        orphan.wait()


def test_a_group_whose_ranks_all_recorded_their_work_finished_whatever_the_exit_code() -> None:
    """A rank that aborts in its process group's teardown, after recording its work, fails the
    launcher but not the trial; a missing record or a rank's error fails it."""
    from planner.executor._group import group_finished

    done = [{"rank": 0, "error": None}, {"rank": 1, "error": None}]
    assert group_finished(done, 2)
    assert not group_finished(done[:1], 2)  # rank 1 died before its record
    assert not group_finished([done[0], {"rank": 1, "error": "RuntimeError: boom"}], 2)


def test_a_failed_groups_error_in_the_worker_is_what_one_process_would_raise(tmp_path: Path) -> None:
    """Out of memory retries smaller; a rank's full or read-only disk is the machine's fault, as
    the worker's check tells it in one process (the trial is left to continue); anything else
    fails the trial with the rank's error and where the ranks' output is."""
    import errno

    import torch

    from planner.executor._group import group_failure
    from planner.executor._rank import os_error
    from planner.executor._trial import infrastructure_fault

    log = tmp_path / "ranks.log"
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "optimizer.pt"))
        except OSError as disk:
            raise RuntimeError("saving the checkpoint failed") from disk
    except RuntimeError as wrapped:
        fault = os_error(wrapped)
    assert fault == {
        "errno": errno.EROFS,
        "strerror": "Read-only file system",
        "filename": str(tmp_path / "optimizer.pt"),
    }
    ok = {"rank": 0, "error": None}
    disk = group_failure([ok, {"rank": 1, "error": "RuntimeError: saving", "os_error": fault}], 1, log)
    assert infrastructure_fault(disk, [tmp_path]) == (
        "output_dir",
        f"Read-only file system: {tmp_path / 'optimizer.pt'}",
    )
    oom = group_failure(
        [ok, {"rank": 1, "error": "OutOfMemoryError: CUDA out of memory", "oom": True}], 1, log
    )
    assert isinstance(oom, torch.OutOfMemoryError) and "rank 1" in str(oom)
    crashed = group_failure([ok, {"rank": 1, "error": "ValueError: bad"}], 1, log)
    assert str(crashed) == f"the trial's ranks failed: ValueError: bad (their output: {log})"
    assert infrastructure_fault(crashed, [tmp_path]) is None
    assert "torch.distributed.run exited with 1" in str(group_failure([], 1, log))
