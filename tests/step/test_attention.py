"""The attention implementation a model is loaded with: traced as it runs, refused where it cannot."""

from __future__ import annotations

import pytest
import torch

from planner.cards import host_card, load_card
from planner.errors import ConfigError
from planner.models import load_model_config
from planner.schema import Attention, TrainingConfig
from planner.step import CudaTarget, check_card_supports, cuda_target, trace_step
from tests.conftest import make_card


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_eager_attention_trace_matches_a_real_eager_step(tiny_models: dict[str, str], arch: str):
    # GPT-2's eager attention keeps its probabilities and their dropout mask for backward.
    config = TrainingConfig(model=tiny_models[arch], attention="eager", precision="bf16", seq_len=32)
    hf_config = load_model_config(config.model)
    torch.manual_seed(0)
    fake = trace_step(hf_config, config, micro_batch=3, cuda=None, fake=True)
    real = trace_step(hf_config, config, micro_batch=3, cuda=None, fake=False)
    assert abs(fake.peak - real.peak) <= 0.02 * real.peak, (fake.peak, real.peak)


def test_eager_attention_stores_the_probabilities_sdpa_does_not(tiny_models: dict[str, str]):
    sdpa = TrainingConfig(model=tiny_models["gpt2"], seq_len=128)
    eager = sdpa.with_changes(attention="eager")
    hf_config = load_model_config(sdpa.model)
    fused = trace_step(hf_config, sdpa, micro_batch=2, cuda=CudaTarget("flash"))
    stored = trace_step(hf_config, eager, micro_batch=2, cuda=CudaTarget("flash"))
    # At least the bf16 probabilities of every layer: batch x heads x seq x seq x 2 bytes.
    probabilities = 2 * hf_config.n_head * 128 * 128 * 2 * hf_config.n_layer
    assert stored.activations - fused.activations >= probabilities


def test_an_earlier_eager_build_does_not_leak_into_the_next(tiny_models: dict[str, str]):
    # transformers writes attn_implementation onto the (cached, shared) model config.
    sdpa = TrainingConfig(model=tiny_models["gpt2"], seq_len=64)
    hf_config = load_model_config(sdpa.model)
    before = trace_step(hf_config, sdpa, micro_batch=2, cuda=CudaTarget("flash"))
    trace_step(hf_config, sdpa.with_changes(attention="eager"), micro_batch=2, cuda=CudaTarget("flash"))
    after = trace_step(hf_config, sdpa, micro_batch=2, cuda=CudaTarget("flash"))
    assert after.peak == before.peak


def test_flash_attention_2_traces_as_the_flash_kernel(tiny_models: dict[str, str]):
    config = TrainingConfig(model=tiny_models["llama"], attention="flash_attention_2", seq_len=64)
    hf_config = load_model_config(config.model)
    a100 = load_card("a100-80gb")
    assert cuda_target(a100, config, hf_config) == CudaTarget("flash")
    flash = trace_step(hf_config, config, micro_batch=2, cuda=CudaTarget("flash"))
    sdpa = trace_step(
        hf_config, config.with_changes(attention="sdpa"), micro_batch=2, cuda=CudaTarget("flash")
    )
    assert flash.peak == sdpa.peak


@pytest.mark.parametrize(
    ("card", "precision", "says"),
    [
        (make_card(16_384, compute_capability="7.0"), "fp16", "sm70"),
        (host_card(), "bf16", "the CPU"),
        (make_card(16_384, compute_capability="8.0"), "fp32", "fp16/bf16"),
    ],
    ids=["volta", "cpu", "fp32"],
)
def test_flash_attention_2_is_refused_where_flash_attn_has_no_kernel(
    tiny_models: dict[str, str], card: object, precision: str, says: str
):
    config = TrainingConfig(
        model=tiny_models["llama"], attention=Attention.FLASH_ATTENTION_2, precision=precision
    )
    with pytest.raises(ConfigError, match=says) as refused:
        check_card_supports(config, card)  # type: ignore[arg-type]
    assert refused.value.field == "attention"
