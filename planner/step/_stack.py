"""Which software stack a traced step stands for: the installed versions and what they choose.

A Trainer step's memory depends on versions: transformers' default ``optim`` follows torch's
version, torch's AdamW picks fused, foreach or a per-parameter loop by flags and device, and
SDPA picks its kernel by card, dtype and mask. An answer names what it modelled.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from planner.schema import Method, ModelledStack, TrainingConfig
from planner.step._optimizers import BITSANDBYTES_OPTIMIZERS, TRAINER_OPTIM_NAMES, optimizer_implementation
from planner.step._target import CudaTarget

TRACED_BATCH = (
    "collator batch: input_ids, attention_mask (rows padded), labels (-100 at padding; class ids for "
    "classifiers)"
)
"""What :meth:`~planner.step.TrainingSetup.make_batch` gives each traced micro-batch."""


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def modelled_stack(config: TrainingConfig, cuda: CudaTarget | None) -> ModelledStack:
    """The versions and choices a trace of ``config`` on ``cuda`` (None: the host) models."""
    uses_bitsandbytes = config.method is Method.QLORA or config.optimizer in BITSANDBYTES_OPTIMIZERS
    return ModelledStack(
        torch=version("torch"),
        transformers=version("transformers"),
        peft=_installed("peft") if config.method is not Method.FULL else None,
        bitsandbytes=_installed("bitsandbytes") if uses_bitsandbytes else None,
        trainer_optim=TRAINER_OPTIM_NAMES[config.optimizer],
        optimizer_implementation=optimizer_implementation(
            config.optimizer, on_cuda=cuda is not None, foreach=config.stack.optimizer_foreach
        ),
        attention=cuda.sdpa_backend if cuda is not None else "cpu",
        batch=TRACED_BATCH,
    )
