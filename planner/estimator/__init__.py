"""Peak training memory without a GPU: fake-tensor traces of a real step plus CUDA's overheads."""

from planner.estimator._cuda import (
    CONTEXT_UNCERTAINTY_BYTES,
    FRAGMENTATION_UNCERTAINTY,
    CudaContext,
    CudaOverhead,
    cuda_context,
    default_overhead,
    overhead_for,
    overhead_from_profiles,
)
from planner.estimator._estimator import INCLUDES, Estimator
from planner.estimator._fit import (
    cheapest_fix,
    estimate_memory,
    fit,
    import_what_builds,
    micro_batches_around,
    predicted_max,
    suggest_fixes,
)
from planner.estimator._helper import Helper, share, spare_core
from planner.estimator._linear import MAX_MICRO_BATCH, LinearPeak, probe_depths
from planner.estimator._rank import RankSplit, rank_fit, rank_split
from planner.estimator._traces import TakenTraces, TraceCache, shared_cache

__all__ = [
    "CONTEXT_UNCERTAINTY_BYTES",
    "FRAGMENTATION_UNCERTAINTY",
    "INCLUDES",
    "MAX_MICRO_BATCH",
    "CudaContext",
    "CudaOverhead",
    "Estimator",
    "Helper",
    "LinearPeak",
    "RankSplit",
    "TakenTraces",
    "TraceCache",
    "cheapest_fix",
    "cuda_context",
    "default_overhead",
    "estimate_memory",
    "fit",
    "import_what_builds",
    "micro_batches_around",
    "overhead_for",
    "overhead_from_profiles",
    "predicted_max",
    "probe_depths",
    "rank_fit",
    "rank_split",
    "share",
    "shared_cache",
    "spare_core",
    "suggest_fixes",
]
