"""Real ranks on this machine's CPU: each rank's peak of live tensor bytes in a gloo job.

What the per-rank trace is checked against: ``world`` processes (spawned from this one), a gloo
process group on 127.0.0.1 at a free port, torch's ``DistributedDataParallel``, FSDP2 sharded as
accelerate does or DeepSpeed's ZeRO engine (:func:`~planner.distributed.rank_preparer` with
``real=True``), and the same step the estimator traces, run for real; the steps after the first
are the steady ones measured (the first rebuilds DDP's buckets). Peaks are
``LiveBytesTracker``'s: live tensor bytes at the dispatcher.

A steady step is run :data:`STEADY_STEPS` times and the lowest peak kept, because a step's peak
on gloo can depend on thread timing: gloo's worker thread wakes the rank waiting on a collective
and only then drops its own reference to the finished work and the tensors it holds
(``ProcessGroupGloo::runLoop`` in torch's ``torch/csrc/distributed/c10d/ProcessGroupGloo.cpp``:
``work->execute()``, then ``workInProgress_[workerIndex].reset()`` under the lock), so a rank
that allocates before that reset still counts the collective's buffer. Seen on the CPU: about one
steady step in four of the last ZeRO-2 rank (tiny Llama, 2 ranks) peaked 65,024 bytes higher,
always that amount, all of it temporaries; the other steps and the trace agree to the byte. The
step's own order of allocations and frees, which the trace follows, is the one where the worker
thread was in time.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from planner.distributed._prepare import rank_preparer
from planner.models import load_model_config
from planner.schema import Strategy, TrainingConfig
from planner.step import StepTracer

TIMEOUT_SECONDS = 300
STEADY_STEPS = 3
"""Steady steps measured per rank; the lowest peak is kept (see the module docstring)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 free now, for a process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(rank: int, world: int, port: int, config_json: str, micro_batch: int, results: Any) -> None:
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # what a launcher sets; DeepSpeed asserts it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        config = TrainingConfig.model_validate_json(config_json)
        parallelism = config.parallelism
        mesh = None
        if parallelism.strategy is Strategy.FSDP_HYBRID:
            shape = (parallelism.nodes, parallelism.gpus_per_node)
            mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard"))
        elif parallelism.strategy.is_fsdp:
            mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(rank)
        prepare = rank_preparer(config, mesh=mesh, real=True)
        tracer = StepTracer(load_model_config(config.model), config, cuda=None, fake=False, prepare=prepare)
        tracer.trace(micro_batch)  # the warm-up step
        results.put((rank, min(tracer.trace(micro_batch).peak for _ in range(STEADY_STEPS))))
    finally:
        dist.destroy_process_group()


def measured_rank_peaks(config: TrainingConfig, micro_batch: int) -> dict[int, int]:
    """Rank -> peak live tensor bytes of a steady-state step of ``config``'s job, run for real on
    the CPU with gloo (one process per rank)."""
    world = config.parallelism.world_size
    # Spawned: a forked rank inherits whatever this process's traces changed (DeepSpeed keeps its
    # process groups in module globals, and after a ZeRO trace here a forked FSDP rank measured
    # +3% on the CPU); a real rank starts from a fresh interpreter, as a launcher starts it.
    context: Any = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_rank, args=(rank, world, port, config.model_dump_json(), micro_batch, results)
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    try:
        peaks = dict(results.get(timeout=TIMEOUT_SECONDS) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"a gloo rank exited with {failed[0]}")
    return peaks
