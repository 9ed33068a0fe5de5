"""What only CUDA adds on top of live tensor bytes: context, workspace, fragmentation, kernels.

Each figure says where it comes from. The defaults hold until ``planner profile`` measures the
card; a measured profile then replaces them (see :func:`overhead_for`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from planner.schema import MIB, Card, MeasuredProfile

# CUDA context of a PyTorch process with lazy module loading (the default since CUDA 11.7):
# driver state, the runtime and the kernels loaded so far. Reported between ~300 and ~600 MiB across
# cards and driver versions (nvidia-smi of an idle `torch.zeros(1, device="cuda")` process).
DEFAULT_CONTEXT_BYTES = 500 * MIB
CONTEXT_UNCERTAINTY_BYTES = 150 * MIB

# cuBLAS workspace, taken through the caching allocator on the first matmul of a stream:
# ATen's default CUBLAS_WORKSPACE_CONFIG is ":4096:8" (32 MiB) on Hopper, ":4096:2:16:8" (~8 MiB)
# before (aten/src/ATen/cuda/CublasHandlePool.cpp).
HOPPER_WORKSPACE_BYTES = 32 * MIB
PRE_HOPPER_WORKSPACE_BYTES = 8 * MIB + 128 * 1024

# Reserved over allocated at the peak of a training step: the caching allocator keeps freed blocks
# in segments (2 MiB small pool, 20 MiB+ large segments) that later requests of other sizes cannot
# always reuse. A few percent is typical for transformer training; 5% until measured.
DEFAULT_FRAGMENTATION = 0.05
FRAGMENTATION_UNCERTAINTY = 0.04


@dataclass(frozen=True)
class CudaOverhead:
    """Calibrated or default CUDA overheads of one card."""

    context_bytes: int
    workspace_bytes: int
    fragmentation: float
    source: str
    """"defaults" or the measured profile the figures came from."""

    def reserved(self, allocated: int) -> int:
        """Predicted ``max_memory_reserved`` for a predicted ``max_memory_allocated``."""
        return math.ceil(allocated * (1.0 + self.fragmentation))

    def allocated_limit(self, available: int) -> int:
        """Largest allocated peak whose device bytes still fit in ``available``."""
        return math.floor((available - self.context_bytes) / (1.0 + self.fragmentation))

    @property
    def context_source(self) -> str:
        """How sure the context figure is: a default's spread, or where it was measured."""
        if self.source == "defaults":
            return f"default {self.context_bytes // MIB} MiB ±{CONTEXT_UNCERTAINTY_BYTES // MIB} MiB"
        return f"{self.context_bytes // MIB} MiB measured in {self.source}"

    @property
    def expected_error(self) -> str:
        if self.context_bytes == 0 and self.fragmentation == 0.0:
            return "±2% of live tensor bytes (the trace); the process's code and libraries are not counted"
        if self.source == "defaults":
            return (
                f"±{CONTEXT_UNCERTAINTY_BYTES // MIB} MiB context and ±{FRAGMENTATION_UNCERTAINTY:.0%} "
                "fragmentation (uncalibrated defaults; `planner profile` on this card calibrates them), "
                "plus ±1% for the trace"
            )
        return f"±3% (context and fragmentation calibrated from {self.source})"


def default_overhead(card: Card) -> CudaOverhead:
    if card.kind == "cpu":
        # The host has no context, workspace or caching allocator: live tensor bytes are the answer
        # (the process's own code and libraries are not counted).
        return CudaOverhead(
            context_bytes=0, workspace_bytes=0, fragmentation=0.0, source="host (no CUDA terms)"
        )
    hopper = card.compute_capability_tuple >= (9, 0)
    return CudaOverhead(
        context_bytes=DEFAULT_CONTEXT_BYTES,
        workspace_bytes=HOPPER_WORKSPACE_BYTES if hopper else PRE_HOPPER_WORKSPACE_BYTES,
        fragmentation=DEFAULT_FRAGMENTATION,
        source="defaults",
    )


def overhead_from_profiles(card: Card, profiles: Iterable[MeasuredProfile]) -> CudaOverhead | None:
    """Context and fragmentation measured by ``planner profile`` on ``card``; None without CUDA profiles.

    Context is NVML used minus reserved at the same instant (the median over profiles: it depends on
    the driver and libraries, not the config). Fragmentation is reserved over allocated at the peak,
    minus one; the largest seen is kept, since underestimating it is what turns a fit into an OOM.
    The cuBLAS workspace keeps its per-architecture figure: it is inside the measured allocated bytes.
    """
    if card.kind == "cpu":
        return None
    # The same file can arrive twice (from the store and from --profile): count it once.
    unique = {(p.key, p.created, p.device_name): p for p in profiles if p.device == "cuda"}
    cuda = list(unique.values())
    contexts = [p.context_bytes for p in cuda if p.context_bytes is not None]
    ratios = [
        m.peak_reserved_bytes / m.peak_allocated_bytes - 1.0
        for p in cuda
        for m in p.measurements
        if m.peak_reserved_bytes is not None and m.peak_allocated_bytes
    ]
    if not ratios:
        return None
    default = default_overhead(card)
    # Without NVML's per-process figure (some containers) only fragmentation is measured.
    return CudaOverhead(
        context_bytes=int(statistics.median(contexts)) if contexts else default.context_bytes,
        workspace_bytes=default.workspace_bytes,
        fragmentation=max(0.0, max(ratios)),
        source=f"{len(cuda)} measured profile(s) of {card.name}"
        + ("" if contexts else " (fragmentation only: NVML could not read the process)"),
    )


def overhead_for(card: Card, profiles: Iterable[MeasuredProfile] = ()) -> CudaOverhead:
    """The overheads the estimator should use on ``card``: calibrated from profiles, else defaults."""
    return overhead_from_profiles(card, profiles) or default_overhead(card)
