"""``TrainingArguments`` / TRL ``SFTConfig`` files (``args.to_dict()`` dumped as JSON or YAML).

Keys and defaults: transformers ``TrainingArguments``
(https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments),
TRL ``SFTConfig`` (https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig) and TRL's
``ModelConfig`` (https://huggingface.co/docs/trl/main/en/script_utils#trl.ModelConfig), whose
``model_name_or_path``/``use_peft``/``lora_*``/``load_in_4bit``/``dtype`` keys sit in the same
file when it is a ``trl sft --config`` YAML.
"""

from __future__ import annotations

from typing import Any

from planner.configs._common import (
    Format,
    ImportedConfig,
    Source,
    attention_from_name,
    lora_targets,
    optimizer_from_name,
    precision_from_flags,
    scheduler_from_name,
    trainer_default_optim,
    warmup,
)
from planner.errors import ConfigError
from planner.schema import Attention, Method, Precision

# TrainingArguments keys that change memory in ways the estimate leaves out.
NOT_MODELLED = {
    "deepspeed": "the estimate is for one device holding everything",
    "fsdp": "the estimate is for one device holding everything",
    "use_liger_kernel": "the standard loss and kernels are estimated",
    "lora_modules_to_save": "only the LoRA adapters are counted as trainable",
    "use_dora": "plain LoRA is estimated",
    "activation_offloading": "activations are counted on the device",
}
# TRL's own keys: their presence tells an SFTConfig from plain TrainingArguments.
TRL_KEYS = frozenset(
    {
        "max_length",
        "max_seq_length",
        "packing",
        "dataset_text_field",
        "completion_only_loss",
        "assistant_only_loss",
        "model_init_kwargs",
        "use_peft",
        "padding_free",
        "dataset_num_proc",
    }
)
TRL_DEFAULT_MAX_LENGTH = 1024  # SFTConfig.max_length's default


def read_trainer_args(source: Source, fields: dict[str, Any], training: dict[str, Any]) -> None:
    """The TrainingArguments keys every Trainer-based format shares (LLaMA-Factory's YAML too).

    Unset keys take TrainingArguments' defaults: micro-batch 8, accumulation 1, 3 epochs,
    learning rate 5e-5, linear schedule, AdamW.
    """
    micro = source.number("per_device_train_batch_size", int, 8)
    accumulation = source.number("gradient_accumulation_steps", int, 1)
    fields.update(micro_batch=micro, gradient_accumulation=accumulation)
    source.origins.update(
        micro_batch="per_device_train_batch_size", gradient_accumulation="gradient_accumulation_steps"
    )
    if not source.has("per_device_train_batch_size"):
        source.note("per_device_train_batch_size unset: 8 (TrainingArguments' default)")
    fields["optimizer"] = optimizer_from_name("optim", source.value("optim", trainer_default_optim()))
    max_steps = source.number("max_steps", int)
    training.update(
        learning_rate=source.number("learning_rate", float, 5e-5),
        epochs=source.number("num_train_epochs", float, 3.0),
        max_steps=max_steps if max_steps and max_steps > 0 else None,  # -1: train by epochs
        weight_decay=source.number("weight_decay", float),
        scheduler=scheduler_from_name(source, "lr_scheduler_type", "linear"),
        effective_batch=micro * accumulation if micro > 0 and accumulation > 0 else None,
    )
    source.origins.update(epochs="num_train_epochs", scheduler="lr_scheduler_type")
    warmup(source, training)


def load_dtype(source: Source) -> str | None:
    """The dtype the model is loaded in: TRL ``ModelConfig.dtype`` (``torch_dtype`` before TRL
    0.22) or ``SFTConfig.model_init_kwargs``; ``None`` when the file does not say."""
    kwargs = source.value("model_init_kwargs") or {}
    for value in (
        source.value("dtype"),
        source.value("torch_dtype"),
        kwargs.get("dtype") if isinstance(kwargs, dict) else None,
        kwargs.get("torch_dtype") if isinstance(kwargs, dict) else None,
    ):
        if value is not None:
            return str(value).removeprefix("torch.")
    return None


def attn_implementation(source: Source) -> Attention | None:
    """The attention the model is loaded with: TRL ``ModelConfig.attn_implementation`` or
    ``SFTConfig.model_init_kwargs``; ``None`` (transformers' default) when the file does not say."""
    kwargs = source.value("model_init_kwargs") or {}
    if source.has("attn_implementation"):
        value = source.value("attn_implementation")
        return attention_from_name("attn_implementation", value) if value is not None else None
    if isinstance(kwargs, dict) and kwargs.get("attn_implementation") is not None:
        return attention_from_name("model_init_kwargs.attn_implementation", kwargs["attn_implementation"])
    return None


def resolve_precision(source: Source, method: Method, flags: Precision, dtype: str | None) -> Precision:
    """Mixed-precision flags plus the load dtype: a full fine-tune of a model loaded in bf16 keeps
    bf16 weights and optimizer state (no fp32 master copy), which is ``pure-bf16``."""
    if dtype == "bfloat16" and method is Method.FULL:
        source.note(
            "model loaded in bfloat16 for full fine-tuning: bf16 weights and optimizer state (pure-bf16)"
        )
        return Precision.PURE_BF16
    if dtype == "bfloat16" and flags is Precision.FP32 and method is Method.LORA:
        # TRL and peft scripts call get_peft_model with its default autocast_adapter_dtype=True.
        source.note("bfloat16 base without bf16 autocast: pure-bf16 base with peft's default fp32 adapters")
        return Precision.PURE_BF16
    if dtype == "bfloat16" and flags is Precision.FP32:
        source.note("bfloat16 compute without bf16 autocast: estimated with bf16 autocast (precision bf16)")
        return Precision.BF16
    if dtype == "float16" and method is Method.FULL:
        source.note(
            "model loaded in float16 for full fine-tuning: estimated with fp32 master weights (upper bound)"
        )
    return flags


def read_hf_args(source: Source, fmt: Format, model: str | None) -> ImportedConfig:
    """A TrainingArguments or SFTConfig mapping (plus TRL ModelConfig keys when present)."""
    fields: dict[str, Any] = {}
    training: dict[str, Any] = {}
    fields["model"] = model or source.value("model_name_or_path")
    if not fields["model"]:
        raise ConfigError(
            "model",
            f"{source.name} ({fmt}) does not name the model",
            "give MODEL on the command line, or `model:` beside `from:` in a spec",
        )
    read_trainer_args(source, fields, training)

    use_peft, four, eight = source.flag("use_peft"), source.flag("load_in_4bit"), source.flag("load_in_8bit")
    if four and eight:
        raise source.conflict("load_in_4bit", "load_in_8bit", "one quantization of the base")
    if (four or eight) and not use_peft:
        key = "load_in_4bit" if four else "load_in_8bit"
        raise ConfigError(key, f"{source.name} quantizes the base without use_peft", "set use_peft: true")
    method = Method.QLORA if four else Method.LORA if use_peft else Method.FULL
    if eight:
        source.note(
            "load_in_8bit: an 8-bit base is not modelled; estimated with a 16-bit LoRA base (upper bound)"
        )
    if method is not Method.FULL:
        targets = source.value("lora_target_modules")
        if targets is None:
            source.note("lora_target_modules unset: peft picks per architecture; estimated with all-linear")
        fields["lora"] = {
            "r": source.number("lora_r", int, 16),
            "alpha": source.number("lora_alpha", int, 32),
            "dropout": source.number("lora_dropout", float, 0.05),
            "target_modules": "all-linear" if targets is None else lora_targets(targets),
        }
        source.origins.update({f"lora.{k}": f"lora_{k}" for k in ("r", "alpha", "dropout")})
        source.origins["lora.target_modules"] = "lora_target_modules"
    elif fmt == "trl":
        source.note("no use_peft: full fine-tuning (TRL takes LoRA from peft_config, not SFTConfig)")
    fields["method"] = method
    fields["precision"] = resolve_precision(source, method, precision_from_flags(source), load_dtype(source))
    source.origins["precision"] = "bf16"
    if method is Method.LORA and fields["precision"] is Precision.PURE_BF16:
        # get_peft_model's default keeps fp32 adapters, where the planner's pure-bf16 keeps bf16 ones.
        fields["lora"]["autocast_adapter_dtype"] = True
    fields["gradient_checkpointing"] = source.flag("gradient_checkpointing")
    attention = attn_implementation(source)
    if attention is not None:
        fields["attention"] = attention
    fields["torch_compile"] = source.flag("torch_compile")
    if fields["torch_compile"]:
        source.note("torch_compile: its step time is modelled; memory is estimated as eager's")

    lengths = source.set_keys("max_length", "max_seq_length")
    if len(lengths) == 2 and source.raw["max_length"] != source.raw["max_seq_length"]:
        raise source.conflict("max_length", "max_seq_length", "one sequence length")
    if lengths:
        fields["seq_len"] = source.number(lengths[0], int)
        source.origins["seq_len"] = lengths[0]
    elif fmt == "trl":
        fields["seq_len"] = TRL_DEFAULT_MAX_LENGTH
        # SFTConfig's default; an explicit null means no truncation, so the longest row decides.
        source.note(
            f"max_length unset: {TRL_DEFAULT_MAX_LENGTH} assumed (SFTConfig's default; give --seq-len)"
        )
    else:
        source.note(f"no sequence length in {source.name}: seq_len 512 assumed (give --seq-len)")
    source.leftovers(NOT_MODELLED)
    return source.finish(fields, training, fmt)
