"""A sweep's results, read back from its Optuna study: every trial, the best one, and OOM records.

Per-trial metrics live in the study itself (Optuna user attrs and intermediate values), so any
worker, machine or later session reads the same results; nothing else needs to be kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict

from planner.errors import ConfigError
from planner.schema import Hyperparameters, PlannedTrial, TrainingConfig


class TrialResult(BaseModel):
    """One trial as stored: its values, shape, how it ended, measured against predicted."""

    model_config = ConfigDict(extra="forbid")

    number: int
    params: dict[str, Any]
    state: str
    """Optuna's state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING (or INFEASIBLE, never run)."""
    status: str
    """complete, pruned, diverged, budget, interrupted, failed, running, waiting, infeasible."""
    value: float | None = None
    reason: str | None = None
    fix: str | None = None
    micro_batch: int | None = None
    gradient_accumulation: int | None = None
    planned_micro_batch: int | None = None
    predicted_seconds: float | None = None
    seconds: float | None = None
    predicted_peak_bytes: int | None = None
    predicted_allocated_bytes: int | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    oom: list[dict[str, int]] = []
    continues: int | None = None
    continued_as: int | None = None
    resumed_from_step: int | None = None
    steps_done: int | None = None
    longest_step_seconds: float | None = None
    """The longest optimizer step and checkpoint save of the trial: how far a budget's cut may
    overrun (the cut stops a trial at most one step and one save past the deadline)."""
    longest_save_seconds: float | None = None
    losses: list[tuple[int, float]] = []
    evals: list[tuple[int, dict[str, float]]] = []
    training_arguments: dict[str, Any] = {}
    worker: dict[str, Any] | None = None
    config: TrainingConfig | None = None
    """What the trial trained: model, method, LoRA, precision, optimizer, sequence length, and the
    micro-batch x accumulation it ran with (after any OOM change)."""
    hyper: Hyperparameters | None = None


class SweepResults(BaseModel):
    """Every trial of a study, plus the plan's infeasible ones, and the best trial's number."""

    model_config = ConfigDict(extra="forbid")

    study: str
    direction: str
    objective: str | None
    trials: list[TrialResult]
    best: int | None
    predicted_total_seconds: float | None
    measured_total_seconds: float

    def trial(self, number: int) -> TrialResult:
        return next(t for t in self.trials if t.number == number)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def trial_result(frozen: FrozenTrial) -> TrialResult:
    attrs = {**frozen.user_attrs.get("result", {}), **frozen.user_attrs}
    planned = PlannedTrial.model_validate(attrs["planned"]) if "planned" in attrs else None
    status = attrs.get("status") or frozen.state.name.lower()
    return TrialResult(
        number=frozen.number,
        params=frozen.system_attrs.get("fixed_params", frozen.params) or frozen.params,
        state=frozen.state.name,
        status=status,
        value=_finite(frozen.value) if frozen.state is TrialState.COMPLETE else None,
        reason=attrs.get("reason"),
        micro_batch=attrs.get("micro_batch"),
        gradient_accumulation=attrs.get("gradient_accumulation"),
        planned_micro_batch=planned.config.micro_batch if planned else None,
        predicted_seconds=attrs.get(
            "predicted_seconds", planned.time.seconds if planned and planned.time else None
        ),
        seconds=attrs.get("seconds"),
        predicted_peak_bytes=planned.peak_bytes if planned else None,
        predicted_allocated_bytes=planned.peak_allocated_bytes if planned else None,
        peak_memory_bytes=attrs.get("peak_memory_bytes"),
        memory_kind=attrs.get("memory_kind"),
        oom=attrs.get("oom", []),
        continues=attrs.get("continues"),
        resumed_from_step=attrs.get("resumed_from_step"),
        steps_done=attrs.get("steps_done"),
        longest_step_seconds=attrs.get("longest_step_seconds"),
        longest_save_seconds=attrs.get("longest_save_seconds"),
        losses=[(int(s), float(v)) for s, v in attrs.get("losses", [])],
        evals=[(int(s), m) for s, m in attrs.get("evals", [])],
        training_arguments=attrs.get("training_arguments", {}),
        worker=attrs.get("worker"),
        config=_ran_config(planned, attrs),
        hyper=planned.hyper if planned else None,
    )


def _ran_config(planned: PlannedTrial | None, attrs: dict[str, Any]) -> TrainingConfig | None:
    """The planned config with the shape the trial ran at (an OOM halves the micro-batch)."""
    if planned is None:
        return None
    micro = attrs.get("micro_batch") or planned.config.micro_batch
    accumulation = attrs.get("gradient_accumulation") or planned.config.gradient_accumulation
    return planned.config.with_changes(micro_batch=micro, gradient_accumulation=accumulation)


def sweep_results(study: optuna.Study) -> SweepResults:
    """All trials of ``study`` (run or waiting), the plan's infeasible ones appended."""
    trials = [trial_result(t) for t in study.get_trials(deepcopy=False)]
    continued_as = {t.continues: t.number for t in trials if t.continues is not None}
    for trial in trials:
        trial.continued_as = continued_as.get(trial.number)
    next_number = len(trials)
    for offset, entry in enumerate(study.user_attrs.get("infeasible", [])):
        trials.append(
            TrialResult(
                number=next_number + offset,
                params=entry["params"],
                state="INFEASIBLE",
                status="infeasible",
                reason=entry.get("reason"),
                fix=entry.get("fix"),
            )
        )
    complete = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    best = None
    if complete:
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        best = pick(complete, key=lambda t: t.value or 0.0).number
    plan = study.user_attrs.get("plan", {})
    return SweepResults(
        study=study.study_name,
        direction=study.direction.name.lower(),
        objective=plan.get("objective"),
        trials=trials,
        best=best,
        predicted_total_seconds=plan.get("total_seconds"),
        measured_total_seconds=sum(t.seconds or 0.0 for t in trials),
    )


def load_results(storage_url: str, study_name: str) -> SweepResults:
    """Results of the study ``study_name`` in ``storage_url`` (reading creates no SQLite file)."""
    return sweep_results(load_sweep_study(storage_url, study_name))


def load_sweep_study(storage_url: str, study_name: str) -> optuna.Study:
    """The sweep's Optuna study, or a one-line error when there is none (creates no SQLite file)."""
    from planner.executor._study import open_storage, sqlite_path

    database = sqlite_path(storage_url)
    if database is not None and not Path(database).is_file():  # opening it would create it, empty
        raise ConfigError(
            "study", f"no study '{study_name}' in {storage_url} (no such file)", "run `planner run` first"
        )
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:
        raise ConfigError(
            "study", f"no study '{study_name}' in {storage_url}", "run `planner run` first, or pass --study"
        ) from None


ExportForm = Literal["spec", "axolotl"]


def export_best(results: SweepResults, path: Path, form: ExportForm = "spec") -> dict[str, Any]:
    """Write the best trial complete, as YAML or JSON (by suffix), in the planner's spec form or
    as an axolotl config (YAML).

    Spec form: ``base`` is the trial's training config (model id, method, LoRA, precision,
    optimizer, checkpointing, sequence length, micro-batch x accumulation), ``training`` its
    searched hyperparameters, ``training_arguments`` the ``TrainingArguments`` keyword arguments
    it ran with: ``TrainingArguments(output_dir=..., **exported["training_arguments"])`` reproduces
    its Trainer. Axolotl form: the same config and hyperparameters in axolotl's keys
    (:func:`planner.configs.to_axolotl`), what differs as comments at the top. Either reads back
    through ``planner fit --config FILE`` (``planner.configs.read_training_config``) as the same
    config.
    """
    if results.best is None:
        raise ConfigError("--export", "no trial has completed yet", "run the sweep, then export")
    best = results.trial(results.best)
    if form == "axolotl":
        return _export_axolotl(best, path)
    arguments: dict[str, Any] = {"name": f"{results.study}-best-trial-{best.number}"}
    if best.config is not None:
        arguments["base"] = best.config.model_dump(mode="json")
    if best.hyper is not None:
        arguments["training"] = best.hyper.model_dump(mode="json", exclude_none=True)
    arguments["training_arguments"] = best.training_arguments
    if path.suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(arguments, sort_keys=False))
    elif path.suffix == ".json":
        path.write_text(json.dumps(arguments, indent=2))
    else:
        raise ConfigError(
            "--export", f"'{path.name}' is neither .yaml nor .json", "name the file best.yaml or best.json"
        )
    return arguments


def _export_axolotl(best: TrialResult, path: Path) -> dict[str, Any]:
    import yaml

    from planner.configs import to_axolotl

    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            "--export", f"axolotl configs are YAML, not '{path.name}'", "name the file best.yml"
        )
    if best.config is None:
        raise ConfigError(
            "--export", f"trial {best.number} recorded no training config", "export the spec form instead"
        )
    keys, notes = to_axolotl(best.config, best.hyper)
    header = "".join(f"# {note}\n" for note in [f"best trial {best.number}, axolotl form", *notes])
    path.write_text(header + yaml.safe_dump(keys, sort_keys=False))
    return keys


def record_oom(planned: PlannedTrial, card: str, events: list[dict[str, int]]) -> None:
    """Append each OOM recovery to the measured profiles' OOM log, which caps later plans and fits
    of this config on this card (see :class:`planner.profiler.OomLog`)."""
    from planner.profiler import OomLog

    log = OomLog()
    for event in events:
        failed = planned.config.with_changes(
            micro_batch=event["micro_batch"], gradient_accumulation=event["gradient_accumulation"]
        )
        log.record(failed, card, event["micro_batch"], planned.peak_bytes)


def oom_records(card: str | None = None) -> list[dict[str, Any]]:
    """Every recorded OOM (optionally only those on ``card``)."""
    from planner.profiler import OomLog

    return OomLog().records(card)
