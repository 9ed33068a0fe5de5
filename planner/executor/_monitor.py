"""What watches a running trial, whatever trains it: its log, the budget's deadline, pruning, heartbeat.

:class:`Reporter` is the one place metrics enter: the Trainer callbacks call it, and so does a
user's training function (``run_function``). It feeds the Optuna pruner, checks the budget, and
keeps the per-trial metrics that ``planner results`` shows. :class:`Heartbeat` tells other hosts
the trial's worker is alive, whatever the trial is doing.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

    from planner.executor._display import SweepObserver

StopReason = Literal["diverged", "budget", "pruned"]
HEARTBEAT_SECONDS = 20.0
"""How often a running trial refreshes its ``heartbeat`` user attr (what other hosts use to tell
a dead worker's trial from a live one)."""

logger = logging.getLogger(__name__)


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
    def after(cls, seconds: float | None, *, since: float | None = None) -> Deadline:
        """``seconds`` from ``since`` (a ``time.time()``, e.g. :func:`process_started`), else from now."""
        if seconds is None:
            return cls(None)
        spent = 0.0 if since is None else time.time() - since
        return cls(time.monotonic() + seconds - spent)

    def remaining(self) -> float:
        return math.inf if self.at is None else self.at - time.monotonic()


class Heartbeat:
    """Refreshes a running trial's ``heartbeat`` user attr every ``HEARTBEAT_SECONDS`` from a thread.

    A worker on another host can only tell a dead worker's trial from a live one by this attr
    (see ``_study.recover``). Refreshed from the training loop, it would go stale during any one
    step, eval or checkpoint save longer than the grace period, and a live trial would be failed
    and run twice; a daemon thread refreshes it whatever the trial does, and dies with the process.

    Optuna's own RDB heartbeat (``RDBStorage(heartbeat_interval=...)``) runs the same kind of
    thread, but only inside ``Study.optimize``, which this executor does not use (workers claim the
    trials of their choice), and its stale-trial handling has none of this executor's recovery
    (same-host PID check, resumable statuses, continuation locks): the attr that recovery already
    reads is kept. Hosts compare it to their own clock, so their clocks must agree to well within
    the grace period (NTP does).
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        warned = False
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except UpdateFinishedTrialError:
                return  # finished (or failed by recovery) meanwhile: nothing left to keep alive
            except Exception:  # the storage is unreachable: the trial itself will hit it and stop
                if not warned:
                    logger.warning("trial %d: cannot record its heartbeat", self.trial.number, exc_info=True)
                    warned = True


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
    longest_step_seconds: float = 0.0
    """The longest optimizer step seen (Trainer trials): what a budget's cut may overrun by."""
    longest_save_seconds: float = 0.0
    """The longest checkpoint save seen (Trainer trials), the other part of that overrun."""

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
        self.trained_at: float | None = None
        """``time.monotonic()`` when Trainer ended training (its final save done), if it did:
        what follows (the trial's clean-up, storing it) is the wrap-up the budget reserves."""

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

    def attrs(self) -> dict[str, Any]:
        """The log as Optuna user attrs (JSON values)."""
        return {
            "losses": [[step, loss] for step, loss in self.log.losses],
            "evals": [[step, metrics] for step, metrics in self.log.evals],
            "steps_done": self.log.step,
            "longest_step_seconds": self.log.longest_step_seconds,
            "longest_save_seconds": self.log.longest_save_seconds,
        }
