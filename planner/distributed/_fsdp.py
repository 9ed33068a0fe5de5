"""FSDP2 sharding as accelerate applies it, on a model built by :mod:`planner.step`.

The units follow ``accelerate.utils.fsdp_utils.fsdp2_prepare_model`` with the transformer-based
wrap policy (the one ``accelerate config`` offers for FSDP2): ``fully_shard`` on every module of
a class in the model's ``_no_split_modules`` (its decoder layers), then the input embedding
(untied), then the tail of final norm and output head (with the embedding when tied) with
``reshard_after_forward=False``, then the root with FSDP's own default for it. Mixed precision
is accelerate's ``FullyShardedDataParallelPlugin.set_mixed_precision``: parameters gathered,
gradients reduced and outputs cast in the half dtype, fp32 shards kept as master weights. The
code is that recipe restated for a model without an ``Accelerator`` around it, each step citing
the line of accelerate it follows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from planner.schema import Precision

_HALF = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def mixed_precision_policy(precision: Precision) -> Any:
    """accelerate's FSDP2 policy for Trainer's precision flags: ``param_dtype``, ``reduce_dtype``
    and ``output_dtype`` all the half dtype for fp16/bf16; none for fp32 and pure bf16 (the
    weights are already in the dtype they compute in)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    half = _HALF.get(precision)
    if half is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=half, reduce_dtype=half, output_dtype=half)


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The last direct child of the base model whose class is a norm (accelerate's ``_find_final_norm``)."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else model
    if not isinstance(base, nn.Module):
        return None
    norms = [module for _, module in base.named_children() if "Norm" in type(module).__name__]
    return norms[-1] if norms else None


def _bottom_up(model: nn.Module) -> list[nn.Module]:
    """Every submodule below ``model``, children after their descendants (accelerate's
    ``get_module_children_bottom_up`` without the model itself)."""
    stack, ordered = [model], []
    while stack:
        module = stack.pop()
        for child in module.children():
            stack.append(child)
            ordered.append(child)
    return ordered[::-1]


def shard_like_accelerate(model: nn.Module, mesh: Any, precision: Precision) -> nn.Module:
    """Apply FSDP2 to ``model`` over ``mesh`` in accelerate's units (see the module docstring)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # accelerate upcasts trainable low-precision parameters to fp32 under mixed precision
    # ("FSDP2 requires uniform orig_dtype among trainable params in each group").
    if precision in _HALF:
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.to(torch.float32)
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": True,  # FSDP2 plugin default
        "mp_policy": mixed_precision_policy(precision),
    }
    wrapped = set(getattr(model, "_no_split_modules", None) or [])
    for module in _bottom_up(model):
        inner = getattr(module, "_checkpoint_wrapped_module", module)
        if type(inner).__name__ in wrapped and not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)
    get_input = getattr(model, "get_input_embeddings", None)
    get_output = getattr(model, "get_output_embeddings", None)
    input_embed = get_input() if get_input is not None else None
    output_embed = get_output() if get_output is not None else None
    tied = input_embed is not None and getattr(output_embed, "weight", None) is input_embed.weight
    if input_embed is not None and not tied and not isinstance(input_embed, FSDPModule):
        fully_shard(input_embed, **kwargs)
    final_norm = _final_norm(model)
    tail_modules = (final_norm, input_embed, output_embed) if tied else (final_norm, output_embed)
    tail = [m for m in tail_modules if m is not None and not isinstance(m, FSDPModule)]
    if tail:
        fully_shard(tail, **{**kwargs, "reshard_after_forward": False})
    root_kwargs = {key: value for key, value in kwargs.items() if key != "reshard_after_forward"}
    fully_shard(model, **root_kwargs)
    return model
