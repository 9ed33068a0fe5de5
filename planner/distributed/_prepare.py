"""What turns a single-GPU model into one rank of a data-parallel job, for traces and real runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from planner.distributed._ddp import add_gradient_buckets
from planner.distributed._deepspeed import add_zero_engine, fullest_rank, import_deepspeed
from planner.distributed._fsdp import shard_like_accelerate
from planner.distributed._world import fake_mesh
from planner.errors import ConfigError
from planner.schema import Method, Offload, OptimizerName, Precision, TrainingConfig

Prepare = Callable[[nn.Module], nn.Module]


def check_traceable(config: TrainingConfig) -> None:
    """Refuse, in one line, the parallel setups a per-rank trace does not follow (yet)."""
    parallelism = config.parallelism
    if parallelism.single_gpu:
        return
    if parallelism.offload is not Offload.NONE:
        raise ConfigError("offload", "offloaded steps are not traced per rank yet", "use --offload none")
    if parallelism.strategy.is_fsdp and config.optimizer not in (OptimizerName.ADAMW, OptimizerName.SGD):
        raise ConfigError(
            "optimizer",
            f"{config.optimizer.value} does not step FSDP's sharded (DTensor) parameters",
            "use --optimizer adamw or sgd with --strategy fsdp",
        )
    if parallelism.strategy.is_zero:
        _check_zero_traceable(config)
    if parallelism.strategy.is_fsdp and config.method is Method.QLORA:
        raise ConfigError(
            "method",
            "qlora under FSDP needs 4-bit weights in a float storage (bnb_4bit_quant_storage), which the "
            "trace does not build",
            "use lora or full with --strategy fsdp, or ddp",
        )


def _check_zero_traceable(config: TrainingConfig) -> None:
    """What the trace of DeepSpeed's ZeRO engine has been checked on against real ranks: torch's
    AdamW, full or LoRA, fp32 or bf16 (fp16's loss-scaled engine is not checked yet)."""
    strategy = config.parallelism.strategy.value
    if config.optimizer not in (OptimizerName.ADAMW, OptimizerName.ADAMW_TORCH):
        raise ConfigError(
            "optimizer",
            f"{config.optimizer.value} is not traced under DeepSpeed's {strategy} engine",
            f"use --optimizer adamw with --strategy {strategy}",
        )
    if config.method is Method.QLORA:
        raise ConfigError(
            "method", f"qlora is not traced under DeepSpeed's {strategy} engine", "use lora or full"
        )
    if config.precision not in (Precision.FP32, Precision.BF16):
        raise ConfigError(
            "precision",
            f"{config.precision.value} is not traced under DeepSpeed's {strategy} engine (its "
            "loss-scaled engine is not checked against real ranks yet)",
            "use --precision bf16 or fp32",
        )


def rank_preparer(
    config: TrainingConfig, *, mesh: Any | None = None, real: bool = False, rank: int | None = None
) -> Prepare | None:
    """How the trace (or a real rank) turns the built model into a rank of ``config``'s job.

    None for a single GPU. For a trace (``real`` False) on the fake world of
    :mod:`planner.distributed._world`: DDP's buckets allocated as its ``Reducer`` would, FSDP2
    sharded as accelerate does, DeepSpeed's ZeRO engine over a data-parallel group of the job's
    size, standing for ``rank`` of the job (by default the one that peaks highest,
    :func:`fullest_rank`; only ZeRO traces can stand for another). For a real rank of a started
    process group (``real``): torch's ``DistributedDataParallel`` itself (over ``mesh``'s group
    when given), or the same FSDP2 sharding over ``mesh``, or DeepSpeed's engine over the whole
    group.
    """
    check_traceable(config)
    parallelism = config.parallelism
    if parallelism.single_gpu:
        return None
    traced = fullest_rank(config) if rank is None else rank
    if parallelism.strategy.is_zero:
        import_deepspeed()  # here, not under the tracer's fake mode
        # A real rank: DeepSpeed's groups over the started (default) process group.
        group = None if real else fake_mesh(parallelism).get_group()
        return lambda model: add_zero_engine(
            model, config, group=group, ranks=parallelism.world_size, rank=traced
        )
    if traced != 0:
        raise ValueError(f"a {parallelism.strategy.value} trace stands for rank 0, not {traced}")
    if parallelism.strategy.is_fsdp:
        shard_mesh = mesh if mesh is not None else fake_mesh(parallelism)
        return lambda model: shard_like_accelerate(model, shard_mesh, config.precision)
    if real:
        from torch.nn.parallel import DistributedDataParallel

        group = mesh.get_group() if mesh is not None else None  # None: the default (whole) group
        return lambda model: DistributedDataParallel(model, process_group=group)
    return add_gradient_buckets
