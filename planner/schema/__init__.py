"""Pydantic models shared by every part of the planner: the project's vocabulary."""

from planner.schema._card import GIB, MIB, Card, Throughput
from planner.schema._memory import FitReport, Fix, MemoryBreakdown, MemoryEstimate
from planner.schema._plan import DataStats, HalvingRung, Plan, PlannedTrial, TimeEstimate, TimeSource
from planner.schema._profile import (
    MaxBatchSearch,
    MeasuredProfile,
    MeasuredRow,
    ProbeResult,
    ProfileKey,
    StepMeasurement,
)
from planner.schema._sweep import (
    CONFIG_NAMES,
    HYPERPARAMETER_NAMES,
    SEARCHABLE,
    DataCounts,
    DataSpec,
    EvalSpec,
    Hyperparameters,
    Objective,
    Range,
    Scheduler,
    SweepSpec,
    parse_duration,
)
from planner.schema._training import LoraSettings, Method, OptimizerName, Precision, TrainingConfig

__all__ = [
    "CONFIG_NAMES",
    "GIB",
    "HYPERPARAMETER_NAMES",
    "MIB",
    "SEARCHABLE",
    "Card",
    "DataCounts",
    "DataSpec",
    "DataStats",
    "EvalSpec",
    "FitReport",
    "Fix",
    "HalvingRung",
    "Hyperparameters",
    "LoraSettings",
    "MaxBatchSearch",
    "MeasuredProfile",
    "MeasuredRow",
    "MemoryBreakdown",
    "MemoryEstimate",
    "Method",
    "Objective",
    "OptimizerName",
    "Plan",
    "PlannedTrial",
    "Precision",
    "ProbeResult",
    "ProfileKey",
    "Range",
    "Scheduler",
    "StepMeasurement",
    "SweepSpec",
    "Throughput",
    "TimeEstimate",
    "TimeSource",
    "TrainingConfig",
    "parse_duration",
]
