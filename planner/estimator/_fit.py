"""Does a config fit on a card, and what is its largest micro-batch? Pure answers, no printing.

Tracing a deep model at every micro-batch would be slow, so the answer uses two linearities:
identical layers make every byte count linear in depth, and for a fixed sequence length every
byte count is linear in micro-batch, within each window of the step whose peak a trace reports
(the step's peak is the highest window's). Four cheap traces of a one- and two-layer copy
(micro-batch 1 and 2) give both slopes; the predicted maximum is then confirmed (and corrected)
by tracing the full-depth model at that micro-batch.

Traces are kept per traced step (see :func:`step_traces`), so asking again about the same config,
at any micro-batch, on any card with the same CUDA kernels, traces nothing new. :func:`fit` builds
and traces the full-depth model in a forked helper process while it probes, and the two share the
fixes (see :class:`_Helper`): the machine it answers on may have two cores and ten seconds.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import signal
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import Any

from planner.errors import ConfigError, PlannerError
from planner.estimator._cuda import CudaOverhead, default_overhead, sdpa_backend
from planner.estimator._setup import import_bitsandbytes, import_peft, model_class
from planner.estimator._trace import (
    WINDOWS,
    CudaTarget,
    PeakSplit,
    StepTrace,
    StepTracer,
    layer_period,
    num_layers,
    truncated_config,
)
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
# Traced steps kept per process (see ``step_traces``); each holds at most one built full-depth model.
_KEPT_STEPS = 8

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
    """Two depths to probe: one and two repeats of the layer pattern (e.g. Gemma 2 alternates)."""
    period = layer_period(hf_config)
    return period, 2 * period


def probe_depths(hf_config: Any) -> list[int]:
    """The depths the linear fit probes: :func:`shallow_depths`, or up to the model's own depth.

    A model no deeper than the probes is probed as itself (and shallower), so its fit is exact.
    """
    depth = num_layers(hf_config)
    shallow = shallow_depths(hf_config)
    if depth > shallow[1]:
        return list(shallow)
    return [d for d in shallow if d < depth] + [depth]


class StepTraces:
    """What has been traced of one training step: shallow probes, their fit, full-depth traces.

    Built models are kept, so another micro-batch costs one more trace and no build. The probes
    are taken in stages, each only when the previous one leaves the answer open: bytes resident
    between steps (no trace), then the peak at micro-batch 1, then at micro-batch 2.
    """

    def __init__(self, config: TrainingConfig, cuda: CudaTarget | None) -> None:
        self.config = config
        self.cuda = cuda
        self.hf_config = load_model_config(config.model)
        self.depth = num_layers(self.hf_config)
        self.depths = probe_depths(self.hf_config)
        self.resident: dict[int, int] = {}
        """depth -> bytes live between steps."""
        self.probes: dict[tuple[int, int], StepTrace] = {}
        """(depth, micro-batch) -> trace."""
        self.full: dict[int, StepTrace] = {}
        """micro-batch -> full-depth trace."""
        self._tracers: dict[int, StepTracer] = {}
        self._linear: LinearPeak | None = None

    def tracer(self, depth: int) -> StepTracer:
        """The built setup at ``depth`` (the full-depth one is kept, shallow ones until fitted)."""
        if depth not in self._tracers:
            hf_config = self.hf_config if depth == self.depth else truncated_config(self.hf_config, depth)
            self._tracers[depth] = StepTracer(hf_config, self.config, cuda=self.cuda)
            self.resident[depth] = self._tracers[depth].resident_bytes
        return self._tracers[depth]

    def probe(self, depth: int, micro_batch: int) -> StepTrace:
        if (depth, micro_batch) not in self.probes:
            if depth == self.depth and micro_batch in self.full:
                self.probes[(depth, micro_batch)] = self.full[micro_batch]
            else:
                self.probes[(depth, micro_batch)] = self.tracer(depth).trace(micro_batch)
        return self.probes[(depth, micro_batch)]

    def full_trace(self, micro_batch: int) -> StepTrace:
        if micro_batch not in self.full:
            if (self.depth, micro_batch) in self.probes:
                self.full[micro_batch] = self.probes[(self.depth, micro_batch)]
            else:
                self.full[micro_batch] = self.tracer(self.depth).trace(micro_batch)
        return self.full[micro_batch]

    def _at_full_depth(self, values: dict[int, float]) -> float:
        """Linear in depth through the probed depths, evaluated at the model's depth."""
        low, high = min(values), max(values)
        if low == high:
            return values[low]
        return values[low] + (values[high] - values[low]) * (self.depth - low) / (high - low)

    def resident_bytes(self) -> float:
        """Bytes live between steps at full depth (weights, quant state, optimizer state)."""
        for depth in self.depths:
            if depth not in self.resident:
                self.tracer(depth)
        return self._at_full_depth({d: float(self.resident[d]) for d in self.depths})

    def peak_at_one(self) -> float:
        """The fit's full-depth peak at micro-batch 1, from the probes at micro-batch 1 alone."""
        return max(
            self._at_full_depth({d: float(self.probe(d, 1).windows[w].peak) for d in self.depths})
            for w in range(len(WINDOWS))
        )

    @property
    def linear(self) -> LinearPeak:
        if self._linear is None:
            probes = {(d, m): self.probe(d, m) for d in self.depths for m in (1, 2)}
            self._linear = LinearPeak.through(probes, self.depth)
            # The probes' models are done with; full-depth traces still reuse the full one.
            self._tracers = {d: t for d, t in self._tracers.items() if d == self.depth}
        return self._linear

    def taken(self) -> TakenTraces:
        """The traces alone, without the built models (what crosses from the helper process)."""
        return TakenTraces(resident=self.resident, probes=self.probes, full=self.full)

    def absorb(self, taken: TakenTraces) -> None:
        """Add traces of this same step taken elsewhere (see :class:`_Helper`)."""
        self.resident = {**taken.resident, **self.resident}
        self.probes = {**taken.probes, **self.probes}
        self.full = {**taken.full, **self.full}


@dataclass(frozen=True)
class TakenTraces:
    """The traces of a :class:`StepTraces`, as plain data."""

    resident: dict[int, int]
    probes: dict[tuple[int, int], StepTrace]
    full: dict[int, StepTrace]


_STEPS: OrderedDict[tuple[str, CudaTarget | None], StepTraces] = OrderedDict()


def _step_config(config: TrainingConfig) -> TrainingConfig:
    """``config`` as far as its traced step goes: all but the micro-batch, the traced variable.

    Accumulation matters only as "one micro-batch, or a second one on top of the first one's
    gradients" (see :class:`StepTracer`).
    """
    return config.with_changes(micro_batch=1, gradient_accumulation=min(config.gradient_accumulation, 2))


def step_traces(config: TrainingConfig, cuda: CudaTarget | None) -> StepTraces:
    """The process-wide traces of ``config``'s step, kept for the last ``_KEPT_STEPS`` steps asked.

    Keyed by the step's config (as JSON: a list of LoRA targets is unhashable) and ``cuda``, the
    only way a card or its overheads change a trace. Every :class:`Estimator` of the same step
    shares them, so a sweep asking the same config's max micro-batch again, at another
    micro-batch or accumulation, or on another card with the same kernels, traces nothing new.
    """
    step = _step_config(config)
    key = (step.model_dump_json(), cuda)
    if key not in _STEPS:
        _STEPS[key] = StepTraces(step, cuda)
        while len(_STEPS) > _KEPT_STEPS:
            _STEPS.popitem(last=False)
    _STEPS.move_to_end(key)
    return _STEPS[key]


def cuda_target(card: Card, config: TrainingConfig, hf_config: Any) -> CudaTarget | None:
    """What a trace of ``config`` must emulate to be a step on ``card``: CUDA's attention kernel
    and block rounding; None on the host pseudo-card, where the step is what a CPU run does."""
    if card.kind == "cpu":
        return None
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    half = config.precision is not Precision.FP32
    return CudaTarget(sdpa_backend=sdpa_backend(card, half, head_dim))


class Estimator:
    """Memory answers for one config on one card; its traces are shared through :func:`step_traces`."""

    def __init__(self, config: TrainingConfig, card: Card, overhead: CudaOverhead | None = None) -> None:
        check_card_supports(config, card)
        self.config = config
        self.card = card
        self.hf_config = load_model_config(config.model)
        self.overhead = overhead or default_overhead(card)
        self.cuda = cuda_target(card, config, self.hf_config)
        self.traces = step_traces(config, self.cuda)
        self._helper: _Helper | None = None
        self._pending: dict[int, int] = {}
        """micro-batch -> helper task tracing it at full depth."""

    # -- traces ---------------------------------------------------------------------------------
    def full_trace(self, micro_batch: int) -> StepTrace:
        if micro_batch not in self.traces.full:
            if self._helper is not None:
                self.prefetch(micro_batch)
                self.traces.full[micro_batch] = self._helper.result(self._pending.pop(micro_batch))
            else:
                self.traces.full_trace(micro_batch)
        return self.traces.full[micro_batch]

    def prefetch(self, micro_batch: int) -> None:
        """Have the helper start the full-depth trace at ``micro_batch`` (no-op without one)."""
        if self._helper is None or micro_batch in self.traces.full or micro_batch in self._pending:
            return
        self._pending[micro_batch] = self._helper.submit(_full_trace, self.config, self.cuda, micro_batch)

    @property
    def linear(self) -> LinearPeak:
        return self.traces.linear

    # -- answers --------------------------------------------------------------------------------
    @property
    def allocated_limit(self) -> int:
        return self.overhead.allocated_limit(self.card.available_bytes)

    @property
    def _tensor_limit(self) -> int:
        """Most live tensor bytes the step may peak at: the allocated limit less cuBLAS workspace."""
        return self.allocated_limit - self.overhead.workspace_bytes

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
        """The largest micro-batch that fits: linear prediction, then full-depth traces to confirm.

        Each trace moves every window's line through it (slopes kept) for the next prediction,
        which stays between the largest micro-batch traced to fit and the smallest traced not to.
        """
        limit = self._tensor_limit
        predicted = self._predicted_max(limit)
        if not confirm:
            return predicted
        fits, fails = 0, MAX_MICRO_BATCH + 1
        candidate = max(predicted, 1)
        for _ in range(_CONFIRM_ROUNDS):
            step = self.full_trace(candidate)
            if step.peak <= limit:
                fits = candidate
            else:
                fails = candidate
            predicted = self.linear.corrected(step, candidate).max_micro_batch(limit)
            if fails == fits + 1 or (fits and predicted <= fits):
                return fits
            candidate = min(max(predicted, fits + 1), fails - 1)
        return fits

    def _predicted_max(self, limit: int) -> int:
        """The linear fit's max micro-batch, stopping early at a stage that already says 0.

        Bytes resident between steps are a floor under the peak, and the fit's peak at micro-batch
        1 is the depth extrapolation of the probes at micro-batch 1, so a config that cannot fit
        is known without the micro-batch-2 probes (or without any trace). The margin of one byte
        keeps the early answer on the same side of the limit as the fit's own arithmetic.
        """
        if self.traces.resident_bytes() > limit + 1 or self.traces.peak_at_one() > limit + 1:
            return 0
        return self.linear.max_micro_batch(limit)


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

    Each is answered from the linear fit alone (at most four shallow traces), not confirmed at full
    depth. A shorter sequence is offered last, halving down to 128 tokens.
    """
    candidates = _fix_candidates(config)
    # Candidates already probed (a sweep asking again) or probed as themselves (tiny models) are
    # answered here faster than a helper starts.
    worth_it = any(
        not traces.probes and traces.depth not in traces.depths
        for traces in (Estimator(config.with_changes(**c), card, overhead).traces for _, c in candidates)
    )
    with _Helper.fork(worth_it=worth_it) as helper:
        return _suggest_fixes(config, card, overhead, helper)


def _suggest_fixes(
    config: TrainingConfig, card: Card, overhead: CudaOverhead | None, helper: _Helper | None
) -> list[Fix]:
    candidates = [(change, config.with_changes(**changed)) for change, changed in _fix_candidates(config)]
    answers = _share(helper, [(_fix_answer, (candidate, card, overhead)) for _, candidate in candidates])
    fixes = []
    for (change, candidate), (best, traces) in zip(candidates, answers, strict=True):
        Estimator(candidate, card, overhead).traces.absorb(traces)
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


def _fix_answer(config: TrainingConfig, card: Card, overhead: CudaOverhead | None) -> tuple[int, TakenTraces]:
    """A fix candidate's predicted max micro-batch, and the traces behind it (for the asking process)."""
    estimator = Estimator(config, card, overhead)
    return estimator.max_micro_batch(confirm=False), estimator.traces.taken()


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
    micro-batch (confirmed by a full-depth trace), its breakdown, and fixes when nothing fits. On two
    or more cores, a forked helper process builds and traces the full-depth model meanwhile.
    """
    estimator = Estimator(config, card, overhead)
    traces = estimator.traces
    # A helper pays off when a full-depth model is still to be built beside the shallow probes.
    worth_it = not traces.full and traces.depth not in traces.depths
    if worth_it:
        _import_what_builds(config, estimator.hf_config)  # here, once: the copy inherits them
    with _Helper.fork(worth_it=worth_it) as helper:
        estimator._helper = helper
        if helper is not None:
            helper.submit(_build_full_depth, config, estimator.cuda)
        predicted = estimator.max_micro_batch(confirm=False)
        estimator.prefetch(max(predicted, 1))
        fixes: list[Fix] = []
        if predicted == 0:
            # An early "cannot fit" skipped probes the rows still need: the helper queues them
            # after its full-depth trace, and both processes share the fixes meanwhile.
            line = helper.submit(_probed, config, estimator.cuda) if helper is not None else None
            fixes = _suggest_fixes(config, card, estimator.overhead, helper)
            if helper is not None and line is not None:
                traces.absorb(helper.result(line))
        best = estimator.max_micro_batch()
        if best:
            fixes = []
        elif predicted:
            fixes = _suggest_fixes(config, card, estimator.overhead, helper)
        at_max = estimator.estimate(max(best, 1))
        estimator._helper = None
    sizes = micro_batches or default_micro_batches(best)
    rows = [estimator.estimate(m, trace=m in traces.full) for m in sizes]
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


# -- a second process ---------------------------------------------------------------------------
def _import_what_builds(config: TrainingConfig, hf_config: Any) -> None:
    """Import the model class and adapter libraries a build of ``config`` needs."""
    model_class(hf_config)
    if config.method is not Method.FULL:
        import_peft()
    if config.optimizer in (OptimizerName.ADAMW_8BIT, OptimizerName.PAGED_ADAMW_8BIT):
        import_bitsandbytes()


def _build_full_depth(config: TrainingConfig, cuda: CudaTarget | None) -> None:
    """Build the full-depth model, to be traced by the next :func:`_full_trace` in this process."""
    traces = step_traces(config, cuda)
    traces.tracer(traces.depth)


def _full_trace(config: TrainingConfig, cuda: CudaTarget | None, micro_batch: int) -> StepTrace:
    return step_traces(config, cuda).full_trace(micro_batch)


def _probed(config: TrainingConfig, cuda: CudaTarget | None) -> TakenTraces:
    """The traces behind ``config``'s linear fit, for the asking process to absorb."""
    traces = step_traces(config, cuda)
    _ = traces.linear  # fitting takes the probes
    return traces.taken()


class _Helper:
    """A forked copy of this process that runs tasks beside it, so a fit uses two cores.

    A task is a module-level function and picklable arguments; the copy runs tasks in the order
    sent and answers in that order. It starts with everything this process had imported and
    traced, and keeps what it traces itself (:func:`step_traces`) between tasks. Should it die,
    the tasks it still owed are run here instead.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end,), daemon=True)
        self._process.start()
        child_end.close()
        self._tasks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._answers: dict[int, tuple[str, Any]] = {}
        self._sent = 0
        self._received = 0

    @classmethod
    @contextmanager
    def fork(cls, *, worth_it: bool) -> Iterator[_Helper | None]:
        """A helper while the block runs, or None on one core, without ``fork``, or when not ``worth_it``."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if not worth_it or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
            yield None
            return
        with _heap_frozen():
            helper = cls()
            try:
                yield helper
            finally:
                helper.close()

    @property
    def busy(self) -> int:
        """Tasks sent and not answered yet."""
        return self._sent - self._received

    def submit(self, function: Callable[..., Any], *args: Any) -> int:
        """Send a task; returns its id for :meth:`result`."""
        task = self._sent
        self._tasks[task] = (function, args)
        self._sent += 1
        # Should the copy be gone, the task runs here when its answer is asked for.
        with suppress(OSError):
            self._conn.send((function, args))
        return task

    def poll(self) -> None:
        """Take in the answers that have arrived, without waiting."""
        while self.busy and self._conn.poll():
            self._receive()

    def result(self, task: int) -> Any:
        """The task's return value (waiting for it), or its exception raised here."""
        while task not in self._answers:
            self._receive()
        self._tasks.pop(task)
        return _unwrap(self._answers.pop(task))

    def _receive(self) -> None:
        try:
            answer = self._conn.recv()
        except (EOFError, OSError):
            answer = _run(*self._tasks[self._received])
        self._answers[self._received] = answer
        self._received += 1

    def close(self) -> None:
        if self.busy:
            # Leaving early (an error here): nothing will read what it is still tracing.
            self._process.terminate()
        else:
            with suppress(OSError):
                self._conn.send(None)
        self._process.join()
        self._conn.close()


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """Keep the garbage collector off every object that exists now, for the block's duration.

    A multi-second trace triggers full collections, each walking the whole heap of torch and
    transformers; frozen, they skip it. A forked copy keeps it frozen for life, which is Python's
    advice for fork (its collections then touch none of the pages it shares). Garbage among the
    frozen objects waits for the block's end. A heap someone else froze is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _serve(conn: Connection) -> None:
    """The helper's loop: run each task received, send back its answer; stop on None or EOF."""
    import torch

    # Traces allocate nothing; real ops in a forked child must not wait on the parent's thread pool.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent handles it and ends this copy.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(_run(*task))


def _run(function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", function(*args)
    except PlannerError as exc:
        # PlannerError does not survive pickling (its constructor takes three arguments).
        return "user-error", (type(exc), exc.field, exc.problem, exc.fix)
    except Exception:
        return "error", traceback.format_exc()


def _unwrap(answer: tuple[str, Any]) -> Any:
    status, value = answer
    if status == "ok":
        return value
    if status == "user-error":
        error_type, field, problem, fix = value
        raise error_type(field, problem, fix)
    raise RuntimeError(f"the trace helper process failed:\n{value}")


def _share(helper: _Helper | None, tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """Run independent tasks on both processes: the helper from the front, this one from the back.

    The helper is kept a task ahead (one running, one queued), so it seldom waits on this process;
    this one takes tasks from the back until the two meet. Results come back in task order.
    """
    if helper is None:
        return [function(*args) for function, args in tasks]
    results: list[Any] = [None] * len(tasks)
    sent: dict[int, int] = {}
    front, back = 0, len(tasks)
    while front < back:
        helper.poll()
        while helper.busy < 2 and front < back:
            function, args = tasks[front]
            sent[front] = helper.submit(function, *args)
            front += 1
        if front < back:
            back -= 1
            function, args = tasks[back]
            results[back] = function(*args)
    for index, task in sent.items():
        results[index] = helper.result(task)
    return results
