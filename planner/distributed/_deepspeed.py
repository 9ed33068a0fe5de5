"""DeepSpeed ZeRO's real engine around one rank's model: for a fake-world trace or a real gloo rank.

A ZeRO rank is not a model transform but an engine: ``deepspeed.initialize`` flattens the
trainable weights into one buffer per group (stage 1/2: ``bit16_groups_flat`` in
``runtime/zero/stage_1_and_2.py``) or partitions every weight into ``ds_tensor`` shards gathered
per module (stage 3: ``runtime/zero/partition_parameters.py``), keeps the fp32 master partition
and the optimizer's state over it, and reduces gradients through its own buckets
(``reduce_bucket_size`` elements; stage 3 also prefetches ``stage3_prefetch_bucket_size``).
Rather than restate what each stage allocates, the trace runs that engine: the model is wrapped
while the step tracer's ``LiveBytesTracker`` watches, so every buffer DeepSpeed makes is counted,
and the step is the engine's (``engine.backward``, ``engine.step``).

In a trace the engine runs in this process (rank 0 of the fake world,
:mod:`planner.distributed._world`) under fake tensors, over a data-parallel group of the job's
size, as the rank it is asked to stand for; what a one-process world without data cannot answer
(which rank this is, values a healthy step would read) is settled the way a healthy step settles
it (see :func:`_fake_world_engine`).
DeepSpeed runs on its CPU accelerator there (fake CPU tensors stand for CUDA ones, as in every
trace), and on the gloo ranks of :mod:`planner.distributed._measure`.

Which rank is traced: under stages 1 and 3 every rank allocates the same buffers at the same
points of the step, so rank 0 stands for all. Under stage 2 the ranks differ in *when* they
allocate the contiguous buffer for their own gradient partition (``grads_in_partition``, made
by ``copy_grads_in_partition`` in ``stage_1_and_2.py`` when the first gradient of the rank's
partition has been reduced). Partitions follow parameter order, and backward produces gradients
in reverse order, so the last rank's partition (the last parameters: the head, the top layers)
is reduced first, while most activations are still live, and rank 0's (the embeddings) last.
The last rank therefore peaks highest (tiny Llama, full fp32, 2 ranks: +1.6% over rank 0), and
it is the one traced: the job fits when its fullest rank fits.

The configuration is DeepSpeed's defaults with the values transformers' Trainer fills for
``"auto"`` (``transformers/integrations/deepspeed.py``, ``HfTrainerDeepSpeedConfig.trainer_config_finalize``):
``reduce_bucket_size`` hidden², ``stage3_prefetch_bucket_size`` 0.9·hidden²,
``stage3_param_persistence_threshold`` 10·hidden, and ``zero_allow_untested_optimizer`` (set by
``deepspeed_optim_sched`` when Trainer's own optimizer is passed, as here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import torch.nn.functional as F
from torch import nn

from planner.errors import ConfigError
from planner.schema import Precision, Strategy, TrainingConfig
from planner.step import ZERO_ENGINE, TrainingSetup, patched

logger = logging.getLogger(__name__)

STAGES = {Strategy.ZERO1: 1, Strategy.ZERO2: 2, Strategy.ZERO3: 3}


def deepspeed_config(config: TrainingConfig, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed configuration of ``config``'s job (see the module docstring)."""
    zero: dict[str, Any] = {
        "stage": STAGES[config.parallelism.strategy],
        "reduce_bucket_size": hidden_size * hidden_size,
    }
    if config.parallelism.strategy is Strategy.ZERO3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # the engine's own data loader, unused here
        # The tracer runs at most two micro-batches before the optimizer step.
        "gradient_accumulation_steps": min(config.gradient_accumulation, 2),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
    }
    if config.precision is Precision.BF16:
        ds["bf16"] = {"enabled": True}
    elif config.precision is Precision.FP16:
        ds["fp16"] = {"enabled": True}
    return ds


def deepspeed_installed() -> bool:
    """Whether DeepSpeed can be imported here (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def import_deepspeed() -> Any:
    """deepspeed on its CPU accelerator (the traced and the gloo ranks' tensors are CPU tensors)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator, set_accelerator
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
    except ImportError:
        raise ConfigError(
            "strategy",
            "ZeRO is traced by running DeepSpeed's engine, and deepspeed is not installed",
            "pip install deepspeed (DS_BUILD_OPS=0 is enough)",
        ) from None
    if get_accelerator().device_name() != "cpu":
        set_accelerator(CPU_Accelerator())
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def fullest_rank(config: TrainingConfig) -> int:
    """The rank of ``config``'s job that peaks highest, which a trace stands for by default: the
    last under ZeRO stage 2 (see the module docstring), rank 0 otherwise (DDP ranks are
    replicas; FSDP's rank 0 holds the largest of uneven shards)."""
    parallelism = config.parallelism
    return parallelism.world_size - 1 if parallelism.strategy is Strategy.ZERO2 else 0


class _DataParallelGroups:
    """The ``mpu`` DeepSpeed takes its groups from: ``ranks`` of data parallelism over ``group``
    (a subgroup of the fake world) in which this process is ``rank``, no model parallelism."""

    def __init__(self, group: Any, ranks: int, rank: int) -> None:
        import torch.distributed as dist

        self._group, self._ranks, self.rank = group, ranks, rank
        self._alone = dist.new_group([0])

    def get_data_parallel_group(self) -> Any:
        return self._group

    def get_data_parallel_rank(self) -> int:
        return self.rank

    def get_data_parallel_world_size(self) -> int:
        return self._ranks

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(range(self._ranks))

    def get_model_parallel_group(self) -> Any:
        return self._alone

    def get_model_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_world_size(self) -> int:
        return 1


@contextlib.contextmanager
def _fake_world_engine(model: nn.Module, groups: _DataParallelGroups) -> Iterator[None]:
    """What DeepSpeed asks of a world without data, answered as a healthy step answers it.

    - ``deepspeed.comm.get_rank(group)`` of the data-parallel group: ``groups.rank``. This
      process is rank 0 of the fake world, and torch sorts a subgroup's ranks, so it is rank 0
      of every subgroup; DeepSpeed picks the rank's partition by this answer (stage 1/2:
      ``partition_id = dist.get_rank(group=self.real_dp_process_group[i])``), and the fake
      group's collectives move nothing whichever rank asks.
    - ``engine.module.to(device)`` (``runtime/engine.py`` ``_configure_distributed_model``):
      the fake weights are already where they stand for; moving them would swap fake tensors,
      which torch refuses. Skipped, as the engine's own ``dont_change_device`` skips it.
    - ``is_invalid_grad_norm`` (``runtime/utils.py``, called in both ZeRO optimizers' ``step``)
      reads the gradient norm's value: False, a finite norm, the step that is taken.
    - ``has_overflow`` (both ZeRO optimizers, under bf16/fp16) reads whether a gradient
      overflowed: False, as in a healthy step.
    - ``assert_ints_same_as_other_ranks`` (``runtime/zero/utils.py``; stage 3 checks that every
      rank saw the same parameter order) reads a broadcast list: every fake rank is rank 0.
    - Stages 1/2 assert that each partition starts aligned (``partitioned_data.data_ptr() %
      (2 * nccl_start_alignment_factor) == 0`` in ``stage_1_and_2.py``): a fake tensor's pointer
      is 0, aligned, and torch's warning about reading it is silenced, as it says nothing about
      the step.
    """
    from deepspeed import comm
    from deepspeed.runtime.zero import (
        partition_parameters,
        partitioned_param_coordinator,
        stage3,
        stage_1_and_2,
    )

    group_rank = comm.get_rank

    def get_rank(group: Any = None) -> int:
        return groups.rank if group is groups.get_data_parallel_group() else group_rank(group)

    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor", UserWarning)
        stack.enter_context(patched(comm, "get_rank", get_rank))
        stack.enter_context(patched(model, "to", lambda *args, **kwargs: model))
        for module in (stage_1_and_2, stage3):
            stack.enter_context(patched(module, "is_invalid_grad_norm", lambda norm: False))
        for optimizer in (stage_1_and_2.DeepSpeedZeroOptimizer, stage3.DeepSpeedZeroOptimizer_Stage3):
            stack.enter_context(patched(optimizer, "has_overflow", lambda *args, **kwargs: False))
        for module in (partition_parameters, partitioned_param_coordinator, stage3):
            stack.enter_context(patched(module, "assert_ints_same_as_other_ranks", lambda ints: None))
        yield


@contextlib.contextmanager
def _local_rank_set() -> Iterator[None]:
    """``LOCAL_RANK`` while the engine is built (``_do_args_sanity_check`` in
    ``runtime/engine.py`` asserts a launcher set it), rank 0's where none did; not left behind,
    since accelerate and Trainer take a set ``LOCAL_RANK`` for a distributed launch."""
    if "LOCAL_RANK" in os.environ:
        yield
        return
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        os.environ.pop("LOCAL_RANK", None)


class _EngineOptimizer:
    """The step tracer's view of the engine's optimizer: ``engine.step`` steps, zeroes the
    gradients and counts the step; ``state`` is the optimizer state over the fp32 partitions."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @property
    def state(self) -> Any:
        return self._engine.optimizer.state

    def step(self) -> None:
        self._engine.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing: ``engine.step`` has zeroed the gradients."""


def add_zero_engine(
    model: nn.Module, config: TrainingConfig, *, group: Any | None, ranks: int, rank: int = 0
) -> nn.Module:
    """Mark ``model`` to be wrapped in DeepSpeed's ZeRO engine by the step tracer.

    The engine must be built while the tracer watches (its buffers are the point), so this only
    leaves the tracer a function (:data:`planner.step.ZERO_ENGINE`) that turns the built setup
    into the engine's. ``group`` None: the real default process group of ``ranks`` gloo ranks;
    else the fake world's data-parallel ``group`` of ``ranks``, in which the trace stands for
    ``rank``.
    """
    deepspeed = import_deepspeed()

    def engine_setup(setup: TrainingSetup) -> TrainingSetup:
        hidden = int(setup.model.config.hidden_size)  # type: ignore[union-attr,arg-type]
        ds_config = deepspeed_config(config, hidden)
        mpu = _DataParallelGroups(group, ranks, rank) if group is not None else None
        # DeepSpeed prints (its CPU accelerator's shared-memory op "built successfully") on
        # stdout, which is the CLI's JSON answer: sent to stderr with its logs.
        linear = F.linear
        with (
            _fake_world_engine(setup.model, mpu) if mpu is not None else contextlib.nullcontext(),
            contextlib.redirect_stdout(sys.stderr),
            _local_rank_set(),
        ):
            engine, *_ = deepspeed.initialize(
                model=setup.model, optimizer=setup.optimizer, config=ds_config, mpu=mpu
            )
        # Stage 3 swaps ``torch.nn.functional.linear`` for its memory-efficient one process-wide
        # ("This will persist unless manually reset": ``_enable_mem_efficient_linear`` in
        # ``runtime/zero/partition_parameters.py``). Its steps run with it; the rest of this
        # process (other traces) gets torch's back.
        engine_linear, F.linear = F.linear, linear

        @contextlib.contextmanager
        def engine_steps() -> Iterator[None]:
            with (
                patched(F, "linear", engine_linear),
                _fake_world_engine(engine.module, mpu) if mpu is not None else contextlib.nullcontext(),
            ):
                yield

        logger.debug("ZeRO stage %d engine over %d ranks", ds_config["zero_optimization"]["stage"], ranks)
        return TrainingSetup(
            model=engine,
            optimizer=_EngineOptimizer(engine),  # type: ignore[arg-type]
            task=setup.task,
            vocab_size=setup.vocab_size,
            autocast_dtype=None,  # DeepSpeed's bf16/fp16 engines cast the module itself
            loss_head=setup.loss_head,
            backward=lambda loss: engine.backward(loss, scale_wrt_gas=False),
            step_context=engine_steps,
        )

    setattr(model, ZERO_ENGINE, engine_setup)
    return model
