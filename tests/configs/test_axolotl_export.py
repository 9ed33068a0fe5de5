"""A config written in axolotl's form reads back through the axolotl reader as the same config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from planner.configs import read_training_config, to_axolotl
from planner.schema import Hyperparameters, TrainingConfig

HYPER = Hyperparameters(
    learning_rate=3e-4, effective_batch=8, epochs=2.0, weight_decay=0.01, warmup_ratio=0.1, scheduler="cosine"
)


@pytest.mark.parametrize(
    "fields",
    [
        {
            "method": "qlora",
            "precision": "bf16",
            "optimizer": "paged_adamw_8bit",
            "lora": {"r": 8, "alpha": 16},
        },
        {
            "method": "lora",
            "precision": "fp16",
            "lora": {"target_modules": ["q_proj", "v_proj"], "dropout": 0.1},
        },
        {"method": "lora", "precision": "pure-bf16", "gradient_checkpointing": True},
        {"method": "full", "precision": "fp32", "optimizer": "adafactor", "attention": "eager"},
        {"method": "lora", "precision": "bf16", "attention": "flash_attention_2"},
        {"method": "full", "precision": "pure-bf16", "optimizer": "adamw_8bit"},
    ],
)
def test_axolotl_form_round_trips(tmp_path: Path, fields: dict[str, Any]) -> None:
    config = TrainingConfig.model_validate(
        {
            "model": "meta-llama/Llama-3.2-1B",
            "seq_len": 1024,
            "micro_batch": 2,
            "gradient_accumulation": 4,
            **fields,
        }
    )
    keys, notes = to_axolotl(config, HYPER)
    path = tmp_path / "best.yml"
    path.write_text(yaml.safe_dump(keys))
    imported = read_training_config(path)
    assert imported.format == "axolotl"
    assert imported.config == config
    assert imported.training is not None
    expected = HYPER.model_dump(exclude_none=True)
    assert imported.training.model_dump(exclude_none=True) == expected
    assert notes == ["add `datasets:` (axolotl's data section): a training config holds no data"]


def test_full_bf16_mixed_precision_is_said_to_have_no_axolotl_form(tmp_path: Path) -> None:
    config = TrainingConfig(model="meta-llama/Llama-3.2-1B", method="full", precision="bf16")
    keys, notes = to_axolotl(config)
    assert keys["bf16"] is True and any("no axolotl form" in note for note in notes)
    path = tmp_path / "best.yml"
    path.write_text(yaml.safe_dump(keys))
    assert read_training_config(path).config == config.with_changes(precision="pure-bf16")


def test_an_adapter_dtype_axolotl_cannot_express_is_noted() -> None:
    config = TrainingConfig.model_validate(
        {"model": "meta-llama/Llama-3.2-1B", "method": "lora", "lora": {"autocast_adapter_dtype": False}}
    )
    _, notes = to_axolotl(config)
    assert any("autocast_adapter_dtype" in note for note in notes)
