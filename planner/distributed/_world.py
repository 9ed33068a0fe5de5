"""One rank of an N-GPU job inside this process: a fake process group and the device meshes on it.

Memory per rank is traced on rank 0 of a world that does not exist. torch's fake process group
(``torch._C._distributed_c10d.FakeProcessGroup``, the backend torch's own memory tools and tests
use) completes every collective at once without moving data; under fake tensors nothing is read
anyway. So the real engine code (FSDP2's ``fully_shard``, its all-gathers and reduce-scatters)
runs on rank 0 with the shapes and buffers of the real job, and nothing else in the process sees
a distributed world: the fake group is set up once, large enough for every world asked about,
and each mesh is a subgroup of it.

The fake world stays up for the process's life (traced FSDP modules keep its groups), so
``torch.distributed.is_initialized()`` is True afterwards in a process that traced a rank. A
Trainer run later in the same process is not affected (accelerate decides from the launcher's
environment; the executor's sweep test passes after a per-rank fit in one process), but a
process that must start a real group itself has to do it in a fresh process, as the executor's
workers and the gloo measurement (:mod:`planner.distributed._measure`) do.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.distributed as dist

from planner.errors import ConfigError
from planner.schema import Parallelism, Strategy

logger = logging.getLogger(__name__)

FAKE_BACKEND = "planner_fake"
MAX_WORLD = 4096
"""The fake world's size: the largest job a trace can stand for."""


def _fake_group(common_options: Any, backend_options: Any) -> Any:
    from torch._C._distributed_c10d import FakeProcessGroup

    # The stub lists two arguments; torch's own fake backend (torch.testing._internal) passes three.
    return FakeProcessGroup._create_internal(  # type: ignore[call-arg]
        common_options.group_rank, common_options.group_size, backend_options
    )


@functools.cache
def _fake_world() -> None:
    """Start the process's fake world (rank 0 of :data:`MAX_WORLD`), once."""
    if dist.is_initialized():
        raise ConfigError(
            "parallelism",
            "a real process group is already running in this process, so one rank cannot be traced here",
            "estimate from a process that is not itself a rank of a job",
        )
    # CUDA too: a real GPU can hold one rank's real tensors while the others are imagined
    # (``benchmarks/gpu_validate.py`` checks FSDP's gathered buffers on one card that way).
    dist.Backend.register_backend(FAKE_BACKEND, _fake_group, extended_api=True, devices=["cpu", "cuda"])
    dist.init_process_group(FAKE_BACKEND, store=dist.HashStore(), rank=0, world_size=MAX_WORLD)
    logger.debug("fake process group of %d ranks started for per-rank traces", MAX_WORLD)


@functools.cache
def fake_mesh(parallelism: Parallelism, device_type: str = "cpu") -> Any:
    """The device mesh rank 0 of ``parallelism``'s job shards over, on the fake world.

    FSDP: one dimension over every rank. Hybrid FSDP: (replicate across nodes, shard within a
    node), the 2-D mesh accelerate builds for ``HYBRID_SHARD``. ``device_type`` is where the
    rank's tensors live: "cpu" for traces (fake tensors stand for CUDA ones there), "cuda" for a
    real rank on this process's GPU.
    """
    from torch.distributed.device_mesh import DeviceMesh

    world = parallelism.world_size
    if world > MAX_WORLD:
        raise ConfigError(
            "gpus", f"{world} GPUs is more than the {MAX_WORLD} a trace can stand for", "use fewer"
        )
    _fake_world()
    ranks = torch.arange(world)
    if parallelism.strategy is Strategy.FSDP_HYBRID:
        layout = ranks.view(parallelism.nodes, parallelism.gpus_per_node)
        groups = [dist.new_group(layout[:, 0].tolist()), dist.new_group(layout[0].tolist())]
        return DeviceMesh.from_group(groups, device_type, mesh=layout, mesh_dim_names=("replicate", "shard"))
    return DeviceMesh.from_group(dist.new_group(ranks.tolist()), device_type)
