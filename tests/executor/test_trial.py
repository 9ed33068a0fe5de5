"""Trial helpers: which checkpoint a trial resumes from, how an OOM shrinks the micro-batch, and which
errors are the machine's rather than the trial's."""

from __future__ import annotations

import errno
from pathlib import Path

import sqlalchemy.exc

from planner.executor._trial import infrastructure_fault, last_checkpoint, smaller_micro_batch


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
