"""The software behaviours of the run being planned where they differ from the planner's own stack.

The estimator traces the training step with the transformers and torch installed next to it. A
run on another stack (an older release, another environment) differs in a few behaviours that
move memory; a config states them here so the trace and the CUDA terms follow the run's stack
rather than the installed one. Every field's default is "as the installed stack does".
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class ModuleLoading(str, Enum):
    """``CUDA_MODULE_LOADING``: when the CUDA runtime loads the kernels of the process's libraries."""

    LAZY = "lazy"
    EAGER = "eager"


class TargetStack(BaseModel):
    """Behaviours of the run's software stack that change its memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss_upcast: bool = True
    """The causal-LM loss upcasts the logits to fp32 before cross-entropy, as transformers' shared
    ``ForCausalLMLoss`` does (``logits = logits.float()``, transformers/loss/loss_utils.py). False:
    the per-model loss some models kept in older releases, a contiguous shifted copy of the logits
    and ``CrossEntropyLoss`` in the logits' dtype (e.g. ``GPTBigCodeForCausalLM.forward`` of
    transformers 4.48.1, modeling_gpt_bigcode.py lines 1182-1186)."""
    loss_shifts_logits: bool = False
    """With ``loss_upcast``: the loss shifts the fp32 logits rather than the labels, one more fp32
    (tokens x vocabulary) copy live at the loss, as transformers' ``ForCausalLMLoss`` did up to
    4.48.x (``shift_logits = logits[..., :-1, :].contiguous()`` after ``logits = logits.float()``,
    transformers 4.48.1 loss/loss_utils.py); huggingface/transformers#35646 (merged 2025-01-13,
    after the 4.48 branch) pads the labels instead (``nn.functional.pad(labels, (0, 1))``, as in
    4.52.4). Without ``loss_upcast`` the per-model loss shifts the logits anyway."""
    kbit_bf16_casting: bool = False
    """QLoRA under bf16: after peft's ``prepare_model_for_kbit_training`` (which upcasts every
    16-bit parameter to fp32) and ``get_peft_model``, the embeddings and output head are cast back
    to bf16 and the norms kept fp32, as TRL's ``SFTTrainer`` does for a 4-bit model when
    ``args.bf16`` is set (``peft_module_casting_to_bf16``: trl 0.13.0 trl/trainer/sft_trainer.py
    and trl/trainer/utils.py). The embeddings' output is then bf16, and with it the residual
    stream: each checkpointed layer's input is held in bf16 rather than fp32."""
    zero_grad_set_to_none: bool = True
    """``zero_grad``'s ``set_to_none`` as the run calls it. True: gradients are freed after each
    optimizer step and allocated again by the next backward, torch's default since 2.0
    (pytorch/pytorch#92731). False: they are zeroed in place and stay allocated between steps, so
    every gradient is live from the start of the next forward: torch 1.7-1.13's default
    (``Module.zero_grad(set_to_none: bool = False)``, pytorch/pytorch#42754), which Trainer's
    ``model.zero_grad()`` took (transformers 4.17 trainer.py)."""
    cuda_module_loading: ModuleLoading | None = None
    """Unset: the planner's environment's ``CUDA_MODULE_LOADING`` (lazy when unset: PyTorch sets
    LAZY since 1.13, pytorch/pytorch#86509). ``eager`` for stacks before lazy loading existed
    (CUDA runtime < 11.7 or driver < R515, CUDA C++ Programming Guide, "Lazy Loading")."""
    optimizer_foreach: bool | None = None
    """torch's ``foreach`` argument for ``adamw_torch`` and ``sgd``. Unset: torch's choice, the
    multi-tensor path on CUDA. False: the per-parameter loop, as torch 1.x ran unless told
    otherwise (its functional ``adamw`` set ``foreach = False`` when unset; torch 2.0's
    ``_default_to_fused_or_foreach`` made foreach the CUDA default), and as transformers' own
    ``AdamW`` ran (Trainer's ``adamw_hf``, its default until huggingface/transformers#25109,
    2023-07: one ``exp_avg_sq.sqrt().add_(eps)`` temporary per parameter)."""

    empty_cache_every_step: bool = False
    """The training loop calls ``torch.cuda.empty_cache()`` at the end of every optimizer step, as
    the peft MetaMathQA benchmark's loop does (peft method_comparison/MetaMathQA/run.py, ``train``:
    ``torch.cuda.empty_cache()`` then ``gc.collect()`` after each step). Each step then starts with
    only its live tensors' segments reserved: the blocks the previous step cached and split are
    released, so the replay starts each step afresh. (Trainer's ``torch_empty_cache_steps`` empties
    the cache elsewhere, between a micro-step's loss and its backward: not this.)"""

    @property
    def is_default(self) -> bool:
        return self == TargetStack()
