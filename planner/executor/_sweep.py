"""The worker loop: take the next trial that fits the budget, run it, store what happened, repeat.

Any number of these loops, in one process or on many machines, share a study (see ``_study``).
Each corrects the remaining predictions by what finished trials measured ("learning as it goes"):
the ratio of measured to predicted seconds over the study's completed trials.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from planner.cards import load_card
from planner.errors import ConfigError, InfrastructureError
from planner.executor._display import SweepObserver
from planner.executor._group import group_attempt
from planner.executor._monitor import Deadline, Heartbeat, Reporter, TrialLog, TrialStopped
from planner.executor._results import TrialResult, record_oom, trial_result
from planner.executor._study import claim, open_study, recover, sqlite_path, waiting
from planner.executor._trial import (
    TrialOutcome,
    TrialRun,
    checkpoint_step,
    infrastructure_fault,
    last_checkpoint,
    release_memory,
    run_trial,
    trainer_attempt,
)
from planner.schema import Card, Hyperparameters, Plan, PlannedTrial, SweepSpec, TrainingConfig
from planner.sweep import plan_sampled

if TYPE_CHECKING:
    from transformers import TrainerCallback

DIVERGENCE_FACTOR = 4.0
"""A training loss above this multiple of the trial's first logged loss counts as divergence."""
INFRASTRUCTURE_FIX = "make it writable (free space, permissions, storage), then run again"

logger = logging.getLogger(__name__)


@dataclass
class SweepRun:
    """What one worker did: the trials it ran and why it stopped."""

    trials: list[TrialResult]
    elapsed_seconds: float
    budget_seconds: float | None
    left_waiting: int
    """Trials still waiting in the study when this worker stopped (over its budget)."""
    learned_ratio: float


@dataclass(frozen=True)
class TrialConfig:
    """What a user's training function gets for one trial (see :func:`run_function`)."""

    number: int
    params: dict[str, Any]
    config: TrainingConfig
    """With the micro-batch and accumulation to use (halved/doubled after an OOM)."""
    hyper: Hyperparameters
    output_dir: Path
    """Where to write checkpoints; a continued trial finds its predecessor's here."""
    resume: bool
    """True when an interrupted trial continues: load the latest checkpoint in ``output_dir``."""
    run_name: str = "trial"
    """The trial's name for your experiment tracker (``<study>-trial-<number>``); the study's name
    is in ``WANDB_RUN_GROUP`` when the sweep was given ``report_to``."""


TrainFunction = Callable[[TrialConfig, Reporter], "float | dict[str, float] | None"]


def learned_ratio(study: optuna.Study) -> float:
    """Measured over predicted seconds across the study's uninterrupted completed trials (1 if none)."""
    measured = predicted = 0.0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs, seconds = trial.user_attrs, trial.user_attrs.get("result", {}).get("seconds")
        if "continues" in attrs or not attrs.get("predicted_seconds") or not seconds:
            continue
        measured += seconds
        predicted += attrs["predicted_seconds"]
    return measured / predicted if predicted > 0 else 1.0


def _predicted(frozen: FrozenTrial | None, planned: PlannedTrial) -> float:
    """A trial's predicted seconds; a continuation's only for the steps it has left."""
    seconds = planned.time.seconds if planned.time is not None else 0.0
    if frozen is None or "continues" not in frozen.user_attrs or not planned.optimizer_steps:
        return seconds
    done = checkpoint_step(last_checkpoint(Path(frozen.user_attrs["output_dir"])))
    left = max(0.0, 1.0 - done / planned.optimizer_steps)
    startup = planned.time.parts.get("startup", 0.0) if planned.time is not None else 0.0
    return startup + (seconds - startup) * left


def _continuation_note(interrupted: FrozenTrial) -> str:
    """What happens to a trial recovery continues: from which checkpoint, or from the start."""
    attrs = interrupted.user_attrs
    why = "was cut by the budget" if attrs.get("status") == "budget" else "was interrupted"
    output_dir = attrs.get("output_dir")
    step = checkpoint_step(last_checkpoint(Path(output_dir))) if output_dir else 0
    if step == 0:
        return (
            f"trial {interrupted.number} {why} before its first complete checkpoint: running it again "
            "from step 0"
        )
    return f"trial {interrupted.number} {why}: continuing it from its checkpoint at step {step}"


def _suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """Register the trial's params with Optuna (fixed for enqueued trials, sampled for TPE)."""
    from planner.sweep import search_distributions

    for name, distribution in search_distributions(spec).items():
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            trial.suggest_categorical(name, distribution.choices)
        elif isinstance(distribution, optuna.distributions.IntDistribution):
            trial.suggest_int(
                name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
            )
        elif isinstance(distribution, optuna.distributions.FloatDistribution):
            trial.suggest_float(
                name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
            )
    return dict(trial.params)


class _Worker:
    """One worker's loop over a study; see :func:`run_sweep`."""

    def __init__(
        self,
        spec: SweepSpec,
        plan: Plan,
        storage_url: str,
        study_name: str,
        deadline: Deadline,
        observer: SweepObserver,
        attempt: Callable[..., None],
        plan_one: Callable[[dict[str, Any]], PlannedTrial] | None,
        report_to: Sequence[str],
        callbacks: Sequence[TrainerCallback],
    ) -> None:
        self.spec, self.plan, self.storage_url = spec, plan, storage_url
        self.deadline, self.observer, self.attempt = deadline, observer, attempt
        self.plan_one, self.report_to, self.callbacks = plan_one, report_to, callbacks
        self.study = open_study(spec, plan, storage_url, study_name)
        self.ran: list[TrialResult] = []
        self.wrap_up = 0.0
        """The longest a trial took, once it stopped training, to be cleaned up and stored (or,
        before any, a claim): trials stop this much before the deadline, so that the last one's
        end fits the budget."""

    def run(self) -> int:
        """Run trials until none is left that fits; returns how many are left waiting."""
        for interrupted in recover(self.study, self.storage_url):
            self.observer.note(_continuation_note(interrupted))
        ratio = learned_ratio(self.study)
        queue = waiting(self.study)
        total = sum(_predicted(t, PlannedTrial.model_validate(t.user_attrs["planned"])) for t in queue)
        self.observer.sweep_started(self.study.study_name, len(queue), self.deadline_seconds, total * ratio)
        while True:
            ratio = learned_ratio(self.study)
            queue = waiting(self.study)
            chosen = None
            for frozen in queue:
                planned = PlannedTrial.model_validate(frozen.user_attrs["planned"])
                if _predicted(frozen, planned) * ratio <= self.deadline.remaining():
                    chosen = frozen, planned
                    break
            if chosen is None:
                if queue:
                    self.observer.note(
                        f"{len(queue)} trial(s) left waiting: predicted over the remaining budget "
                        f"({max(0.0, self.deadline.remaining()):.0f}s); run again with more budget for them"
                    )
                    return len(queue)
                if not self._ask_new():
                    return 0
                continue
            frozen, planned = chosen
            claiming = time.monotonic()
            trial = claim(self.study, frozen, self.storage_url)
            self.wrap_up = max(self.wrap_up, time.monotonic() - claiming)  # as many storage writes
            if trial is not None:
                after = sum(
                    _predicted(t, PlannedTrial.model_validate(t.user_attrs["planned"]))
                    for t in queue
                    if t.number != frozen.number
                )
                self._execute(trial, frozen, planned, ratio, after * ratio)

    def infrastructure_fault(self, error: BaseException) -> tuple[str, str] | None:
        """What ``error`` says about the machine (see :func:`infrastructure_fault`), or None."""
        roots = [self.spec.output_dir]
        database = sqlite_path(self.storage_url)
        if database is not None:
            roots += [Path(database), Path(f"{database}.lock")]
        return infrastructure_fault(error, roots)

    @property
    def deadline_seconds(self) -> float | None:
        remaining = self.deadline.remaining()
        return None if remaining == float("inf") else remaining

    def _ask_new(self) -> bool:
        """TPE: sample one more trial while fewer than ``n_trials`` exist; False when the sweep is done."""
        if self.spec.strategy != "tpe" or self.plan_one is None:
            return False
        roots = [t for t in self.study.get_trials(deepcopy=False) if "continues" not in t.user_attrs]
        if len(roots) >= (self.spec.n_trials or 0):
            return False
        trial = self.study.ask()
        params = _suggest(trial, self.spec)
        planned = self.plan_one(params)
        output_dir = (self.spec.output_dir / f"trial-{trial.number:03d}").resolve()
        trial.set_user_attr("planned", planned.model_dump(mode="json"))
        trial.set_user_attr("output_dir", str(output_dir))
        if not planned.feasible:
            trial.set_user_attr("status", "infeasible")
            trial.set_user_attr("reason", f"{planned.reason} (fix: {planned.fix})")
            self.study.tell(trial, state=TrialState.PRUNED)
            self.observer.trial_finished(trial.number, "infeasible", None, 0.0, planned.reason)
            return True
        ratio = learned_ratio(self.study)
        predicted = _predicted(None, planned) * ratio
        if predicted > self.deadline.remaining():
            trial.set_user_attr("status", "over budget")
            trial.set_user_attr("reason", f"predicted {predicted:.0f}s exceeds the remaining budget")
            self.study.tell(trial, state=TrialState.PRUNED)  # stopped by the budget (see _study)
            self.observer.note(f"trial {trial.number} not run: {trial.user_attrs['reason']}")
            return False
        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        self._execute(trial, frozen, planned, ratio, 0.0)
        return True

    def _execute(
        self, trial: optuna.Trial, frozen: FrozenTrial, planned: PlannedTrial, ratio: float, after: float
    ) -> None:
        attrs = frozen.user_attrs
        if "micro_batch" in attrs:  # a continuation of a trial that had shrunk its micro-batch
            planned = planned.model_copy(
                update={
                    "config": planned.config.with_changes(
                        micro_batch=attrs["micro_batch"], gradient_accumulation=attrs["gradient_accumulation"]
                    )
                }
            )
        params = _suggest(trial, self.spec)
        predicted = _predicted(frozen, planned)
        output_dir = Path(attrs.get("output_dir", self.spec.output_dir / f"trial-{trial.number:03d}"))
        config = planned.config
        shape = f"{config.micro_batch} x {config.gradient_accumulation}"
        if config.parallelism.world_size > 1:
            shape += f" x {config.parallelism.world_size} ranks"
        trial.set_user_attr("status", "running")
        trial.set_user_attr("predicted_seconds", predicted)
        self.observer.trial_started(trial.number, params, shape, predicted * ratio, after)
        reporter = Reporter(
            trial,
            self.spec.objective.metric,
            Deadline(None if self.deadline.at is None else self.deadline.at - self.wrap_up),
            self.observer,
            divergence_factor=DIVERGENCE_FACTOR,
        )
        time_parts = planned.time.parts if planned.time is not None else {}
        run = TrialRun(
            spec=self.spec,
            planned=planned,
            output_dir=output_dir,
            reporter=reporter,
            resume="continues" in attrs,
            predicted_eval_seconds=time_parts.get("eval", 0.0) / max(1, planned.eval_passes),
            predicted_save_seconds=time_parts.get("checkpoints", 0.0) / max(1, planned.checkpoint_saves),
            report_to=self.report_to,
            callbacks=self.callbacks,
            run_name=f"{self.study.study_name}-trial-{trial.number}",
            group=self.study.study_name,
        )
        attempt = self.attempt
        if config.parallelism.world_size > 1:  # the built-in recipe in each rank (see _group)
            attempt = functools.partial(group_attempt, divergence_factor=DIVERGENCE_FACTOR)
        start = time.monotonic()
        try:
            with Heartbeat(trial):
                outcome = run_trial(run, attempt)
            error = None
        except Exception as exc:  # one trial's crash must not end the sweep; the machine's must
            fault = self.infrastructure_fault(exc)
            if fault is not None:
                failed, problem = fault
                self._interrupt(trial, f"{failed}: {problem}", time.monotonic() - start)
                step = checkpoint_step(last_checkpoint(output_dir))
                then = f"it continues from its checkpoint at step {step}" if step else "it runs again"
                raise InfrastructureError(
                    failed, f"trial {trial.number} stopped: {problem}", f"{INFRASTRUCTURE_FIX}: {then}"
                ) from exc
            outcome, error = TrialOutcome(), f"{type(exc).__name__}: {exc}"
            logger.error("trial %d failed", trial.number, exc_info=True)
            release_memory()
        returned = time.monotonic()
        self._store(trial, planned, outcome, reporter.log, reporter, returned - start, error)
        # From Trainer's end of training where there was one: the trial's clean-up (freeing the
        # model, collecting its garbage) is as much a part of ending it as storing it.
        trained = reporter.trained_at if reporter.trained_at is not None else returned
        self.wrap_up = max(self.wrap_up, time.monotonic() - trained)

    def _interrupt(self, trial: optuna.Trial, fault: str, seconds: float) -> None:
        """Leave a trial the machine stopped resumable: ``interrupted``, as if its worker had died.

        The next run's :func:`recover` continues it from its last complete checkpoint. When the
        storage itself is what failed these writes may fail too; the trial then stays RUNNING
        with this worker's identity, and the next run's recovery finds that worker dead.
        """
        from sqlalchemy.exc import SQLAlchemyError

        reason = f"stopped by the machine: {fault}"
        with contextlib.suppress(SQLAlchemyError):
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
        self.observer.trial_finished(trial.number, "interrupted", None, seconds, reason)

    def _store(
        self,
        trial: optuna.Trial,
        planned: PlannedTrial,
        outcome: TrialOutcome,
        log: TrialLog,
        reporter: Reporter,
        seconds: float,
        error: str | None,
    ) -> None:
        attrs: dict[str, Any] = {
            **reporter.attrs(),
            "seconds": seconds,
            "micro_batch": outcome.micro_batch,
            "gradient_accumulation": outcome.gradient_accumulation,
            "oom": outcome.oom,
            "peak_memory_bytes": outcome.peak_memory_bytes,
            "memory_kind": outcome.memory_kind,
            "training_arguments": outcome.training_arguments,
        }
        if outcome.resumed_from_step is not None:
            attrs["resumed_from_step"] = outcome.resumed_from_step
        if outcome.oom:
            record_oom(planned, self.plan.card, outcome.oom)
        value = outcome.metrics.get(self.spec.objective.metric)
        state, status, reason = TrialState.COMPLETE, "complete", None
        if error is not None:
            state, status, reason = TrialState.FAIL, "failed", error
        elif outcome.failed is not None:
            state, status, reason = TrialState.FAIL, "failed", outcome.failed
        elif log.stopped in ("pruned", "budget"):  # stopped early by a rule, not an error (see _study)
            state, status, reason = TrialState.PRUNED, log.stopped, log.reason
        elif log.stopped is not None:  # diverged
            state, status, reason = TrialState.FAIL, log.stopped, log.reason
        elif value is None:
            state, status = TrialState.FAIL, "failed"
            produced = ", ".join(outcome.metrics) or "nothing"
            reason = f"the objective '{self.spec.objective.metric}' was not produced (got {produced})"
        attrs["metrics"] = outcome.metrics
        # Three writes, not one per field: each is a storage transaction (SQLite: a sync to disk).
        trial.set_user_attr("result", attrs)
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        frozen = self.study.tell(trial, value if state is TrialState.COMPLETE else None, state=state)
        result = trial_result(frozen)
        self.ran.append(result)
        self.observer.trial_finished(trial.number, status, result.value, seconds, reason)


def run_sweep(
    spec: SweepSpec,
    plan: Plan,
    *,
    storage_url: str | None = None,
    study_name: str | None = None,
    budget_seconds: float | None = None,
    observer: SweepObserver | None = None,
    plan_one: Callable[[dict[str, Any]], PlannedTrial] | None = None,
    card: Card | None = None,
    report_to: Sequence[str] = (),
    callbacks: Sequence[TrainerCallback] = (),
    attempt: Callable[..., None] = trainer_attempt,
    budget_start: float | None = None,
) -> SweepRun:
    """Run the plan's trials (or TPE's) through Trainer on this worker, inside the budget.

    ``storage_url`` defaults to the spec's SQLite file, ``study_name`` to the spec's name,
    ``budget_seconds`` to the spec's budget, counted from ``budget_start`` (a ``time.time()``;
    ``planner run`` passes its process's start) or else from when the storage is open and
    Trainer imported. ``plan_one`` plans one sampled configuration (TPE); by default
    :func:`planner.sweep.plan_sampled` on ``card`` (by default the plan's card). ``callbacks``
    are extra ``TrainerCallback`` s for every trial.

    Raises :class:`~planner.errors.InfrastructureError` when the machine fails the run (output
    directory or storage unwritable): the running trial is left to continue on the next run.
    """
    # Import Trainer before the clock starts, so the first trial's time is comparable to the others'.
    import transformers.trainer  # noqa: F401

    if attempt is not trainer_attempt and not spec.base.parallelism.single_gpu:
        raise ConfigError(
            "base.parallelism",
            "a training function of your own runs in this one process, not across ranks",
            "launch your function with accelerate yourself, or remove base.parallelism",
        )
    budget = budget_seconds if budget_seconds is not None else spec.budget_seconds
    observer = observer or SweepObserver()
    if plan_one is None and spec.strategy == "tpe":
        plan_one = functools.partial(plan_sampled, spec, card or load_card(plan.card))
    worker = _Worker(
        spec,
        plan,
        storage_url or spec.storage_url,
        study_name or spec.name,
        Deadline(None),
        observer,
        attempt,
        plan_one,
        report_to,
        callbacks,
    )
    # Without a start of the caller's, the budget counts from here: the imports and opening the
    # storage are the caller's start-up.
    since = budget_start if budget_start is not None else time.time()
    worker.deadline = Deadline.after(budget, since=since)
    # What exists now (torch's and transformers' modules: about a million objects) outlives every
    # trial; frozen, the collections that release each trial's memory (ours and accelerate's, two
    # per trial) do not rescan it, which would otherwise cost ~0.25 s each.
    gc.freeze()
    try:
        left = worker.run()
    except Exception as exc:  # the storage or a lock file failing between trials
        fault = worker.infrastructure_fault(exc)
        if fault is None or isinstance(exc, InfrastructureError):
            raise
        raise InfrastructureError(*fault, INFRASTRUCTURE_FIX) from exc
    finally:
        gc.unfreeze()
        observer.sweep_finished(time.time() - since)  # a live display ends on every way out
    elapsed = time.time() - since
    return SweepRun(worker.ran, elapsed, budget, left, learned_ratio(worker.study))


def run_function(
    spec: SweepSpec,
    fn: TrainFunction,
    plan: Plan,
    **options: Any,
) -> SweepRun:
    """Run the sweep with your own training code: ``fn(trial_config, reporter)`` per trial.

    Report metrics with ``reporter.report(step, {...})``: it feeds the pruner and raises
    :class:`TrialStopped` when the trial is pruned, diverges or runs out of budget (catch it to
    checkpoint first). Return the objective value, or a dict holding it. Options as :func:`run_sweep`.
    """

    def attempt(run: TrialRun, outcome: TrialOutcome, resume: bool) -> None:
        config = run.planned.config.with_changes(
            micro_batch=outcome.micro_batch, gradient_accumulation=outcome.gradient_accumulation
        )
        trial_config = TrialConfig(
            number=run.reporter.trial.number if run.reporter.trial is not None else 0,
            params=run.planned.params,
            config=config,
            hyper=run.planned.hyper,
            output_dir=run.output_dir,
            resume=resume,
            run_name=run.run_name,
        )
        try:
            returned = fn(trial_config, run.reporter)
        except TrialStopped:
            returned = None
        metrics = dict(returned) if isinstance(returned, dict) else {}
        if isinstance(returned, int | float):
            metrics[spec.objective.metric] = float(returned)
        if run.reporter.log.evals and spec.objective.metric not in metrics:
            metrics.update(run.reporter.log.evals[-1][1])
        outcome.metrics = metrics

    return run_sweep(spec, plan, attempt=attempt, **options)
