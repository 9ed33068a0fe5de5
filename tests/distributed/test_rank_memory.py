"""Per-rank memory: a trace of one rank of a fake world against real gloo ranks on the CPU.

Each case launches real processes (spawned, gloo, 127.0.0.1 on a free port: measured_rank_peaks),
wraps the tiny model with torch's ``DistributedDataParallel``, FSDP2 ``fully_shard`` as accelerate
does or DeepSpeed's ZeRO engine (stages 1-3), runs steady-state steps and measures each rank's
peak of live tensor bytes with ``LiveBytesTracker``. The prediction is the fake-tensor trace of one
rank with the sharded shapes and the strategy's buffers (planner.distributed.rank_preparer); it
must be within 2% of every rank. A ZeRO trace is of a given rank (ZeRO-2's ranks differ: the
later a rank's partition, the earlier in backward it allocates its gradient buffer), so there each
rank is held to its own trace, and the estimate, the trace of the fullest rank, to the highest
measured peak.
"""

from __future__ import annotations

import pytest

from planner.distributed import measured_rank_peaks, rank_preparer
from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import StepTracer

MICRO_BATCH = 2
TOLERANCE = 0.02


def predicted_peak(config: TrainingConfig, rank: int | None = None) -> int:
    prepare = rank_preparer(config, rank=rank)
    tracer = StepTracer(load_model_config(config.model), config, cuda=None, prepare=prepare)
    return tracer.trace(MICRO_BATCH).peak


CASES = [
    ("llama", "full", "ddp", 2),
    ("gpt2", "lora", "ddp", 2),
    ("llama", "lora", "fsdp", 2),
    ("gpt2", "full", "fsdp", 3),  # 64-wide weights over 3 ranks: uneven, padded shards
    ("llama", "full", "fsdp", 4),
    # DeepSpeed's ZeRO engine, traced on the fake world and run on spawned gloo ranks.
    ("llama", "full", "zero3", 2),
    ("gpt2", "lora", "zero2", 4),
    ("llama", "full", "zero2", 2),  # the last rank peaks highest
    ("gpt2", "full", "zero1", 2),
]


@pytest.mark.parametrize(("model", "method", "strategy", "gpus"), CASES)
def test_rank_peak_matches_real_gloo_ranks(
    tiny_models: dict[str, str], model: str, method: str, strategy: str, gpus: int
) -> None:
    config = TrainingConfig(
        model=tiny_models[model],
        method=method,
        precision="fp32",
        seq_len=32,
        parallelism={"gpus_per_node": gpus, "strategy": strategy},
    )
    estimate = predicted_peak(config)
    measured = measured_rank_peaks(config, MICRO_BATCH)
    assert sorted(measured) == list(range(gpus))
    for rank, peak in measured.items():
        predicted = predicted_peak(config, rank) if config.parallelism.strategy.is_zero else estimate
        assert abs(predicted - peak) <= TOLERANCE * peak, (rank, predicted, peak)
    fullest = max(measured.values())
    assert abs(estimate - fullest) <= TOLERANCE * fullest, (estimate, measured)


def test_a_zero3_trace_leaves_torch_linear_to_the_rest_of_the_process(tiny_models: dict[str, str]) -> None:
    # DeepSpeed's stage 3 swaps F.linear process-wide; later traces in this process must not see it.
    import torch.nn.functional as F

    linear = F.linear
    config = TrainingConfig(
        model=tiny_models["llama"],
        precision="fp32",
        seq_len=32,
        parallelism={"gpus_per_node": 2, "strategy": "zero3"},
    )
    assert predicted_peak(config) > 0
    assert F.linear is linear
