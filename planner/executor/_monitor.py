"""What watches a running trial, whatever trains it: its log, the budget's deadline, pruning, heartbeat.

:class:`Reporter` is the one place metrics enter: the Trainer callbacks call it, and so does a
user's training function (``run_function``). It feeds the Optuna pruner, checks the budget, keeps
the per-trial metrics that ``planner results`` shows, and refreshes the trial's heartbeat.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

    from planner.executor._display import SweepObserver

StopReason = Literal["diverged", "budget", "pruned"]
HEARTBEAT_SECONDS = 20.0
"""How often a running trial refreshes its ``heartbeat`` user attr (what other hosts use to tell
a dead worker's trial from a live one)."""


class TrialStopped(Exception):
    """Raised by :meth:`Reporter.report` when the trial must stop: pruned, diverged or out of budget."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Deadline:
    """The sweep's end on this worker's monotonic clock; None means no budget."""

    at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float:
        return math.inf if self.at is None else self.at - time.monotonic()


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class TrialLog:
    """Everything measured during one trial, persisted as its user attrs when it ends."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    stopped: StopReason | None = None
    reason: str | None = None
    initial_loss: float | None = None
    step: int = 0
    max_steps: int = 0
    peak_rss_bytes: int = 0

    def stop(self, why: StopReason, reason: str) -> None:
        if self.stopped is None:
            self.stopped, self.reason = why, reason


class Reporter:
    """Takes a trial's metrics; tells whether it must stop (pruner, divergence, budget).

    ``report`` is the user-function API: it raises :class:`TrialStopped`. The Trainer callbacks
    use :meth:`observe`, which only records the reason and lets the callback stop Trainer cleanly.
    """

    def __init__(
        self,
        trial: optuna.Trial | None,
        objective: str,
        deadline: Deadline,
        observer: SweepObserver,
        *,
        divergence_factor: float,
        log: TrialLog | None = None,
    ) -> None:
        self.trial = trial
        self.objective = objective
        self.deadline = deadline
        self.observer = observer
        self.divergence_factor = divergence_factor
        self.log = log if log is not None else TrialLog()
        self._last_heartbeat = time.monotonic()
        self._started = time.monotonic()

    @property
    def should_stop(self) -> bool:
        return self.log.stopped is not None

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step``; raise :class:`TrialStopped` if the trial must end.

        A ``loss`` entry is a training loss (checked for divergence); the objective metric is fed
        to the pruner; the budget is checked on every call.
        """
        self.observe(step, metrics)
        if self.deadline.remaining() <= 0:
            self.log.stop("budget", "the sweep's budget ran out")
        if self.log.stopped is not None:
            raise TrialStopped(self.log.stopped)

    def observe(self, step: int, metrics: dict[str, float]) -> StopReason | None:
        """Record metrics; returns why the trial must stop, or None."""
        self.log.step = max(self.log.step, step)
        if "loss" in metrics:
            self._check_loss(step, float(metrics["loss"]))
        evaluated = {k: float(v) for k, v in metrics.items() if k != "loss" and isinstance(v, int | float)}
        if self.objective in evaluated:
            self.log.evals.append((step, evaluated))
            self._prune(step, evaluated[self.objective])
        self.log.peak_rss_bytes = max(self.log.peak_rss_bytes, rss_bytes())
        self._heartbeat()
        self.observer.trial_progress(self.log)
        return self.log.stopped

    def _check_loss(self, step: int, loss: float) -> None:
        self.log.losses.append((step, loss))
        if not math.isfinite(loss):
            self.log.stop("diverged", f"loss became {loss} at step {step}")
        elif self.log.initial_loss is None:
            self.log.initial_loss = loss
        elif loss > self.divergence_factor * self.log.initial_loss:
            self.log.stop(
                "diverged",
                f"loss {loss:.3g} at step {step} exceeds {self.divergence_factor:g} x the initial "
                f"{self.log.initial_loss:.3g}",
            )

    def _prune(self, step: int, value: float) -> None:
        if self.trial is None or not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.log.stop("pruned", f"the pruner stopped it at step {step} ({self.objective} {value:.4g})")

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.trial is not None and now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self.trial.set_user_attr("heartbeat", time.time())
            self._last_heartbeat = now

    def attrs(self) -> dict[str, Any]:
        """The log as Optuna user attrs (JSON values)."""
        return {
            "losses": [[step, loss] for step, loss in self.log.losses],
            "evals": [[step, metrics] for step, metrics in self.log.evals],
            "steps_done": self.log.step,
        }
