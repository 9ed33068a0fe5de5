"""Step time from a card's datasheet: a per-op roofline over the traced step's FLOPs and bytes.

Each op takes the longer of its compute time (FLOPs at the card's dense peak times a GEMM
efficiency) and its memory time (bytes at the card's bandwidth times a bandwidth efficiency); the
step is the sum, but never less than what eager PyTorch needs to dispatch its ops from the CPU.
A single scale factor, fitted from measured profiles, then corrects what the roofline misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.schema import Card, TrainingConfig
from planner.timing._counter import PhaseCosts

# cuBLAS GEMMs at LLM shapes reach 60-80% of the dense datasheet peak on A100/H100/Ada; smaller
# shapes and attention less. 0.65 until profiles calibrate it.
GEMM_EFFICIENCY = 0.65
# Element-wise and reduction kernels stream at 70-90% of peak DRAM bandwidth.
BANDWIDTH_EFFICIENCY = 0.75
# Eager PyTorch issues one kernel per op from Python: ~5-20 us per op with module hooks and
# autograd; below that the GPU waits on the CPU.
OP_DISPATCH_SECONDS = 10e-6

# Where a profile-free prediction can land against a real step: published MFU of Hugging Face
# fine-tuning spans ~25-60%, which this model maps to roughly -40% / +60% around its estimate.
DEFAULT_RELATIVE_INTERVAL = (0.6, 1.6)


def _peak_flops(card: Card, config: TrainingConfig) -> float | None:
    """Dense tensor throughput in FLOP/s for the precision the matmuls run in."""
    tflops = card.dense_tflops(config.precision)
    return None if tflops is None else tflops * 1e12


def roofline_available(card: Card, config: TrainingConfig) -> bool:
    return _peak_flops(card, config) is not None and card.bandwidth_gbs is not None


def phase_seconds(costs: PhaseCosts, card: Card, config: TrainingConfig) -> float:
    """Roofline seconds of one phase's ops on ``card`` at the default efficiencies."""
    peak = _peak_flops(card, config)
    if peak is None or card.bandwidth_gbs is None:
        raise ValueError(f"{card.name} has no datasheet throughput for a roofline")
    flop_rate = peak * GEMM_EFFICIENCY
    byte_rate = card.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    device = sum(max(f / flop_rate, b / byte_rate) for f, b in zip(costs.flops, costs.bytes, strict=True))
    return max(device, costs.ops * OP_DISPATCH_SECONDS)


@dataclass(frozen=True)
class RooflineStep:
    """Roofline seconds of a full-depth step: forward, backward, optimizer, on one card."""

    forward: float
    backward: float
    optimizer: float
    flops: float
    """Forward + backward FLOPs of one micro-batch (for MFU)."""

    @property
    def micro_step(self) -> float:
        return self.forward + self.backward


def roofline_step(
    shallow: dict[int, dict[str, PhaseCosts]], depth: int, card: Card, config: TrainingConfig
) -> RooflineStep:
    """Extrapolate per-phase roofline seconds from two shallow depths to ``depth`` layers.

    Identical layers make every phase's time linear in depth, as with memory.
    """
    low, high = min(shallow), max(shallow)

    def at_depth(phase: str, value: Any) -> float:
        v_low = value(shallow[low].get(phase, PhaseCosts()))
        v_high = value(shallow[high].get(phase, PhaseCosts()))
        per_layer = (v_high - v_low) / (high - low) if high > low else 0.0
        return max(0.0, v_low + per_layer * (depth - low))

    def seconds(costs: PhaseCosts) -> float:
        return phase_seconds(costs, card, config) if costs.ops else 0.0

    flops = at_depth("forward", lambda c: sum(c.flops)) + at_depth("backward", lambda c: sum(c.flops))
    return RooflineStep(
        forward=at_depth("forward", seconds),
        backward=at_depth("backward", seconds),
        optimizer=at_depth("optimizer", seconds),
        flops=flops,
    )
