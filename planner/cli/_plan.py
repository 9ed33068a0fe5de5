"""``planner plan``: a sweep spec on a card: trials, micro-batch x accumulation, times vs budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console

from planner._files import check_output_file
from planner.cli._common import (
    PLOT_SUFFIXES,
    emit_json,
    importing,
    parse_budget,
    readable_table,
    user_errors_exit_2,
)
from planner.formatting import PARAM_LABELS, format_duration, format_value
from planner.schema import GIB, MAX_WORKERS, MIB, Plan


@click.command("plan")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--card", required=True, help="Card name (see `planner cards`), 'local' or 'cpu'.")
@click.option("--budget", help="Wall-clock budget, e.g. 5h or 90m (default: the spec's).")
@click.option(
    "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), help="Workers/GPUs (default: the spec's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a timeline PNG.")
@user_errors_exit_2
def plan_command(
    spec: Path, card: str, budget: str | None, workers: int | None, as_json: bool, plot: Path | None
) -> None:
    """Plan the sweep in SPEC on --card: what fits, each trial's shape and time, and the budget.

    \b
    Examples:
      planner plan examples/tiny-sweep/spec.yaml --card cpu
      planner plan spec.yaml --card rtx-4090 --budget 5h --plot timeline.png
      planner plan spec.yaml --card a100-80gb --workers 4 --json > plan.json
    """
    if plot is not None:
        check_output_file(plot, field="--plot", suffixes=PLOT_SUFFIXES)
    seconds = parse_budget(budget)
    with importing():
        from planner.cards import load_card
        from planner.sweep import check_model_limits, import_what_plans, load_spec, plan_for_card

        sweep = load_spec(spec)
        target = load_card(card)
        check_model_limits(sweep)
        import_what_plans(sweep)
    plan = plan_for_card(sweep, target, workers=workers, budget_seconds=seconds)
    if plot is not None:
        plot_timeline(plan, plot)
    if as_json:
        emit_json(plan.model_dump(mode="json"))
    else:
        print_plan(plan)


def infeasible_groups(plan: Plan) -> list[tuple[str, str, list[int]]]:
    """The plan's infeasible trials grouped by (reason, fix): each with its trial numbers."""
    groups: dict[tuple[str, str], list[int]] = {}
    for trial in plan.trials:
        if not trial.feasible:
            groups.setdefault((trial.reason or "infeasible", trial.fix or ""), []).append(trial.number)
    return [(reason, fix, numbers) for (reason, fix), numbers in sorted(groups.items(), key=str)]


def print_plan(plan: Plan) -> None:
    console = Console()
    data = plan.data
    console.print(
        f"[bold]{plan.spec_name}[/] on [bold]{plan.card}[/], {plan.workers} worker(s): "
        f"{data.train_examples} train / {data.eval_examples} eval examples, "
        f"~{data.mean_tokens:.0f} tokens each (max {data.max_tokens}; {data.counted_with})"
    )
    if data.epoch_tokens is not None and data.epoch_trained_tokens is not None:
        console.print(
            f"{data.epoch_tokens} tokens fed per epoch, "
            f"{data.epoch_trained_tokens} of them with a loss target"
        )
    spread = next((t.config.parallelism for t in plan.trials if not t.config.parallelism.single_gpu), None)
    if spread is not None:
        console.print(f"Each trial: {spread.describe()}; micro-batch and peak memory are per rank")
    names = list(dict.fromkeys(name for trial in plan.trials for name in trial.params))
    labels = [PARAM_LABELS.get(name, name) for name in names]
    headers = ["#", *labels, "micro x acc", "steps", "time", "range", "status"]
    rows = []
    for trial in plan.trials:
        values = [format_value(trial.params.get(name, "")) for name in names]
        if trial.time is None:
            rows.append([str(trial.number), *values, "-", "-", "-", "-", "[red]infeasible[/]"])
            continue
        time = trial.time
        status = "[green]planned[/]" if trial.status == "planned" else f"[yellow]{trial.status}[/]"
        rows.append(
            [
                str(trial.number),
                *values,
                f"{trial.config.micro_batch} x {trial.config.gradient_accumulation}",
                str(trial.optimizer_steps),
                format_duration(time.seconds),
                f"{format_duration(time.low_seconds)}-{format_duration(time.high_seconds)}",
                status,
            ]
        )
    if all(trial.status == "planned" for trial in plan.trials):
        # Every row would say "planned" (the budget line below says so): room for the values.
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    whole = ["#", *labels, "micro x acc", "time", "range"]
    console.print(
        readable_table(headers, rows, whole=whole, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    )
    if not any(trial.feasible for trial in plan.trials):
        # No total and no budget verdict: "the sweep fits; 0 trial(s) run" would read as success.
        console.print(f"[bold red]No trial can run on {plan.card}[/]: every trial is infeasible (why below).")
    else:
        console.print(
            f"Total (one worker): [bold]{format_duration(plan.total_seconds)}[/] "
            f"({format_duration(plan.total_low_seconds)}-{format_duration(plan.total_high_seconds)}); "
            f"with {plan.workers} worker(s): {format_duration(plan.makespan_seconds)}."
        )
    if plan.startup_seconds is not None:
        console.print(
            f"Before the first trial (start-up, imports, planning): ~{format_duration(plan.startup_seconds)}."
        )
    if plan.storage_seconds:
        console.print(
            "The study's storage (opening it, each trial's commits): "
            f"~{format_duration(plan.storage_seconds)}."
        )
    if plan.measuring_seconds:
        load = plan.machine_load
        at = f" at load {load.load_average:.1f} on {load.cpu_count} CPU(s)" if load is not None else ""
        console.print(
            f"Measured this machine first: {format_duration(plan.measuring_seconds)}{at} "
            "(saved, reused next time)."
        )
    if plan.budget_seconds is not None and any(trial.feasible for trial in plan.trials):
        verdict = "[green]fits[/]" if plan.fits_budget else "[red]does not fit[/]"
        planned = sum(t.status == "planned" for t in plan.trials)
        console.print(
            f"Budget {format_duration(plan.budget_seconds)}: the sweep {verdict}; "
            f"{planned} trial(s) run inside it. "
            f"Order: {plan.order_rule}."
        )
    if plan.successive_halving:
        rungs = "; ".join(
            f"{r.trials} trial(s) at {r.fraction:.0%} of the data" for r in plan.successive_halving
        )
        console.print(f"Successive halving that fits instead: {rungs} (pruner: successive_halving).")
    for reason, fix, numbers in infeasible_groups(plan):
        console.print(f"[red]Infeasible[/] ({', '.join(map(str, numbers))}): {reason}. Fix: {fix}.")
    sources = sorted({(t.time.source, t.time.note) for t in plan.trials if t.time is not None})
    for source, note in sources:
        console.print(f"Step time ({source}): {note}.")
    peaks = [t.peak_bytes for t in plan.trials if t.peak_bytes is not None]
    if peaks:
        peak = max(peaks)
        size = f"{peak / GIB:.1f} GiB" if peak >= GIB / 10 else f"{peak / MIB:.0f} MiB"
        console.print(f"Peak memory of planned trials: up to {size}.")
    console.print(f"Includes: {'; '.join(plan.includes)}.")


def plot_timeline(plan: Plan, path: Path) -> None:
    """Write :func:`draw_timeline` of ``plan`` to ``path``."""
    from matplotlib.figure import Figure

    rows = (
        plan.workers
        + any(t.status == "over budget" for t in plan.trials)
        + (not all(t.feasible for t in plan.trials))
    )
    figure = Figure(figsize=(9, 1.4 + 0.5 * rows))
    draw_timeline(plan, figure.subplots())
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def draw_timeline(plan: Plan, axes: Any) -> None:
    """Each planned trial as a bar on its worker's row, its predicted range as a whisker at its end,
    the budget as a vertical line; trials over the budget on a row after it, infeasible ones listed.

    The whisker spans the trial's low-high prediction (:class:`~planner.schema.TimeEstimate`);
    over-budget trials are drawn one after another from the budget line, where they would run
    with more budget; infeasible trials never run and have no time: their numbers are listed.
    """
    scheduled = [t for t in plan.trials if t.time is not None and t.start_seconds is not None]
    over = [t for t in plan.trials if t.status == "over budget" and t.time is not None]
    infeasible = [t.number for t in plan.trials if not t.feasible]
    longest = max([plan.makespan_seconds, plan.budget_seconds or 0.0])
    scale, unit = (
        (3600.0, "hours") if longest > 3 * 3600 else (60.0, "minutes") if longest > 120 else (1.0, "seconds")
    )
    labels = [f"worker {w}" for w in range(plan.workers)]
    for trial in scheduled:
        assert trial.time is not None and trial.start_seconds is not None
        start, width, row = trial.start_seconds / scale, trial.time.seconds / scale, trial.worker or 0
        axes.barh(row, width, left=start, color="tab:blue", edgecolor="black", alpha=0.7)
        axes.text(start + width / 2, row, str(trial.number), ha="center", va="center", fontsize=8)
        end, low, high = start + width, trial.time.low_seconds / scale, trial.time.high_seconds / scale
        axes.errorbar(
            end, row, xerr=[[width - low], [high - width]], fmt="none", ecolor="black", capsize=3, lw=1
        )
    if over:
        row, start = len(labels), (plan.budget_seconds or 0.0) / scale
        labels.append("over budget")
        for trial in over:
            assert trial.time is not None
            width = trial.time.seconds / scale
            axes.barh(row, width, left=start, color="lightgrey", edgecolor="grey", hatch="//")
            axes.text(start + width / 2, row, str(trial.number), ha="center", va="center", fontsize=8)
            start += width
    if infeasible:
        labels.append("infeasible")
        axes.text(
            0,
            len(labels) - 1,
            "  " + ", ".join(f"#{n}" for n in infeasible) + ": cannot run (why: `planner plan`)",
            ha="left",
            va="center",
            fontsize=8,
            color="tab:red",
        )
    if plan.budget_seconds is not None:
        axes.axvline(plan.budget_seconds / scale, color="red", linestyle="--", label="budget")
    axes.errorbar([], [], xerr=[], fmt="none", ecolor="black", capsize=3, lw=1, label="predicted low-high")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_ylim(len(labels) - 0.5, -0.5)  # worker 0 on top, over budget and infeasible below
    axes.set_xlim(left=0)
    axes.set_xlabel(unit)
    axes.set_title(f"{plan.spec_name} on {plan.card}: predicted timeline")
