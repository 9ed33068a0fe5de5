"""Which tool a config file is for, from its keys (and the name ``adapter_config.json``).

Each tool has keys no other one uses: axolotl's ``base_model``/``sequence_len``/
``micro_batch_size``, LLaMA-Factory's ``finetuning_type``/``cutoff_len``/``stage``, TRL's
``max_length``/``packing``/``use_peft``, peft's ``peft_type``, the planner's ``base`` (a spec)
or ``model`` beside its own field names. Plain TrainingArguments come last.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from planner.configs._common import Format
from planner.configs._hf_args import TRL_KEYS
from planner.configs._spec import BASE_ALIASES
from planner.errors import ConfigError
from planner.schema import TrainingConfig

PEFT_FILE_NAME = "adapter_config.json"
AXOLOTL_KEYS = frozenset(
    {
        "base_model",
        "sequence_len",
        "micro_batch_size",
        "num_epochs",
        "adapter",
        "lora_target_linear",
        "val_set_size",
    }
)
LLAMA_FACTORY_KEYS = frozenset(
    {
        "finetuning_type",
        "cutoff_len",
        "quantization_bit",
        "lora_rank",
        "lora_target",
        "stage",
        "template",
        "pure_bf16",
    }
)
TRAINING_ARGUMENTS_KEYS = frozenset(
    {
        "output_dir",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "learning_rate",
        "lr_scheduler_type",
        "optim",
    }
)
PLANNER_KEYS = frozenset(TrainingConfig.model_fields) | frozenset(BASE_ALIASES) | {"bf16", "fp16"}


def detect_format(raw: Mapping[str, Any], path: Path) -> Format:
    """The format of ``raw`` (read from ``path``), or a ConfigError saying what was expected."""
    keys = set(raw)
    if path.name == PEFT_FILE_NAME or "peft_type" in keys:
        return "peft-adapter"
    if isinstance(raw.get("base"), Mapping) or ("model" in keys and keys <= PLANNER_KEYS):
        return "vram-planner"
    if keys & AXOLOTL_KEYS:
        return "axolotl"
    if keys & LLAMA_FACTORY_KEYS:
        return "llama-factory"
    if keys & TRL_KEYS:
        return "trl"
    if keys & TRAINING_ARGUMENTS_KEYS:
        return "training-arguments"
    raise ConfigError(
        "config",
        f"cannot tell which tool {path.name} is for from its keys",
        "give an axolotl YAML (base_model), a LLaMA-Factory YAML (finetuning_type), TrainingArguments or "
        "SFTConfig JSON, a peft adapter_config.json or a vram-planner spec",
    )
