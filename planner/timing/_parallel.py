"""Step time of one rank of a data-parallel job: its compute plus the communication it waits for."""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.distributed import CommunicationTime, communication_time, model_sizes
from planner.errors import ConfigError
from planner.estimator import rank_fit
from planner.schema import Card, Parallelism, RankFit, TrainingConfig
from planner.timing._roofline import roofline_available
from planner.timing._step import StepTimeModel, StepTimes


@dataclass(frozen=True)
class RankStepTime:
    """Seconds of one optimizer step on one rank, and the tokens each GPU trains per second."""

    compute_seconds: float
    """Forward + backward of every accumulated micro-batch and the optimizer step on the rank's
    share (roofline at the card's datasheet figures, uncalibrated)."""
    communication: CommunicationTime
    step_seconds: float
    """Compute plus the communication the strategy does not hide."""
    tokens_per_second_per_gpu: float


def rank_step_time(
    config: TrainingConfig,
    card: Card,
    micro_batch: int,
    *,
    interconnect_gbs: float | None = None,
    inter_node_gbs: float | None = None,
    times: StepTimeModel | None = None,
) -> RankStepTime:
    """One rank's step at ``micro_batch``: the single-GPU roofline of the same micro-batch (each
    rank computes what one GPU would), the optimizer on the rank's shard when the strategy
    shards it, and the strategy's collectives at ``interconnect_gbs`` (default: the card's link)."""
    link = interconnect_gbs if interconnect_gbs is not None else card.interconnect_gbs
    parallelism = config.parallelism
    if link is None and parallelism.world_size > 1:
        raise ConfigError(
            "--interconnect", f"{card.name} names no interconnect bandwidth", "give --interconnect GB/s"
        )
    single = config.with_changes(parallelism=Parallelism())
    step = (times or StepTimeModel(card)).roofline(single, micro_batch)
    accumulated = config.gradient_accumulation
    optimizer = step.optimizer / parallelism.shard_size
    compute = {
        "forward": step.forward * accumulated,
        "backward": step.backward * accumulated,
        "optimizer": optimizer,
    }
    communication = communication_time(
        parallelism,
        model_sizes(config),
        compute,
        intra_node_gbs=link or 1.0,
        inter_node_gbs=inter_node_gbs,
        micro_batches=accumulated,
    )
    compute_seconds = sum(compute.values())
    seconds = compute_seconds + communication.exposed_seconds
    tokens = micro_batch * config.seq_len * accumulated
    return RankStepTime(
        compute_seconds=compute_seconds,
        communication=communication,
        step_seconds=seconds,
        tokens_per_second_per_gpu=tokens / seconds,
    )


def rank_step_times(step: StepTimes, config: TrainingConfig, card: Card) -> StepTimes:
    """One rank's :class:`StepTimes` in ``config``'s job, from a single GPU's ``step`` at the same
    micro-batch: the optimizer on the rank's shard, then the communication the strategy leaves
    exposed at the card's link (not counted, and said so, on a card that names none).

    The forward is the eval forward and the backward the rest of the micro-step, both from
    ``step``'s own source (measured, calibrated or roofline), over every accumulated micro-batch.
    """
    parallelism = config.parallelism
    accumulated = config.gradient_accumulation
    # The paging was timed from the rank's own memory estimate: not divided again.
    optimizer = (step.optimizer - step.paging) / parallelism.shard_size + step.paging
    if card.interconnect_gbs is None:
        note = f"{step.note}; communication between ranks not counted: {card.name} names no interconnect"
        return replace(step, optimizer=optimizer, note=note)
    compute = {
        "forward": step.eval_forward * accumulated,
        "backward": max(0.0, step.micro_step - step.eval_forward) * accumulated,
        "optimizer": optimizer,
    }
    communication = communication_time(
        parallelism,
        model_sizes(config),
        compute,
        intra_node_gbs=card.interconnect_gbs,
        micro_batches=accumulated,
    )
    note = (
        f"{step.note}; {parallelism.describe()}: {communication.exposed_seconds * 1e3:.1f} ms of "
        f"{communication.total_seconds * 1e3:.1f} ms communication per optimizer step exposed "
        f"({card.interconnect or 'link'} at {card.interconnect_gbs:g} GB/s)"
    )
    return replace(step, optimizer=optimizer + communication.exposed_seconds, note=note)


def with_step_time(
    row: RankFit, config: TrainingConfig, card: Card, *, interconnect_gbs: float | None, times: StepTimeModel
) -> RankFit:
    """``row`` with the step time of ``config`` at its max micro-batch (at 1 when nothing fits);
    unchanged on a card without datasheet throughput."""
    if not roofline_available(card, config):
        return row
    step = rank_step_time(
        config, card, max(row.max_micro_batch, 1), interconnect_gbs=interconnect_gbs, times=times
    )
    return row.model_copy(
        update={
            "step_seconds": step.step_seconds,
            "communication_seconds": step.communication.total_seconds,
            "exposed_communication_seconds": step.communication.exposed_seconds,
            "tokens_per_second_per_gpu": step.tokens_per_second_per_gpu,
        }
    )


def how_many_cards(
    configs: list[TrainingConfig], card: Card, *, interconnect_gbs: float | None = None
) -> list[RankFit]:
    """The "how many cards" table: per job (one config per GPU count), the max micro-batch per
    rank, the per-rank peak there, and the step time with communication."""
    times = StepTimeModel(card)
    return [
        with_step_time(rank_fit(config, card), config, card, interconnect_gbs=interconnect_gbs, times=times)
        for config in configs
    ]
