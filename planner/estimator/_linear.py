"""Peak bytes of a step as lines in micro-batch and depth, fitted from shallow traces.

Tracing a deep model at every micro-batch would be slow, so the answer uses two linearities:
identical layers make every byte count linear in depth, and for a fixed sequence length every
byte count is linear in micro-batch, within each window of the step whose peak a trace reports
(the step's peak is the highest window's). Traces of a two- and three-layer copy at micro-batch
1 and 2 give both slopes (see :func:`shallow_depths` for why not one and two).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from planner.step import WINDOWS, PeakSplit, StepTrace, layer_period, num_layers

# Past this the answer is "more than you will use"; it also bounds the search when a config's
# per-sample cost is tiny next to the card.
MAX_MICRO_BATCH = 4096

TRACE_KEYS = tuple(f.name for f in fields(PeakSplit))


class _WindowLine:
    """One peak window's byte counts, each as ``a + b*L + m*(c + d*L)`` for micro-batch ``m``, depth ``L``."""

    def __init__(self, coeffs: dict[str, tuple[float, float, float, float]], depth: int) -> None:
        self._coeffs = coeffs
        self.depth = depth

    @classmethod
    def through(cls, probes: dict[tuple[int, int], PeakSplit], depth: int) -> _WindowLine:
        """The line through the window's probes: micro-batches 1 and 2 at one or two depths."""
        low, high = min(d for d, _ in probes), max(d for d, _ in probes)
        coeffs = {}
        for key in TRACE_KEYS:
            v11, v12 = getattr(probes[(low, 1)], key), getattr(probes[(low, 2)], key)
            v21, v22 = getattr(probes[(high, 1)], key), getattr(probes[(high, 2)], key)
            per_sample_low, per_sample_high = v12 - v11, v22 - v21
            fixed_low, fixed_high = v11 - per_sample_low, v21 - per_sample_high
            span = high - low
            per_layer_sample = (per_sample_high - per_sample_low) / span if span else 0.0
            per_layer_fixed = (fixed_high - fixed_low) / span if span else 0.0
            coeffs[key] = (
                fixed_low - per_layer_fixed * low,
                per_layer_fixed,
                per_sample_low - per_layer_sample * low,
                per_layer_sample,
            )
        return cls(coeffs, depth)

    def at(self, micro_batch: int, key: str = "peak") -> float:
        a, b, c, d = self._coeffs[key]
        return a + b * self.depth + micro_batch * (c + d * self.depth)

    def shifted(self, peak_bytes: float) -> _WindowLine:
        """The same line with its peak moved by ``peak_bytes`` at every micro-batch."""
        a, b, c, d = self._coeffs["peak"]
        return _WindowLine({**self._coeffs, "peak": (a + peak_bytes, b, c, d)}, self.depth)

    def max_micro_batch(self, limit: float) -> int:
        """Largest micro-batch whose predicted peak is at most ``limit`` (0 if none)."""
        fixed = self.at(0)
        slope = self.at(1) - fixed
        if fixed + slope > limit:
            return 0
        if slope <= 0:
            return MAX_MICRO_BATCH
        return min(MAX_MICRO_BATCH, math.floor((limit - fixed) / slope))


class LinearPeak:
    """A step's peak as the highest of its windows' lines (see :data:`WINDOWS`), at full depth.

    Each window's bytes are linear in depth (identical layers) and micro-batch (fixed length); the
    step's peak, their maximum, is not: at small micro-batches the gradients piled up at the end of
    backward, or the optimizer step, hide the activations' growth. Fitted from traces at two depths
    and micro-batches 1 and 2.
    """

    def __init__(self, windows: list[_WindowLine]) -> None:
        self.windows = windows
        """One line per window of :data:`WINDOWS`, in that order."""

    @classmethod
    def through(cls, probes: dict[tuple[int, int], StepTrace], depth: int) -> LinearPeak:
        """``probes`` maps (depth, micro-batch) to a trace, micro-batches 1 and 2 at one or two depths."""
        return cls(
            [
                _WindowLine.through({k: t.windows[w] for k, t in probes.items()}, depth)
                for w in range(len(WINDOWS))
            ]
        )

    def _peak_window(self, micro_batch: int) -> _WindowLine:
        # A tie is the first window's, as a trace keeps it.
        return max(self.windows, key=lambda line: line.at(micro_batch))

    def at(self, micro_batch: int, key: str = "peak") -> float:
        """``key``'s bytes at the step's peak: in whichever window peaks higher at ``micro_batch``."""
        return self._peak_window(micro_batch).at(micro_batch, key)

    def max_micro_batch(self, limit: float) -> int:
        """Largest micro-batch whose predicted peak is at most ``limit`` (0 if none), in every window."""
        return min(line.max_micro_batch(limit) for line in self.windows)

    def corrected(self, trace: StepTrace, micro_batch: int) -> LinearPeak:
        """The lines moved to pass through a full-depth ``trace`` at ``micro_batch``, slopes kept."""
        return LinearPeak(
            [
                line.shifted(window.peak - line.at(micro_batch))
                for line, window in zip(self.windows, trace.windows, strict=True)
            ]
        )


def shallow_depths(hf_config: Any) -> tuple[int, int]:
    """Two depths to probe: two and three repeats of the layer pattern (e.g. Gemma 2 alternates).

    Depth is linear only over layers with the same neighbours. A one-layer copy's layer is both the
    first (its input is the embeddings' output, not a layer's) and the last, so what is live at a
    peak inside it need not be what is live inside the last of several: a BERT classifier under
    bf16 autocast holds one fp32 hidden-state tensor more at its forward peak from two layers on,
    and a line through one and two layers overshot six by 2-3%. From two repeats on, the first
    and last layers are distinct in every probe and each added layer is a middle one.
    """
    period = layer_period(hf_config)
    return 2 * period, 3 * period


def probe_depths(hf_config: Any) -> list[int]:
    """The depths the linear fit probes: :func:`shallow_depths`, or up to the model's own depth.

    A model no deeper than the probes is probed as itself (and shallower), so its fit is exact.
    """
    depth = num_layers(hf_config)
    shallow = shallow_depths(hf_config)
    if depth > shallow[1]:
        return list(shallow)
    return [d for d in shallow if d < depth] + [depth]
