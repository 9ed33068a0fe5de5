"""Which device a traced step stands for: CUDA's kernel choices and block rounding, or the host.

A trace runs on the CPU under fake tensors; where the step would run on a GPU, a few things differ
and are emulated (see :class:`CudaTarget`). Cards that cannot run a config at all are refused here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.errors import ConfigError
from planner.models import head_dim
from planner.schema import Attention, Card, Precision, TrainingConfig

# CUDA's caching allocator hands out blocks in multiples of 512 bytes (c10/cuda/CUDACachingAllocator.cpp,
# kMinBlockSize), so every tensor's storage costs its size rounded up to 512.
CUDA_BLOCK_BYTES = 512


@dataclass(frozen=True)
class CudaTarget:
    """What changes when the step would run on CUDA rather than the CPU it is traced on.

    ``sdpa_backend`` is the attention kernel CUDA would pick ("flash", "efficient" or "math"). The
    fused kernels draw dropout in-kernel and save only the output and a log-sum-exp, as the CPU's
    fused kernel does without dropout; "math" saves the attention probabilities.
    """

    sdpa_backend: str


def sdpa_backend(card: Card, half_precision: bool, head_size: int, *, masked: bool = False) -> str:
    """The kernel ``scaled_dot_product_attention`` picks on ``card`` (PyTorch's sdp_utils.cpp rules).

    Flash needs sm80+, fp16/bf16, head_dim <= 256 and no ``attn_mask`` (``check_for_attn_mask``
    among its constraints); memory-efficient (CUTLASS) takes fp32 and masks too, head_dim <= 256
    here; anything else falls back to the math kernel that stores the probabilities. ``masked``:
    transformers passes a 4-D mask, as it does for a padded batch or a sliding window.
    """
    if head_size <= 256 and half_precision and card.compute_capability_tuple >= (8, 0) and not masked:
        return "flash"
    if head_size <= 256:
        return "efficient"
    return "math"


def cuda_target(card: Card, config: TrainingConfig, hf_config: Any) -> CudaTarget | None:
    """What a trace of ``config`` must emulate to be a step on ``card``: CUDA's attention kernel
    and block rounding; None on the host pseudo-card, where the step is what a CPU run does."""
    if card.kind == "cpu":
        return None
    if config.attention is Attention.FLASH_ATTENTION_2:
        # check_card_supports has refused cards and dtypes flash-attn has no kernel for.
        return CudaTarget(sdpa_backend="flash")
    half = config.precision is not Precision.FP32
    # The traced batch is the collator's padded one (see TrainingSetup.make_batch): masked.
    return CudaTarget(sdpa_backend=sdpa_backend(card, half, head_dim(hf_config), masked=True))


def check_card_supports(config: TrainingConfig, card: Card) -> None:
    """Refuse combinations the card cannot run at all: bf16 on a card without bf16 units, and
    flash-attention-2 where flash-attn has no kernel (its README: Ampere or newer GPUs, fp16 and
    bf16 only; no CPU)."""
    sm = f"sm{card.compute_capability.replace('.', '')}" if card.kind != "cpu" else "the CPU"
    if config.precision.needs_bf16 and not card.supports_bf16:
        raise ConfigError(
            "precision",
            f"{card.display_name} ({sm}) has no bf16 support",
            "use --precision fp16 (or fp32) on this card",
        )
    if config.attention is Attention.FLASH_ATTENTION_2:
        if card.kind == "cpu" or card.compute_capability_tuple < (8, 0):
            raise ConfigError(
                "attention",
                f"flash_attention_2 has no kernel for {card.display_name} ({sm}); it needs an sm80+ GPU",
                "use --attention sdpa",
            )
        if config.precision is Precision.FP32:
            raise ConfigError(
                "attention",
                "flash_attention_2 runs in fp16/bf16 only",
                "use --precision bf16, or --attention sdpa",
            )
