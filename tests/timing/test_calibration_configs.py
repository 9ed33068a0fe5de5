"""Calibration re-traces the configs that were measured, adapters included (regression)."""

from __future__ import annotations

import pytest

from planner.cards import load_card
from planner.schema import MeasuredProfile, ProfileKey, StepMeasurement, TrainingConfig
from planner.timing import StepTimeModel
from planner.timing._roofline import RooflineStep


def test_a_profile_key_gives_back_its_lora_rank_and_targets() -> None:
    config = TrainingConfig(
        model="meta-llama/Llama-3.2-1B",
        method="lora",
        seq_len=256,
        lora={"r": 4, "target_modules": ["v_proj", "q_proj"]},
    )
    rebuilt = ProfileKey.of(config, "h100-sxm").training_config()
    assert rebuilt.lora.r == 4 and sorted(rebuilt.lora.target_modules) == ["q_proj", "v_proj"]
    assert ProfileKey.of(rebuilt, "h100-sxm") == ProfileKey.of(config, "h100-sxm")


def test_calibration_traces_the_measured_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = TrainingConfig(
        model="meta-llama/Llama-3.2-1B",
        method="lora",
        seq_len=256,
        lora={"r": 4, "target_modules": ["q_proj"]},
    )
    step = StepMeasurement(
        micro_batch=2,
        forward_backward_seconds=0.1,
        forward_backward_p10_seconds=0.09,
        forward_backward_p90_seconds=0.11,
        optimizer_seconds=0.01,
        eval_forward_seconds=0.03,
        tokens_per_second=5000.0,
    )
    profile = MeasuredProfile(
        key=ProfileKey.of(measured, "h100-sxm"),
        device="cuda",
        device_name="NVIDIA H100",
        versions={},
        measurements=[step],
        created="2026-12-02T00:00:00",
    )

    class Store:
        def find(self, config: TrainingConfig, card: str) -> MeasuredProfile | None:
            return None

        def for_card(self, card: str) -> list[MeasuredProfile]:
            return [profile]

    traced: list[TrainingConfig] = []

    def roofline(self: StepTimeModel, config: TrainingConfig, micro_batch: int) -> RooflineStep:
        traced.append(config)
        return RooflineStep(forward=0.02, backward=0.03, optimizer=0.005, flops=1e12)

    monkeypatch.setattr(StepTimeModel, "roofline", roofline)
    times = StepTimeModel(load_card("h100-sxm"), Store()).times(measured.with_changes(lora={"r": 64}), 2, 256)
    assert times.source == "calibrated"
    assert [(c.lora.r, c.lora.target_modules) for c in traced[:1]] == [(4, ["q_proj"])]
