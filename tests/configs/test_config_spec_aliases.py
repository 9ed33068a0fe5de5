"""TrainingArguments names in a sweep spec's base, training and search, and base: {from: FILE}."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.configs import normalise_spec
from planner.errors import ConfigError
from planner.schema import OptimizerName, Precision, Range, Scheduler
from planner.sweep import load_spec
from tests.configs.conftest import AXOLOTL, write

DATA = "data: {counts: {train_examples: 1000, mean_tokens: 48}}\n"


def test_training_arguments_names_load_as_the_spec_names(tmp_path: Path, tiny_models: dict[str, str]):
    spec = load_spec(
        write(
            tmp_path / "hf.yaml",
            f"""\
per_device_train_batch_size: 2
base:
  model_name_or_path: {tiny_models["llama"]}
  optim: adamw_bnb_8bit
  bf16: false
  fp16: true
  max_seq_length: 128
  gradient_accumulation_steps: 4
training:
  num_train_epochs: 2
  lr_scheduler_type: cosine
  warmup_steps: 0.05
search:
  optim: [adamw_torch, paged_adamw_8bit]
  num_train_epochs: [1, 3]
  max_length: [64, 128]
  learning_rate: {{low: 1.0e-5, high: 1.0e-3, log: true}}
strategy: random
n_trials: 4
{DATA}""",
        )
    )
    assert spec.micro_batch == 2
    assert (spec.base.model, spec.base.optimizer, spec.base.precision) == (
        tiny_models["llama"],
        OptimizerName.ADAMW_8BIT,
        Precision.FP16,
    )
    assert (spec.base.seq_len, spec.base.gradient_accumulation) == (128, 4)
    assert (spec.training.epochs, spec.training.scheduler, spec.training.warmup_ratio) == (
        2.0,
        Scheduler.COSINE,
        0.05,
    )
    assert spec.search == {
        "optimizer": ["adamw_torch", "paged_adamw_8bit"],
        "epochs": [1, 3],
        "seq_len": [64, 128],
        "learning_rate": Range(low=1e-5, high=1e-3, log=True),
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"training": {"epochs": 2, "num_train_epochs": 3}}, "training.epochs/training.num_train_epochs"),
        (
            {"search": {"lr_scheduler_type": ["cosine"], "scheduler": ["linear"]}},
            "search.lr_scheduler_type/search.scheduler",
        ),
        (
            {"base": {"model": "m", "max_length": 64, "max_seq_length": 64}},
            "base.max_length/base.max_seq_length",
        ),
        ({"base": {"model": "m", "bf16": True, "precision": "bf16"}}, "base.precision/base.bf16"),
        ({"base": {"model": "m", "bf16": True, "fp16": True}}, "base.bf16/base.fp16"),
        ({"base": {"model": "m", "optim": "adamw_9bit"}}, "base.optimizer"),
        ({"search": {"optim": ["adamw_torch", "lamb"]}}, "search.optimizer"),
        ({"micro_batch": 2, "per_device_train_batch_size": 4}, "micro_batch/per_device_train_batch_size"),
        ({"training": {"warmup_steps": 100}}, "training.warmup_steps"),
    ],
)
def test_alias_conflicts_and_bad_values_name_the_keys(raw: dict, field: str, tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        normalise_spec(raw, tmp_path)
    assert caught.value.field == field, str(caught.value)


def test_base_from_file_relative_to_the_spec_with_overrides(tmp_path: Path, tiny_models: dict[str, str]):
    configs = tmp_path / "configs"
    configs.mkdir()
    write(configs / "lora.yml", AXOLOTL.format(model=tiny_models["llama"]))
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    spec = load_spec(
        write(
            sweeps / "spec.yaml",
            f"base:\n  from: ../configs/lora.yml\n  seq_len: 32\n  lora: {{r: 4}}\n"
            f"training: {{learning_rate: 1.0e-3}}\nsearch: {{lora_r: [4, 8]}}\n{DATA}",
        )
    )
    assert spec.base.model == tiny_models["llama"]
    assert (spec.base.seq_len, spec.base.lora.r, spec.base.lora.alpha) == (32, 4, 16)
    assert spec.base.lora.target_modules == ["q_proj", "v_proj"]
    # The file fills the training section; the spec's own values win.
    assert (spec.training.learning_rate, spec.training.epochs, spec.training.effective_batch) == (
        1e-3,
        2.0,
        8,
    )


def test_base_from_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^config: .*nope.yml does not exist"):
        load_spec(write(tmp_path / "spec.yaml", f"base: {{from: nope.yml}}\n{DATA}"))


def test_a_spec_as_config_resolves_its_model_and_passes_on_the_notes(
    tmp_path: Path, tiny_models: dict[str, str]
):
    from planner.configs import read_training_config

    write(tmp_path / "lora.yml", AXOLOTL.format(model=tiny_models["llama"]))
    spec = write(tmp_path / "spec.yaml", f"base: {{from: lora.yml}}\nmicro_batch: 4\n{DATA}")
    result = read_training_config(spec)
    assert (result.format, result.config.micro_batch, result.config.seq_len) == ("vram-planner", 4, 64)
    assert result.notes and all(note.startswith("lora.yml: ") for note in result.notes)
    assert result.training is not None and result.training.learning_rate == 2e-4

    example = Path(__file__).parents[2] / "examples" / "tiny-sweep" / "spec.yaml"
    model = read_training_config(example).config.model
    assert Path(model).is_absolute() and (Path(model) / "config.json").is_file()
