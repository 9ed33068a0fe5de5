"""This machine's host speeds: measured with the real Trainer and collator, cached, load recorded."""

from __future__ import annotations

from pathlib import Path

from planner.profiler import cached_host_profile, host_profile, host_profile_path, machine_load, measure_host


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
    full = host_profile(tmp_path, with_trainer=True)  # the cached one lacks the Trainer part
    assert full.has_trainer and full.created >= cheap.created
    assert full.trainer_setup_seconds is not None and full.trainer_setup_seconds > 0
    assert full.trainer_step_seconds is not None and full.trainer_step_seconds > 0
    assert full.save_fixed_seconds is not None and full.eval_batch_seconds is not None
    assert full.collate_token_seconds is not None
    assert host_profile(tmp_path, with_trainer=False) == full  # the fuller one serves both
