"""Wall-clock predictions: step times (measured, calibrated per-op model or default) and whole trials."""

from planner.timing._kernels import (
    BANDWIDTH_EFFICIENCY,
    OP_DISPATCH_SECONDS,
    attention_efficiency,
    gemm_efficiency,
)
from planner.timing._load import load_interval, load_note, load_ratio
from planner.timing._parallel import RankStepTime, how_many_cards, rank_step_time, rank_step_times
from planner.timing._roofline import RooflineStep, roofline_available
from planner.timing._step import ProfileLookup, StepTimeModel, StepTimes, StepTraces
from planner.timing._trial import TrialWork, count_work, host_parts, trial_time

__all__ = [
    "BANDWIDTH_EFFICIENCY",
    "OP_DISPATCH_SECONDS",
    "ProfileLookup",
    "RankStepTime",
    "RooflineStep",
    "StepTimeModel",
    "StepTimes",
    "StepTraces",
    "TrialWork",
    "attention_efficiency",
    "count_work",
    "gemm_efficiency",
    "host_parts",
    "how_many_cards",
    "load_interval",
    "load_note",
    "load_ratio",
    "rank_step_time",
    "rank_step_times",
    "roofline_available",
    "trial_time",
]
