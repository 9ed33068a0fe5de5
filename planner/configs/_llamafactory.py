"""LLaMA-Factory training YAML (``llamafactory-cli train config.yaml``).

Keys and defaults: LLaMA-Factory's ``hparams`` (``model_args.py``: ``model_name_or_path``,
``quantization_bit``, ``quantization_method``, ``disable_gradient_checkpointing``;
``finetuning_args.py``: ``finetuning_type`` (default ``lora``), ``lora_rank`` 8, ``lora_alpha``
(default twice the rank), ``lora_dropout`` 0, ``lora_target`` ``all``, ``pure_bf16``;
``data_args.py``: ``cutoff_len`` 2048), documented at
https://llamafactory.readthedocs.io/en/latest/advanced/arguments.html, plus the
``TrainingArguments`` keys it passes through.
"""

from __future__ import annotations

from typing import Any

from planner.configs._common import ImportedConfig, Source, did_you_mean, lora_targets, precision_from_flags
from planner.configs._hf_args import NOT_MODELLED, read_trainer_args
from planner.errors import ConfigError
from planner.schema import Attention, Method, Precision

CUTOFF_LEN_DEFAULT = 2048

_NOT_MODELLED = {
    **NOT_MODELLED,
    "use_galore": "plain optimizer state is estimated",
    "use_apollo": "plain optimizer state is estimated",
    "use_badam": "all trainable parameters are estimated as updated together",
    "use_unsloth": "the standard transformers model is estimated",
    "use_unsloth_gc": "activations are counted on the device",
    "enable_liger_kernel": "the standard loss and kernels are estimated",
    "additional_target": "only the LoRA adapters are counted as trainable",
}


# LLaMA-Factory's ``flash_attn`` (model_args.py AttentionFunction; model_utils/attention.py maps
# "disabled" to eager and "auto" to transformers' default).
_ATTENTION = {
    "auto": Attention.SDPA,
    "sdpa": Attention.SDPA,
    "disabled": Attention.EAGER,
    "fa2": Attention.FLASH_ATTENTION_2,
}


def _attention(source: Source) -> Attention:
    value = str(source.value("flash_attn", "auto")).strip().lower()
    if value not in _ATTENTION:
        raise ConfigError(
            "flash_attn",
            f"'{value}' is not modelled{did_you_mean(value, _ATTENTION)}",
            f"use one of {', '.join(_ATTENTION)}",
        )
    return _ATTENTION[value]


def read_llamafactory(source: Source, model: str | None) -> ImportedConfig:
    fields: dict[str, Any] = {"model": model or source.value("model_name_or_path")}
    training: dict[str, Any] = {}
    if not fields["model"]:
        raise ConfigError(
            "model_name_or_path", f"{source.name} does not name the model", "set model_name_or_path"
        )

    finetuning = str(source.value("finetuning_type", "lora")).lower()
    bits = source.number("quantization_bit", int)
    if finetuning not in ("lora", "full"):
        raise ConfigError(
            "finetuning_type",
            f"'{finetuning}' tuning is not modelled",
            "use finetuning_type: full (an upper bound for freeze) or lora",
        )
    if bits is not None and finetuning != "lora":
        # LLaMA-Factory refuses it too: "Quantized models can only be used for the LoRA tuning."
        raise source.conflict("finetuning_type", "quantization_bit", "a quantized base trains only LoRA")
    if bits not in (None, 4, 8):
        raise ConfigError(
            "quantization_bit", f"{bits}-bit bases are not modelled", "use quantization_bit: 4 or 8"
        )
    method = Method.FULL if finetuning == "full" else Method.QLORA if bits == 4 else Method.LORA
    if bits == 8:
        source.note(
            "quantization_bit 8: an 8-bit base is not modelled;"
            " estimated with a 16-bit LoRA base (upper bound)"
        )
    if bits is not None and str(source.value("quantization_method", "bnb")).lower() not in (
        "bnb",
        "bitsandbytes",
    ):
        source.note("quantization_method: estimated as bitsandbytes NF4")
    fields["method"] = method
    source.origins["method"] = "finetuning_type"
    stage = str(source.value("stage", "sft"))
    if stage not in ("sft", "pt"):
        source.note(f"stage {stage}: the reference or reward model it also loads is not counted")

    if method is not Method.FULL:
        rank = source.number("lora_rank", int, 8)
        fields["lora"] = {
            "r": rank,
            "alpha": source.number("lora_alpha", int, rank * 2),
            "dropout": source.number("lora_dropout", float, 0.0),
            "target_modules": lora_targets(source.value("lora_target", "all")),
        }
        source.origins.update(
            {"lora.r": "lora_rank", "lora.alpha": "lora_alpha", "lora.dropout": "lora_dropout"}
        )
        source.origins["lora.target_modules"] = "lora_target"

    precision = precision_from_flags(source)
    if source.flag("pure_bf16"):
        if precision is Precision.FP16:
            raise source.conflict("pure_bf16", "fp16", "one precision")
        precision = Precision.PURE_BF16
        source.origins["precision"] = "pure_bf16"
    elif precision is Precision.FP32:
        source.note(
            "neither bf16 nor fp16: estimated in fp32 (LLaMA-Factory may load the checkpoint's dtype)"
        )
    fields["precision"] = precision
    source.origins.setdefault("precision", "bf16")
    # LLaMA-Factory turns checkpointing on itself unless told not to (model_utils/checkpointing.py).
    source.used.add("gradient_checkpointing")
    fields["gradient_checkpointing"] = not source.flag("disable_gradient_checkpointing")
    fields["attention"] = _attention(source)
    source.origins["attention"] = "flash_attn"
    fields["seq_len"] = source.number("cutoff_len", int, CUTOFF_LEN_DEFAULT)
    source.origins["seq_len"] = "cutoff_len"
    if not source.has("cutoff_len"):
        source.note(f"cutoff_len unset: {CUTOFF_LEN_DEFAULT} (LLaMA-Factory's default)")
    read_trainer_args(source, fields, training)
    source.leftovers(_NOT_MODELLED)
    return source.finish(fields, training, "llama-factory")
