"""Measured step times for planning: the profile store, measuring what is missing on this machine.

On the host card the planner measures what it lacks before answering, held to a budget: at most
``AUTO_PROFILE_SHARE`` of the sweep it predicts or ``AUTO_PROFILE_MAX_SECONDS``, whichever is
smaller, for the host's speeds and every missing step profile together. What it measures is saved
and reused by the next plan. Both record the machine's load; a plan under another load says so.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from planner.data import LengthProfile, count_data
from planner.errors import ProfileError
from planner.estimator import Estimator
from planner.schema import (
    GIB,
    Card,
    MeasuredProfile,
    Plan,
    PlannedTrial,
    ProfileKey,
    SweepSpec,
    TrainingConfig,
)
from planner.sweep._plan import plan_sweep
from planner.sweep._space import expand_trials
from planner.timing import ProfileLookup

logger = logging.getLogger(__name__)

# The planner measures a missing host profile itself only for models this small (the tiny
# examples take a few seconds); anything bigger is the user's call.
AUTO_PROFILE_MAX_BYTES = GIB
# The measuring before a plan may cost this share of the sweep it plans, and never more than
# this many seconds: a plan should be cheap next to what it plans.
AUTO_PROFILE_SHARE = 0.05
AUTO_PROFILE_MAX_SECONDS = 20.0
# Most timed steps per size (when the budget allows them) and untimed ones before.
AUTO_PROFILE_STEPS = 20
AUTO_PROFILE_WARMUP = 1


class MeasuringProfiles:
    """Profiles from a store; on the host card a missing profile is measured on the spot and saved.

    Only the machine the planner runs on can be measured, so this applies to the ``cpu`` card;
    for a GPU card the user runs ``planner profile`` on that GPU.
    """

    def __init__(
        self, store: ProfileLookup, card: Card, measure: Callable[[TrainingConfig], MeasuredProfile] | None
    ):
        self.store = store
        self.card = card
        self.measure = measure

    def find(self, config: TrainingConfig, card: str) -> MeasuredProfile | None:
        found = self.store.find(config, card)
        if found is None and self.measure is not None and card == self.card.name:
            found = self.measure(config)
        return found

    def for_card(self, card: str) -> list[MeasuredProfile]:
        return self.store.for_card(card)


class ProfileBudget:
    """Seconds the measuring before one plan may still take, shared by what it measures.

    The sweep's predicted length is known only once a step has been timed: a profile asks with its
    measured seconds per row, and gets 5% of (that x the rows its config trains on in the sweep),
    at most what is left of the 20 s.
    """

    def __init__(self, rows_by_key: dict[ProfileKey, float]) -> None:
        self.rows_by_key = rows_by_key
        self.spent = 0.0

    def allowance(self, key: ProfileKey, seconds_per_row: float) -> float:
        predicted = seconds_per_row * self.rows_by_key.get(key, 0.0)
        return max(0.0, min(AUTO_PROFILE_MAX_SECONDS - self.spent, AUTO_PROFILE_SHARE * predicted))


def _rows_by_key(
    spec: SweepSpec, card: Card, lengths: LengthProfile, eval_examples: int
) -> dict[ProfileKey, float]:
    """Rows each profiled config shape runs in the whole sweep (training epochs plus eval passes)."""
    rows: dict[ProfileKey, float] = {}
    for params in expand_trials(spec):
        config, hyper = spec.trial(params)
        key = ProfileKey.of(config, card.name)
        trained: float
        if hyper.max_steps is not None:
            trained = hyper.max_steps * hyper.effective_batch
            passes = 1
        else:
            trained = hyper.epochs * lengths.sequences
            passes = math.ceil(hyper.epochs)
        # An eval row is a forward only: about a third of a training row's work.
        rows[key] = rows.get(key, 0.0) + trained + passes * eval_examples / 3
    return rows


def plan_for_card(
    spec: SweepSpec,
    card: Card,
    *,
    workers: int | None = None,
    budget_seconds: float | None = None,
    helper: bool = True,
) -> Plan:
    """:func:`plan_sweep` with the measured profiles on disk: step times, and CUDA overheads calibrated
    from the card's profiles; on the host, this machine's host-side speeds, and missing profiles are
    measured within the budget (see the module's docstring). ``helper``: as :func:`plan_sweep`'s."""
    from planner.profiler import (
        OomLog,
        ProfileStore,
        cached_host_profile,
        calibrated_overhead,
        host_profile,
        import_run_modules,
        machine_load,
        process_started,
        profile_config,
    )

    store = ProfileStore()
    data = count_data(spec)
    stats, lengths = data
    on_host = card.kind == "cpu"
    budget = ProfileBudget(_rows_by_key(spec, card, lengths, stats.eval_examples) if on_host else {})
    # The host's speeds, cached per machine. On the host card they are measured when missing (and
    # count against the budget). A GPU card's host is not this machine, in general: its plan uses
    # this machine's figures only when they were measured already, else the documented storage
    # speeds, and measures nothing (a plan for a GPU stays quick and writes nothing).
    started = datetime.now(timezone.utc).replace(microsecond=0)
    host = (
        host_profile(store.directory, with_trainer=True)
        if on_host
        else cached_host_profile(store.directory, with_trainer=False)
    )
    if host is not None and datetime.fromisoformat(host.created) >= started:
        budget.spent += host.seconds

    def measure(config: TrainingConfig) -> MeasuredProfile:
        peak = Estimator(config, card).estimate(config.micro_batch, trace=False).peak_bytes
        if peak > AUTO_PROFILE_MAX_BYTES:
            raise ProfileError(
                "card",
                f"no measured profile of {config.model} on this host, and measuring one would take "
                f"~{peak / GIB:.1f} GiB of RAM and minutes of CPU",
                f"run `planner profile {config.model} --device cpu` deliberately, or plan for a GPU card",
            )
        # Two sizes give the fixed per-step cost and the per-row slope, so rows shorter than
        # seq_len (dynamic padding) interpolate instead of scaling proportionally: the trials'
        # micro-batch first, then 1, or 2 when the trials run 1 (one size alone would make a
        # short row nearly free).
        logger.info("no host profile of %s at seq %d: measuring one", config.model, config.seq_len)
        key = ProfileKey.of(config, card.name)
        profile = profile_config(
            config,
            card,
            [config.micro_batch, 1 if config.micro_batch > 1 else 2],
            steps=AUTO_PROFILE_STEPS,
            warmup=AUTO_PROFILE_WARMUP,
            budget=functools.partial(budget.allowance, key),
        )
        budget.spent += profile.seconds or 0.0
        store.save(profile)
        return profile

    profiles = MeasuringProfiles(store, card, measure if on_host else None)
    plan = plan_sweep(
        spec,
        card,
        workers=workers,
        budget_seconds=budget_seconds,
        profiles=profiles,
        overhead=calibrated_overhead(card, store),
        oom_limit=functools.partial(OomLog(store.directory).limit, card=card.name),
        host=host,
        now=machine_load(),
        data=data,
        helper=helper,
    )
    started_at = process_started()
    startup = None
    if started_at is not None:
        # `planner run` does what this process did (interpreter, imports, counting, planning),
        # less the measuring that is now cached, then imports what its trials need. Timing those
        # imports is a measurement of this machine, which a GPU card's plan does not make (its
        # run's host is not this machine, in general): there they are left out (~1-2 s, once).
        if on_host:
            import_run_modules()
        startup = max(0.0, time.time() - started_at - budget.spent)
    storage = None
    if host is not None and host.study_open_seconds is not None and host.study_trial_seconds is not None:
        runnable = sum(trial.feasible for trial in plan.trials)
        storage = host.study_open_seconds + runnable * host.study_trial_seconds
    return plan.model_copy(
        update={
            "measuring_seconds": round(budget.spent, 2),
            "startup_seconds": startup,
            "storage_seconds": storage,
        }
    )


def plan_sampled(spec: SweepSpec, card: Card, params: dict[str, Any]) -> PlannedTrial:
    """One configuration a sampler chose (TPE's ``ask``), planned as the sweep plans its trials:
    micro-batch x accumulation, feasibility with reason and fix, predicted time."""
    single = spec.model_copy(
        update={"search": {name: [value] for name, value in params.items()}, "strategy": "grid"}
    )
    # Asked between a running sweep's trials: that process has threads of its own, so no fork.
    return plan_for_card(single, card, helper=False).trials[0]
