"""peft LoRA adapters on a model, as every init path of a trial adds them."""

from __future__ import annotations

import torch
from torch import nn

from planner.errors import ConfigError
from planner.schema import Precision, TrainingConfig
from planner.step._imports import import_peft


def add_lora(model: nn.Module, config: TrainingConfig, task: str) -> nn.Module:
    """``model`` wrapped by peft with ``config``'s LoRA adapters, in the dtype training keeps them.

    peft keeps adapters in fp32 over a half base (``autocast_adapter_dtype``, its default); pure
    bf16 keeps them in bf16 unless the config says otherwise (``TrainingConfig.fp32_adapters``).
    A target list that matches nothing is the user's to fix, with the names that would match.
    """
    import_peft()
    from peft import LoraConfig, TaskType, get_peft_model

    peft_task = {"causal-lm": TaskType.CAUSAL_LM, "sequence-classification": TaskType.SEQ_CLS}.get(task)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type=peft_task,
    )
    try:
        peft_model = get_peft_model(model, lora, autocast_adapter_dtype=config.fp32_adapters)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target module" in str(exc):
            raise ConfigError(
                "lora.target_modules",
                f"{config.lora.target_modules} match no module of {type(model).__name__}",
                f"use 'all-linear' or some of {', '.join(lora_target_candidates(model)[:8])}",
            ) from None
        if "lora_dropout" in str(exc):
            # peft wraps fused expert weights (mixture-of-experts) in a ParamWrapper without dropout.
            raise ConfigError(
                "lora.dropout",
                f"peft cannot apply dropout to {type(model).__name__}'s layers: {exc}",
                "set it to 0",
            ) from None
        raise
    half = {Precision.PURE_BF16: torch.bfloat16, Precision.BF16: torch.bfloat16}.get(config.precision)
    if not config.fp32_adapters and half is not None:
        # peft casts adapters to the base dtype only when they are off meta; do it in every path.
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.to(half)
    return peft_model


def lora_target_candidates(model: nn.Module) -> list[str]:
    """Names LoRA can target: the linear-like layers (``nn.Linear`` and transformers' ``Conv1D``,
    GPT-2's projections), without the output head, which peft's ``all-linear`` leaves out too."""
    from transformers.pytorch_utils import Conv1D

    head = getattr(model, "get_output_embeddings", lambda: None)()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and module is not head and name
        }
    )
