"""DeepSpeed ZeRO's model states per rank: what each stage partitions, byte by byte.

Mixed-precision AdamW under DeepSpeed keeps, per parameter: the 16-bit weight (2 bytes) and
16-bit gradient (2) the step computes with, and in its optimizer an fp32 master weight (4), an
fp32 gradient (4: ``single_partition_of_fp32_groups[i].grad`` in ``stage_1_and_2.py``, the fp32
gradient partition in ``stage3.py``) and Adam's two moments (8). Stage 1 partitions the fp32
parts over the ranks, stage 2 the 16-bit gradient too, stage 3 the 16-bit weight too, which it
all-gathers one layer at a time (the largest layer's 16-bit weight and gradient, 4 bytes per
parameter, are what DeepSpeed's estimator reserves for it). Offloading the optimizer moves the
fp32 parts to host RAM; offloading parameters (stage 3) moves the 16-bit weights too.

These are model states only (no activations, no communication buckets, no allocator): the
answer for offloaded ZeRO, which is not traced per rank (without offload the trace runs
DeepSpeed's engine itself, :mod:`planner.distributed._deepspeed`). Tests check these terms against
DeepSpeed's own ``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs`` (deepspeed 0.19.8, ``runtime/zero``). Stage 1 has no
DeepSpeed formula to check against.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import ConfigError
from planner.schema import Offload, Parallelism, Strategy

HALF_WEIGHT = 2
HALF_GRADIENT = 2
FP32_MASTER = 4
FP32_GRADIENT = 4
ADAM_MOMENTS = 8
FP32_STATES = FP32_MASTER + FP32_GRADIENT + ADAM_MOMENTS
"""Bytes per parameter the optimizer keeps in fp32: what every ZeRO stage partitions."""


@dataclass(frozen=True)
class ZeroModelStates:
    """Model-state bytes of one rank of a ZeRO job (mixed-precision AdamW)."""

    gpu_bytes: int
    """On each GPU: replicated 16-bit parts, this rank's partitions, the gathered largest layer."""
    host_bytes: int
    """In host RAM per rank: offloaded partitions."""
    partitioned_bytes: int
    """Of ``gpu_bytes``, the rank's partitions (1/N of the model's)."""
    replicated_bytes: int
    """Of ``gpu_bytes``, what every rank holds whole (16-bit weights and/or gradients)."""
    gathered_bytes: int
    """Of ``gpu_bytes``, stage 3's all-gathered largest layer (16-bit weight and gradient)."""


def zero_model_states(
    parameters: int, largest_layer_parameters: int, parallelism: Parallelism
) -> ZeroModelStates:
    """Model states per rank of ``parameters`` trained with ZeRO as ``parallelism`` says.

    Per parameter on the GPU: stage 1 keeps 16-bit weight and gradient whole and 1/N of the fp32
    states; stage 2 also 1/N of the 16-bit gradient; stage 3 also 1/N of the 16-bit weight, plus
    the gathered largest layer. With the optimizer offloaded, the fp32 states live on the host
    and gradient partitions stream there (the GPU keeps the 16-bit weights only, as DeepSpeed's
    estimator counts); with parameters offloaded (stage 3) the 16-bit weight partition too.
    """
    strategy, offload, ranks = parallelism.strategy, parallelism.offload, parallelism.world_size
    if not strategy.is_zero:
        raise ConfigError("strategy", f"{strategy.value} is not a ZeRO stage", "use zero1, zero2 or zero3")
    stage = {Strategy.ZERO1: 1, Strategy.ZERO2: 2, Strategy.ZERO3: 3}[strategy]
    replicated = (HALF_WEIGHT if stage < 3 else 0) + (HALF_GRADIENT if stage < 2 else 0)
    if offload is Offload.NONE:
        partitioned = FP32_STATES + (HALF_GRADIENT if stage == 2 else 0) + (HALF_WEIGHT if stage == 3 else 0)
        host = 0
    else:
        partitioned = HALF_WEIGHT if stage == 3 and offload is Offload.OPTIMIZER else 0
        host = FP32_STATES + (HALF_WEIGHT if offload is Offload.PARAMS else 0)
    gathered = (HALF_WEIGHT + HALF_GRADIENT) * largest_layer_parameters if stage == 3 else 0
    return ZeroModelStates(
        gpu_bytes=parameters * replicated + parameters * partitioned // ranks + gathered,
        host_bytes=parameters * host // ranks,
        partitioned_bytes=parameters * partitioned // ranks,
        replicated_bytes=parameters * replicated,
        gathered_bytes=gathered,
    )
