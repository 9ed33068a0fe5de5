"""The roofline path ranks and scales cards plausibly against published MFU ranges.

Documented expectations (issue 4 d): Hugging Face Trainer fine-tuning of 7-8B models reaches
roughly 25-60% model FLOPs utilisation (6 * params * tokens / time / dense peak) on A100/H100
class cards for full and LoRA; an H100 SXM (989 dense bf16 TFLOP/s, 3.35 TB/s) is 3-6x an RTX 4090
(165 TFLOP/s, 1 TB/s) on the same compute-bound step.
"""

from __future__ import annotations

import pytest

from planner.cards import load_card
from planner.schema import TrainingConfig
from planner.timing import StepTimeModel

PARAMS_8B = 8.03e9
TOKENS = 4 * 512


@pytest.fixture(scope="module")
def lora_8b() -> TrainingConfig:
    return TrainingConfig(model="meta-llama/Llama-3.1-8B", method="lora", seq_len=512)


def mfu(seconds: float, peak_tflops: float) -> float:
    return 6 * PARAMS_8B * TOKENS / seconds / (peak_tflops * 1e12)


def test_h100_beats_4090_by_a_plausible_factor(lora_8b: TrainingConfig) -> None:
    h100, rtx = load_card("h100-sxm"), load_card("rtx-4090")
    fast = StepTimeModel(h100).times(lora_8b, 4, 512)
    slow = StepTimeModel(rtx).times(lora_8b, 4, 512)
    assert 3.0 <= slow.micro_step / fast.micro_step <= 6.0
    # The documented MFU range is for A100/H100-class cards; a 4090's measured best matmul runs
    # above its datasheet peak (planner.timing._kernels.ACHIEVABLE), so only the ratio holds it.
    assert h100.tflops.bf16 is not None
    assert 0.25 <= mfu(fast.micro_step, h100.tflops.bf16) <= 0.6
    for step in (fast, slow):
        assert step.source == "default"
        assert "GEMMs by shape" in step.note  # the default model is stated


def test_shorter_rows_take_proportionally_less(lora_8b: TrainingConfig) -> None:
    model = StepTimeModel(load_card("a100-80gb"))
    full, half = model.times(lora_8b, 4, 512), model.times(lora_8b, 4, 256)
    assert half.micro_step == pytest.approx(full.micro_step / 2)
    assert half.optimizer == full.optimizer


def test_a_card_without_datasheet_figures_needs_a_profile(tiny_models: dict[str, str]) -> None:
    from planner.errors import ProfileError

    config = TrainingConfig(model=tiny_models["llama"], precision="fp32", seq_len=64)
    with pytest.raises(ProfileError, match="planner profile"):
        StepTimeModel(load_card("cpu")).times(config, 2, 64)


def test_lora_targets_given_as_a_list_work(tiny_models: dict[str, str]) -> None:
    config = TrainingConfig(
        model=tiny_models["llama"], method="lora", seq_len=32, lora={"target_modules": ["q_proj", "v_proj"]}
    )
    step = StepTimeModel(load_card("rtx-4090")).times(config, 2, 32)
    assert step.micro_step > 0


def test_the_default_interval_holds_the_models_stated_form_error(lora_8b: TrainingConfig) -> None:
    """Whatever its terms' spreads, a model that measures nothing is no surer than its stated form
    error: the 80% interval spans at least exp(-+FORM_HALF_WIDTH), and more with the terms'."""
    import math

    from planner.timing._roofline import FORM_HALF_WIDTH

    low, high = StepTimeModel(load_card("a100-80gb")).times(lora_8b, 4, 512).relative_interval
    assert low < math.exp(-FORM_HALF_WIDTH) and high > math.exp(FORM_HALF_WIDTH)
    assert 0.18 < FORM_HALF_WIDTH < 0.2  # 1.2816 x 0.118 x sqrt(pi / 2)
