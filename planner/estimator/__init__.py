"""Peak training memory without a GPU: fake-tensor traces of a real step plus CUDA's overheads."""

from planner.estimator._cuda import (
    CudaOverhead,
    default_overhead,
    overhead_for,
    overhead_from_profiles,
    sdpa_backend,
)
from planner.estimator._fit import Estimator, estimate_memory, fit, suggest_fixes
from planner.estimator._trace import CudaTarget, StepTrace, trace_step

__all__ = [
    "CudaOverhead",
    "CudaTarget",
    "Estimator",
    "StepTrace",
    "default_overhead",
    "estimate_memory",
    "fit",
    "overhead_for",
    "overhead_from_profiles",
    "sdpa_backend",
    "suggest_fixes",
    "trace_step",
]
