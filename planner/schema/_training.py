"""The training configuration: what one training step looks like, independent of the card."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from planner.schema._parallel import Parallelism
from planner.schema._stack import TargetStack


class Method(str, Enum):
    """Which weights train: all of them, LoRA adapters on a frozen base, or LoRA on a 4-bit base."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """Numeric precision, with the semantics of ``transformers.TrainingArguments``.

    ``fp16``/``bf16`` are *mixed* precision: trainable weights, gradients and optimizer state stay
    fp32 and autocast runs the matmuls in half precision (``TrainingArguments(bf16=True)``).
    ``pure-bf16`` loads the model in bf16 with no fp32 master copy (``dtype=torch.bfloat16``,
    no autocast): half the memory, the usual choice for frozen LoRA bases anyway.
    """

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    PURE_BF16 = "pure-bf16"

    @property
    def needs_bf16(self) -> bool:
        return self in (Precision.BF16, Precision.PURE_BF16)


class OptimizerName(str, Enum):
    """Optimizers by their ``TrainingArguments.optim`` names.

    ``adamw`` is Trainer's default for torch >= 2.8, ``adamw_torch_fused``; ``adamw_torch`` is
    torch's AdamW left to pick its implementation (foreach on CUDA, a for-loop on the CPU), the
    default before. Same state, but foreach keeps parameter-sized intermediates during the step.
    """

    ADAMW = "adamw"
    ADAMW_TORCH = "adamw_torch"
    ADAMW_8BIT = "adamw_8bit"
    PAGED_ADAMW_8BIT = "paged_adamw_8bit"
    SGD = "sgd"
    ADAFACTOR = "adafactor"


FOREACH_OPTIMIZERS = frozenset({OptimizerName.ADAMW_TORCH, OptimizerName.SGD})
"""The optimizers whose torch implementation takes a ``foreach`` argument left to torch's choice."""


class Attention(str, Enum):
    """The attention implementation the model is loaded with (``attn_implementation``).

    Memory differs by what each keeps for backward: ``eager`` stores the (batch, heads, seq, seq)
    probabilities and their dropout mask; ``sdpa`` (transformers' default where the model supports
    it, else eager) and ``flash_attention_2`` keep only the output and a log-sum-exp on cards whose
    fused kernels apply (see ``planner.step.CudaTarget``). ``flash_attention_2`` needs the
    flash-attn package and an sm80+ card in fp16/bf16.
    """

    SDPA = "sdpa"
    EAGER = "eager"
    FLASH_ATTENTION_2 = "flash_attention_2"


class LoraSettings(BaseModel):
    """peft ``LoraConfig`` fields that change memory or speed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(16, ge=1, le=65_536)
    """The adapters' rank; bounded by the widest layer of any model (a bigger one is a typo)."""
    alpha: PositiveInt = 32
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    autocast_adapter_dtype: bool | None = None
    """peft's ``get_peft_model(autocast_adapter_dtype=...)``: True keeps the adapters in fp32 over a
    half base (peft's default, and what TRL and most scripts run), False keeps them in the base's
    dtype. Unset, it follows the precision: fp32 adapters, except bf16 ones for ``pure-bf16``
    (LLaMA-Factory's ``pure_bf16``, axolotl's ``bfloat16``)."""

    @field_validator("target_modules")
    @classmethod
    def _named_modules(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or not all(name.strip() for name in value)):
            raise ValueError("give module names (e.g. q_proj,v_proj) or 'all-linear', not an empty name")
        return value


class TrainingConfig(BaseModel):
    """One fine-tuning setup: model, method, precision, optimizer, shapes.

    ``model`` is a hub id shipped in ``profiles/models``, a local directory with a ``config.json``,
    or (online only) any hub id. ``micro_batch`` is the per-device batch of one forward/backward;
    ``gradient_accumulation`` micro-batches make one optimizer step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    method: Method = Method.FULL
    lora: LoraSettings = LoraSettings()
    precision: Precision = Precision.BF16
    optimizer: OptimizerName = OptimizerName.ADAMW
    attention: Attention = Attention.SDPA
    gradient_checkpointing: bool = False
    """Unset, it follows the method's recipe: on for QLoRA (peft's ``prepare_model_for_kbit_training``
    turns it on by default), off otherwise."""
    torch_compile: bool = False
    """``TrainingArguments(torch_compile=True)``: the model runs through ``torch.compile`` (inductor).
    Only the step time changes in this planner; the memory estimate stays eager's (see
    :mod:`planner.timing._compiled`)."""
    seq_len: PositiveInt = 512
    micro_batch: PositiveInt = 1
    gradient_accumulation: PositiveInt = 1
    parallelism: Parallelism = Parallelism()
    """GPUs and data-parallel strategy; ``micro_batch`` is then per rank. Left out of dumps and
    keys when it is the single-GPU default, so single-GPU configs read and key as before."""
    stack: TargetStack = TargetStack()
    """Behaviours of the run's software where they differ from the installed stack the planner
    traces with (see :class:`TargetStack`); left out of dumps and keys when all are defaults."""

    @model_serializer(mode="wrap")
    def _single_gpu_unsaid(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> object:
        data = handler(self)
        if isinstance(data, dict) and self.parallelism.single_gpu:
            data.pop("parallelism", None)
        if isinstance(data, dict) and self.stack.is_default:
            data.pop("stack", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _recipe_checkpointing(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("gradient_checkpointing") is None:
            data = {**data, "gradient_checkpointing": data.get("method") == Method.QLORA}
        return data

    @field_validator("precision")
    @classmethod
    def _qlora_needs_half_compute(cls, precision: Precision, info: ValidationInfo) -> Precision:
        if info.data.get("method") is Method.QLORA and precision is Precision.PURE_BF16:
            # QLoRA's base is 4-bit whatever the precision; pure-bf16 only names the adapters'
            # dtype, which peft keeps fp32 anyway. Refuse rather than silently reinterpret.
            raise ValueError("qlora takes precision bf16, fp16 or fp32 (the 4-bit compute dtype)")
        lora = info.data.get("lora")
        if precision is Precision.FP16 and lora is not None and lora.autocast_adapter_dtype is False:
            # Trainer's fp16 GradScaler refuses to unscale fp16 gradients.
            raise ValueError("fp16 mixed precision trains fp32 adapters: unset lora.autocast_adapter_dtype")
        return precision

    @model_validator(mode="after")
    def _foreach_names_a_torch_optimizer(self) -> TrainingConfig:
        if self.stack.optimizer_foreach is not None and self.optimizer not in FOREACH_OPTIMIZERS:
            raise ValueError(
                f"stack.optimizer_foreach applies to adamw_torch and sgd, not {self.optimizer.value}: "
                "unset it or pick one of those"
            )
        return self

    @model_validator(mode="after")
    def _kbit_casting_needs_bf16_qlora(self) -> TrainingConfig:
        bf16_qlora = self.method is Method.QLORA and self.precision is Precision.BF16
        if self.stack.kbit_bf16_casting and not bf16_qlora:
            # TRL casts only a 4-bit model trained with bf16=True (trl 0.13.0 sft_trainer.py).
            raise ValueError("stack.kbit_bf16_casting applies to qlora with precision bf16")
        return self

    @property
    def fp32_adapters(self) -> bool:
        """Whether the LoRA adapters are held in fp32 (see ``LoraSettings.autocast_adapter_dtype``)."""
        if self.lora.autocast_adapter_dtype is not None:
            return self.lora.autocast_adapter_dtype
        return self.precision is not Precision.PURE_BF16

    def with_changes(self, **changes: object) -> TrainingConfig:
        """A validated copy with some fields replaced (``model_copy`` skips validation)."""
        return TrainingConfig.model_validate({**self.model_dump(), **changes})

    def step_shape(self) -> TrainingConfig:
        """The config as far as its traced step goes: all but the micro-batch, the traced variable.

        Accumulation matters to memory only as "one micro-batch, or another one on top of the
        first one's gradients", so 1 and 2 stand for every value.
        """
        return self.with_changes(micro_batch=1, gradient_accumulation=min(self.gradient_accumulation, 2))

    @property
    def key(self) -> str:
        """A hashable key for caches: the config as JSON (a list of LoRA targets is unhashable)."""
        return self.model_dump_json()
