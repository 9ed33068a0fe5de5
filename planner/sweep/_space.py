"""The search space: Optuna distributions for the spec, and the trials a plan lays out."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from planner.schema import Range, SweepSpec

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

# Searchable names whose values are integers (a range over them samples integers).
INTEGER_NAMES = frozenset({"effective_batch", "max_steps", "seq_len", "lora_r", "lora_alpha"})


def search_distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """One Optuna distribution per searched name: lists are categorical, ranges numeric."""
    # Optuna is imported by what samples (a random plan, a run), not by a grid's plan (~0.2 s).
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions: dict[str, BaseDistribution] = {}
    for name, values in spec.search.items():
        if isinstance(values, Range):
            if name in INTEGER_NAMES:
                step = int(values.step or 1)
                distributions[name] = IntDistribution(
                    int(values.low), int(values.high), log=values.log, step=step
                )
            else:
                distributions[name] = FloatDistribution(
                    values.low, values.high, log=values.log, step=values.step
                )
        else:
            distributions[name] = CategoricalDistribution(values)
    return distributions


def expand_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """The searched values of every trial the plan lays out.

    Grid: the full product, in the order the spec lists values. Random and TPE: ``n_trials``
    draws of Optuna's ``RandomSampler(seed)`` (TPE's own choices at run time depend on results,
    so the plan shows a representative random set of the same size).
    """
    if spec.strategy == "grid":
        names = list(spec.search)
        lists = [spec.search[name] for name in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]
    import optuna

    # A throw-away in-memory study: Optuna announces its creation and each told trial at INFO,
    # which says nothing here.
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(max(level, logging.WARNING))
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.seed))
        distributions = search_distributions(spec)
        assert spec.n_trials is not None  # the spec validator requires it for random/tpe
        trials = []
        for _ in range(spec.n_trials):
            trial = study.ask(distributions)
            trials.append(dict(trial.params))
            study.tell(trial, 0.0)
    finally:
        optuna_logger.setLevel(level)
    return trials
