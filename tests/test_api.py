"""The public API (``import planner``) runs the product end to end, by names and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

import planner
from tests.executor.conftest import one_thread_and_own_measurements, tiny_model, write_spec


def test_fit_plan_run_and_results_from_python(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny-llama")
    config = planner.TrainingConfig(model=str(model), precision="fp32", seq_len=32)
    assert planner.fit(config, "cpu").max_micro_batch >= 1
    spec = write_spec(tmp_path, model, train=8, eval_examples=4)
    with one_thread_and_own_measurements(tmp_path / "measured"):
        plan = planner.plan(spec, "cpu")
        assert [t.feasible for t in plan.trials] == [True, True]
        run = planner.run(spec, "cpu", planned=plan)
        assert [t.status for t in run.trials] == ["complete", "complete"]
    results = planner.results(spec)
    assert results.best in {t.number for t in results.trials}


def test_the_api_names_what_it_exports() -> None:
    assert set(planner.__all__) >= {"fit", "profile", "plan", "run", "results", "TrainingConfig"}
    with pytest.raises(planner.PlannerError):
        planner.fit(planner.TrainingConfig(model="no/such-model"), "cpu")
