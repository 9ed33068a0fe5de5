"""Trial helpers: which checkpoint a trial resumes from, how an OOM shrinks the micro-batch, and which
errors are the machine's rather than the trial's, and what experiment trackers see of each trial."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from transformers import TrainerCallback

from planner.executor import run_sweep
from planner.executor._trial import infrastructure_fault, last_checkpoint, smaller_micro_batch
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec


def test_a_checkpoint_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path / "none") is None
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_s')):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"")
        (checkpoint / "trainer_state.json").write_text(state)  # kill -9 while writing step 6's
    (tmp_path / "checkpoint-8").mkdir()  # and one killed before it got that far
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def test_smaller_micro_batch_keeps_the_accumulation_whole() -> None:
    assert [smaller_micro_batch(m) for m in (1, 2, 4, 6, 7, 12)] == [None, 1, 2, 3, 1, 6]


def test_the_machine_s_errors_are_told_from_the_trial_s(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    roots = [runs, tmp_path / "sweep.db"]
    refused = PermissionError(errno.EACCES, "Permission denied", str(runs / "trial-000" / "x"))
    read_only = OSError(errno.EROFS, "Read-only file system", "/elsewhere/cache")
    assert infrastructure_fault(refused, roots) == ("output_dir", f"Permission denied: {refused.filename}")
    assert infrastructure_fault(read_only, roots) == ("output_dir", "Read-only file system: /elsewhere/cache")
    full = OSError(errno.ENOSPC, "No space left on device")  # write() names no file
    assert infrastructure_fault(full, roots) == ("output_dir", "No space left on device")
    try:  # raised while handling the disk's error, as a library wrapping it would
        try:
            raise full
        except OSError as cause:
            raise RuntimeError("saving the checkpoint failed") from cause
    except RuntimeError as wrapped:
        assert infrastructure_fault(wrapped, roots) == ("output_dir", "No space left on device")
    locked = sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database is locked"))
    assert infrastructure_fault(locked, roots) == ("storage", "it failed (Exception: database is locked)")
    # The trial's or the user's: a dataset it may not read, a missing file, a bug.
    dataset = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "train.jsonl"))
    assert infrastructure_fault(dataset, roots) is None
    assert infrastructure_fault(FileNotFoundError(errno.ENOENT, "No such file", str(runs)), roots) is None
    assert infrastructure_fault(ValueError("bad shape"), roots) is None


class SeeGroup(TrainerCallback):
    """Records the W&B group each trial's trackers would read, and that it is gone afterwards."""

    def __init__(self) -> None:
        self.groups: list[str | None] = []

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.groups.append(os.environ.get("WANDB_RUN_GROUP"))


def test_report_to_names_each_trial_and_groups_them_by_study(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    spec = load_spec(write_spec(tmp_path, tiny_model_dir, train=8, eval_examples=4))
    seen = SeeGroup()
    run = run_sweep(spec, hand_plan(spec, micro_batch=4), report_to=["tensorboard"], callbacks=[seen])
    assert [t.status for t in run.trials] == ["complete", "complete"]
    assert seen.groups == [spec.name, spec.name] and "WANDB_RUN_GROUP" not in os.environ

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = spec.output_dir / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [f"{spec.name}-trial-0", f"{spec.name}-trial-1"]
    for trial in run.trials:
        events = EventAccumulator(str(runs / f"{spec.name}-trial-{trial.number}"))
        events.Reload()
        losses = [event.value for event in events.Scalars("train/loss")]
        assert losses == pytest.approx([loss for _, loss in trial.losses])  # this trial's own curve
        (arguments,) = events.Tensors("args/text_summary")
        logged = arguments.tensor_proto.string_val[0].decode()
        assert f'"run_name": "{spec.name}-trial-{trial.number}"' in logged
