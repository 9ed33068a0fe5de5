"""Trial helpers: which checkpoint a trial resumes from, and how an OOM shrinks the micro-batch."""

from __future__ import annotations

from pathlib import Path

from planner.executor._trial import last_checkpoint, smaller_micro_batch


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
