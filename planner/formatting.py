"""How the planner writes numbers for people: durations, memory, and a trial's searched values.

One place, so that a trial reads the same in ``planner plan``, the live ``planner run`` display
and ``planner results``.
"""

from __future__ import annotations

import math
from typing import Any

PARAM_LABELS = {
    "learning_rate": "lr",
    "effective_batch": "batch",
    "weight_decay": "wd",
    "warmup_ratio": "warmup",
    "gradient_checkpointing": "ckpt",
    "lora_dropout": "lora drop",
}
"""Short labels for searched names, so sweep tables fit a terminal."""


def format_duration(seconds: float | None) -> str:
    """``12.3s`` under two minutes, then ``4m30s`` or ``1h05m``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_gib(value: int) -> str:
    """Bytes as GiB with two decimals (``22.15``): memory columns of the fit tables."""
    return f"{value / 1024**3:.2f}"


def format_value(value: object) -> str:
    """A searched value as typed in a spec: ``0.0003``, ``16``, ``cosine``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_params(params: dict[str, Any]) -> str:
    """``lr=0.0003 batch=16``: a trial's searched values, short."""
    return " ".join(f"{PARAM_LABELS.get(name, name)}={format_value(value)}" for name, value in params.items())
