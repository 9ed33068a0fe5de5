"""``planner report``: PNG plots of a sweep's results (loss curves, time and memory per trial)."""

from __future__ import annotations

from pathlib import Path

from planner.executor._results import SweepResults
from planner.schema import GIB


def write_report(results: SweepResults, out: Path) -> list[Path]:
    """Write ``losses.png``, ``time.png`` and ``memory.png`` into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    ran = [t for t in results.trials if t.seconds is not None]
    paths = []

    figure, (train_axes, eval_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for trial in ran:
        label = f"#{trial.number} " + " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
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
    plt.close(figure)

    labels = [f"#{t.number}" for t in ran]
    positions = range(len(ran))
    figure, axes = plt.subplots(figsize=(max(6, len(ran) * 0.7), 4))
    axes.bar([p - 0.2 for p in positions], [t.predicted_seconds or 0 for t in ran], 0.4, label="predicted")
    axes.bar([p + 0.2 for p in positions], [t.seconds or 0 for t in ran], 0.4, label="measured")
    axes.set_xticks(list(positions), labels)
    axes.set(ylabel="seconds", title="Predicted vs measured time per trial")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "time.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(max(6, len(ran) * 0.7), 4))
    kind = next((t.memory_kind for t in ran if t.memory_kind), "measured")
    axes.bar(
        [p - 0.2 for p in positions],
        [(t.predicted_peak_bytes or 0) / GIB for t in ran],
        0.4,
        label="predicted peak",
    )
    axes.bar(
        [p + 0.2 for p in positions],
        [(t.peak_memory_bytes or 0) / GIB for t in ran],
        0.4,
        label=f"measured ({kind})",
    )
    axes.set_xticks(list(positions), labels)
    axes.set(ylabel="GiB", title="Memory per trial")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "memory.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths
