"""Planning on the host card: missing profiles of small models are measured, big ones refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from planner.cards import host_card
from planner.errors import ProfileError
from planner.profiler import MEASURED_ENV, RUN_IMPORTS, ProfileStore, StepRunner, machine_load, profile_config
from planner.profiler._profile import MIN_BUDGETED_STEPS
from planner.schema import GIB, ProfileKey, SweepSpec, TrainingConfig
from planner.sweep import plan_for_card
from planner.sweep._profiles import ProfileBudget
from tests.conftest import make_host_profile, place_host_profile


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
    place_host_profile(tmp_path)
    spec = spec_for(tiny_models["llama"])
    plan = plan_for_card(spec, host_card())
    assert {t.time.source for t in plan.trials if t.time} == {"measured"}
    saved = ProfileStore(tmp_path).for_card("cpu")
    # The trial's micro-batch first; micro-batch 1 too when the budget (5% of this tiny sweep) allows.
    assert len(saved) == 1 and 2 in {m.micro_batch for m in saved[0].measurements} <= {1, 2}
    again = plan_for_card(spec, host_card())
    assert [t.time.seconds for t in again.trials if t.time] == [t.time.seconds for t in plan.trials if t.time]
    # The profile records the load it was taken under; reused, it costs nothing.
    assert saved[0].machine_load is not None and again.measuring_seconds == 0.0
    assert plan.machine_load is not None


def test_a_host_plan_counts_the_runs_storage_and_its_imports_after_planning(
    tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `planner run` adds before and between its trials: the imports it makes after the same
    planning (counted in the start-up, timed where the run pays them) and the study's storage."""
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    host = make_host_profile(cpus=machine_load().cpu_count, study_open_seconds=0.4, study_trial_seconds=0.05)
    place_host_profile(tmp_path, host)
    plan = plan_for_card(spec_for(tiny_models["llama"]), host_card())
    runnable = sum(trial.feasible for trial in plan.trials)
    assert runnable == 2 and plan.storage_seconds == pytest.approx(0.4 + 2 * 0.05)
    assert all(module in sys.modules for module in RUN_IMPORTS)
    assert plan.startup_seconds is not None and plan.startup_seconds > 0
    place_host_profile(tmp_path, make_host_profile(cpus=machine_load().cpu_count))
    assert plan_for_card(spec_for(tiny_models["llama"]), host_card()).storage_seconds is None  # unmeasured


def test_a_gpu_cards_plan_times_none_of_the_runs_imports(
    tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing what `planner run` imports is a measurement of this machine: a plan for a GPU card
    makes none (its run's host is another machine, in general) and states its start-up without
    them; a plan for the host card imports them to time them."""
    import planner.profiler
    from planner.cards import load_card

    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(planner.profiler, "import_run_modules", lambda: calls.append("imported") or 0.0)
    plan = plan_for_card(spec_for(tiny_models["llama"]), load_card("rtx-4090"))
    assert calls == [] and plan.startup_seconds is not None
    place_host_profile(tmp_path)
    plan_for_card(spec_for(tiny_models["llama"]), host_card())
    assert calls == ["imported"]


def test_a_sweep_at_micro_batch_one_profiles_a_second_size_for_short_rows(
    tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One size alone scales a short padded row proportionally (a 20-token row of 32 nearly free);
    micro-batch 2 after the trials' 1, when the budget allows, gives the fixed cost its line needs."""
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    place_host_profile(tmp_path)
    spec = spec_for(tiny_models["llama"]).model_copy(update={"micro_batch": 1})
    plan_for_card(spec, host_card())
    (saved,) = ProfileStore(tmp_path).for_card("cpu")
    assert 1 in {m.micro_batch for m in saved.measurements} <= {1, 2}


def test_the_profile_budget_is_five_percent_of_the_sweep_and_at_most_twenty_seconds() -> None:
    key = ProfileKey.of(TrainingConfig(model="m", seq_len=32), "cpu")
    budget = ProfileBudget({key: 1000.0})
    assert budget.allowance(key, 0.01) == pytest.approx(0.05 * 0.01 * 1000)
    assert budget.allowance(key, 10.0) == 20.0
    budget.spent = 15.0
    assert budget.allowance(key, 10.0) == 5.0


def test_a_budgeted_profile_alternates_its_sizes_and_stops_at_the_minimum_rounds(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainingConfig(model=tiny_models["gpt2"], precision="fp32", seq_len=16)
    steps: list[int] = []
    real = StepRunner.train_step
    monkeypatch.setattr(StepRunner, "train_step", lambda self, m: steps.append(m) or real(self, m))
    asked: list[float] = []
    profile = profile_config(
        config, host_card(), [2, 1], steps=50, warmup=0, budget=lambda per_row: asked.append(per_row) or 0.0
    )
    assert len(asked) == 1 and asked[0] > 0
    # Rounds of one step per size, in the order given (the first size's seconds per row ask the
    # budget); a spent budget ends the timing at the minimum rounds, with both sizes measured.
    assert steps == [2, 1] * MIN_BUDGETED_STEPS
    assert [m.micro_batch for m in profile.measurements] == [1, 2]
    steps.clear()
    roomy = profile_config(config, host_card(), [2, 1], steps=4, warmup=0, budget=lambda _: 1e9)
    assert steps == [2, 1] * 4 and [m.micro_batch for m in roomy.measurements] == [1, 2]


def test_host_plan_refuses_to_measure_a_big_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path))
    place_host_profile(tmp_path)
    # A host with room for the trial (free RAM varies from run to run: on a machine with less, the
    # trial would be infeasible and never reach the measuring step this test is about).
    roomy = host_card().model_copy(update={"free_bytes": 256 * GIB})
    with pytest.raises(ProfileError, match="planner profile"):
        plan_for_card(spec_for("meta-llama/Llama-3.2-1B", seq_len=512), roomy)
    assert not ProfileStore(tmp_path).for_card("cpu")
