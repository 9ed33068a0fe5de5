"""Per-rank memory: a trace on rank 0 of a fake world against real gloo ranks on the CPU.

Each case launches real processes (``torch.multiprocessing``, gloo, 127.0.0.1 on a free port),
wraps the tiny model with torch's ``DistributedDataParallel`` or FSDP2 ``fully_shard`` as
accelerate does, runs steady-state steps and measures each rank's peak of live tensor bytes with
``LiveBytesTracker``. The prediction is the fake-tensor trace of one rank with the sharded shapes
and the strategy's buffers (planner.distributed.rank_preparer); it must be within 2% of every rank.
"""

from __future__ import annotations

import multiprocessing
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist

from planner.distributed import rank_preparer
from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import StepTracer

MICRO_BATCH = 2
TOLERANCE = 0.02


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _measure_rank(rank: int, world: int, port: int, config_json: str, results: Any) -> None:
    """One real rank: gloo group, the strategy's real wrapper, a traced real step's peak."""
    torch.set_num_threads(1)
    if dist.is_initialized():  # a fake world inherited from the parent through fork
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        config = TrainingConfig.model_validate_json(config_json)
        mesh = init_device_mesh("cpu", (world,)) if config.parallelism.strategy.is_fsdp else None
        prepare = rank_preparer(config, mesh=mesh, real=True)
        torch.manual_seed(rank)
        tracer = StepTracer(load_model_config(config.model), config, cuda=None, fake=False, prepare=prepare)
        tracer.trace(MICRO_BATCH)  # the first real step rebuilds DDP's buckets; the next is steady
        results.put((rank, tracer.trace(MICRO_BATCH).peak))
    finally:
        dist.destroy_process_group()


def measured_peaks(config: TrainingConfig) -> dict[int, int]:
    world = config.parallelism.world_size
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_measure_rank, args=(rank, world, port, config.model_dump_json(), results))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    peaks = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return peaks


def predicted_peak(config: TrainingConfig) -> int:
    tracer = StepTracer(load_model_config(config.model), config, cuda=None, prepare=rank_preparer(config))
    return tracer.trace(MICRO_BATCH).peak


CASES = [
    ("llama", "full", "ddp", 2),
    ("gpt2", "lora", "ddp", 2),
    ("llama", "lora", "fsdp", 2),
    ("gpt2", "full", "fsdp", 2),
    ("llama", "full", "fsdp", 4),
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
    predicted = predicted_peak(config)
    measured = measured_peaks(config)
    assert sorted(measured) == list(range(gpus))
    for rank, peak in measured.items():
        assert abs(predicted - peak) <= TOLERANCE * peak, (rank, predicted, peak)
