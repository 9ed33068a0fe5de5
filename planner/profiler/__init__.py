"""Measure on the real device: step times and peak memory per micro-batch, the true max micro-batch,
and the profiles that calibrate the estimator and give the planner its step times.

Profiles are stored as JSON under ``profiles/measured/`` of the working directory, or under
``$VRAM_PLANNER_MEASURED`` when set (see :class:`ProfileStore`).
"""

from planner.profiler._calibration import calibrated_overhead, fit_with_profiles, measured_rows
from planner.profiler._device import device_card, local_device, profile_card_name, resolve_device
from planner.profiler._finder import Prediction, find_max_micro_batch, runner_probe, search_max_micro_batch
from planner.profiler._host import (
    RUN_IMPORTS,
    cached_host_profile,
    host_profile,
    host_profile_path,
    import_run_modules,
    machine_load,
    measure_host,
    process_started,
    rank_launch_seconds,
)
from planner.profiler._oom_log import OomLog
from planner.profiler._profile import profile_config, profiled_micro_batches
from planner.profiler._runner import ProbeMemory, StepRunner, training_flops_per_token
from planner.profiler._simulate import OutOfMemoryAbove
from planner.profiler._store import MEASURED_ENV, ProfileStore, library_versions, load_profile, measured_dir

__all__ = [
    "MEASURED_ENV",
    "RUN_IMPORTS",
    "OomLog",
    "OutOfMemoryAbove",
    "Prediction",
    "ProbeMemory",
    "ProfileStore",
    "StepRunner",
    "cached_host_profile",
    "calibrated_overhead",
    "device_card",
    "find_max_micro_batch",
    "fit_with_profiles",
    "host_profile",
    "host_profile_path",
    "import_run_modules",
    "library_versions",
    "load_profile",
    "local_device",
    "machine_load",
    "measure_host",
    "measured_dir",
    "measured_rows",
    "process_started",
    "profile_card_name",
    "profile_config",
    "profiled_micro_batches",
    "rank_launch_seconds",
    "resolve_device",
    "runner_probe",
    "search_max_micro_batch",
    "training_flops_per_token",
]
