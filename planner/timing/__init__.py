"""Wall-clock predictions: step times (measured, calibrated roofline or default) and whole trials."""

from planner.timing._load import load_interval, load_note, load_ratio
from planner.timing._roofline import (
    BANDWIDTH_EFFICIENCY,
    DEFAULT_RELATIVE_INTERVAL,
    GEMM_EFFICIENCY,
    OP_DISPATCH_SECONDS,
    RooflineStep,
)
from planner.timing._step import ProfileLookup, StepTimeModel, StepTimes
from planner.timing._trial import TrialWork, count_work, host_parts, trial_time

__all__ = [
    "BANDWIDTH_EFFICIENCY",
    "DEFAULT_RELATIVE_INTERVAL",
    "GEMM_EFFICIENCY",
    "OP_DISPATCH_SECONDS",
    "ProfileLookup",
    "RooflineStep",
    "StepTimeModel",
    "StepTimes",
    "TrialWork",
    "count_work",
    "host_parts",
    "load_interval",
    "load_note",
    "load_ratio",
    "trial_time",
]
