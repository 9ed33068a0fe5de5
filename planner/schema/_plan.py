"""The plan: each trial's shape (micro-batch x accumulation), feasibility and predicted time."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt

from planner.schema._profile import MachineLoad
from planner.schema._sweep import Hyperparameters
from planner.schema._training import TrainingConfig

TimeSource = Literal["measured", "calibrated", "default"]


class DataStats(BaseModel):
    """What the planner counted in the data, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_examples: NonNegativeInt
    eval_examples: NonNegativeInt
    mean_tokens: NonNegativeFloat
    max_tokens: NonNegativeInt
    counted_with: str
    """``tokenizer <name>``, ``byte proxy (~4 bytes/token)`` or ``given counts``."""
    epoch_tokens: NonNegativeInt | None = None
    """Tokens the trainer is fed per epoch (after truncation or packing; padding not included);
    None when not tokenized here (given counts, byte proxy)."""
    epoch_trained_tokens: NonNegativeInt | None = None
    """Of those, tokens with a loss target (label not -100: all but the masked prompt tokens of
    ``completion_only``); None when not tokenized here."""


class TimeEstimate(BaseModel):
    """Predicted wall-clock of one trial, its parts and an interval reflecting the sources.

    ``source`` is the weakest origin of the step time: ``measured`` (a profile of this config on
    this card), ``calibrated`` (roofline with an efficiency fitted from measured profiles) or
    ``default`` (roofline with the documented default efficiency).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: NonNegativeFloat
    low_seconds: NonNegativeFloat
    high_seconds: NonNegativeFloat
    source: TimeSource
    micro_step_seconds: NonNegativeFloat
    """One micro-batch forward + backward."""
    optimizer_step_seconds: NonNegativeFloat
    parts: dict[str, float]
    """Seconds by phase: startup, train, eval, checkpoints."""
    note: str
    """Where the step time came from, in words (e.g. the efficiency assumed)."""
    paging_seconds: NonNegativeFloat = 0.0
    """Of ``optimizer_step_seconds``: a paged optimizer's state crossing the host link because it
    does not fit on the card (0 when it fits or nothing is paged)."""


class PlannedTrial(BaseModel):
    """One trial of the sweep: its values, shape, feasibility and predicted time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: NonNegativeInt
    params: dict[str, Any]
    """The searched values of this trial (what Optuna stores as its params)."""
    config: TrainingConfig
    """The training config with the chosen micro-batch and gradient accumulation."""
    hyper: Hyperparameters
    feasible: bool
    reason: str | None = None
    """Why an infeasible trial cannot run."""
    fix: str | None = None
    """The cheapest change that would make it run."""
    peak_bytes: NonNegativeInt | None = None
    """Predicted device bytes at the peak (on a GPU: reserved plus context; on the host: live bytes)."""
    peak_allocated_bytes: NonNegativeInt | None = None
    """Predicted ``torch.cuda.max_memory_allocated`` at the peak (live tensor bytes on the host)."""
    optimizer_steps: NonNegativeInt = 0
    eval_passes: NonNegativeInt = 0
    checkpoint_saves: NonNegativeInt = 0
    time: TimeEstimate | None = None
    status: Literal["planned", "over budget", "infeasible"] = "planned"
    start_seconds: NonNegativeFloat | None = None
    """Offset from the sweep's start in the schedule (for the timeline)."""
    worker: NonNegativeInt | None = None


class HalvingRung(BaseModel):
    """One rung of a successive-halving schedule: how many trials run at what data fraction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: NonNegativeInt
    fraction: float
    seconds: NonNegativeFloat


class Plan(BaseModel):
    """Everything ``planner plan`` answers about a sweep on a card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec_name: str
    card: str
    workers: int
    data: DataStats
    trials: list[PlannedTrial]
    total_seconds: NonNegativeFloat
    """Sum of feasible trials' predicted times: the sweep on one worker."""
    total_low_seconds: NonNegativeFloat
    total_high_seconds: NonNegativeFloat
    makespan_seconds: NonNegativeFloat
    """Wall-clock with ``workers`` workers (longest-first onto the earliest free worker)."""
    budget_seconds: float | None
    fits_budget: bool | None
    order_rule: str
    """How trials are ordered when the budget cannot hold them all."""
    successive_halving: list[HalvingRung] | None = None
    """When over budget: a halving schedule that fits instead (None when it all fits)."""
    includes: list[str]
    machine_load: MachineLoad | None = None
    """This machine's load while planning (what host measurements are compared with)."""
    startup_seconds: NonNegativeFloat | None = None
    """Before the first trial of ``planner run``, not in the totals (they are the trials' sum): the
    interpreter, imports and planning as this planning process took them (its measuring aside),
    and, for a plan on this machine's own card (the host), importing what the run adds after
    planning (Trainer, the study's storage), timed here after the same planning; a GPU card's plan
    measures nothing of this machine and leaves those imports out. None when it could not be
    measured."""
    storage_seconds: NonNegativeFloat | None = None
    """The study's storage work outside the trials, not in the totals: opening it before the first
    trial, and each runnable trial's commits (enqueued, claimed, recorded) around its own clock,
    at this machine's measured speeds. None when they were not measured."""
    measuring_seconds: NonNegativeFloat | None = None
    """What measuring this host took before answering (profiles and host speeds; 0 when reused)."""

    def trial(self, number: int) -> PlannedTrial:
        return next(t for t in self.trials if t.number == number)
