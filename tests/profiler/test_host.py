"""This machine's host speeds: measured with the real Trainer and collator, cached, load recorded."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from planner.errors import ProfileError
from planner.profiler import (
    _host,
    cached_host_profile,
    host_profile,
    host_profile_path,
    machine_load,
    measure_host,
    rank_launch_seconds,
)
from planner.profiler._host import _frozen_heap


def test_cheap_host_measurement_records_speeds_and_load(tmp_path: Path) -> None:
    profile = measure_host(tmp_path, with_trainer=False)
    assert profile.disk_write_bytes_per_second > 0 and profile.storage_read_bytes_per_second > 0
    assert profile.machine_load.cpu_count == machine_load().cpu_count
    assert profile.machine_load.load_average >= 0
    assert not profile.has_trainer and profile.collate_fixed_seconds is None
    assert not list(tmp_path.iterdir())  # scratch files are gone


def test_host_profile_measures_trainer_once_and_reuses_it(tmp_path: Path) -> None:
    assert cached_host_profile(tmp_path, with_trainer=False) is None  # reading measures nothing
    cheap = host_profile(tmp_path, with_trainer=False)
    assert cached_host_profile(tmp_path, with_trainer=False) == cheap
    assert cached_host_profile(tmp_path, with_trainer=True) is None
    assert host_profile_path(tmp_path).is_file()
    assert host_profile(tmp_path, with_trainer=False) == cheap  # reused
    gc.unfreeze()  # what earlier tests in this process froze: the Trainer run freezes its own heap
    full = host_profile(tmp_path, with_trainer=True)  # the cached one lacks the Trainer part
    assert gc.get_freeze_count() == 0  # the heap frozen for the Trainer run, unfrozen after
    assert full.has_trainer and full.created >= cheap.created
    assert full.trainer_setup_seconds is not None and full.trainer_setup_seconds > 0
    assert full.trainer_step_seconds is not None and full.trainer_step_seconds > 0
    assert full.save_fixed_seconds is not None and full.eval_batch_seconds is not None
    assert full.collate_token_seconds is not None
    # The study's storage as a run keeps it, and the spread of the repeated Trainer steps.
    assert full.study_open_seconds is not None and full.study_open_seconds > 0
    assert full.study_trial_seconds is not None and full.study_trial_seconds > 0
    assert full.repeat_spread_low is not None and full.repeat_spread_high is not None
    assert full.repeat_spread_low <= 1.0 <= full.repeat_spread_high
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # scratch removed
    assert host_profile(tmp_path, with_trainer=False) == full  # the fuller one serves both


def test_trainer_costs_are_timed_with_the_heap_frozen_as_a_sweep_freezes_it() -> None:
    """A sweep's trials run with the heap frozen (``run_sweep``), so their collections skip it; the
    Trainer measurement does the same, and leaves the collector as it found it."""
    gc.unfreeze()  # what earlier tests in this process froze
    with _frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a plan made inside a running sweep: its frozen heap stays frozen
    try:
        with _frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_rank_launch_that_cannot_import_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_host, "_RANK_IMPORTS", "import planner_no_such_module")
    rank_launch_seconds.cache_clear()
    try:
        with pytest.raises(ProfileError, match="planner_no_such_module"):
            rank_launch_seconds()
    finally:
        rank_launch_seconds.cache_clear()
