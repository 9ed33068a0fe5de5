"""Every init path builds the model the estimator traces (regression: the executor's pretrained
path built LoRA itself and skipped the pure-bf16 adapter handling, so what ran was not what was
estimated)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import build_model


@pytest.fixture(scope="module")
def pretrained_dir(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with random weights, saved as a pretrained checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("pretrained")
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_models["llama"])).save_pretrained(
        directory
    )
    return directory


def _trainable(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(p.shape), p.dtype) for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision", ["bf16", "pure-bf16", "fp32"])
def test_pretrained_and_random_init_train_the_same_adapters(pretrained_dir: Path, precision: str) -> None:
    config = TrainingConfig(
        model=str(pretrained_dir), method="lora", precision=precision, gradient_checkpointing=True, seq_len=32
    )
    hf_config = load_model_config(config.model)
    fresh = build_model(hf_config, config)
    loaded = build_model(hf_config, config, pretrained=str(pretrained_dir))
    assert _trainable(loaded) == _trainable(fresh) and _trainable(fresh)
    adapter_dtype = torch.bfloat16 if precision == "pure-bf16" else torch.float32
    assert {dtype for _, dtype in _trainable(loaded).values()} == {adapter_dtype}
    assert loaded.is_gradient_checkpointing and fresh.is_gradient_checkpointing
