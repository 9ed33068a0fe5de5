"""What turns a single-GPU model into one rank of a data-parallel job, for traces and real runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from planner.distributed._ddp import add_gradient_buckets
from planner.distributed._fsdp import shard_like_accelerate
from planner.distributed._world import fake_mesh
from planner.errors import ConfigError
from planner.schema import Method, Offload, OptimizerName, TrainingConfig

Prepare = Callable[[nn.Module], nn.Module]


def check_traceable(config: TrainingConfig) -> None:
    """Refuse, in one line, the parallel setups a per-rank trace does not follow (yet)."""
    parallelism = config.parallelism
    if parallelism.single_gpu:
        return
    if parallelism.strategy.is_zero:
        raise ConfigError(
            "strategy",
            f"{parallelism.strategy.value} is estimated for its model states only (DeepSpeed's own "
            "formulas), not traced per rank",
            "use --strategy fsdp (the same sharding as zero3) or ddp for a traced answer",
        )
    if parallelism.offload is not Offload.NONE:
        raise ConfigError("offload", "offloaded steps are not traced per rank yet", "use --offload none")
    if parallelism.strategy.is_fsdp and config.optimizer not in (OptimizerName.ADAMW, OptimizerName.SGD):
        raise ConfigError(
            "optimizer",
            f"{config.optimizer.value} does not step FSDP's sharded (DTensor) parameters",
            "use --optimizer adamw or sgd with --strategy fsdp",
        )
    if parallelism.strategy.is_fsdp and config.method is Method.QLORA:
        raise ConfigError(
            "method",
            "qlora under FSDP needs 4-bit weights in a float storage (bnb_4bit_quant_storage), which the "
            "trace does not build",
            "use lora or full with --strategy fsdp, or ddp",
        )


def rank_preparer(config: TrainingConfig, *, mesh: Any | None = None, real: bool = False) -> Prepare | None:
    """How the trace (or a real rank) turns the built model into a rank of ``config``'s job.

    None for a single GPU. For a trace (``real`` False) on the fake world of
    :mod:`planner.distributed._world`: DDP's buckets allocated as its ``Reducer`` would, FSDP2
    sharded as accelerate does. For a real rank of a started process group (``real``): torch's
    ``DistributedDataParallel`` itself (over ``mesh``'s group when given), or the same FSDP2
    sharding over ``mesh``.
    """
    check_traceable(config)
    parallelism = config.parallelism
    if parallelism.single_gpu:
        return None
    if parallelism.strategy.is_fsdp:
        shard_mesh = mesh if mesh is not None else fake_mesh(parallelism)
        return lambda model: shard_like_accelerate(model, shard_mesh, config.precision)
    if real:
        from torch.nn.parallel import DistributedDataParallel

        group = mesh.get_group() if mesh is not None else None  # None: the default (whole) group
        return lambda model: DistributedDataParallel(model, process_group=group)
    return add_gradient_buckets
