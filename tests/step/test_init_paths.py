"""Every init path builds the model the estimator traces (regression: the executor's pretrained
path built LoRA itself and skipped the pure-bf16 adapter handling, so what ran was not what was
estimated)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import build_model, trace_step


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


@pytest.mark.parametrize(
    ("precision", "autocast_adapter_dtype", "adapter_dtype"),
    [
        ("bf16", None, torch.float32),
        ("pure-bf16", None, torch.bfloat16),
        ("fp32", None, torch.float32),
        # peft's default over a bf16 base without Trainer's autocast (TRL with dtype bfloat16).
        ("pure-bf16", True, torch.float32),
        ("bf16", False, torch.bfloat16),
    ],
)
def test_pretrained_and_random_init_train_the_same_adapters(
    pretrained_dir: Path, precision: str, autocast_adapter_dtype: bool | None, adapter_dtype: torch.dtype
) -> None:
    config = TrainingConfig(
        model=str(pretrained_dir),
        method="lora",
        lora={"autocast_adapter_dtype": autocast_adapter_dtype},
        precision=precision,
        gradient_checkpointing=True,
        seq_len=32,
    )
    hf_config = load_model_config(config.model)
    fake = build_model(hf_config, config, fake_mode=FakeTensorMode(allow_non_fake_inputs=True))
    fresh = build_model(hf_config, config)
    loaded = build_model(hf_config, config, pretrained=str(pretrained_dir))
    assert _trainable(loaded) == _trainable(fresh) == _trainable(fake) and _trainable(fresh)
    assert {dtype for _, dtype in _trainable(loaded).values()} == {adapter_dtype}
    assert loaded.is_gradient_checkpointing and fresh.is_gradient_checkpointing


def test_fp32_adapters_over_a_bf16_base_trace_as_they_run(tiny_models: dict[str, str]) -> None:
    # peft casts each LoRA input to the adapters' fp32 (and promotes the sum): copies a bf16-adapter
    # trace would not have.
    config = TrainingConfig(
        model=tiny_models["llama"],
        method="lora",
        precision="pure-bf16",
        lora={"autocast_adapter_dtype": True},
    ).with_changes(seq_len=32)
    hf_config = load_model_config(config.model)
    torch.manual_seed(0)
    fake = trace_step(hf_config, config, micro_batch=3, cuda=None, fake=True)
    real = trace_step(hf_config, config, micro_batch=3, cuda=None, fake=False)
    assert abs(fake.peak - real.peak) <= 0.02 * real.peak, (fake.peak, real.peak)
    bf16 = trace_step(
        hf_config, config.with_changes(lora={"autocast_adapter_dtype": False}), micro_batch=3, cuda=None
    )
    assert fake.activations > bf16.activations
