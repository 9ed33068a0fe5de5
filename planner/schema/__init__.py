"""Pydantic models shared by every part of the planner: the project's vocabulary."""

from planner.schema._card import GIB, MIB, Card, Throughput
from planner.schema._memory import FitReport, Fix, MemoryBreakdown, MemoryEstimate
from planner.schema._training import LoraSettings, Method, OptimizerName, Precision, TrainingConfig

__all__ = [
    "GIB",
    "MIB",
    "Card",
    "FitReport",
    "Fix",
    "LoraSettings",
    "MemoryBreakdown",
    "MemoryEstimate",
    "Method",
    "OptimizerName",
    "Precision",
    "Throughput",
    "TrainingConfig",
]
