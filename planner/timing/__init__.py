"""Wall-clock predictions: step times (measured, calibrated roofline or default) and whole trials."""

from planner.timing._parallel import RankStepTime, how_many_cards, rank_step_time
from planner.timing._roofline import (
    BANDWIDTH_EFFICIENCY,
    DEFAULT_RELATIVE_INTERVAL,
    GEMM_EFFICIENCY,
    OP_DISPATCH_SECONDS,
    RooflineStep,
    roofline_available,
)
from planner.timing._step import ProfileLookup, StepTimeModel, StepTimes
from planner.timing._trial import TrialWork, count_work, trial_time

__all__ = [
    "BANDWIDTH_EFFICIENCY",
    "DEFAULT_RELATIVE_INTERVAL",
    "GEMM_EFFICIENCY",
    "OP_DISPATCH_SECONDS",
    "ProfileLookup",
    "RankStepTime",
    "RooflineStep",
    "StepTimeModel",
    "StepTimes",
    "TrialWork",
    "count_work",
    "how_many_cards",
    "rank_step_time",
    "roofline_available",
    "trial_time",
]
