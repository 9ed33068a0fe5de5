"""What a running sweep shows: a live rich table on a terminal, plain lines otherwise, or nothing.

The worker loop calls a :class:`SweepObserver`; it never prints itself, so ``--json`` and tests
stay quiet and a terminal gets per-trial progress and the sweep's ETA against the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from planner.executor._monitor import TrialLog
from planner.formatting import format_duration, format_params


@dataclass
class _Row:
    number: int
    params: dict[str, Any]
    shape: str
    predicted: float
    started: float = field(default_factory=time.monotonic)
    status: str = "running"
    seconds: float | None = None
    value: float | None = None
    log: TrialLog | None = None


class SweepObserver:
    """Receives the sweep's events; the base class ignores them (library use, ``--json``)."""

    def sweep_started(
        self, name: str, trials: int, budget_seconds: float | None, predicted_seconds: float
    ) -> None:
        """``trials`` waiting to run; ``predicted_seconds`` their corrected predicted total."""

    def trial_started(
        self, number: int, params: dict[str, Any], shape: str, predicted: float, after: float
    ) -> None:
        """``predicted``: this trial's corrected prediction; ``after``: the waiting ones' after it."""

    def trial_progress(self, log: TrialLog) -> None:
        """Called at every logged step and eval of the running trial."""

    def trial_finished(
        self, number: int, status: str, value: float | None, seconds: float, reason: str | None
    ) -> None:
        """A trial ended (complete, pruned, diverged, budget, failed, infeasible)."""

    def note(self, message: str) -> None:
        """Something the user should know (trials left over budget, recovered trials)."""

    def sweep_finished(self, elapsed: float) -> None:
        """The worker is done."""


class PlainObserver(SweepObserver):
    """One line per event, for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.budget: float | None = None

    def _print(self, message: str) -> None:
        print(
            f"[{format_duration(time.monotonic() - self.start):>7}] {message}", file=self.stream, flush=True
        )

    def sweep_started(
        self, name: str, trials: int, budget_seconds: float | None, predicted_seconds: float
    ) -> None:
        self.budget = budget_seconds
        budget = f", budget {format_duration(budget_seconds)}" if budget_seconds else ""
        self._print(
            f"sweep {name}: {trials} trials to run, predicted {format_duration(predicted_seconds)}{budget}"
        )

    def trial_started(
        self, number: int, params: dict[str, Any], shape: str, predicted: float, after: float
    ) -> None:
        eta = time.monotonic() - self.start + predicted + after
        budget = f" / budget {format_duration(self.budget)}" if self.budget else ""
        self._print(
            f"trial {number} started: {format_params(params)} ({shape}), "
            f"predicted {format_duration(predicted)}; "
            f"sweep ETA {format_duration(eta)}{budget}"
        )

    def trial_finished(
        self, number: int, status: str, value: float | None, seconds: float, reason: str | None
    ) -> None:
        shown = f" value {value:.4g}" if value is not None else ""
        why = f" ({reason})" if reason else ""
        self._print(f"trial {number} {status} in {format_duration(seconds)}{shown}{why}")

    def note(self, message: str) -> None:
        self._print(message)

    def sweep_finished(self, elapsed: float) -> None:
        self._print(f"done in {format_duration(elapsed)}")


class LiveObserver(SweepObserver):
    """A rich live table: each trial's progress, loss and time against its prediction, and the ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.rows: list[_Row] = []
        self.notes: list[str] = []
        self.start = time.monotonic()
        self.budget: float | None = None
        self.after = 0.0
        self.name = ""
        self.live = Live(console=self.console, refresh_per_second=4, get_renderable=self._render)

    def sweep_started(
        self, name: str, trials: int, budget_seconds: float | None, predicted_seconds: float
    ) -> None:
        self.name, self.budget, self.after = name, budget_seconds, predicted_seconds
        self.live.start()

    def trial_started(
        self, number: int, params: dict[str, Any], shape: str, predicted: float, after: float
    ) -> None:
        self.rows.append(_Row(number, params, shape, predicted))
        self.after = after

    def trial_progress(self, log: TrialLog) -> None:
        if self.rows:
            self.rows[-1].log = log

    def trial_finished(
        self, number: int, status: str, value: float | None, seconds: float, reason: str | None
    ) -> None:
        row = next((r for r in reversed(self.rows) if r.number == number), None)
        if row is None:
            row = _Row(number, {}, "-", 0.0)
            self.rows.append(row)
        row.status, row.value, row.seconds = status, value, seconds
        if reason and status != "complete":
            self.notes.append(f"trial {number}: {reason}")

    def note(self, message: str) -> None:
        self.notes.append(message)

    def sweep_finished(self, elapsed: float) -> None:
        self.live.stop()

    def _render(self) -> Group:
        table = Table(
            "trial", "params", "micro x accum", "progress", "loss", "time / predicted", "status", "value"
        )
        now = time.monotonic()
        running_left = 0.0
        for row in self.rows:
            log = row.log
            progress = f"{log.step}/{log.max_steps}" if log and log.max_steps else "-"
            loss = f"{log.losses[-1][1]:.4g}" if log and log.losses else "-"
            elapsed = row.seconds if row.seconds is not None else now - row.started
            if row.status == "running":
                running_left = max(0.0, row.predicted - elapsed)
            table.add_row(
                str(row.number),
                format_params(row.params),
                row.shape,
                progress,
                loss,
                f"{format_duration(elapsed)} / {format_duration(row.predicted)}",
                row.status,
                f"{row.value:.4g}" if row.value is not None else "-",
            )
        elapsed = now - self.start
        eta = elapsed + running_left + self.after
        budget = f" | budget {format_duration(self.budget)}" if self.budget else ""
        over = self.budget is not None and eta > self.budget
        footer = Text(
            f"{self.name}: elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}{budget}",
            style="bold red" if over else "bold",
        )
        return Group(table, footer, *(Text(n, style="dim") for n in self.notes[-5:]))
