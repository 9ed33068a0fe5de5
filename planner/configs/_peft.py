"""peft ``adapter_config.json`` (what ``PeftModel.save_pretrained`` writes beside the adapter).

Keys from peft's ``LoraConfig`` (https://huggingface.co/docs/peft/package_reference/lora#peft.LoraConfig):
``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` (a list, ``"all-linear"``, or a
regex string), ``base_model_name_or_path``, ``peft_type``. The file says nothing of the training
shapes, the precision or whether the base was 4-bit, so those are the planner's defaults.
"""

from __future__ import annotations

from typing import Any

from planner.configs._common import ImportedConfig, Source
from planner.errors import ConfigError
from planner.schema import Method

_NOT_MODELLED = {
    "use_dora": "plain LoRA is estimated",
    "modules_to_save": "only the LoRA adapters are counted as trainable",
    "layers_to_transform": "LoRA on every layer is estimated (upper bound)",
}


def read_peft(source: Source, model: str | None) -> ImportedConfig:
    peft_type = str(source.value("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ConfigError(
            "peft_type", f"'{peft_type}' adapters are not modelled", "import a LoRA adapter_config.json"
        )
    fields: dict[str, Any] = {
        "model": model or source.value("base_model_name_or_path"),
        "method": Method.LORA,
    }
    if not fields["model"]:
        raise ConfigError(
            "base_model_name_or_path",
            f"{source.name} does not name its base model",
            "give MODEL on the command line",
        )
    targets = source.value("target_modules")
    if targets is None:
        source.note("target_modules unset: peft picks per architecture; estimated with all-linear")
        targets = "all-linear"
    elif isinstance(targets, str) and targets != "all-linear":
        source.note(f"target_modules is the regex '{targets}': estimated with all-linear (upper bound)")
        targets = "all-linear"
    fields["lora"] = {
        "r": source.number("r", int, 8),
        "alpha": source.number("lora_alpha", int, 8),
        "dropout": source.number("lora_dropout", float, 0.0),
        "target_modules": targets,
    }
    source.origins.update(
        {
            "lora.r": "r",
            "lora.alpha": "lora_alpha",
            "lora.dropout": "lora_dropout",
            "lora.target_modules": "target_modules",
        }
    )
    source.note(
        "adapter_config.json holds only the adapter: method lora, precision bf16, seq_len 512, micro-batch 1"
        " assumed (override with --method qlora, --seq-len, ...)"
    )
    source.leftovers(_NOT_MODELLED)
    return source.finish(fields, {}, "peft-adapter")
