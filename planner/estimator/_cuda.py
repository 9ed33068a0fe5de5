"""What only CUDA adds on top of live tensor bytes: context, workspace, fragmentation, kernels.

Each figure says where it comes from. The defaults hold until ``planner profile`` measures the
card; a measured profile then replaces them (see :func:`overhead_for`).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from planner.schema import MIB, Card, MeasuredProfile

# CUDA context of a PyTorch process with lazy module loading (the default since CUDA 11.7):
# driver state, the runtime and the kernels loaded so far. Reported between ~300 and ~600 MiB across
# cards and driver versions (nvidia-smi of an idle `torch.zeros(1, device="cuda")` process). Used as
# a whole for a card whose SM count is unknown; otherwise the context is built from its parts below.
DEFAULT_CONTEXT_BYTES = 500 * MIB
CONTEXT_UNCERTAINTY_BYTES = 150 * MIB

# -- the CUDA context by its parts --------------------------------------------------------------
# Local memory (thread stacks): the driver reserves it context-wide for every thread the device can
# hold at once, max resident threads per SM x SMs x stack per thread (NVIDIA developer forum,
# "Local memory management", forums.developer.nvidia.com/t/local-memory-management/289339; the
# cuCtxCreate CU_CTX_LMEM_RESIZE_TO_MAX and cuCtxSetLimit docs). The per-thread stack is
# cudaLimitStackSize, 1 KiB by default (cudaDeviceGetLimit on a fresh context).
STACK_BYTES_PER_THREAD = 1024
# Defaults of the other two context-wide buffers (cudaDeviceSetLimit docs; CUDA C++ Programming
# Guide, "Dynamic Global Memory Allocation": "a default heap of eight megabytes"): the printf FIFO
# (1 MiB) and the device malloc heap (8 MiB), set aside when a module that uses them is loaded
# (kernels with device asserts print through the FIFO); counted in full, an upper bound of 9 MiB.
PRINTF_FIFO_BYTES = 1 * MIB
MALLOC_HEAP_BYTES = 8 * MIB
# Maximum resident threads per SM by compute capability (CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability"): 2048, except 1024 on Turing (7.5) and 1536 on the
# consumer/workstation parts of Ampere (8.6), Ada (8.9) and Blackwell (12.x).
MAX_THREADS_PER_SM = {(7, 5): 1024, (8, 6): 1536, (8, 9): 1536, (12, 0): 1536, (12, 1): 1536}
DEFAULT_MAX_THREADS_PER_SM = 2048
# What no document sizes: the driver's own state, the CUDA runtime, and the kernels a training step
# loads lazily (cuBLAS/cuBLASLt, ATen's elementwise and reduction kernels, attention). A bare
# context (`torch.cuda.mem_get_info`, no kernel run) was 426 MiB on an RTX 6000 Ada (142 SMs x 1536
# threads: 213 MiB of stacks) with PyTorch 2.10 / CUDA 13 (unslothai/unsloth-zoo#1053), leaving
# ~213 MiB; a step loads more. A stated default, with the spread of the flat figure above.
CONTEXT_REMAINDER_BYTES = 250 * MIB
# CUDA_MODULE_LOADING=EAGER (PyTorch sets LAZY when unset, since 1.13: pytorch/pytorch#86509) loads
# every kernel of every library at start: that PR measured 666,632,192 bytes used eager against
# 287,047,680 lazy (CUDA 11.7), ~362 MiB more; libraries have grown since (ptrblck in
# pytorch/pytorch#107667: ">1000MB" before lazy loading), hence the wider spread.
EAGER_MODULES_BYTES = 362 * MIB
EAGER_UNCERTAINTY_BYTES = 400 * MIB


@dataclass(frozen=True)
class CudaContext:
    """The CUDA context's bytes on one card, and how they were arrived at."""

    bytes: int
    basis: str
    uncertainty: int


def max_threads_per_sm(compute_capability: tuple[int, int]) -> int:
    """Resident threads one SM holds at most (CUDA C++ Programming Guide's per-capability table)."""
    return MAX_THREADS_PER_SM.get(compute_capability, DEFAULT_MAX_THREADS_PER_SM)


def cuda_context(card: Card, module_loading: str | None = None) -> CudaContext:
    """The context of a PyTorch process on ``card``: thread stacks for every resident thread, the
    printf FIFO and malloc heap, and a stated default for the rest (eager loading adds its kernels).

    ``module_loading`` is ``CUDA_MODULE_LOADING`` (the environment's when None). A card without an
    SM count keeps the flat default.
    """
    loading = module_loading if module_loading is not None else os.environ.get("CUDA_MODULE_LOADING", "")
    eager = loading.strip().upper() == "EAGER"
    extra, spread = (
        (EAGER_MODULES_BYTES, EAGER_UNCERTAINTY_BYTES) if eager else (0, CONTEXT_UNCERTAINTY_BYTES)
    )
    loaded = " + eager module loading" if eager else ""
    if card.sm_count is None:
        return CudaContext(DEFAULT_CONTEXT_BYTES + extra, f"default (SM count unknown){loaded}", spread)
    threads = max_threads_per_sm(card.compute_capability_tuple)
    stacks = card.sm_count * threads * STACK_BYTES_PER_THREAD
    buffers = PRINTF_FIFO_BYTES + MALLOC_HEAP_BYTES
    total = stacks + buffers + CONTEXT_REMAINDER_BYTES + extra
    basis = (
        f"thread stacks {card.sm_count} SMs x {threads} threads x 1 KiB (cudaLimitStackSize) "
        f"= {stacks // MIB} MiB, printf FIFO and malloc heap {buffers // MIB} MiB, "
        f"driver/runtime/lazily loaded kernels default {CONTEXT_REMAINDER_BYTES // MIB} MiB{loaded}"
    )
    return CudaContext(total, basis, spread)


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
    context_basis: str = "default"
    """How the default context figure was made up (see :func:`cuda_context`)."""
    context_uncertainty: int = CONTEXT_UNCERTAINTY_BYTES

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
            spread = self.context_uncertainty // MIB
            return f"{self.context_bytes // MIB} MiB ±{spread} MiB: {self.context_basis}"
        return f"{self.context_bytes // MIB} MiB measured in {self.source}"

    @property
    def expected_error(self) -> str:
        if self.context_bytes == 0 and self.fragmentation == 0.0:
            return "±2% of live tensor bytes (the trace); the process's code and libraries are not counted"
        if self.source == "defaults":
            return (
                f"±{self.context_uncertainty // MIB} MiB context and ±{FRAGMENTATION_UNCERTAINTY:.0%} "
                "fragmentation (uncalibrated defaults; `planner profile` on this card calibrates them), "
                "plus ±1% for the trace"
            )
        return f"±3% (context and fragmentation calibrated from {self.source})"


def default_overhead(card: Card, module_loading: str | None = None) -> CudaOverhead:
    """The uncalibrated overheads of ``card``; ``module_loading`` as in :func:`cuda_context`."""
    if card.kind == "cpu":
        # The host has no context, workspace or caching allocator: live tensor bytes are the answer
        # (the process's own code and libraries are not counted).
        return CudaOverhead(
            context_bytes=0, workspace_bytes=0, fragmentation=0.0, source="host (no CUDA terms)"
        )
    hopper = card.compute_capability_tuple >= (9, 0)
    context = cuda_context(card, module_loading)
    return CudaOverhead(
        context_bytes=context.bytes,
        workspace_bytes=HOPPER_WORKSPACE_BYTES if hopper else PRE_HOPPER_WORKSPACE_BYTES,
        fragmentation=DEFAULT_FRAGMENTATION,
        source="defaults",
        context_basis=context.basis,
        context_uncertainty=context.uncertainty,
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


def overhead_for(
    card: Card, profiles: Iterable[MeasuredProfile] = (), module_loading: str | None = None
) -> CudaOverhead:
    """The overheads the estimator should use on ``card``: calibrated from profiles, else defaults
    (with ``module_loading`` as in :func:`cuda_context`)."""
    return overhead_from_profiles(card, profiles) or default_overhead(card, module_loading)
