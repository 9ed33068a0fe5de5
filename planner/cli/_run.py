"""``planner run``, ``planner results``, ``planner report``: run a sweep inside a budget and read it back."""

from __future__ import annotations

import difflib
import sys
import time
from pathlib import Path
from typing import Literal

import click
from rich import box
from rich.console import Console

from planner._files import check_output_dir, check_output_file, check_sqlite_database, read_model
from planner.cli._common import emit_json, importing, parse_budget, readable_table, user_errors_exit_2
from planner.cli._plan import infeasible_groups
from planner.errors import ConfigError
from planner.formatting import format_params
from planner.schema import GIB, Plan


def _budget_start() -> float:
    """When this run's budget began: the process's start (``--gpus`` workers get it in their order).

    The budget is the wall time the user measures, so the interpreter's start, the imports and the
    planning before the first trial count too.
    """
    from planner.executor import process_started

    started = process_started()
    return started if started is not None else time.time()


def _gpus(value: str | None) -> list[str]:
    """GPU indices from ``0,1,2,3``, ``0-3`` or a mix (``0-1,4``)."""
    if value is None:
        return []
    gpus: list[str] = []
    for part in (part.strip() for part in value.split(",")):
        low, dash, high = part.partition("-")
        if dash and low.isdigit() and high.isdigit() and int(low) <= int(high):
            gpus += [str(index) for index in range(int(low), int(high) + 1)]
        elif part.isdigit():
            gpus.append(part)
        elif part:
            gpus = []
            break
    if not gpus or len(set(gpus)) != len(gpus):
        raise ConfigError("--gpus", f"'{value}' is not a list of GPU indices", "e.g. --gpus 0,1,2,3 or 0-3")
    return gpus


def _gpu_groups(gpus: list[str], per_trial: int | None, ranks: int) -> list[str]:
    """The workers' ``CUDA_VISIBLE_DEVICES``: ``gpus`` in consecutive groups of a trial's ranks."""
    if per_trial is not None and per_trial != ranks:
        raise ConfigError(
            "--gpus-per-trial",
            f"{per_trial} GPUs per trial, but the spec's trials run on {ranks} (base.parallelism)",
            f"--gpus-per-trial {ranks}, or set base.parallelism.gpus: {per_trial} in the spec",
        )
    if len(gpus) % ranks:
        raise ConfigError(
            "--gpus",
            f"{len(gpus)} GPUs do not split into trials of {ranks}",
            f"give a multiple of {ranks} GPUs",
        )
    return [",".join(gpus[start : start + ranks]) for start in range(0, len(gpus), ranks)]


def _check_local_gpus(ranks: int) -> None:
    """A trial across ranks on this host's visible GPUs needs that many (on a GPU machine)."""
    import torch

    if ranks > 1 and torch.cuda.is_available() and torch.cuda.device_count() < ranks:
        raise ConfigError(
            "base.parallelism",
            f"a trial runs on {ranks} GPUs; {torch.cuda.device_count()} visible here",
            f"make {ranks} visible (CUDA_VISIBLE_DEVICES), or lower base.parallelism.gpus",
        )


def _report_to(value: str) -> list[str]:
    """The Trainer integrations named by ``--report-to``: known to transformers and installed here.

    Checked before the run: transformers only refuses a name when a trial builds its Trainer.
    """
    names = [part.strip() for part in value.split(",") if part.strip()]
    if names in ([], ["none"]):
        return []
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    if names == ["all"]:
        return list(get_available_reporting_integrations())

    known = sorted(INTEGRATION_TO_CALLBACK)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use some of {', '.join(known)}"
            raise ConfigError("--report-to", f"'{name}' is not a Trainer integration", hint)
        if name not in get_available_reporting_integrations():
            raise ConfigError(
                "--report-to", f"'{name}' is not installed here", f"pip install {name}, or drop it"
            )
    return names


def _study_of(spec_path: Path | None, storage: str | None, study: str | None) -> tuple[str, str]:
    """Storage URL and study name: from the options, else the spec's defaults."""
    if spec_path is not None:
        from planner.sweep import load_spec

        spec = load_spec(spec_path)
        storage, study = storage or spec.storage_url, study or spec.name
    elif storage is None or study is None:
        raise ConfigError("spec", "no spec given", "pass SPEC, or both --storage and --study")
    _existing_storage(storage)
    return storage, study


def _read_plan(path: Path, spec_name: str) -> Plan:
    """A plan written by ``planner plan --json`` for this spec."""
    plan = read_model(path, Plan, field="--plan", expect="a plan written by `planner plan --json`")
    if plan.spec_name != spec_name:
        raise ConfigError(
            "--plan", f"'{path}' plans the sweep '{plan.spec_name}', not '{spec_name}'", "plan this spec"
        )
    return plan


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (query dropped); None for other databases and memory."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _check_run_storage(url: str) -> None:
    """Fail on a bad storage URL before planning, without creating a database nobody asked for.

    An existing SQLite database or another kind of database is opened now; a new (or empty)
    SQLite file only needs a writable directory: the run creates it once it has trials to run.
    """
    from planner.executor import open_storage

    path = _sqlite_file(url)
    if path is None:
        open_storage(url)
    elif not path.exists() or (path.is_file() and path.stat().st_size == 0):
        check_output_file(path, field="storage")
    else:
        check_sqlite_database(path, field="storage")  # a directory or a text file is refused here
        open_storage(url)


def _existing_storage(url: str) -> None:
    """Refuse a SQLite study database that does not exist: reading must not create an empty one."""
    path = _sqlite_file(url)
    if path is None:
        return
    if not path.exists():
        raise ConfigError(
            "storage", f"no study database at {path}", "run `planner run` first, or pass --storage"
        )
    check_sqlite_database(path, field="storage")


def _refuse_if_nothing_runs(plan: Plan) -> None:
    """A plan whose every trial is infeasible is an input to fix, not a finished sweep."""
    if any(trial.feasible for trial in plan.trials):
        return
    groups = infeasible_groups(plan)
    reasons = "; ".join(f"{reason} (trial {', '.join(map(str, numbers))})" for reason, _, numbers in groups)
    fixes = "; ".join(dict.fromkeys(fix for _, fix, _ in groups if fix)) or "change the spec or the card"
    raise ConfigError("spec", f"no trial of '{plan.spec_name}' can run on {plan.card}: {reasons}", fixes)


@click.command("run")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--card", help="Card to plan for (default: this machine's GPU if any, else cpu).")
@click.option("--budget", help="Wall-clock budget for this run, e.g. 5h or 90m (default: the spec's).")
@click.option("--storage", help="Optuna storage URL (default: a SQLite file next to the spec).")
@click.option("--study", help="Study name (default: the spec's name).")
@click.option("--gpus", help="Start one worker per GPU (or GPU group) of this host, e.g. 0,1,2,3 or 0-3.")
@click.option(
    "--gpus-per-trial",
    type=click.IntRange(min=1),
    help="GPUs of each trial (default and only value: the spec's base.parallelism.gpus); --gpus are "
    "split into groups of it, one worker each.",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run this plan (from `planner plan --json`) instead of planning again.",
)
@click.option(
    "--report-to", default="", help="Trainer integrations to log to, e.g. wandb,tensorboard (or all, none)."
)
@click.option("--json", "as_json", is_flag=True, help="No live display; print this worker's trials as JSON.")
@user_errors_exit_2
def run_command(
    spec: Path,
    card: str | None,
    budget: str | None,
    storage: str | None,
    study: str | None,
    gpus: str | None,
    gpus_per_trial: int | None,
    plan_path: Path | None,
    report_to: str,
    as_json: bool,
) -> None:
    """Run the sweep in SPEC: the planned trials that fit the budget, resumable after any crash.

    Run it again to continue: trials cut by the budget or a crash resume from their checkpoints.
    With --report-to, each trial is a run named <study>-trial-<n>, grouped by the study.

    \b
    Examples:
      planner run examples/tiny-sweep/spec.yaml --card cpu --budget 10m
      planner run spec.yaml --gpus 0,1,2,3 --report-to tensorboard
      planner run ddp.yaml --gpus 0-3 --gpus-per-trial 2   # 2-GPU trials
      planner run spec.yaml --storage postgresql://user@host/db  # several hosts
    """
    # As `planner plan` does: the libraries imported without collections and frozen, so that
    # planning here takes what the plan's start-up estimate measured (unfrozen, every full
    # collection while planning walks torch's and transformers' heap: ~0.8 s more on a 2-core VM).
    with importing():
        from planner.cards import load_card, this_machine_card
        from planner.executor import (
            LiveObserver,
            PlainObserver,
            SweepObserver,
            WorkerOrder,
            load_results,
            open_study,
            run_sweep,
            run_workers,
        )
        from planner.sweep import check_model_limits, import_what_plans, load_spec, plan_for_card

        sweep = load_spec(spec)
        seconds = parse_budget(budget)
        ranks = sweep.base.parallelism.world_size
        devices = _gpu_groups(_gpus(gpus), gpus_per_trial, ranks) if gpus is not None else []
        if gpus is None and gpus_per_trial is not None:
            raise ConfigError("--gpus-per-trial", "it splits --gpus into groups", "give --gpus too")
        if not devices:
            _check_local_gpus(ranks)
        integrations = _report_to(report_to)
        card_name = card or this_machine_card()
        target = load_card(card_name)
        check_model_limits(sweep)
        import_what_plans(sweep)
    storage_url = storage or sweep.storage_url
    _check_run_storage(storage_url)  # a bad URL fails now, not after planning
    if plan_path is not None:
        plan = _read_plan(plan_path, sweep.name)
    else:
        # One worker per GPU group: the plan's schedule packs trials onto as many.
        plan = plan_for_card(sweep, target, workers=len(devices) or None, budget_seconds=seconds)
    _refuse_if_nothing_runs(plan)
    if devices:
        name = study or sweep.name
        # The study and its queue exist before the workers start: they all begin by claiming.
        open_study(sweep, plan, storage_url, name)
        order = WorkerOrder(
            spec=spec.resolve(),
            plan=plan,
            card=card_name,
            storage_url=storage_url,
            study_name=name,
            budget_seconds=seconds,
            budget_start=_budget_start(),  # the workers count the budget from this process's start
            report_to=integrations,
            show_progress=not as_json,
        )
        code = run_workers(devices, order)
        if as_json:
            emit_json(load_results(storage_url, name).model_dump(mode="json"))
        sys.exit(code)

    observer: SweepObserver
    if as_json:
        observer = SweepObserver()
    elif sys.stdout.isatty():
        observer = LiveObserver()
    else:
        observer = PlainObserver(sys.stdout)
    run = run_sweep(
        sweep,
        plan,
        storage_url=storage_url,
        study_name=study,
        budget_seconds=seconds,
        observer=observer,
        card=target,
        report_to=integrations,
        budget_start=_budget_start(),
    )
    if as_json:
        emit_json(
            {
                "trials": [t.model_dump(mode="json", exclude={"losses"}) for t in run.trials],
                "elapsed_seconds": run.elapsed_seconds,
                "budget_seconds": run.budget_seconds,
                "left_waiting": run.left_waiting,
                "learned_ratio": run.learned_ratio,
                "predicted_total_seconds": plan.total_seconds,
            }
        )


@click.command("results")
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option("--storage", help="Optuna storage URL (default: the spec's SQLite file).")
@click.option("--study", help="Study name (default: the spec's name).")
@click.option(
    "--export",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the best trial's config (model, method, LoRA, shape, TrainingArguments) as .yaml or .json.",
)
@click.option(
    "--format",
    "export_form",
    type=click.Choice(["spec", "axolotl"]),
    default="spec",
    show_default=True,
    help="The --export form: the planner's spec, or an axolotl config (.yml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print every trial as JSON.")
@user_errors_exit_2
def results_command(
    spec: Path | None,
    storage: str | None,
    study: str | None,
    export: Path | None,
    export_form: Literal["spec", "axolotl"],
    as_json: bool,
) -> None:
    """Every trial of the sweep (run, waiting, infeasible) and the best configuration.

    \b
    Examples:
      planner results spec.yaml
      planner results spec.yaml --export best.yaml
      planner fit --config best.yaml --card l4   # the best config, read back
      planner results --storage sqlite:///sweep.db --study my-sweep --json
    """
    from planner.executor import export_best, load_results

    if export is not None:
        suffixes = (".yaml", ".yml") if export_form == "axolotl" else (".yaml", ".yml", ".json")
        check_output_file(export, field="--export", suffixes=suffixes)
    results = load_results(*_study_of(spec, storage, study))
    if export is not None:
        export_best(results, export, export_form)
    if as_json:
        emit_json(results.model_dump(mode="json"))
        return
    console = Console()
    objective = results.objective or "value"
    headers = ["trial", "params", "status", objective, "micro x acc", "time / pred", "peak GiB", "note"]
    rows = []
    for trial in results.trials:
        shape = f"{trial.micro_batch} x {trial.gradient_accumulation}" if trial.micro_batch else "-"
        time = (
            f"{trial.seconds:.1f}s / {trial.predicted_seconds:.1f}s"
            if trial.seconds and trial.predicted_seconds
            else "-"
        )
        notes = [trial.reason or ""]
        if trial.oom:
            notes.append(f"OOM: micro {trial.oom[0]['micro_batch']} -> {trial.micro_batch}")
        if trial.continues is not None:
            notes.append(f"continues #{trial.continues}")
        if trial.fix:
            notes.append(f"fix: {trial.fix}")
        rows.append(
            [
                f"[bold]{trial.number}[/]" if trial.number == results.best else str(trial.number),
                format_params(trial.params),
                trial.status,
                f"{trial.value:.4g}" if trial.value is not None else "-",
                shape,
                time,
                f"{trial.peak_memory_bytes / GIB:.2f}" if trial.peak_memory_bytes else "-",
                "; ".join(n for n in notes if n),
            ]
        )
    table = readable_table(
        headers,
        rows,
        whole=["trial", "params", "status", objective],
        title=f"{results.study} ({results.direction})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    console.print(table)
    if results.best is not None:
        best = next(t for t in results.trials if t.number == results.best)
        value = f" ({results.objective or 'value'} {best.value:.4g})" if best.value is not None else ""
        exported = f", exported to {export}" if export else ""
        console.print(f"Best: trial {results.best}{value}: {format_params(best.params)}{exported}")


@click.command("report")
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option("--storage", help="Optuna storage URL (default: the spec's SQLite file).")
@click.option("--study", help="Study name (default: the spec's name).")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory for PNGs."
)
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
@user_errors_exit_2
def report_command(
    spec: Path | None, storage: str | None, study: str | None, out: Path, as_json: bool
) -> None:
    """PNG plots of the sweep: Optuna's timeline, intermediate values and parameter importances;
    training-loss curves, and predicted vs measured time and memory per trial.

    \b
    Examples:
      planner report spec.yaml --out plots/
      planner report --storage postgresql://host/db --study sweep --out plots/
    """
    from planner.executor import load_sweep_study, write_report

    check_output_dir(out, field="--out")
    report = write_report(load_sweep_study(*_study_of(spec, storage, study)), out)
    if as_json:
        emit_json({"written": [str(p) for p in report.written], "skipped": report.skipped})
    else:
        for path in report.written:
            click.echo(f"wrote {path}")
        for skipped in report.skipped:
            click.echo(f"left out {skipped}")
