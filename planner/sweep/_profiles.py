"""Measured step times for planning: the profile store, measuring what is missing on this machine."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from planner.errors import ProfileError
from planner.estimator import Estimator
from planner.schema import GIB, Card, MeasuredProfile, Plan, PlannedTrial, SweepSpec, TrainingConfig
from planner.sweep._plan import plan_sweep
from planner.timing import ProfileLookup

logger = logging.getLogger(__name__)

# The planner measures a missing host profile itself only for models this small (the tiny
# examples take a few seconds); anything bigger is the user's call.
AUTO_PROFILE_MAX_BYTES = GIB


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


def plan_for_card(
    spec: SweepSpec, card: Card, *, workers: int | None = None, budget_seconds: float | None = None
) -> Plan:
    """:func:`plan_sweep` with the measured profiles on disk: step times, and CUDA overheads calibrated
    from the card's profiles; on the host, missing profiles are measured."""
    from planner.profiler import OomLog, ProfileStore, calibrated_overhead, profile_config

    store = ProfileStore()

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
        # seq_len (dynamic padding) interpolate instead of scaling proportionally.
        # More steps than `planner profile`'s default: host steps of a tiny model are ~10 ms and
        # jitter by tens of percent on a shared machine, and 20 of them still cost under a second.
        logger.info("no host profile of %s at seq %d: measuring one", config.model, config.seq_len)
        profile = profile_config(config, card, sorted({1, config.micro_batch}), steps=20, warmup=5)
        store.save(profile)
        return profile

    profiles = MeasuringProfiles(store, card, measure if card.kind == "cpu" else None)
    return plan_sweep(
        spec,
        card,
        workers=workers,
        budget_seconds=budget_seconds,
        profiles=profiles,
        overhead=calibrated_overhead(card, store),
        oom_limit=functools.partial(OomLog(store.directory).limit, card=card.name),
    )


def plan_sampled(spec: SweepSpec, card: Card, params: dict[str, Any]) -> PlannedTrial:
    """One configuration a sampler chose (TPE's ``ask``), planned as the sweep plans its trials:
    micro-batch x accumulation, feasibility with reason and fix, predicted time."""
    single = spec.model_copy(
        update={"search": {name: [value] for name, value in params.items()}, "strategy": "grid"}
    )
    return plan_for_card(single, card).trials[0]
