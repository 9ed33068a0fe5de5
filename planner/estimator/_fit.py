"""Does a config fit on a card, and what is its largest micro-batch? Pure answers, no printing.

Tracing a deep model at every micro-batch would be slow, so the answer uses two linearities:
identical layers make every byte count linear in depth, and for a fixed sequence length every
byte count is linear in micro-batch. Four cheap traces of a one- and two-layer copy (micro-batch
1 and 2) give both slopes; the predicted maximum is then confirmed (and corrected) by tracing the
full-depth model at that micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from planner.errors import ConfigError
from planner.estimator._cuda import CudaOverhead, default_overhead, sdpa_backend
from planner.estimator._trace import CudaTarget, StepTrace, StepTracer, num_layers, truncated_config
from planner.models import load_model_config
from planner.schema import (
    Card,
    FitReport,
    Fix,
    MemoryBreakdown,
    MemoryEstimate,
    Method,
    OptimizerName,
    Precision,
    TrainingConfig,
)

# Past this the answer is "more than you will use"; it also bounds the search when a config's
# per-sample cost is tiny next to the card.
MAX_MICRO_BATCH = 4096
_CONFIRM_ROUNDS = 4

INCLUDES = [
    "weights (with 4-bit quant state), gradients, optimizer state",
    "activations saved for backward and temporaries (logits, fp32 loss upcast) at the step's peak",
    "CUDA caching-allocator 512-byte block rounding, cuBLAS workspace",
    "CUDA context and allocator fragmentation (reserved - allocated)",
]


def check_card_supports(config: TrainingConfig, card: Card) -> None:
    """Refuse combinations the card cannot run at all (bf16 on a card without bf16 units)."""
    if config.precision.needs_bf16 and not card.supports_bf16:
        raise ConfigError(
            "precision",
            f"{card.display_name} (sm{card.compute_capability.replace('.', '')}) has no bf16 support",
            "use --precision fp16 (or fp32) on this card",
        )


TRACE_KEYS = tuple(f.name for f in fields(StepTrace))


class LinearPeak:
    """Every byte count as ``a + b*L + m*(c + d*L)`` for micro-batch ``m`` and depth ``L``.

    Fitted from traces at two depths and micro-batches 1 and 2; exact for identical layers and
    memory linear in micro-batch, both of which a full-depth confirmation trace then checks.
    """

    def __init__(self, probes: dict[tuple[int, int], StepTrace], depth: int) -> None:
        """``probes`` maps (depth, micro-batch) to a trace, micro-batches 1 and 2 at one or two depths."""
        self.depth = depth
        low, high = min(d for d, _ in probes), max(d for d, _ in probes)
        self._coeffs: dict[str, tuple[float, float, float, float]] = {}
        for key in TRACE_KEYS:
            v11, v12 = getattr(probes[(low, 1)], key), getattr(probes[(low, 2)], key)
            v21, v22 = getattr(probes[(high, 1)], key), getattr(probes[(high, 2)], key)
            per_sample_low, per_sample_high = v12 - v11, v22 - v21
            fixed_low, fixed_high = v11 - per_sample_low, v21 - per_sample_high
            span = high - low
            per_layer_sample = (per_sample_high - per_sample_low) / span if span else 0.0
            per_layer_fixed = (fixed_high - fixed_low) / span if span else 0.0
            self._coeffs[key] = (
                fixed_low - per_layer_fixed * low,
                per_layer_fixed,
                per_sample_low - per_layer_sample * low,
                per_layer_sample,
            )

    def at(self, micro_batch: int, key: str = "peak") -> float:
        a, b, c, d = self._coeffs[key]
        return a + b * self.depth + micro_batch * (c + d * self.depth)

    def per_sample(self, key: str = "peak") -> float:
        _, _, c, d = self._coeffs[key]
        return c + d * self.depth

    def max_micro_batch(self, limit: float) -> int:
        """Largest micro-batch whose predicted peak is at most ``limit`` (0 if none)."""
        slope = self.per_sample()
        fixed = self.at(0)
        if fixed + slope > limit:
            return 0
        if slope <= 0:
            return MAX_MICRO_BATCH
        return min(MAX_MICRO_BATCH, math.floor((limit - fixed) / slope))


def shallow_depths(hf_config: Any) -> tuple[int, int]:
    """Two depths to probe: one and two repeats of the layer pattern (e.g. Gemma 2 alternates)."""
    layer_types = getattr(hf_config, "layer_types", None)
    period = 1
    if isinstance(layer_types, list) and layer_types:
        period = next(
            p
            for p in range(1, len(layer_types) + 1)
            if all(layer_types[i] == layer_types[i % p] for i in range(len(layer_types)))
        )
    return period, 2 * period


class Estimator:
    """Memory answers for one config on one card; caches the traces it has taken."""

    def __init__(self, config: TrainingConfig, card: Card, overhead: CudaOverhead | None = None) -> None:
        check_card_supports(config, card)
        self.config = config
        self.card = card
        self.hf_config = load_model_config(config.model)
        self.overhead = overhead or default_overhead(card)
        head_dim = getattr(self.hf_config, "head_dim", None) or (
            self.hf_config.hidden_size // self.hf_config.num_attention_heads
        )
        half = config.precision is not Precision.FP32
        # On the host pseudo-card the step is what a CPU run does: no CUDA kernels or rounding.
        self.cuda = (
            None if card.kind == "cpu" else CudaTarget(sdpa_backend=sdpa_backend(card, half, head_dim))
        )
        self._full_traces: dict[int, StepTrace] = {}
        self._full_tracer: StepTracer | None = None
        self._linear: LinearPeak | None = None

    # -- traces ---------------------------------------------------------------------------------
    def full_trace(self, micro_batch: int) -> StepTrace:
        if micro_batch not in self._full_traces:
            if self._full_tracer is None:
                self._full_tracer = StepTracer(self.hf_config, self.config, cuda=self.cuda)
            self._full_traces[micro_batch] = self._full_tracer.trace(micro_batch)
        return self._full_traces[micro_batch]

    @property
    def linear(self) -> LinearPeak:
        if self._linear is None:
            depth = num_layers(self.hf_config)
            # A model no deeper than the probes is probed as itself, at its one depth.
            depths = [d for d in shallow_depths(self.hf_config) if d < depth] or [depth]
            probes = {}
            for layers in depths:
                tracer = StepTracer(truncated_config(self.hf_config, layers), self.config, cuda=self.cuda)
                probes.update({(layers, m): tracer.trace(m) for m in (1, 2)})
            self._linear = LinearPeak(probes, depth)
        return self._linear

    # -- answers --------------------------------------------------------------------------------
    @property
    def allocated_limit(self) -> int:
        return self.overhead.allocated_limit(self.card.available_bytes)

    def _allocated(self, tensor_bytes: float) -> int:
        return math.ceil(tensor_bytes) + self.overhead.workspace_bytes

    def estimate(self, micro_batch: int, *, trace: bool = True) -> MemoryEstimate:
        """The estimate at ``micro_batch``: traced at full depth, or from the linear fit."""
        if trace:
            step = self.full_trace(micro_batch)
            values = {key: float(getattr(step, key)) for key in TRACE_KEYS}
        else:
            values = {key: self.linear.at(micro_batch, key) for key in TRACE_KEYS}
        allocated = self._allocated(values["peak"])
        reserved = self.overhead.reserved(allocated)
        device = self.overhead.device_bytes(allocated)
        owners = ("weights", "gradients", "optimizer_state", "activations", "temporaries")
        parts = {name: max(0, round(values[name])) for name in owners}
        # Rounding of fitted parts must not break "the breakdown sums to the peak".
        parts["temporaries"] += max(0, math.ceil(values["peak"]) - sum(parts.values()))
        breakdown = MemoryBreakdown(
            **parts,
            cuda_context=self.overhead.context_bytes + self.overhead.workspace_bytes,
            allocator_overhead=reserved - allocated,
        )
        return MemoryEstimate(
            config=self.config.with_changes(micro_batch=micro_batch),
            card=self.card.name,
            micro_batch=micro_batch,
            peak_allocated_bytes=allocated,
            peak_reserved_bytes=reserved,
            peak_bytes=device,
            available_bytes=self.card.available_bytes,
            breakdown=breakdown,
            includes=INCLUDES,
            expected_error=self.overhead.expected_error,
            traced=trace,
        )

    def max_micro_batch(self, *, confirm: bool = True) -> int:
        """The largest micro-batch that fits: linear prediction, then full-depth traces to confirm."""
        limit = self.allocated_limit - self.overhead.workspace_bytes
        best = self.linear.max_micro_batch(limit)
        if not confirm:
            return best
        slope = max(self.linear.per_sample(), 1.0)
        for _ in range(_CONFIRM_ROUNDS):
            if best == 0:
                trace_one = self.full_trace(1).peak
                return 1 if trace_one <= limit else 0
            peak = self.full_trace(best).peak
            if peak > limit:
                best = max(0, best - max(1, math.ceil((peak - limit) / slope)))
            elif peak + slope <= limit and best < MAX_MICRO_BATCH:
                step = max(1, math.floor((limit - peak) / slope))
                if best + step in self._full_traces:
                    return best
                best += step
            else:
                return best
        return (
            best if best in self._full_traces and self._full_traces[best].peak <= limit else max(0, best - 1)
        )


def _fix_candidates(config: TrainingConfig) -> list[tuple[str, dict[str, Any]]]:
    """Changes worth trying, cheapest first for the practitioner (least change to the experiment)."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if not config.gradient_checkpointing:
        changes.append(
            ("gradient checkpointing (~30% slower steps, same results)", {"gradient_checkpointing": True})
        )
    if config.optimizer is OptimizerName.ADAMW:
        changes.append(("8-bit AdamW (bitsandbytes)", {"optimizer": OptimizerName.ADAMW_8BIT}))
    if config.method is Method.FULL:
        changes.append(("LoRA instead of full fine-tuning", {"method": Method.LORA}))
    if config.method is not Method.QLORA:
        precision = Precision.BF16 if config.precision is Precision.PURE_BF16 else config.precision
        changes.append(("QLoRA (4-bit NF4 base + LoRA)", {"method": Method.QLORA, "precision": precision}))
    if not config.gradient_checkpointing:
        # When no single change is enough: checkpointing on top of each of the others.
        checkpointing = changes[0][1]
        changes += [
            (f"{name.split(' (')[0]} + gradient checkpointing", {**change, **checkpointing})
            for name, change in changes[1:]
        ]
    return changes


def suggest_fixes(config: TrainingConfig, card: Card, overhead: CudaOverhead | None = None) -> list[Fix]:
    """Every candidate change that makes ``config`` fit, with the max micro-batch it would allow.

    Each is answered from the linear fit alone (four shallow traces), not confirmed at full depth.
    A shorter sequence is offered last, halving down to 128 tokens.
    """
    fixes = []
    for change, fields_changed in _fix_candidates(config):
        candidate = config.with_changes(**fields_changed)
        best = Estimator(candidate, card, overhead).max_micro_batch(confirm=False)
        if best >= 1:
            fixes.append(Fix(change=change, config=candidate, max_micro_batch=best))
    seq_len = config.seq_len // 2
    while seq_len >= 128 and not fixes:
        candidate = config.with_changes(seq_len=seq_len)
        best = Estimator(candidate, card, overhead).max_micro_batch(confirm=False)
        if best >= 1:
            fixes.append(
                Fix(change=f"shorter sequences: --seq-len {seq_len}", config=candidate, max_micro_batch=best)
            )
        seq_len //= 2
    return fixes


def default_micro_batches(max_micro_batch: int) -> list[int]:
    """Powers of two through the maximum and one past it, plus the maximum itself."""
    sizes = {1, max(1, max_micro_batch), max_micro_batch + 1}
    size = 2
    while size <= 2 * max(1, max_micro_batch) and size <= MAX_MICRO_BATCH:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def fit(
    config: TrainingConfig,
    card: Card,
    micro_batches: list[int] | None = None,
    *,
    overhead: CudaOverhead | None = None,
) -> FitReport:
    """Answer "does ``config`` fit on ``card``, and with what micro-batch?" without a GPU.

    Returns estimates for ``micro_batches`` (default: powers of two around the max), the exact max
    micro-batch (confirmed by a full-depth trace), its breakdown, and fixes when nothing fits.
    """
    estimator = Estimator(config, card, overhead)
    best = estimator.max_micro_batch()
    at_max = estimator.estimate(max(best, 1))
    sizes = micro_batches or default_micro_batches(best)
    rows = [estimator.estimate(m, trace=m in estimator._full_traces) for m in sizes]
    fixes = suggest_fixes(config, card, estimator.overhead) if best == 0 else []
    return FitReport(
        config=config,
        card=card.name,
        rows=rows,
        max_micro_batch=best,
        at_max=at_max,
        fixes=fixes,
        calibration=estimator.overhead.source,
    )


def estimate_memory(
    config: TrainingConfig, card: Card, *, overhead: CudaOverhead | None = None
) -> MemoryEstimate:
    """Predicted peak memory of ``config`` at its own micro-batch, traced at full depth."""
    return Estimator(config, card, overhead).estimate(config.micro_batch)
