"""Bad values and conflicting keys in imported configs: one-line ConfigErrors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from planner.configs import read_training_config
from planner.errors import ConfigError
from tests.configs.conftest import dump, write

AXOLOTL_BASE = {"base_model": "m", "sequence_len": 64}
LLAMA_FACTORY_BASE = {"model_name_or_path": "m", "stage": "sft"}
TRL_BASE = {"model_name_or_path": "m", "packing": False}


@pytest.mark.parametrize(
    ("name", "mapping", "field", "words"),
    [
        ("a.yml", {**AXOLOTL_BASE, "optimizer": "adamw_9bit"}, "optimizer", "did you mean 'adamw_8bit'?"),
        ("a.yml", {**AXOLOTL_BASE, "optimizer": "lion_8bit"}, "optimizer", "paged_adamw_8bit"),
        ("a.yml", {**AXOLOTL_BASE, "bf16": True, "fp16": True}, "bf16/fp16", "both"),
        (
            "a.yml",
            {**AXOLOTL_BASE, "adapter": "qlora", "load_in_8bit": True},
            "adapter/load_in_8bit",
            "8 bit",
        ),
        ("a.yml", {**AXOLOTL_BASE, "load_in_4bit": True}, "adapter/load_in_4bit", "needs an adapter"),
        (
            "a.yml",
            {**AXOLOTL_BASE, "adapter": "lora", "load_in_4bit": True, "load_in_8bit": True},
            "load_in_4bit/load_in_8bit",
            "both",
        ),
        ("a.yml", {**AXOLOTL_BASE, "adapter": "ia3"}, "adapter", "not modelled"),
        ("a.yml", {**AXOLOTL_BASE, "sequence_len": 0}, "sequence_len", "greater than 0"),
        ("a.yml", {**AXOLOTL_BASE, "micro_batch_size": "two"}, "micro_batch_size", "not a number"),
        ("a.yml", {**AXOLOTL_BASE, "learning_rate": "fast"}, "learning_rate", "not a number"),
        ("a.yml", {**AXOLOTL_BASE, "adapter": "lora", "lora_dropout": 1.5}, "lora_dropout", "less than 1"),
        (
            "a.yml",
            {**AXOLOTL_BASE, "warmup_ratio": 0.1, "warmup_steps": 10},
            "warmup_ratio/warmup_steps",
            "both",
        ),
        (
            "a.yml",
            {**AXOLOTL_BASE, "adapter": "qlora", "load_in_4bit": True, "bfloat16": True},
            "bfloat16",
            "qlora",
        ),
        (
            "b.yaml",
            {**LLAMA_FACTORY_BASE, "finetuning_type": "full", "quantization_bit": 4},
            "finetuning_type/quantization_bit",
            "LoRA",
        ),
        ("b.yaml", {**LLAMA_FACTORY_BASE, "finetuning_type": "freeze"}, "finetuning_type", "freeze"),
        ("b.yaml", {**LLAMA_FACTORY_BASE, "quantization_bit": 3}, "quantization_bit", "3-bit"),
        ("b.yaml", {**LLAMA_FACTORY_BASE, "cutoff_len": -1}, "cutoff_len", "greater than 0"),
        ("b.yaml", {**LLAMA_FACTORY_BASE, "lora_rank": 0}, "lora_rank", "greater than or equal to 1"),
        (
            "c.json",
            {**TRL_BASE, "max_length": 128, "max_seq_length": 256},
            "max_length/max_seq_length",
            "both",
        ),
        ("c.json", {"packing": True, "max_length": 64}, "model", "does not name the model"),
        ("c.json", {**TRL_BASE, "load_in_4bit": True}, "load_in_4bit", "use_peft"),
        ("c.json", {**TRL_BASE, "optim": "adamw_torch_fusd"}, "optim", "did you mean 'adamw_torch_fused'?"),
        (
            "adapter_config.json",
            {"peft_type": "PREFIX_TUNING", "base_model_name_or_path": "m"},
            "peft_type",
            "LoRA",
        ),
        ("d.yaml", {"epochs": 3, "batch": 2}, "config", "cannot tell which tool"),
    ],
)
def test_bad_config_is_one_line_config_error_naming_the_key(
    tmp_path: Path, name: str, mapping: dict[str, Any], field: str, words: str
):
    with pytest.raises(ConfigError) as caught:
        read_training_config(dump(tmp_path / name, mapping))
    error = caught.value
    assert error.field == field, str(error)
    assert words in str(error)
    assert "\n" not in str(error) and "Fix:" in str(error)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^config: .*does not exist"):
        read_training_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"^config: bad.yml is not valid YAML at line 2"):
        read_training_config(write(tmp_path / "bad.yml", "base_model: m\n  adapter: [lora\n"))
    with pytest.raises(ConfigError, match=r"^config: bad.json is not valid JSON"):
        read_training_config(write(tmp_path / "bad.json", "{base_model: m"))
    with pytest.raises(ConfigError, match=r"^config: list.yaml is not a mapping"):
        read_training_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"^format: 'axolotol' .*did you mean 'axolotl'"):
        read_training_config(write(tmp_path / "a.yml", "base_model: m\n"), format="axolotol")  # type: ignore[arg-type]
