"""``planner report``: PNG plots of a sweep's results (loss curves, time and memory per trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.executor._results import SweepResults, TrialResult
from planner.formatting import format_params
from planner.schema import GIB


def write_report(results: SweepResults, out: Path) -> list[Path]:
    """Write ``losses.png``, ``time.png`` and ``memory.png`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    ran = [t for t in results.trials if t.seconds is not None]
    paths = []

    figure, (train_axes, eval_axes) = _subplots(1, 2, figsize=(12, 4.5))
    for trial in ran:
        label = f"#{trial.number} {format_params(trial.params)}"
        if trial.losses:
            steps, losses = zip(*trial.losses, strict=True)
            train_axes.plot(steps, losses, label=label, linewidth=1)
        metric = results.objective or "eval_loss"
        points = [(step, m[metric]) for step, m in trial.evals if metric in m]
        if points:
            steps, values = zip(*points, strict=True)
            eval_axes.plot(steps, values, marker="o", label=label)
    train_axes.set(xlabel="optimizer step", ylabel="training loss", title="Training loss per trial")
    eval_axes.set(
        xlabel="optimizer step", ylabel=results.objective or "eval_loss", title="Objective per trial"
    )
    for axes in (train_axes, eval_axes):
        if axes.lines:
            axes.legend(fontsize=7)
    figure.tight_layout()
    paths.append(out / "losses.png")
    figure.savefig(paths[-1], dpi=110)

    labels = [f"#{t.number}" for t in ran]
    positions = range(len(ran))
    figure, axes = _subplots(figsize=(max(6, len(ran) * 0.7), 4))
    axes.bar([p - 0.2 for p in positions], [t.predicted_seconds or 0 for t in ran], 0.4, label="predicted")
    axes.bar([p + 0.2 for p in positions], [t.seconds or 0 for t in ran], 0.4, label="measured")
    axes.set_xticks(list(positions), labels)
    axes.set(ylabel="seconds", title="Predicted vs measured time per trial")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "time.png")
    figure.savefig(paths[-1], dpi=110)

    figure, axes = _subplots(figsize=(max(6, len(ran) * 0.7), 4))
    _memory_bars(axes, ran, positions)
    axes.set_xticks(list(positions), labels)
    figure.tight_layout()
    paths.append(out / "memory.png")
    figure.savefig(paths[-1], dpi=110)
    return paths


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


def _subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes made directly, not through pyplot: no global backend or state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid)
