"""Planning on the host card: missing profiles of small models are measured, big ones refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cards import host_card
from planner.errors import ProfileError
from planner.profiler import MEASURED_ENV, ProfileStore
from planner.schema import GIB, SweepSpec
from planner.sweep import plan_for_card


def spec_for(model: str, **base: object) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "base": {"model": model, "precision": "fp32", "seq_len": 32, **base},
            "micro_batch": 2,
            "data": {"counts": {"train_examples": 16, "mean_tokens": 20, "eval_examples": 4}},
            "search": {"effective_batch": [2, 4]},
        }
    )


def test_host_plan_measures_a_missing_profile_once(
    tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    spec = spec_for(tiny_models["llama"])
    plan = plan_for_card(spec, host_card())
    assert {t.time.source for t in plan.trials if t.time} == {"measured"}
    saved = ProfileStore(tmp_path).for_card("cpu")
    assert len(saved) == 1 and {m.micro_batch for m in saved[0].measurements} == {1, 2}
    again = plan_for_card(spec, host_card())
    assert [t.time.seconds for t in again.trials if t.time] == [t.time.seconds for t in plan.trials if t.time]


def test_host_plan_refuses_to_measure_a_big_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    # A host with room for the trial (free RAM varies from run to run: on a machine with less, the
    # trial would be infeasible and never reach the measuring step this test is about).
    roomy = host_card().model_copy(update={"free_bytes": 256 * GIB})
    with pytest.raises(ProfileError, match="planner profile"):
        plan_for_card(spec_for("meta-llama/Llama-3.2-1B", seq_len=512), roomy)
    assert not list(tmp_path.rglob("*.json"))
