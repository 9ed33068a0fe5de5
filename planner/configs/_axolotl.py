"""axolotl config YAML (``axolotl train config.yml``).

Keys, defaults and rules from axolotl's config reference (https://docs.axolotl.ai/docs/config.html),
its mixed-precision page (https://docs.axolotl.ai/docs/mixed_precision.html), the LoRA schema
(``utils/schemas/peft.py``: ``adapter: qlora`` needs ``load_in_4bit`` and refuses
``load_in_8bit``; quantized loading needs an adapter) and ``utils/config.resolve_dtype``: the
model is *loaded* in bf16 when ``bf16`` is on, so a full fine-tune keeps bf16 weights and
optimizer state, which is the planner's ``pure-bf16``.
"""

from __future__ import annotations

from typing import Any

from planner.configs._common import (
    ImportedConfig,
    Source,
    attention_from_name,
    lora_targets,
    optimizer_from_name,
    scheduler_from_name,
    warmup,
)
from planner.errors import ConfigError
from planner.schema import Attention, Method, Precision

SEQUENCE_LEN_DEFAULT = 512  # axolotl's schema default for sequence_len

_NOT_MODELLED = {
    "deepspeed": "the estimate is for one device holding everything",
    "fsdp": "the estimate is for one device holding everything",
    "fsdp_config": "the estimate is for one device holding everything",
    "gptq": "a bitsandbytes or 16-bit base is estimated",
    "peft_use_dora": "plain LoRA is estimated",
    "lora_modules_to_save": "only the LoRA adapters are counted as trainable",
    "activation_offloading": "activations are counted on the device",
    "cut_cross_entropy": "the standard loss (full logits) is estimated",
    "torch_compile": "eager-mode memory is estimated",
    "relora": "plain LoRA is estimated",
}


def _method(source: Source) -> Method:
    adapter = source.value("adapter")
    four, eight = source.flag("load_in_4bit"), source.flag("load_in_8bit")
    if four and eight:
        raise source.conflict("load_in_4bit", "load_in_8bit", "one quantization of the base")
    if not adapter:
        if four or eight:
            # axolotl: "load_in_8bit and load_in_4bit are not supported without setting an adapter"
            raise source.conflict(
                "adapter", "load_in_4bit" if four else "load_in_8bit", "a quantized base needs an adapter"
            )
        return Method.FULL
    if adapter not in ("lora", "qlora"):
        raise ConfigError(
            "adapter", f"'{adapter}' adapters are not modelled", "use adapter: lora or qlora, or none"
        )
    if adapter == "qlora" and eight:
        raise source.conflict("adapter", "load_in_8bit", "axolotl cannot load qlora in 8 bit")
    if adapter == "qlora" and not four:
        source.note("adapter qlora without load_in_4bit: true (axolotl requires it): 4-bit base assumed")
    if eight:
        source.note(
            "load_in_8bit: an 8-bit base is not modelled; estimated with a 16-bit LoRA base (upper bound)"
        )
    if adapter == "lora" and four:
        source.note("adapter lora with load_in_4bit: a 4-bit base, so QLoRA")
    return Method.QLORA if adapter == "qlora" or four else Method.LORA


def _precision(source: Source, method: Method) -> Precision:
    bf16 = source.value("bf16")
    fp16 = source.flag("fp16")
    if isinstance(bf16, str) and bf16.lower() == "auto":
        # "if bf16 is set to 'auto', and fp16 is set to true, we will prefer the explicit fp16 setting"
        bf16_on = not fp16
        if bf16_on:
            source.note("bf16 auto taken as bf16 (a GPU without bf16 would get fp16)")
    else:
        bf16_on = bf16 is not None and (bf16 is True or str(bf16).lower() in ("true", "full"))
        if bf16_on and fp16:
            raise source.conflict("bf16", "fp16", "Trainer takes one mixed precision")
    if source.flag("float16"):
        raise ConfigError(
            "float16", "pure fp16 training (no AMP) is not modelled", "use fp16: true (mixed precision)"
        )
    if source.flag("bfloat16"):
        if fp16:
            raise source.conflict("bfloat16", "fp16", "one precision")
        source.origins["precision"] = "bfloat16"
        return Precision.PURE_BF16
    source.origins["precision"] = "bf16"
    if bf16_on and method is Method.FULL:
        source.note(
            "bf16 with full fine-tuning: axolotl loads the model in bf16, so weights and optimizer"
            " state are bf16 (pure-bf16)"
        )
        return Precision.PURE_BF16
    if bf16_on:
        return Precision.BF16
    if fp16 or source.flag("load_in_8bit"):
        if method is Method.FULL:
            source.note(
                "fp16 with full fine-tuning: estimated with fp32 master weights"
                " (axolotl loads fp16; upper bound)"
            )
        return Precision.FP16
    return Precision.FP32


# axolotl's attention switches (config reference: flash_attention, sdp_attention, eager_attention,
# or transformers' own attn_implementation); none set leaves transformers' default.
_ATTENTION_FLAGS = {
    "flash_attention": Attention.FLASH_ATTENTION_2,
    "sdp_attention": Attention.SDPA,
    "eager_attention": Attention.EAGER,
}


def _attention(source: Source) -> Attention:
    chosen = [key for key in _ATTENTION_FLAGS if source.flag(key)]
    if source.value("attn_implementation") is not None:
        chosen.append("attn_implementation")
    if len(chosen) > 1:
        raise source.conflict(chosen[0], chosen[1], "one attention implementation")
    if not chosen:
        return Attention.SDPA
    source.origins["attention"] = chosen[0]
    if chosen[0] == "attn_implementation":
        return attention_from_name("attn_implementation", source.value("attn_implementation"))
    return _ATTENTION_FLAGS[chosen[0]]


def read_axolotl(source: Source, model: str | None) -> ImportedConfig:
    fields: dict[str, Any] = {"model": model or source.value("base_model")}
    training: dict[str, Any] = {}
    if not fields["model"]:
        raise ConfigError("base_model", f"{source.name} does not name the model", "set base_model")
    source.used.add("base_model_config")
    method = _method(source)
    fields["method"] = method
    source.origins["method"] = "adapter"
    if method is not Method.FULL:
        linear = source.flag("lora_target_linear")
        modules = source.value("lora_target_modules")
        if linear and modules:
            source.note("lora_target_linear adds every linear layer to lora_target_modules: all-linear")
        elif not linear and not modules:
            source.note(
                "no lora_target_modules/lora_target_linear: peft picks per architecture;"
                " estimated with all-linear"
            )
        fields["lora"] = {
            "r": source.number("lora_r", int, 16),
            "alpha": source.number("lora_alpha", int, 32),
            "dropout": source.number("lora_dropout", float, 0.0),  # axolotl sets 0.0 when unset
            "target_modules": "all-linear" if linear or not modules else lora_targets(modules),
        }
        for key in ("lora_r", "lora_alpha"):
            if not source.has(key):
                source.note(
                    f"{key} unset (axolotl requires it): {fields['lora'][key.removeprefix('lora_')]} assumed"
                )
        source.origins.update({f"lora.{k}": f"lora_{k}" for k in ("r", "alpha", "dropout")})
        source.origins["lora.target_modules"] = "lora_target_modules"
    fields["precision"] = _precision(source, method)
    # true, false, "offload" or "offload_disk"; offloading moves activations off the device.
    checkpointing = source.value("gradient_checkpointing", False)
    if isinstance(checkpointing, str) and checkpointing.startswith("offload"):
        source.note(f"gradient_checkpointing {checkpointing}: estimated as plain checkpointing (upper bound)")
    fields["gradient_checkpointing"] = checkpointing not in (False, "false", "False")
    fields["attention"] = _attention(source)
    fields["seq_len"] = source.number("sequence_len", int, SEQUENCE_LEN_DEFAULT)
    source.origins["seq_len"] = "sequence_len"
    micro = source.number("micro_batch_size", int, 1)
    accumulation = source.number("gradient_accumulation_steps", int)
    batch = source.number("batch_size", int)
    if accumulation is None:
        # axolotl derives it: gradient_accumulation_steps = batch_size // micro_batch_size
        accumulation = max(batch // micro, 1) if batch and micro > 0 else 1
    fields.update(micro_batch=micro, gradient_accumulation=accumulation)
    source.origins.update(micro_batch="micro_batch_size", gradient_accumulation="gradient_accumulation_steps")
    fields["optimizer"] = optimizer_from_name("optimizer", source.value("optimizer", "adamw_torch_fused"))
    training.update(
        learning_rate=source.number("learning_rate", float),
        epochs=source.number("num_epochs", float),
        max_steps=source.number("max_steps", int),
        weight_decay=source.number("weight_decay", float),
        # "empty for cosine" (config reference, lr_scheduler)
        scheduler=scheduler_from_name(source, "lr_scheduler", "cosine"),
        effective_batch=micro * accumulation if micro > 0 and accumulation > 0 else None,
    )
    source.origins.update(epochs="num_epochs", scheduler="lr_scheduler")
    warmup(source, training)
    source.leftovers(_NOT_MODELLED)
    return source.finish(fields, training, "axolotl")
