"""The report: Optuna's plots of the study, ours beside them, and memory compared like with like
(regression: predicted device bytes were drawn against process RSS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from planner.executor import TrialResult, load_sweep_study, run_function, write_report
from planner.executor._report import _memory_bars
from planner.schema import GIB
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec


def _sweep(directory: Path, model_dir: Path, learning_rates: list[float]) -> Any:
    """A study of quick user-function trials: the objective falls by the learning rate each step."""
    spec = load_spec(write_spec(directory, model_dir, train=8, search={"learning_rate": learning_rates}))

    def train(trial: Any, reporter: Any) -> float:
        for step in range(1, 4):
            reporter.report(step, {"loss": 1.0, "eval_loss": 1.0 - step * trial.hyper.learning_rate})
        return 1.0 - 3 * trial.hyper.learning_rate

    run_function(spec, train, hand_plan(spec, seconds=0.1))
    return load_sweep_study(spec.storage_url, spec.name)


def test_report_draws_optunas_plots_and_ours(tmp_path: Path, tiny_model_dir: Path) -> None:
    report = write_report(_sweep(tmp_path, tiny_model_dir, [0.01, 0.02, 0.03]), tmp_path / "plots")
    names = [p.name for p in report.written]
    assert names == [
        "timeline.png",
        "intermediate_values.png",
        "param_importances.png",
        "losses.png",
        "time.png",
        "memory.png",
    ]
    assert report.skipped == [] and all(p.stat().st_size > 1000 for p in report.written)


def test_param_importances_are_left_out_with_the_reason_below_two_completed_trials(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    report = write_report(_sweep(tmp_path, tiny_model_dir, [0.01]), tmp_path / "plots")
    assert "param_importances.png" not in [p.name for p in report.written]
    (skipped,) = report.skipped
    assert skipped.startswith("param_importances.png: parameter importances need 2 completed trials")
    assert "have 1 completed" in skipped


def _trial(number: int, kind: str, measured: int) -> TrialResult:
    return TrialResult(
        number=number,
        state="COMPLETE",
        status="complete",
        params={"learning_rate": 1e-3},
        seconds=1.0,
        predicted_peak_bytes=3 * GIB,
        predicted_allocated_bytes=2 * GIB,
        peak_memory_bytes=measured,
        memory_kind=kind,
    )


def _labels(trials: list[TrialResult]) -> list[str]:
    axes = Figure().subplots()
    _memory_bars(axes, trials, range(len(trials)))
    return [container.get_label() for container in axes.containers]


def test_host_runs_draw_no_rss_bar_against_a_tensor_prediction() -> None:
    labels = _labels([_trial(0, "process RSS", 5 * GIB), _trial(1, "process RSS", 6 * GIB)])
    assert labels == ["predicted live tensor bytes"]


def test_cuda_runs_compare_allocated_with_allocated() -> None:
    axes = Figure().subplots()
    trials = [_trial(0, "cuda allocated", 2 * GIB + GIB // 10)]
    _memory_bars(axes, trials, range(1))
    predicted, measured = axes.containers
    assert "allocated" in predicted.get_label() and "max_memory_allocated" in measured.get_label()
    assert predicted.patches[0].get_height() == 2.0  # the allocated prediction, not the device bytes
