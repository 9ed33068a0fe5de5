"""The true max micro-batch on this device, in two or three probes, starting from the estimator.

Lightning's ``scale_batch_size`` doubles into an OOM then bisects (about ten trials), and
accelerate's ``find_executable_batch_size`` retries at x0.9 after each OOM; both test a few steps
that miss the run's real peak. Here the estimator's answer is verified with a step sequence that
reaches the run's peak (optimizer state, an eval pass) and the size one above must fail. When a
probe disagrees, the estimator's line is corrected by the measured residual and the search repeats;
when the corrected line is wrong too, it bisects the bracket it has established.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from planner.estimator import MAX_MICRO_BATCH, Estimator
from planner.profiler._device import resolve_device
from planner.profiler._runner import StepRunner
from planner.schema import Card, MaxBatchSearch, ProbeResult, TrainingConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Prediction:
    """The estimator's answer as a line in micro-batch: device bytes = ``fixed + slope * m``."""

    max_micro_batch: int
    fixed: float
    slope: float
    available: int
    context_bytes: int
    """Added to reserved bytes when NVML cannot read the process."""

    @classmethod
    def of(cls, estimator: Estimator) -> Prediction:
        """The estimator's confirmed max and its line, anchored at the full-depth trace of that max."""
        best = estimator.max_micro_batch()
        one, two = (estimator.estimate(m, trace=False).peak_bytes for m in (1, 2))
        slope = float(max(two - one, 1))
        anchor = max(best, 1)
        return cls(
            max_micro_batch=best,
            fixed=estimator.estimate(anchor).peak_bytes - slope * anchor,
            slope=slope,
            available=estimator.card.available_bytes,
            context_bytes=estimator.overhead.context_bytes,
        )

    def peak(self, micro_batch: int) -> float:
        return self.fixed + self.slope * micro_batch

    def max_fitting(self) -> int:
        """Largest micro-batch the line puts within the card's memory."""
        return max(0, min(MAX_MICRO_BATCH, math.floor((self.available - self.fixed) / self.slope)))


def search_max_micro_batch(
    prediction: Prediction, probe: Callable[[int], ProbeResult], progress: Progress | None = None
) -> MaxBatchSearch:
    """Bracket the true max between a size that fits and one that does not, from the prediction.

    Each fit measures the device bytes, and the line through the measurements (one: the
    prediction's slope shifted by the residual; two or more: their own slope) names the next
    size; one past the max closes the bracket. With a right prediction that is two probes, with a
    constant error three. Until something is measured the search steps away from what it knows,
    doubling the stride (an OOM at the prediction tries the size below first); a size the line got
    wrong is followed by one bisection, so the worst case stays logarithmic.
    """
    start = time.perf_counter()
    fits_below, fails_at = 0, MAX_MICRO_BATCH + 1
    measured: dict[int, int] = {}
    stride, missed = 1, False
    candidate = max(1, prediction.max_micro_batch)
    probes: list[ProbeResult] = []
    while fails_at - fits_below > 1 and fits_below < MAX_MICRO_BATCH:
        size = min(max(candidate, fits_below + 1), fails_at - 1)
        before = _measured_line(prediction, measured)
        if progress is not None:
            progress(f"probe {len(probes) + 1}: micro-batch {size}")
        result = probe(size)
        probes.append(result)
        if result.fits:
            fits_below = size
            if result.peak_bytes is not None:
                measured[size] = result.peak_bytes
        else:
            fails_at = size
        line = _measured_line(prediction, measured)
        missed = result.fits != (before.peak(size) <= prediction.available)
        if measured and not missed:
            candidate = line.max_fitting()
        elif fits_below and fails_at <= MAX_MICRO_BATCH:
            candidate = (fits_below + fails_at) // 2
        else:
            # One side is still open: step away from the side known, doubling the stride.
            candidate = fits_below + stride if fits_below else fails_at - stride
            stride *= 2
    return MaxBatchSearch(
        max_micro_batch=fits_below,
        predicted=prediction.max_micro_batch,
        probes=probes,
        seconds=time.perf_counter() - start,
    )


def _measured_line(prediction: Prediction, measured: dict[int, int]) -> Prediction:
    """The prediction refitted to measurements: shifted through one, or through the two largest."""
    if not measured:
        return prediction
    sizes = sorted(measured)
    slope = prediction.slope
    if len(sizes) >= 2:
        low, high = sizes[-2], sizes[-1]
        fitted = (measured[high] - measured[low]) / (high - low)
        slope = fitted if fitted > 0 else slope
    return replace(prediction, fixed=measured[sizes[-1]] - slope * sizes[-1], slope=slope)


def runner_probe(runner: StepRunner, prediction: Prediction) -> Callable[[int], ProbeResult]:
    """A probe on a real runner: OOM-safe, and over the card's memory counts as not fitting.

    Over-the-card matters where nothing raises: on the CPU, and on a GPU shared with a budget.
    """

    def probe(micro_batch: int) -> ProbeResult:
        start = time.perf_counter()
        memory = runner.attempt(runner.probe, micro_batch)
        seconds = time.perf_counter() - start
        if memory is None:
            return ProbeResult(
                micro_batch=micro_batch, fits=False, peak_bytes=None, outcome="out of memory", seconds=seconds
            )
        peak = memory.device_bytes(prediction.context_bytes)
        fits = peak <= prediction.available
        return ProbeResult(
            micro_batch=micro_batch,
            fits=fits,
            peak_bytes=peak,
            outcome="fits" if fits else "over the card's memory",
            seconds=seconds,
        )

    return probe


def find_max_micro_batch(
    config: TrainingConfig,
    card: Card,
    *,
    device: torch.device | str | None = None,
    runner: StepRunner | None = None,
    prediction: Prediction | None = None,
    progress: Progress | None = None,
) -> MaxBatchSearch:
    """The largest micro-batch of ``config`` that runs on ``card`` here, verified by real steps.

    ``runner`` reuses a built model (it is left usable: every OOM is recovered from);
    ``prediction`` skips the estimator (its answer is the starting point).
    """
    if prediction is None:
        prediction = Prediction.of(Estimator(config, card))
    own_runner = runner is None
    if runner is None:
        runner = StepRunner(config, resolve_device(device, card))
    try:
        return search_max_micro_batch(prediction, runner_probe(runner, prediction), progress)
    finally:
        if own_runner:
            runner.close()
