"""The optimizer Trainer builds for each ``optim`` name, and the names it knows them by."""

from __future__ import annotations

import torch
from torch import nn

from planner.schema import OptimizerName
from planner.step._imports import import_bitsandbytes

# transformers' TrainingArguments.optim name for each of ours (what the executor passes Trainer).
TRAINER_OPTIM_NAMES: dict[OptimizerName, str] = {
    OptimizerName.ADAMW: "adamw_torch_fused",
    OptimizerName.ADAMW_TORCH: "adamw_torch",
    OptimizerName.ADAMW_8BIT: "adamw_bnb_8bit",
    OptimizerName.PAGED_ADAMW_8BIT: "paged_adamw_8bit",
    OptimizerName.SGD: "sgd",
    OptimizerName.ADAFACTOR: "adafactor",
}

BITSANDBYTES_OPTIMIZERS = frozenset({OptimizerName.ADAMW_8BIT, OptimizerName.PAGED_ADAMW_8BIT})
"""The optimizers bitsandbytes implements (its import is needed to build them)."""


def optimizer_implementation(name: OptimizerName, *, on_cuda: bool, foreach: bool | None = None) -> str:
    """How the optimizer Trainer builds for ``name`` runs its step on CUDA (or the CPU).

    torch's AdamW and SGD, given neither ``fused`` nor ``foreach``, take the multi-tensor
    (foreach) path when every parameter is on a device with foreach kernels (CUDA, not the CPU)
    and a per-parameter loop otherwise (``torch.optim.optimizer._default_to_fused_or_foreach``,
    ``torch.utils._foreach_utils._get_foreach_kernels_supported_devices``); Trainer passes
    ``fused=True`` for ``adamw_torch_fused`` alone (``transformers.trainer_optimizer``).
    bitsandbytes' 8-bit AdamW updates each parameter in one kernel; transformers' Adafactor loops.
    ``foreach`` (``TargetStack.optimizer_foreach``) set: torch's AdamW and SGD take that path.
    """
    if name is OptimizerName.ADAMW:
        return "fused"
    if name in (OptimizerName.ADAMW_TORCH, OptimizerName.SGD):
        chosen = on_cuda if foreach is None else foreach
        return "foreach" if chosen else "for-loop"
    if name in BITSANDBYTES_OPTIMIZERS:
        return "bitsandbytes 8-bit" + (" paged" if name is OptimizerName.PAGED_ADAMW_8BIT else "")
    return "for-loop"


def make_optimizer(
    name: OptimizerName,
    params: list[nn.Parameter],
    *,
    as_on_cuda: bool = False,
    lr: float = 1e-5,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """The optimizer class and arguments ``Trainer.get_optimizer_cls_and_kwargs`` picks for ``name``.

    Kept as a table rather than calling Trainer: importing Trainer costs ~4 s, over half of the
    estimator's time budget. ``tests/step/test_setup.py`` checks the table against Trainer.
    ``as_on_cuda``: the parameters are CPU (fake) tensors standing for CUDA ones, so the optimizer
    is built as torch builds it for CUDA parameters: the implementation it would choose there
    (:func:`optimizer_implementation`) made explicit, and paged 8-bit AdamW as its non-paged twin
    (same state layout; paging needs CUDA managed memory, which no CPU can host). Otherwise torch
    chooses for the device the parameters are on, as under Trainer. ``foreach`` set (a stack that
    states it, ``TargetStack.optimizer_foreach``): torch's AdamW and SGD are told which path to take.
    """
    if name in (OptimizerName.ADAMW, OptimizerName.ADAMW_TORCH):
        implementation = optimizer_implementation(name, on_cuda=as_on_cuda, foreach=foreach)
        if implementation == "fused":
            choice = {"fused": True}
        elif foreach is not None or as_on_cuda:  # stated, or what torch picks for CUDA parameters
            choice = {"foreach": implementation == "foreach"}
        else:
            choice = {}
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **choice)
    if name in BITSANDBYTES_OPTIMIZERS:
        bnb = import_bitsandbytes()
        paged = name is OptimizerName.PAGED_ADAMW_8BIT and not as_on_cuda
        return bnb.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, optim_bits=8, is_paged=paged)
    if name is OptimizerName.SGD:
        chosen = as_on_cuda if foreach is None else foreach
        stated = foreach is not None or as_on_cuda
        return torch.optim.SGD(params, lr=lr, **({"foreach": chosen} if stated else {}))
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False)


# bitsandbytes' Optimizer8bit.get_state_buffer (bitsandbytes/optim/optimizer.py): a paged optimizer
# takes the state of parameters with at least 1e5 elements from F.get_paged, i.e. cudaMallocManaged
# unified memory outside PyTorch's caching allocator; smaller ones are ordinary zeros_like tensors.
PAGED_MIN_NUMEL = 100_000


def paged_state_tensors(name: OptimizerName, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer-state tensors that ``name`` keeps in CUDA managed (paged) memory.

    Only state1/state2 come from ``get_state_buffer``; absmax, qmaps and step stay ordinary
    tensors. Empty for every optimizer but paged 8-bit AdamW (and before its state exists).
    """
    if name is not OptimizerName.PAGED_ADAMW_8BIT:
        return []
    return [
        state[key]
        for param, state in optimizer.state.items()
        if isinstance(param, torch.Tensor) and param.numel() >= PAGED_MIN_NUMEL
        for key in ("state1", "state2")
        if isinstance(state.get(key), torch.Tensor)
    ]
