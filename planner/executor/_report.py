"""``planner report``: PNG plots of a sweep, Optuna's own where Optuna has one, ours for what it lacks.

Optuna's matplotlib backend (``optuna.visualization.matplotlib``) draws the timeline (every trial's
run, coloured by its state: budget-cut trials show as pruned), the objective's intermediate values
and the parameter importances. Ours add the training-loss curves (Optuna keeps only the objective)
and predicted against measured time and memory per trial.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from planner.executor._results import TrialResult, sweep_results
from planner.formatting import format_params
from planner.schema import GIB

logger = logging.getLogger(__name__)

IMPORTANCE_MIN_TRIALS = 2
"""Parameter importances compare completed trials whose parameters differ: at least two."""


@dataclass
class Report:
    """What ``write_report`` wrote, and each plot it left out with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_report(study: optuna.Study, out: Path) -> Report:
    """Write the sweep's plots into ``out``: ``timeline.png``, ``intermediate_values.png``,
    ``param_importances.png`` (Optuna's), ``losses.png``, ``time.png`` and ``memory.png`` (ours)."""
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    _optuna_plots(study, out, report)
    results = sweep_results(study)
    ran = [t for t in results.trials if t.seconds is not None]

    figure, axes = _subplots(figsize=(8, 4.5))
    for trial in ran:
        if trial.losses:
            steps, losses = zip(*trial.losses, strict=True)
            axes.plot(steps, losses, label=f"#{trial.number} {format_params(trial.params)}", linewidth=1)
    axes.set(xlabel="optimizer step", ylabel="training loss", title="Training loss per trial")
    if axes.lines:
        axes.legend(fontsize=7)
    _save(figure, out / "losses.png", report)

    labels = [f"#{t.number}" for t in ran]
    positions = range(len(ran))
    figure, axes = _subplots(figsize=(max(6, len(ran) * 0.7), 4))
    axes.bar([p - 0.2 for p in positions], [t.predicted_seconds or 0 for t in ran], 0.4, label="predicted")
    axes.bar([p + 0.2 for p in positions], [t.seconds or 0 for t in ran], 0.4, label="measured")
    axes.set_xticks(list(positions), labels)
    axes.set(ylabel="seconds", title="Predicted vs measured time per trial")
    axes.legend()
    _save(figure, out / "time.png", report)

    figure, axes = _subplots(figsize=(max(6, len(ran) * 0.7), 4))
    _memory_bars(axes, ran, positions)
    axes.set_xticks(list(positions), labels)
    _save(figure, out / "memory.png", report)
    return report


def _optuna_plots(study: optuna.Study, out: Path, report: Report) -> None:
    """Optuna's timeline, intermediate values and parameter importances, or why each is left out."""
    import matplotlib
    from optuna.visualization import matplotlib as optuna_plots

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    varied = {
        name
        for name in {n for t in complete for n in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    }
    plots: list[tuple[str, Any, str | None]] = [
        ("timeline.png", optuna_plots.plot_timeline, None if trials else "no trial has started"),
        (
            "intermediate_values.png",
            optuna_plots.plot_intermediate_values,
            None if any(t.intermediate_values for t in trials) else "no trial reported its objective yet",
        ),
        (
            "param_importances.png",
            optuna_plots.plot_param_importances,
            None
            if len(complete) >= IMPORTANCE_MIN_TRIALS and varied
            else f"parameter importances need {IMPORTANCE_MIN_TRIALS} completed trials with different "
            f"parameters (have {len(complete)} completed, {len(varied)} parameter(s) varied)",
        ),
    ]
    for name, plot, missing in plots:
        if missing is not None:
            report.skipped.append(f"{name}: {missing}")
            continue
        # Optuna's plots switch pyplot's global style to ggplot: rc_context puts it back after.
        with warnings.catch_warnings(), matplotlib.rc_context():
            # plot_timeline is marked experimental (since 3.2); the warning says nothing to a reader.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
            _save(axes.figure, out / name, report, close_pyplot=True)


def _memory_bars(axes: Any, ran: list[TrialResult], positions: range) -> None:
    """Predicted vs measured memory, like with like: CUDA's allocated bytes against the predicted
    allocated peak. On the host the executor measures process RSS (code, libraries and the
    allocator's cache besides tensors), which no prediction is of: the predicted live tensor
    bytes are drawn alone, and the chart says so."""
    measured_cuda = [t for t in ran if t.memory_kind == "cuda allocated"]
    predicted = [(t.predicted_allocated_bytes or t.predicted_peak_bytes or 0) / GIB for t in ran]
    if measured_cuda:
        axes.bar([p - 0.2 for p in positions], predicted, 0.4, label="predicted allocated")
        axes.bar(
            [p + 0.2 for p in positions],
            [(t.peak_memory_bytes or 0) / GIB if t.memory_kind == "cuda allocated" else 0 for t in ran],
            0.4,
            label="measured allocated (torch.cuda.max_memory_allocated)",
        )
        axes.set(ylabel="GiB", title="Memory per trial: allocated peak")
        axes.legend()
        return
    axes.bar(list(positions), predicted, 0.6, label="predicted live tensor bytes")
    axes.set(
        ylabel="GiB",
        title="Predicted memory per trial (host run: process RSS is not a tensor-bytes measurement)",
    )
    axes.legend()


def _save(figure: Any, path: Path, report: Report, *, close_pyplot: bool = False) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    report.written.append(path)
    if close_pyplot:  # Optuna's plots are made through pyplot, which keeps every figure open
        import matplotlib.pyplot as plt

        plt.close(figure)


def _subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes made directly, not through pyplot: no global backend or state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid)
