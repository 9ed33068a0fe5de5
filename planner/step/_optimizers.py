"""The optimizer Trainer builds for each ``optim`` name, and the names it knows them by."""

from __future__ import annotations

import torch
from torch import nn

from planner.schema import OptimizerName
from planner.step._imports import import_bitsandbytes

# transformers' TrainingArguments.optim name for each of ours (what the executor passes Trainer).
TRAINER_OPTIM_NAMES: dict[OptimizerName, str] = {
    OptimizerName.ADAMW: "adamw_torch_fused",
    OptimizerName.ADAMW_8BIT: "adamw_bnb_8bit",
    OptimizerName.PAGED_ADAMW_8BIT: "paged_adamw_8bit",
    OptimizerName.SGD: "sgd",
    OptimizerName.ADAFACTOR: "adafactor",
}

BITSANDBYTES_OPTIMIZERS = frozenset({OptimizerName.ADAMW_8BIT, OptimizerName.PAGED_ADAMW_8BIT})
"""The optimizers bitsandbytes implements (its import is needed to build them)."""


def make_optimizer(
    name: OptimizerName, params: list[nn.Parameter], *, paged_as_unpaged: bool = False, lr: float = 1e-5
) -> torch.optim.Optimizer:
    """The optimizer class and arguments ``Trainer.get_optimizer_cls_and_kwargs`` picks for ``name``.

    Kept as a table rather than calling Trainer: importing Trainer costs ~4 s, over half of the
    estimator's time budget. ``tests/step/test_setup.py`` checks the table against Trainer.
    ``paged_as_unpaged`` builds paged 8-bit AdamW as its non-paged twin (same state layout):
    paging needs CUDA managed memory, which no CPU can host.
    """
    if name is OptimizerName.ADAMW:
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    if name in BITSANDBYTES_OPTIMIZERS:
        bnb = import_bitsandbytes()
        paged = name is OptimizerName.PAGED_ADAMW_8BIT and not paged_as_unpaged
        return bnb.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, optim_bits=8, is_paged=paged)
    if name is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=lr)
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
