"""The same LoRA fine-tune written for each tool, from each tool's documented keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

# axolotl config reference (docs/config.qmd): the documented keys, relevant or not.
AXOLOTL = """\
base_model: {model}
tokenizer_type: AutoTokenizer
trust_remote_code: false
adapter: lora
lora_model_dir:
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
  - q_proj
  - v_proj
lora_fan_in_fan_out: false
datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.05
sequence_len: 64
sample_packing: false
pad_to_sequence_len: true
micro_batch_size: 2
gradient_accumulation_steps: 4
num_epochs: 2
optimizer: adamw_torch_fused
lr_scheduler: cosine
learning_rate: 2e-4
warmup_ratio: 0.1
weight_decay: 0.01
bf16: true
fp16: false
tf32: true
gradient_checkpointing: true
flash_attention: false
logging_steps: 1
evals_per_epoch: 4
saves_per_epoch: 1
output_dir: ./outputs/lora-out
special_tokens:
  pad_token: "<|end_of_text|>"
"""

# LLaMA-Factory examples/train_lora/*_lora_sft.yaml layout (hparams: model, method, dataset,
# output, train, eval sections).
LLAMA_FACTORY = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target: q_proj,v_proj

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 64
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 2.0e-4
num_train_epochs: 2.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
weight_decay: 0.01
optim: adamw_torch_fused
bf16: true
ddp_timeout: 180000000
"""


def trl_sft_config(model: str) -> dict[str, Any]:
    """A ``trl sft --config`` file as JSON: SFTConfig.to_dict() (TrainingArguments' fields plus
    TRL's), with TRL's ModelConfig keys beside them."""
    return {
        # TrainingArguments
        "output_dir": "Qwen2-0.5B-SFT",
        "overwrite_output_dir": False,
        "do_train": False,
        "do_eval": True,
        "eval_strategy": "steps",
        "eval_steps": 100,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 8,
        "gradient_accumulation_steps": 4,
        "eval_accumulation_steps": None,
        "learning_rate": 0.0002,
        "weight_decay": 0.01,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-08,
        "max_grad_norm": 1.0,
        "num_train_epochs": 2.0,
        "max_steps": -1,
        "lr_scheduler_type": "cosine",
        "lr_scheduler_kwargs": {},
        "warmup_ratio": 0.1,
        "warmup_steps": 0,
        "log_level": "passive",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 500,
        "save_total_limit": None,
        "seed": 42,
        "data_seed": None,
        "bf16": True,
        "fp16": False,
        "tf32": None,
        "local_rank": 0,
        "dataloader_num_workers": 0,
        "run_name": "Qwen2-0.5B-SFT",
        "disable_tqdm": False,
        "remove_unused_columns": True,
        "load_best_model_at_end": False,
        "fsdp": [],
        "fsdp_config": {"min_num_params": 0, "xla": False},
        "deepspeed": None,
        "label_smoothing_factor": 0.0,
        "optim": "adamw_torch_fused",
        "optim_args": None,
        "group_by_length": False,
        "report_to": [],
        "push_to_hub": False,
        "hub_model_id": None,
        "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "torch_compile": False,
        "neftune_noise_alpha": None,
        "use_liger_kernel": False,
        # SFTConfig
        "model_init_kwargs": None,
        "dataset_text_field": "text",
        "dataset_kwargs": None,
        "dataset_num_proc": None,
        "max_length": 64,
        "packing": False,
        "padding_free": False,
        "completion_only_loss": None,
        "assistant_only_loss": False,
        # ModelConfig
        "model_name_or_path": model,
        "dtype": "bfloat16",
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
        "load_in_4bit": False,
        "load_in_8bit": False,
    }


SPEC = """\
name: byo
base:
  model: {model}
  method: lora
  precision: bf16
  optimizer: adamw
  gradient_checkpointing: true
  seq_len: 64
  micro_batch: 2
  gradient_accumulation: 4
  lora: {{r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}}
data:
  counts: {{train_examples: 1000, mean_tokens: 48}}
training:
  learning_rate: 2.0e-4
  epochs: 2
  scheduler: cosine
  warmup_ratio: 0.1
  weight_decay: 0.01
  effective_batch: 8
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def same_config_files(tmp_path: Path, tiny_models: dict[str, str]) -> dict[str, Path]:
    """Format name -> a file holding the same LoRA fine-tune of the tiny Llama."""
    model = tiny_models["llama"]
    return {
        "axolotl": write(tmp_path / "lora.yml", AXOLOTL.format(model=model)),
        "llama-factory": write(tmp_path / "llama3_lora_sft.yaml", LLAMA_FACTORY.format(model=model)),
        "trl": write(tmp_path / "sft_config.json", json.dumps(trl_sft_config(model), indent=2)),
        "vram-planner": write(tmp_path / "spec.yaml", SPEC.format(model=model)),
    }


def dump(path: Path, mapping: dict[str, Any]) -> Path:
    path.write_text(json.dumps(mapping) if path.suffix == ".json" else yaml.safe_dump(mapping))
    return path
