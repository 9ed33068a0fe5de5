"""Recorded OOMs cap later answers for the same config on the same card (regression: ``oom.jsonl``
was written "for the memory model" and read by nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cards import load_card
from planner.profiler import MEASURED_ENV, OomLog, fit_with_profiles
from planner.schema import SweepSpec, TrainingConfig
from planner.sweep import plan_for_card


@pytest.fixture
def measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    return tmp_path


def test_limit_is_one_below_the_smallest_recorded_oom(tiny_models: dict[str, str], measured: Path) -> None:
    config = TrainingConfig(model=tiny_models["llama"], seq_len=64)
    log = OomLog()
    assert log.limit(config, "rtx-4090") is None
    log.record(config.with_changes(micro_batch=12), "rtx-4090", 12, None)
    log.record(config.with_changes(micro_batch=9), "rtx-4090", 9, None)
    assert log.limit(config, "rtx-4090") == 8
    assert log.limit(config, "a100-80gb") is None  # another card
    assert log.limit(config.with_changes(seq_len=32), "rtx-4090") is None  # another config
    # An OOM while accumulating does not cap the lower, non-accumulating step.
    log.record(config.with_changes(micro_batch=5, gradient_accumulation=4), "rtx-4090", 5, None)
    assert log.limit(config, "rtx-4090") == 8
    assert log.limit(config.with_changes(gradient_accumulation=2), "rtx-4090") == 4
    (measured / "oom.jsonl").open("a").write("not json\n")  # a damaged line is skipped
    assert log.limit(config, "rtx-4090") == 8


def test_fit_and_plan_stay_below_a_recorded_oom(tiny_models: dict[str, str], measured: Path) -> None:
    card = load_card("rtx-4090")
    config = TrainingConfig(model=tiny_models["llama"], precision="bf16", seq_len=64)
    assert fit_with_profiles(config, card).max_micro_batch > 6  # a tiny model: thousands fit
    OomLog().record(config.with_changes(micro_batch=7), card.name, 7, None)
    capped = fit_with_profiles(config, card)
    assert capped.max_micro_batch == 6 and capped.oom_limit == 6 and capped.at_max.micro_batch == 6
    spec = SweepSpec.model_validate(
        {
            "base": config.model_dump(mode="json"),
            "data": {"counts": {"train_examples": 64, "mean_tokens": 40, "eval_examples": 0}},
            "search": {"effective_batch": [8]},
        }
    )
    (trial,) = plan_for_card(spec, card).trials
    # 8 no longer fits in one micro-batch: the largest divisor of 8 below the recorded OOM.
    assert trial.config.micro_batch == 4 and trial.config.gradient_accumulation == 2
