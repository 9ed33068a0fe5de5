"""The answer of ``planner fit --card A,B,C``: which cards fit a config, how fast, and at what price."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from planner.schema._training import TrainingConfig


class CardOption(BaseModel):
    """One card's answer for a config: its largest micro-batch and the throughput there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    card: str
    max_micro_batch: int
    """0 when not even micro-batch 1 fits."""
    peak_bytes: int
    """Predicted device bytes (NVML used) at the max micro-batch (at 1 when nothing fits)."""
    available_bytes: int
    tokens_per_second: float | None = None
    """Training tokens per second at the max micro-batch, rows full (``seq_len`` tokens each),
    with the config's accumulation; None when nothing fits or the card has no throughput figures."""
    tokens_per_second_low: float | None = None
    tokens_per_second_high: float | None = None
    hours: float | None = None
    """Hours to train the stated token count at ``tokens_per_second``."""
    usd_per_hour: float | None = None
    usd: float | None = None
    """Price of the stated token count (or, without one, of a million tokens)."""
    time_source: str | None = None
    """measured, calibrated or default (see :class:`planner.schema.TimeEstimate`)."""
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.max_micro_batch > 0


class CardComparison(BaseModel):
    """Several cards side by side, ranked: fitting cards first, cheapest (or fastest) first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: TrainingConfig
    tokens: int | None
    """The token count ``hours`` and ``usd`` are for; None: ``usd`` is per million tokens."""
    options: list[CardOption]
    ranked_by: str
    """``price`` when any card has one (priced cards first, cheapest first; unpriced after them,
    fastest first), else ``tokens/s``."""
    best: str | None
    """The first fitting card of the ranking: cheapest (or fastest) that fits; None if none fits."""
    includes: list[str]
    expected_error: str
