"""Wall-clock predictions: step times (measured, calibrated roofline or default) and whole trials."""

from planner.timing._roofline import (
    BANDWIDTH_EFFICIENCY,
    DEFAULT_RELATIVE_INTERVAL,
    GEMM_EFFICIENCY,
    OP_DISPATCH_SECONDS,
    RooflineStep,
)
from planner.timing._step import ProfileLookup, StepTimeModel, StepTimes, StepTraces
from planner.timing._trial import TrialWork, count_work, trial_time

__all__ = [
    "BANDWIDTH_EFFICIENCY",
    "DEFAULT_RELATIVE_INTERVAL",
    "GEMM_EFFICIENCY",
    "OP_DISPATCH_SECONDS",
    "ProfileLookup",
    "RooflineStep",
    "StepTimeModel",
    "StepTimes",
    "StepTraces",
    "TrialWork",
    "count_work",
    "trial_time",
]
