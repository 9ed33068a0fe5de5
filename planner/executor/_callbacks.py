"""Trainer callbacks: divergence, budget, pruning, and progress, all through one :class:`Reporter`.

Trainer calls ``on_step_end`` after each optimizer step, then logs, evaluates and saves as its
``control`` flags say; these callbacks run after Trainer's own flow callback, so they can cancel a
scheduled eval or ask for a save before the trial stops.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from planner.executor._monitor import Reporter


class ReportingCallback(TrainerCallback):
    """Feeds training losses and eval metrics to the reporter; stops Trainer when it says so.

    A diverged or pruned trial stops without another eval or checkpoint (its weights are not worth
    keeping); a trial out of budget is checkpointed where it stands (see :class:`BudgetCallback`).
    """

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.reporter.log.max_steps = state.max_steps
        self.reporter.log.step = state.global_step

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if (
            logs
            and "loss" in logs
            and self.reporter.observe(state.global_step, {"loss": logs["loss"]})
            in (
                "pruned",
                "diverged",
            )
        ):
            self._stop_now(control)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and self.reporter.observe(state.global_step, metrics) in ("pruned", "diverged"):
            self._stop_now(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.reporter.log.stopped in ("pruned", "diverged"):
            self._stop_now(control)

    @staticmethod
    def _stop_now(control: TrainerControl) -> None:
        control.should_training_stop = True
        control.should_evaluate = False
        control.should_save = False


class BudgetCallback(TrainerCallback):
    """Stops a trial, checkpointed, before the sweep's budget runs out.

    After each optimizer step it projects the next point where it could stop: the eval and save
    Trainer will run now (at this step or at the epoch's end), one more step unless this was the
    last, and a final save. If that lands past the deadline it saves now, skips the eval and stops:
    the overrun is at most a mis-projected step plus one checkpoint save.
    """

    def __init__(self, reporter: Reporter, *, eval_seconds: float, save_seconds: float) -> None:
        self.reporter = reporter
        self.eval_seconds = eval_seconds
        self.save_seconds = save_seconds
        self._mark = time.monotonic()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._mark = time.monotonic()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        step_seconds, self._mark = now - self._mark, now
        log = self.reporter.log
        log.longest_step_seconds = max(log.longest_step_seconds, step_seconds)
        deadline = self.reporter.deadline.at
        if deadline is None:
            return
        last = state.global_step >= state.max_steps
        epoch_end = state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-9
        evaluates = (
            control.should_evaluate
            or (epoch_end and args.eval_strategy == "epoch")
            or (last and args.eval_strategy != "no")
        )
        saves = control.should_save or (epoch_end and args.save_strategy == "epoch")
        projected = now + self.save_seconds * (2 if saves and not last else 1)
        projected += (self.eval_seconds if evaluates else 0.0) + (0.0 if last else step_seconds)
        if projected > deadline:
            self.reporter.log.stop("budget", f"stopped at step {state.global_step} to stay inside the budget")
            control.should_evaluate = False
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.reporter.trained_at = time.monotonic()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        self.eval_seconds = max(self.eval_seconds, now - self._mark)
        self._mark = now

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        self.save_seconds = max(self.save_seconds, now - self._mark)
        log = self.reporter.log
        log.longest_save_seconds = max(log.longest_save_seconds, now - self._mark)
        self._mark = now

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.reporter.log.stopped == "budget":
            # Saved at the step it stopped; no second save or eval at the epoch's end.
            control.should_evaluate = False
            control.should_save = False
