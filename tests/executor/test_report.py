"""The report compares like with like (regression: predicted device bytes were drawn against process RSS)."""

from __future__ import annotations

from matplotlib.figure import Figure

from planner.executor import TrialResult
from planner.executor._report import _memory_bars
from planner.schema import GIB


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
