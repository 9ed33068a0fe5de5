"""The library's front door: fit, profile, plan, run and results, by name or by object.

Each call takes what a user has at hand (a card name or a :class:`~planner.schema.Card`, a spec
path or a :class:`~planner.schema.SweepSpec`) and goes to the package that does the work. Heavy
imports (torch, transformers) happen inside the calls, so ``import planner`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import ConfigError, PlannerError
from planner.schema import (
    Card,
    CardComparison,
    CardOption,
    FitReport,
    MeasuredProfile,
    Plan,
    SweepSpec,
    TrainingConfig,
)

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


def compare_cards(
    config: TrainingConfig,
    cards: Sequence[str | Card],
    *,
    tokens: int | None = None,
    prices: Mapping[str, float] | None = None,
) -> CardComparison:
    """Which of ``cards`` fit ``config``, how fast each trains it, and which is cheapest that fits.

    Each card gets :func:`fit` (its max micro-batch) and the step time at that micro-batch
    (:class:`planner.timing.StepTimeModel`: a measured profile, else the calibrated or default
    roofline). Tokens/s counts full rows (``seq_len`` tokens each) through one optimizer step
    at the config's accumulation. ``prices`` (card name -> USD per hour, see
    :func:`read_prices`) rank the fitting cards by the price of ``tokens`` (or of a million
    tokens); without a price for each, they rank by tokens/s.
    """
    from planner.profiler import ProfileStore
    from planner.timing import StepTimeModel, StepTraces

    store = ProfileStore()
    traces = StepTraces()  # cards that run the same kernels share the shallow traces
    prices = prices or {}
    options = []
    for card in (_card(c) for c in cards):
        report = fit(config, card)
        mb = report.max_micro_batch
        option = CardOption(
            card=card.name,
            max_micro_batch=mb,
            peak_bytes=report.at_max.peak_bytes,
            available_bytes=report.at_max.available_bytes,
            usd_per_hour=prices.get(card.name),
        )
        if mb:
            try:
                step = StepTimeModel(card, store, traces).times(config, mb, config.seq_len, report.at_max)
            except PlannerError as exc:  # no datasheet throughput and no profile: memory only
                option = option.model_copy(update={"note": exc.problem})
            else:
                accumulation = config.gradient_accumulation
                seconds = accumulation * step.micro_step + step.optimizer
                rate = mb * accumulation * config.seq_len / seconds
                low, high = step.relative_interval  # multipliers of the time
                hours = (tokens or 1_000_000) / rate / 3600
                price = option.usd_per_hour
                option = option.model_copy(
                    update={
                        "tokens_per_second": rate,
                        "tokens_per_second_low": rate / high,
                        "tokens_per_second_high": rate / low,
                        "hours": hours if tokens else None,
                        "usd": hours * price if price is not None else None,
                        "time_source": step.source,
                        "note": step.note,
                    }
                )
        options.append(option)
    by_price = any(o.usd is not None for o in options)

    def rank(option: CardOption) -> tuple[bool, bool, float]:
        """Fitting first; then priced by price (unpriced after them, fastest first), else fastest."""
        if option.tokens_per_second is None:
            return (not option.fits, True, -option.max_micro_batch)
        if by_price:
            return (
                False,
                option.usd is None,
                option.usd if option.usd is not None else -option.tokens_per_second,
            )
        return (False, False, -option.tokens_per_second)

    ranked = sorted(options, key=rank)
    best = next((o.card for o in ranked if o.fits), None)
    return CardComparison(
        config=config,
        tokens=tokens,
        options=ranked,
        ranked_by="price" if by_price else "tokens/s",
        best=best,
        includes=[
            "max micro-batch: the traced peak against each card's usable memory",
            "tokens/s: full rows at the max micro-batch, forward + backward x accumulation + optimizer "
            "step; no data loading, eval or checkpoints",
        ],
        expected_error="memory as `planner fit`; time within the low-high tokens/s shown (the step model's "
        "interval: measured, calibrated or default roofline)",
    )


def read_prices(path: str | Path) -> dict[str, float]:
    """Hourly prices from a YAML file of ``card: usd_per_hour`` (card names as `planner cards`)."""
    from planner._files import read_yaml

    raw = read_yaml(path, field="--prices", expect="a mapping of card name to USD per hour")
    if not isinstance(raw, dict):
        raise ConfigError("--prices", f"{path} is not a mapping", "write lines such as `h100-sxm: 2.99`")
    prices = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(
                f"--prices: {name}", f"'{value}' is not a price in USD per hour", "give a number, e.g. 2.99"
            )
        prices[_card(str(name)).name] = float(value)
    return prices


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
