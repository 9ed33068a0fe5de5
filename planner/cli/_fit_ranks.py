"""``planner fit --gpus N --strategy S``: one rank of a multi-GPU job, printed.

The answers come from the library (per-rank traces in ``planner.estimator``, communication in
``planner.timing``, ZeRO's model states in ``planner.distributed``); this module turns the command's
options into a rank's config and formats what comes back: the per-rank split, the "how many cards"
table, and ZeRO's model states where the step is not traced.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from planner.cli._common import emit_json
from planner.errors import ConfigError
from planner.formatting import format_gib
from planner.schema import GIB, Card, FitReport, Offload, RankFit, TrainingConfig


def with_parallelism(
    config: TrainingConfig, gpus: int, nodes: int, strategy: str | None, offload: str
) -> TrainingConfig:
    """``config`` as one rank of ``gpus`` x ``nodes`` GPUs under ``strategy`` (validated)."""
    from pydantic import ValidationError

    fields = {"gpus_per_node": gpus, "nodes": nodes, "strategy": strategy or "ddp", "offload": offload}
    try:
        return config.with_changes(parallelism=fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(
            "--strategy", str(error["msg"]).removeprefix("Value error, "), "see `planner fit --help`"
        ) from None


def gpu_count_configs(
    config: TrainingConfig, gpu_counts: list[int], nodes: int, strategy: str | None, offload: str
) -> list[TrainingConfig]:
    """``config`` as a job of each GPU count (FSDP unless ``strategy`` says otherwise); one GPU
    is the plain single-GPU step."""
    return [
        config if gpus * nodes == 1 else with_parallelism(config, gpus, nodes, strategy or "fsdp", offload)
        for gpus in gpu_counts
    ]


def print_gpu_counts(rows: list[RankFit], card: str) -> None:
    table = Table(
        "GPUs",
        "strategy",
        "max micro-batch / rank",
        "peak / rank GiB",
        "resident / rank GiB",
        "step s",
        "comm s (exposed)",
        "tokens/s / GPU",
        title=f"How many x {card}",
    )
    for row in rows:
        timed = row.step_seconds is not None
        table.add_row(
            str(row.gpus),
            row.strategy,
            str(row.max_micro_batch),
            format_gib(row.peak_bytes),
            format_gib(row.resident_bytes),
            f"{row.step_seconds:.3f}" if timed else "-",
            f"{row.communication_seconds:.3f} ({row.exposed_communication_seconds:.3f})" if timed else "-",
            f"{row.tokens_per_second_per_gpu:,.0f}" if timed and row.max_micro_batch else "-",
        )
    console = Console()
    console.print(table)
    console.print(
        "Per rank, from the linear fit of traces of one rank with the sharded shapes and the strategy's "
        "buffers; peak is the predicted NVML used at the max micro-batch (at 1 when nothing fits). Step "
        "time: uncalibrated roofline compute plus the collectives (ring volumes at the link's datasheet "
        "bandwidth, a lower bound) the strategy does not overlap."
    )


def rank_answers(report: FitReport, card: Card, interconnect: float | None) -> tuple[Any, Any]:
    """What a rank keeps between steps, and its step time with communication (None on a card
    without datasheet throughput)."""
    from planner.estimator import rank_split
    from planner.timing import rank_step_time, roofline_available

    split = rank_split(report.config, card)
    if not roofline_available(card, report.config):
        return split, None
    micro_batch = max(report.max_micro_batch, 1)
    return split, rank_step_time(report.config, card, micro_batch, interconnect_gbs=interconnect)


def per_rank_json(report: FitReport, split: Any, step: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "resident_bytes": split.resident_bytes,
        "resident_kind": split.resident_kind,
        "transient_bytes": report.at_max.peak_allocated_bytes - split.resident_bytes,
        "nccl_bytes": report.at_max.breakdown.collective_buffers,
        "nccl_basis": report.at_max.collective_buffers_basis,
        "step": None if step is None else asdict(step),
    }


def print_rank_split(report: FitReport, split: Any, step: Any) -> None:
    """What of the per-rank peak is the rank's share of the model and what every rank holds whole,
    and the step's time with communication."""
    console = Console()
    table = Table("per rank", "GiB", title=f"{report.config.parallelism.describe()}: one rank")
    table.add_row(f"resident between steps ({split.resident_kind})", format_gib(split.resident_bytes))
    table.add_row(
        "step transient (gathered layers, gradients in flight, activations, buckets)",
        format_gib(report.at_max.peak_allocated_bytes - split.resident_bytes),
    )
    if report.at_max.breakdown.collective_buffers:
        table.add_row(
            "NCCL buffers (outside the caching allocator: device-used only)",
            format_gib(report.at_max.breakdown.collective_buffers),
        )
    console.print(table)
    if step is None:
        return
    communication = step.communication
    collectives = ", ".join(f"{c.kind} {c.payload_bytes / GIB:.2f} GiB" for c in communication.collectives)
    console.print(
        f"Step at micro-batch {max(report.max_micro_batch, 1)} per rank: {step.step_seconds:.3f} s = compute "
        f"{step.compute_seconds:.3f} s (roofline, uncalibrated) + communication not overlapped "
        f"{communication.exposed_seconds:.3f} s of {communication.total_seconds:.3f} s ({collectives} at "
        f"{communication.bandwidth_gbs:g} GB/s, {communication.link}, ring volumes: a lower bound); "
        f"{step.tokens_per_second_per_gpu:,.0f} tokens/s per GPU."
    )


def answered_by_model_states(config: TrainingConfig) -> bool:
    """ZeRO steps the fit does not trace: offloaded ones, and any where DeepSpeed (whose engine the
    trace runs) is not installed. They are answered by DeepSpeed's formulas (:func:`print_zero_states`)."""
    from planner.distributed import deepspeed_installed

    parallelism = config.parallelism
    return parallelism.strategy.is_zero and (
        parallelism.offload is not Offload.NONE or not deepspeed_installed()
    )


def print_zero_states(config: TrainingConfig, as_json: bool) -> None:
    """A ZeRO job's model states per rank by DeepSpeed's formulas: for offloaded steps, which are
    not traced per rank, and where DeepSpeed (whose engine the trace runs) is not installed."""
    from dataclasses import asdict

    from planner.distributed import zero_states

    states = zero_states(config)
    if as_json:
        emit_json({"config": config.model_dump(mode="json"), "model_states": asdict(states)})
        return
    parallelism = config.parallelism
    table = Table("per rank", "GiB", title=f"{parallelism.describe()}: model states of one rank")
    table.add_row("GPU: model states", format_gib(states.gpu_bytes))
    table.add_row("  of which replicated (16-bit weights / gradients)", format_gib(states.replicated_bytes))
    table.add_row(f"  of which partitioned 1/{parallelism.world_size}", format_gib(states.partitioned_bytes))
    table.add_row("  of which the gathered largest layer (stage 3)", format_gib(states.gathered_bytes))
    table.add_row("host RAM: offloaded partitions", format_gib(states.host_bytes))
    console = Console()
    console.print(table)
    console.print(
        "Model states only (mixed-precision AdamW, DeepSpeed's per-stage accounting): no activations, "
        "communication buckets or allocator overhead; "
        + (
            "offloaded ZeRO is not traced per rank."
            if parallelism.offload is not Offload.NONE
            else "`pip install deepspeed` for a per-rank trace of its engine."
        )
    )
