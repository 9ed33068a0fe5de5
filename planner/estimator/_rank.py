"""Per-rank answers for a data-parallel job: the "how many cards" row and what a rank keeps.

The estimates are the estimator's own (its traces of one rank with the sharded shapes and the
strategy's buffers, see :mod:`planner.distributed`); this module only reads them per rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimator._cuda import CudaOverhead
from planner.estimator._estimator import Estimator
from planner.schema import Card, RankFit, Strategy, TrainingConfig


def rank_fit(config: TrainingConfig, card: Card, overhead: CudaOverhead | None = None) -> RankFit:
    """The max micro-batch per rank of ``config``'s job (linear fit of its per-rank traces, not
    confirmed at full depth) and the per-rank peak there."""
    estimator = Estimator(config, card, overhead)
    best = estimator.max_micro_batch(confirm=False)
    row = estimator.estimate(max(best, 1), trace=False)
    parallelism = config.parallelism
    return RankFit(
        gpus=parallelism.world_size,
        strategy="single GPU" if parallelism.single_gpu else parallelism.strategy.value,
        max_micro_batch=best,
        peak_bytes=row.peak_bytes,
        resident_bytes=round(estimator.traces.resident_bytes()),
        tokens_per_step=best * config.seq_len * parallelism.world_size,
    )


@dataclass(frozen=True)
class RankSplit:
    """What one rank keeps between steps, and whether that is a shard or a whole copy."""

    resident_bytes: int
    resident_kind: str


def rank_split(config: TrainingConfig, card: Card, overhead: CudaOverhead | None = None) -> RankSplit:
    """The bytes a rank of ``config``'s job keeps between steps (weights, optimizer state, DDP's
    buckets): sharded over the job under FSDP, a whole copy on every rank under DDP, the optimizer
    state (and under stage 3 the weights) partitioned under ZeRO."""
    parallelism = config.parallelism
    resident = round(Estimator(config, card, overhead).traces.resident_bytes())
    if parallelism.strategy.is_fsdp:
        kind = f"weights and optimizer state, sharded 1/{parallelism.shard_size}"
    elif parallelism.strategy is Strategy.ZERO3:
        kind = f"weights and optimizer state (fp32 master), partitioned 1/{parallelism.world_size}"
    elif parallelism.strategy.is_zero:
        kind = (
            f"weights whole, optimizer state (fp32 master) partitioned 1/{parallelism.world_size} "
            "(DeepSpeed ZeRO)"
        )
    else:
        kind = "weights, optimizer state and gradient buckets, replicated on every rank"
    return RankSplit(resident_bytes=resident, resident_kind=kind)
