"""Communication per step: each strategy's collectives, ring volumes, and what stays exposed."""

from __future__ import annotations

import pytest

from planner.distributed import ModelSizes, communication_time, model_sizes, step_collectives
from planner.schema import Parallelism, TrainingConfig

SIZES = ModelSizes(gathered_bytes=1000, gradient_bytes=2000, first_unit_bytes=100, last_bucket_bytes=50)


def test_ddp_all_reduces_the_gradients_once_per_step() -> None:
    (collective,) = step_collectives(Parallelism(gpus_per_node=4), SIZES, micro_batches=4)
    assert (collective.kind, collective.payload_bytes) == ("all-reduce", 2000)
    assert collective.sent_bytes(4) == pytest.approx(2 * 3 / 4 * 2000)


def test_fsdp_gathers_twice_per_micro_batch_and_reduce_scatters_once() -> None:
    collectives = step_collectives(Parallelism(gpus_per_node=4, strategy="fsdp"), SIZES, micro_batches=2)
    kinds = [(c.kind, c.phase, c.payload_bytes) for c in collectives]
    assert kinds == [
        ("all-gather", "forward", 2000),
        ("all-gather", "backward", 2000),
        ("reduce-scatter", "backward", 2000),
    ]
    assert collectives[0].sent_bytes(4) == pytest.approx(3 / 4 * 2000)


def test_one_gpu_communicates_nothing() -> None:
    assert step_collectives(Parallelism(), SIZES) == []


def test_overlap_hides_what_compute_covers() -> None:
    parallelism = Parallelism(gpus_per_node=2)
    slow_compute = {"forward": 1.0, "backward": 1.0, "optimizer": 0.1}
    sent = 2 * 1 / 2 * 2000
    hidden = communication_time(parallelism, SIZES, slow_compute, intra_node_gbs=1e-6)
    assert hidden.total_seconds == pytest.approx(sent / 1e3)
    # 2 s of all-reduce behind 1 s of backward: 1 s waits.
    assert hidden.exposed_seconds == pytest.approx(hidden.total_seconds - 1.0)
    fast_link = communication_time(parallelism, SIZES, slow_compute, intra_node_gbs=1.0)
    # All hidden but the last bucket.
    assert fast_link.exposed_seconds == pytest.approx(sent * 50 / 2000 / 1e9)


def test_zero_all_gathers_weights_after_the_optimizer_unhidden() -> None:
    parallelism = Parallelism(gpus_per_node=2, strategy="zero2")
    time = communication_time(parallelism, SIZES, {"backward": 100.0}, intra_node_gbs=1.0)
    gather = 1 / 2 * 1000 / 1e9
    assert time.exposed_seconds == pytest.approx(gather + 1 / 2 * 50 / 1e9)


def test_sizes_follow_the_dtypes_each_strategy_communicates(tiny_models: dict[str, str]) -> None:
    def sizes(strategy: str) -> ModelSizes:
        config = TrainingConfig(
            model=tiny_models["llama"],
            precision="bf16",
            parallelism={"gpus_per_node": 2, "strategy": strategy},
        )
        return model_sizes(config)

    ddp, fsdp, zero = sizes("ddp"), sizes("fsdp"), sizes("zero3")
    # Full fine-tuning under bf16 mixed precision: fp32 weights and gradients; FSDP and ZeRO move bf16.
    assert fsdp.gathered_bytes * 2 == ddp.gathered_bytes == ddp.gradient_bytes
    assert zero.gathered_bytes == fsdp.gathered_bytes
    assert fsdp.first_unit_bytes == 2 * 512 * 64  # the embedding, bf16
