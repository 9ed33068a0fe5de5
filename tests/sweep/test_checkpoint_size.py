"""A LoRA trial's checkpoints hold its adapters (regression: they were sized from the gradients at
the memory peak, which is zero for LoRA, so adapter weights were missing from the save time)."""

from __future__ import annotations

from pathlib import Path

import torch

from planner.estimator import Estimator
from planner.models import load_model_config
from planner.schema import SweepSpec, TrainingConfig
from planner.step import build_model
from planner.sweep import plan_sweep
from tests.conftest import make_card


def test_estimated_trainable_bytes_are_what_peft_saves(tiny_models: dict[str, str], tmp_path: Path) -> None:
    config = TrainingConfig(model=tiny_models["llama"], method="lora", precision="bf16", seq_len=32)
    model = build_model(load_model_config(config.model), config)
    model.save_pretrained(tmp_path)  # peft writes the adapters alone
    saved = (tmp_path / "adapter_model.safetensors").stat().st_size
    predicted = Estimator(config, make_card(4096)).trainable_bytes()
    # safetensors adds a JSON header of names and shapes; the tensors are the rest.
    assert predicted <= saved <= predicted + 16 * 1024
    assert predicted == sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_a_lora_trial_without_optimizer_state_still_saves_its_adapters(tiny_models: dict[str, str]) -> None:
    spec = SweepSpec.model_validate(
        {
            "base": {"model": tiny_models["llama"], "method": "lora", "optimizer": "sgd", "seq_len": 64},
            "data": {"counts": {"train_examples": 64, "mean_tokens": 40, "eval_examples": 0}},
            "search": {"learning_rate": [1e-4]},
            "checkpoint_every_steps": 4,
        }
    )
    (trial,) = plan_sweep(spec, make_card(4096, compute_capability="9.0"), workers=1).trials
    assert trial.time is not None and trial.checkpoint_saves >= 1
    # Plain SGD keeps no state: what the saves write is the adapters (without a host profile the
    # planner counts only the bytes written, so any time here is theirs).
    assert trial.time.parts["checkpoints"] > 0
