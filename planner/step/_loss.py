"""The causal-LM loss as a run's stack computes it, where that differs from the installed transformers.

transformers' shared ``ForCausalLMLoss`` (transformers/loss/loss_utils.py) upcasts the logits to
fp32 before cross-entropy, so a half-precision step holds fp32 logits, their log-softmax and its
gradient: three fp32 copies of (tokens x vocabulary) at the loss's backward. Some models kept their
own loss in older releases, computed in the logits' dtype: ``GPTBigCodeForCausalLM.forward`` of
transformers 4.48.1 (modeling_gpt_bigcode.py lines 1182-1186) takes a contiguous copy of the
shifted logits and applies ``CrossEntropyLoss`` to it. A config whose stack says so
(``TargetStack.loss_upcast`` False) is traced with that loss.

The shared loss itself shifted the logits until transformers 4.48.x: ``logits.float()``, then a
contiguous copy of the shifted fp32 logits (transformers 4.48.1 loss/loss_utils.py); later releases
pad the labels instead (huggingface/transformers#35646). Its peak at the loss is one fp32 copy of
the logits higher: while cross-entropy's log-softmax runs, the bf16 logits, their fp32 upcast, the
shifted copy and the log-softmax output are all live. ``TargetStack.loss_shifts_logits`` traces it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from planner.step._imports import patched

IGNORE_INDEX = -100
"""``CrossEntropyLoss``'s default ``ignore_index``, the label of padding."""


def loss_in_logits_dtype(
    logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, ignore_index: int = IGNORE_INDEX, **_: Any
) -> torch.Tensor:
    """transformers 4.48.1 GPTBigCode's loss: the shifted logits copied, cross-entropy in their dtype."""
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return nn.functional.cross_entropy(
        shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1), ignore_index=ignore_index
    )


def loss_shifting_upcast_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    **_: Any,
) -> torch.Tensor:
    """transformers 4.48.1's ``ForCausalLMLoss``: the logits upcast to fp32, then the shifted fp32
    logits copied, cross-entropy summed over ``num_items_in_batch`` when the Trainer passes it."""
    # Kept in ``logits`` until the loss returns, as in the source: the fp32 upcast stays live.
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    reduction = "sum" if num_items_in_batch is not None else "mean"
    flat_logits, flat_labels = shift_logits.view(-1, vocab_size), shift_labels.view(-1)
    loss = nn.functional.cross_entropy(
        flat_logits, flat_labels, ignore_index=ignore_index, reduction=reduction
    )
    return loss / num_items_in_batch if num_items_in_batch is not None else loss


def loss_as_stated(
    model: nn.Module, task: str, upcast: bool, shifts_logits: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """While entered, ``model``'s causal-LM loss is computed as its stack does (see the module docstring).

    transformers models reach their loss through the ``loss_function`` property; the first module
    that has it (the transformers model under any peft wrapper) has its class's property replaced.
    Other tasks' losses (classification, masked LM) are left as they are.
    """
    if (upcast and not shifts_logits) or task != "causal-lm":
        return contextlib.nullcontext()
    owner = next((m for m in model.modules() if hasattr(type(m), "loss_function")), None)
    if owner is None:
        return contextlib.nullcontext()
    loss = loss_shifting_upcast_logits if upcast else loss_in_logits_dtype
    return patched(type(owner), "loss_function", property(lambda self: loss))
