"""The library's front door: fit, profile, plan, run and results, by name or by object.

Each call takes what a user has at hand (a card name or a :class:`~planner.schema.Card`, a spec
path or a :class:`~planner.schema.SweepSpec`) and goes to the package that does the work. Heavy
imports (torch, transformers) happen inside the calls, so ``import planner`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from planner.schema import Card, FitReport, MeasuredProfile, Plan, SweepSpec, TrainingConfig

if TYPE_CHECKING:
    from planner.executor import SweepResults, SweepRun


def _card(card: str | Card) -> Card:
    from planner.cards import load_card

    return card if isinstance(card, Card) else load_card(card)


def _spec(spec: str | Path | SweepSpec) -> SweepSpec:
    from planner.sweep import load_spec

    return spec if isinstance(spec, SweepSpec) else load_spec(Path(spec))


def fit(config: TrainingConfig, card: str | Card, micro_batches: Sequence[int] | None = None) -> FitReport:
    """Does ``config`` fit on ``card``, and with which largest micro-batch? No GPU needed.

    Calibrated by the card's measured profiles and capped by recorded OOMs where there are any
    (``profiles/measured``); see :func:`planner.estimator.fit` for the uncalibrated answer.
    """
    from planner.profiler import fit_with_profiles

    return fit_with_profiles(config, _card(card), list(micro_batches) if micro_batches else None)


def profile(
    config: TrainingConfig, card: str | Card = "local", micro_batches: Sequence[int] | None = None
) -> MeasuredProfile:
    """Measure real training steps of ``config`` on this machine's device (CUDA, else the CPU) and
    save the profile where the estimator and the planner find it."""
    from planner.profiler import ProfileStore, profile_config

    measured = profile_config(config, _card(card), list(micro_batches) if micro_batches else None)
    ProfileStore().save(measured)
    return measured


def plan(
    spec: str | Path | SweepSpec,
    card: str | Card,
    *,
    budget_seconds: float | None = None,
    workers: int | None = None,
) -> Plan:
    """Plan a sweep on ``card``: each trial's micro-batch x accumulation, what cannot fit and
    why, predicted times, and what fits the budget."""
    from planner.sweep import plan_for_card

    return plan_for_card(_spec(spec), _card(card), workers=workers, budget_seconds=budget_seconds)


def run(
    spec: str | Path | SweepSpec,
    card: str | Card | None = None,
    *,
    planned: Plan | None = None,
    budget_seconds: float | None = None,
    storage_url: str | None = None,
) -> SweepRun:
    """Run the sweep's trials through ``transformers.Trainer`` on this worker, inside the budget,
    resumable after any crash. The plan is made on ``card`` (default: this machine's GPU, else
    its CPU) unless ``planned`` is given."""
    from planner.cards import this_machine_card
    from planner.executor import run_sweep

    sweep, target = _spec(spec), _card(card if card is not None else this_machine_card())
    if planned is None:
        planned = plan(sweep, target, budget_seconds=budget_seconds)
    return run_sweep(sweep, planned, card=target, budget_seconds=budget_seconds, storage_url=storage_url)


def results(spec: str | Path | SweepSpec, *, storage_url: str | None = None) -> SweepResults:
    """Every trial of the sweep as stored, and the best."""
    from planner.executor import load_results

    sweep = _spec(spec)
    return load_results(storage_url or sweep.storage_url, sweep.name)
