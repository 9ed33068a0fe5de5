"""Step time from a card's datasheet: every traced op timed by its kind, issued through a GPU queue.

Each op of the traced step takes the time its kind's efficiency curve gives on the card
(:mod:`planner.timing._kernels`: matmuls by shape, attention by length, the rest at bandwidth,
each at least a launch floor); the ops run through one asynchronous launch queue fed by the CPU,
eager (one dispatch per op) or compiled (:mod:`planner.timing._compiled`: fused memory-bound runs,
one launch per kernel). Phases are extrapolated in depth from two shallow traces.

The 80% interval comes from the model's own uncertainty: each term (GEMM, attention, bandwidth,
launch floor, CPU dispatch) is evaluated at its sources' p10 and p90, and the log-deviations are
combined in quadrature, as for independent log-normal errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.schema import Card, TrainingConfig
from planner.timing._compiled import compiled_kernels
from planner.timing._counter import PhaseCosts
from planner.timing._kernels import DeviceModel, Spreads, eager_kernels, queue_seconds, term_spreads


def _peak_flops(card: Card, config: TrainingConfig) -> float | None:
    """Dense tensor throughput in FLOP/s for the precision the matmuls run in."""
    tflops = card.dense_tflops(config.precision)
    return None if tflops is None else tflops * 1e12


def roofline_available(card: Card, config: TrainingConfig) -> bool:
    return _peak_flops(card, config) is not None and card.bandwidth_gbs is not None


def device_model(card: Card, config: TrainingConfig) -> DeviceModel:
    peak = _peak_flops(card, config)
    if peak is None or card.bandwidth_gbs is None:
        raise ValueError(f"{card.name} has no datasheet throughput for a roofline")
    return DeviceModel(card, peak)


def phase_seconds(phases: dict[str, PhaseCosts], device: DeviceModel, compiled: bool) -> dict[str, float]:
    """Seconds of each phase of one traced step: its kernels through the launch queue."""
    if compiled:
        kernels = compiled_kernels(phases, device)
    else:
        kernels = {phase: eager_kernels(costs.ops, device) for phase, costs in phases.items()}
    return {phase: queue_seconds(queue) for phase, queue in kernels.items()}


ACCUMULATE_PHASE = "accumulate"
"""Ops each micro-step after an accumulation's first adds (in-place gradient adds), timed apart."""


@dataclass(frozen=True)
class RooflineStep:
    """Modelled seconds of a full-depth step: forward, backward, optimizer, on one card."""

    forward: float
    backward: float
    optimizer: float
    flops: float
    """Forward + backward FLOPs of one micro-batch (for MFU)."""
    interval: tuple[float, float] = (1.0, 1.0)
    """80% interval of the step's time as multipliers of the estimate, from the per-term spreads."""
    accumulate: float = 0.0
    """Seconds a micro-step after an accumulation's first adds (its in-place gradient adds)."""

    @property
    def micro_step(self) -> float:
        return self.forward + self.backward


def _extrapolate(shallow: dict[int, float], depth: int) -> float:
    """Identical layers make every phase's time linear in depth, as with memory."""
    low, high = min(shallow), max(shallow)
    per_layer = (shallow[high] - shallow[low]) / (high - low) if high > low else 0.0
    return max(0.0, shallow[low] + per_layer * (depth - low))


def roofline_step(
    shallow: dict[int, dict[str, PhaseCosts]], depth: int, card: Card, config: TrainingConfig
) -> RooflineStep:
    """Per-phase seconds at ``depth`` layers from two shallow depths' traced ops, with the 80% interval."""
    device = device_model(card, config)

    def seconds(model: DeviceModel) -> dict[str, float]:
        per_depth = {d: phase_seconds(phases, model, config.torch_compile) for d, phases in shallow.items()}
        names = {name for times in per_depth.values() for name in times}
        return {
            name: _extrapolate({d: times.get(name, 0.0) for d, times in per_depth.items()}, depth)
            for name in names
        }

    def once(times: dict[str, float]) -> float:
        """A step's seconds without accumulation's adds (run a config-dependent number of times)."""
        return sum(value for name, value in times.items() if name != ACCUMULATE_PHASE)

    central = seconds(device)
    estimate = once(central)
    below = above = 0.0
    for term, (low, high) in term_spreads(card).items() if estimate > 0 else ():
        for multiplier in (low, high):
            spread = seconds(device.with_spreads(Spreads(**{term: multiplier})))
            deviation = math.log(once(spread) / estimate)
            if deviation < 0:
                below += deviation**2
            else:
                above += deviation**2
    flops = _extrapolate({d: p.get("forward", PhaseCosts()).flops for d, p in shallow.items()}, depth)
    flops += _extrapolate({d: p.get("backward", PhaseCosts()).flops for d, p in shallow.items()}, depth)
    return RooflineStep(
        forward=central.get("forward", 0.0),
        backward=central.get("backward", 0.0),
        optimizer=central.get("optimizer", 0.0),
        flops=flops,
        accumulate=central.get(ACCUMULATE_PHASE, 0.0),
        interval=(math.exp(-math.sqrt(below)), math.exp(math.sqrt(above))),
    )
