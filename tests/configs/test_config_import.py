"""Acceptance: one fine-tune written for axolotl, LLaMA-Factory, TRL and the planner's own spec
reads as the same TrainingConfig, with the same estimate; detection and notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cards import load_card
from planner.configs import FORMATS, ImportedTraining, read_training_config
from planner.errors import ConfigError
from planner.estimator import estimate_memory
from planner.schema import (
    Attention,
    LoraSettings,
    Method,
    OptimizerName,
    Precision,
    Scheduler,
    TrainingConfig,
)
from planner.sweep import load_spec
from tests.configs.conftest import dump, write


def expected(model: str) -> TrainingConfig:
    return TrainingConfig(
        model=model,
        method=Method.LORA,
        lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]),
        precision=Precision.BF16,
        optimizer=OptimizerName.ADAMW,
        gradient_checkpointing=True,
        seq_len=64,
        micro_batch=2,
        gradient_accumulation=4,
    )


def test_same_config_in_every_format_same_training_config_and_estimate(
    same_config_files: dict[str, Path], tiny_models: dict[str, str]
):
    imported = {fmt: read_training_config(path) for fmt, path in same_config_files.items()}
    assert {fmt: result.format for fmt, result in imported.items()} == {fmt: fmt for fmt in imported}
    want = expected(tiny_models["llama"])
    for fmt, result in imported.items():
        assert result.config == want, fmt
        assert result.training == ImportedTraining(
            learning_rate=2e-4,
            epochs=2.0,
            scheduler=Scheduler.COSINE,
            warmup_ratio=0.1,
            weight_decay=0.01,
            effective_batch=8,
        ), fmt
    card = load_card("cpu")
    peaks = {fmt: estimate_memory(result.config, card).peak_bytes for fmt, result in imported.items()}
    assert len(set(peaks.values())) == 1, peaks


def test_spec_base_from_each_format_is_the_same_spec(same_config_files: dict[str, Path], tmp_path: Path):
    own = load_spec(same_config_files["vram-planner"])
    for fmt in ("axolotl", "llama-factory", "trl"):
        spec = write(
            tmp_path / f"from-{fmt}.yaml",
            f"base: {{from: {same_config_files[fmt].name}}}\n"
            "data: {counts: {train_examples: 1000, mean_tokens: 48}}\n",
        )
        loaded = load_spec(spec)
        assert loaded.base == own.base, fmt
        assert loaded.training == own.training, fmt


def test_full_bf16_fine_tune_keeps_bf16_weights_in_every_format(tmp_path: Path, tiny_models: dict[str, str]):
    """axolotl loads the model in bf16 (resolve_dtype), TRL's dtype says so, LLaMA-Factory needs
    pure_bf16, the spec says pure-bf16: all are bf16 weights and optimizer state."""
    model = tiny_models["llama"]
    files = [
        dump(tmp_path / "ax.yml", {"base_model": model, "bf16": True, "sequence_len": 64}),
        dump(
            tmp_path / "lf.yaml",
            {
                "model_name_or_path": model,
                "finetuning_type": "full",
                "bf16": True,
                "pure_bf16": True,
                "disable_gradient_checkpointing": True,
                "cutoff_len": 64,
                "per_device_train_batch_size": 1,
            },
        ),
        dump(
            tmp_path / "sft.json",
            {
                "model_name_or_path": model,
                "dtype": "bfloat16",
                "bf16": True,
                "max_length": 64,
                "per_device_train_batch_size": 1,
            },
        ),
        dump(tmp_path / "own.yaml", {"model": model, "precision": "pure-bf16", "seq_len": 64}),
    ]
    configs = {read_training_config(path).config for path in files}
    assert configs == {TrainingConfig(model=model, precision=Precision.PURE_BF16, seq_len=64)}


def test_real_training_arguments_to_dict_reads(tmp_path: Path, tiny_models: dict[str, str]):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4
    )
    path = dump(tmp_path / "args.json", json.loads(json.dumps(args.to_dict(), default=str)))
    result = read_training_config(path, model=tiny_models["gpt2"])
    assert result.format == "training-arguments"
    assert result.config == TrainingConfig(
        model=tiny_models["gpt2"], precision=Precision.FP32, micro_batch=4, gradient_accumulation=1
    )
    assert result.training is not None and result.training.epochs == 3.0 and result.training.max_steps is None
    assert any(note.startswith("ignored ") for note in result.notes)


def test_an_unset_optim_is_the_installed_trainers_default(tmp_path: Path, tiny_models: dict[str, str]):
    from transformers import TrainingArguments

    from planner.configs import OPTIMIZER_NAMES

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    fields = {k: v for k, v in json.loads(json.dumps(args.to_dict(), default=str)).items() if k != "optim"}
    result = read_training_config(dump(tmp_path / "args.json", fields), model=tiny_models["gpt2"])
    assert result.config.optimizer is OPTIMIZER_NAMES[str(TrainingArguments.default_optim)]
    assert result.config.optimizer is OPTIMIZER_NAMES[str(args.optim.value)]


def test_peft_adapter_config_gives_lora_settings_and_base_model(tmp_path: Path, tiny_models: dict[str, str]):
    adapter = tmp_path / "checkpoint-500"
    adapter.mkdir()
    dump(
        adapter / "adapter_config.json",
        {
            "base_model_name_or_path": tiny_models["qwen2"],
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "inference_mode": True,
            "r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "target_modules": ["v_proj", "q_proj"],
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "use_dora": False,
        },
    )
    result = read_training_config(adapter)  # the directory that holds it
    assert result.format == "peft-adapter"
    assert result.config.model == tiny_models["qwen2"]
    assert result.config.method is Method.LORA
    assert result.config.lora == LoraSettings(
        r=8, alpha=16, dropout=0.05, target_modules=["v_proj", "q_proj"]
    )
    assert result.training is None
    assert any("only the adapter" in note for note in result.notes)


def test_axolotl_mappings(tmp_path: Path):
    path = dump(
        tmp_path / "qlora.yml",
        {
            "base_model": "./models/llama",  # a local path is kept as is
            "adapter": "lora",
            "load_in_4bit": True,
            "lora_target_linear": True,
            "lora_r": 32,
            "lora_alpha": 16,
            "bf16": "auto",
            "optimizer": "adamw_bnb_8bit",
            "lr_scheduler": None,  # empty: cosine
            "micro_batch_size": 4,
            "batch_size": 32,  # accumulation derived: 32 // 4
            "deepspeed": "deepspeed_configs/zero2.json",
            "lora_rnak": 4,
            "wandb_project": "x",
        },
    )
    result = read_training_config(path)
    config = result.config
    assert config.model == "./models/llama"
    assert (config.method, config.precision, config.optimizer) == (
        Method.QLORA,
        Precision.BF16,
        OptimizerName.ADAMW_8BIT,
    )
    assert config.lora.target_modules == "all-linear" and config.lora.r == 32
    assert (config.micro_batch, config.gradient_accumulation, config.gradient_checkpointing) == (4, 8, False)
    assert result.training is not None and result.training.scheduler is Scheduler.COSINE
    notes = "\n".join(result.notes)
    assert "deepspeed: not modelled" in notes
    assert "lora_rnak: unknown key ignored (did you mean 'lora_r'?)" in notes
    assert "wandb_project" in notes
    assert "4-bit base, so QLoRA" in notes


def test_llama_factory_mappings(tmp_path: Path):
    path = dump(
        tmp_path / "qlora.yaml",
        {
            "model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
            "stage": "sft",
            "finetuning_type": "lora",
            "quantization_bit": 4,
            "lora_target": "all",
            "lora_rank": 16,
            "optim": "paged_adamw_8bit",
            "fp16": True,
        },
    )
    result = read_training_config(path)
    config = result.config
    assert (config.method, config.precision, config.optimizer) == (
        Method.QLORA,
        Precision.FP16,
        OptimizerName.PAGED_ADAMW_8BIT,
    )
    assert config.lora == LoraSettings(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    assert (config.seq_len, config.micro_batch, config.gradient_checkpointing) == (2048, 8, True)
    assert any("cutoff_len unset" in note for note in result.notes)


@pytest.mark.parametrize(
    ("name", "mapping", "fmt"),
    [
        ("a.yml", {"base_model": "m", "micro_batch_size": 1}, "axolotl"),
        ("b.yaml", {"model_name_or_path": "m", "finetuning_type": "full"}, "llama-factory"),
        ("c.json", {"model_name_or_path": "m", "max_length": 128, "packing": True}, "trl"),
        ("d.json", {"output_dir": "o", "per_device_train_batch_size": 2}, "training-arguments"),
        ("adapter_config.json", {"base_model_name_or_path": "m", "r": 4}, "peft-adapter"),
        ("e.json", {"peft_type": "LORA", "base_model_name_or_path": "m"}, "peft-adapter"),
        ("f.yaml", {"model": "m", "method": "lora", "optim": "adamw_torch"}, "vram-planner"),
    ],
)
def test_detects_the_format_from_keys(tmp_path: Path, name: str, mapping: dict, fmt: str):
    assert fmt in FORMATS
    assert read_training_config(dump(tmp_path / name, mapping), model="m").format == fmt


def test_format_override_beats_detection(tmp_path: Path):
    # packing is TRL's, but the caller knows better.
    path = dump(tmp_path / "x.json", {"per_device_train_batch_size": 2, "packing": True, "max_length": 64})
    assert read_training_config(path, model="m").format == "trl"
    forced = read_training_config(path, format="training-arguments", model="m")
    assert forced.format == "training-arguments" and forced.config.seq_len == 64


@pytest.mark.parametrize(
    ("fmt", "text", "attention"),
    [
        ("axolotl", "base_model: {model}\nflash_attention: true\nbf16: true\n", Attention.FLASH_ATTENTION_2),
        ("axolotl", "base_model: {model}\neager_attention: true\n", Attention.EAGER),
        ("axolotl", "base_model: {model}\n", Attention.SDPA),
        ("llama-factory", "model_name_or_path: {model}\nstage: sft\nflash_attn: disabled\n", Attention.EAGER),
        ("llama-factory", "model_name_or_path: {model}\nstage: sft\nflash_attn: fa2\nbf16: true\n",
         Attention.FLASH_ATTENTION_2),
        ("trl", "model_name_or_path: {model}\nmax_length: 64\nattn_implementation: eager\n", Attention.EAGER),
        ("trl", "model_name_or_path: {model}\nmodel_init_kwargs: {{attn_implementation: sdpa}}\n",
         Attention.SDPA),
    ],
)  # fmt: skip
def test_the_attention_implementation_is_read_from_each_format(
    tmp_path: Path, tiny_models: dict[str, str], fmt: str, text: str, attention: Attention
):
    path = tmp_path / "config.yaml"
    path.write_text(text.format(model=tiny_models["llama"]))
    assert read_training_config(path, format=fmt)  # type: ignore[arg-type].config.attention is attention


def test_two_attention_switches_conflict(tmp_path: Path, tiny_models: dict[str, str]):
    path = tmp_path / "axolotl.yaml"
    path.write_text(f"base_model: {tiny_models['llama']}\nflash_attention: true\nsdp_attention: true\n")
    with pytest.raises(ConfigError, match="flash_attention"):
        read_training_config(path, format="axolotl")


def test_a_bf16_lora_base_without_autocast_keeps_peft_s_fp32_adapters(
    tmp_path: Path, tiny_models: dict[str, str]
):
    path = tmp_path / "sft.yaml"
    path.write_text(
        f"model_name_or_path: {tiny_models['llama']}\nuse_peft: true\ndtype: bfloat16\nmax_length: 64\n"
    )
    config = read_training_config(path, format="trl").config
    assert config.precision is Precision.PURE_BF16 and config.fp32_adapters
