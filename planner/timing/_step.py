"""Seconds of one micro-step, optimizer step and eval forward: measured, calibrated or default.

A measured profile of this exact config on this card wins. Otherwise the roofline over the traced
step (see :mod:`planner.timing._roofline`) is scaled by a factor fitted from the card's measured
profiles (``calibrated``), or taken at the documented default efficiencies (``default``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from planner.errors import ProfileError
from planner.estimator import Helper, probe_depths, share
from planner.models import load_model_config
from planner.schema import (
    Card,
    MachineLoad,
    MeasuredProfile,
    MemoryEstimate,
    Precision,
    TimeSource,
    TrainingConfig,
)
from planner.step import cuda_target, num_layers, truncated_config
from planner.timing._counter import CostedTracer, OpCost, PhaseCosts
from planner.timing._kernels import BANDWIDTH_EFFICIENCY, OP_DISPATCH_SECONDS
from planner.timing._load import load_interval, load_note
from planner.timing._paging import host_paging, with_paging_interval
from planner.timing._roofline import ACCUMULATE_PHASE, RooflineStep, roofline_available, roofline_step

# A measured step time still misses what varies between runs of a whole trial (data order,
# thermal state, other processes): widen its own p10-p90 spread by this much on each side.
MEASURED_MARGIN = 0.05
# Calibration from other configs on the card leaves per-config differences (shapes, kernels).
CALIBRATED_MARGIN = 0.15
# At most this many of a card's profiles are re-traced to calibrate (each costs a shallow trace).
CALIBRATION_PROFILES = 3


class ProfileLookup(Protocol):
    """Where measured profiles come from (``planner.profiler.ProfileStore`` in practice)."""

    def find(self, config: TrainingConfig, card: str) -> MeasuredProfile | None: ...

    def for_card(self, card: str) -> list[MeasuredProfile]: ...


@dataclass(frozen=True)
class StepTimes:
    """Seconds of the pieces a trial repeats, at one micro-batch and padded length."""

    micro_step: float
    """Forward + backward of one micro-batch."""
    optimizer: float
    eval_forward: float
    """One no-grad forward of an eval micro-batch."""
    source: TimeSource
    relative_interval: tuple[float, float]
    """Multipliers giving the low and high end of what a real step may take."""
    note: str
    paging: float = 0.0
    """Of ``optimizer``: a paged optimizer's state crossing the host link when it does not fit on
    the card (:mod:`planner.timing._paging`), per optimizer step."""


DepthCosts = dict[int, dict[str, PhaseCosts]]
"""A step's op costs by phase, at each probe depth."""


def _with_accumulation(phases: dict[str, PhaseCosts], tracer: CostedTracer) -> dict[str, PhaseCosts]:
    """The phases plus what each accumulating micro-step adds: one in-place add per trainable tensor.

    Trainer zeroes the gradients with ``set_to_none=True`` (torch >= 2.0's default), so the first
    micro-step's backward hands each parameter its gradient without a copy; every later one of an
    accumulation finds a gradient there and adds the new one in place (torch/csrc/autograd/
    functions/accumulate_grad.h, ``accumulateGrad``: ``variable_grad += new_grad`` when grad mode
    is off): one kernel per trainable tensor reading both gradients and writing one. The traced
    step (accumulation 1) has none of these; the ``accumulate`` phase holds them, counted
    ``gradient_accumulation - 1`` times per optimizer step.
    """
    adds = [
        OpCost(kind="memory", flops=0, bytes=3 * p.numel() * p.element_size())
        for p in tracer.setup.trainable_parameters()
    ]
    return {**phases, ACCUMULATE_PHASE: PhaseCosts(adds)}


def _with_grad_scaler(phases: dict[str, PhaseCosts], trainable_bytes: int) -> dict[str, PhaseCosts]:
    """The phases plus fp16 mixed precision's unscaling pass, which the fake trace does not run.

    Trainer's ``fp16=True`` scales the loss with ``torch.amp.GradScaler``; before the optimizer
    steps (and before clipping), ``GradScaler.unscale_`` runs
    ``torch._amp_foreach_non_finite_check_and_unscale_`` over every gradient: each is read, checked
    for inf/NaN and written back multiplied by 1/scale (torch/amp/grad_scaler.py,
    ``_unscale_grads_``) -- one memory-bound pass reading and writing the trainable gradients'
    bytes, in one kernel per device and dtype group. ``GradScaler.update`` works on one-element
    tensors (negligible).
    """
    optimizer = phases.get("optimizer", PhaseCosts())
    unscale = OpCost(kind="memory", flops=0, bytes=2 * trainable_bytes)
    return {**phases, "optimizer": PhaseCosts([unscale, *optimizer.ops])}


def _config_shape(config: TrainingConfig) -> TrainingConfig:
    """The config without what does not change a single micro-step's cost (accumulation included)."""
    return config.with_changes(gradient_accumulation=1, torch_compile=False).step_shape()


@dataclass
class StepTraces:
    """Shallow traces' op costs, by config shape, CUDA target and micro-batch (or depth).

    A trace's FLOPs and bytes depend on the card only through what CUDA would run (its
    :class:`~planner.step.CudaTarget`): models of cards sharing one share these.
    """

    costs: dict[tuple[str, Any, int], DepthCosts] = field(default_factory=dict)
    tracers: dict[tuple[str, Any, int], CostedTracer] = field(default_factory=dict)

    def step_costs(self, shape: TrainingConfig, cuda: Any, micro_batch: int) -> DepthCosts:
        """Op costs of ``shape``'s step at ``micro_batch``, by probe depth (traced once), with what
        the trace does not run: accumulation's gradient adds, fp16's unscaling pass."""
        key = (shape.key, cuda, micro_batch)
        if key not in self.costs:
            hf_config = load_model_config(shape.model)
            self.costs[key] = {}
            for depth in probe_depths(hf_config):
                tracer = self._tracer(shape, hf_config, cuda, depth)
                phases = _with_accumulation(tracer.costs(micro_batch), tracer)
                if shape.precision is Precision.FP16:
                    phases = _with_grad_scaler(phases, tracer.trainable_bytes)
                self.costs[key][depth] = phases
        return self.costs[key]

    def _tracer(self, shape: TrainingConfig, hf_config: Any, cuda: Any, depth: int) -> CostedTracer:
        """One built shallow model per config, CUDA target and depth, traced at every micro-batch asked."""
        key = (shape.key, cuda, depth)
        if key not in self.tracers:
            self.tracers[key] = CostedTracer(truncated_config(hf_config, depth), shape, cuda=cuda)
        return self.tracers[key]


_TASKS_TRACES = StepTraces()
"""What :func:`costs_task` traced in this process, with its built models."""


def costs_task(shape: TrainingConfig, cuda: Any, micro_batch: int) -> DepthCosts:
    """:meth:`StepTraces.step_costs` as a task shared with a helper process (a module-level
    function: it travels by name, and each process keeps what it traced)."""
    return _TASKS_TRACES.step_costs(shape, cuda, micro_batch)


class StepTimeModel:
    """Step times for configs on one card, caching the shallow traces the roofline needs
    (in ``traces``: give several cards' models one to trace each shape once)."""

    def __init__(
        self,
        card: Card,
        profiles: ProfileLookup | None = None,
        traces: StepTraces | None = None,
        now: MachineLoad | None = None,
    ) -> None:
        """``now``: this machine's load while planning; a host profile measured under another load
        gets a wider interval (see :mod:`planner.timing._load`)."""
        self.card = card
        self.profiles = profiles
        self.now = now
        self.traces = traces if traces is not None else StepTraces()
        self._steps: dict[tuple[str, bool, int], RooflineStep] = {}
        self._scale: tuple[float, tuple[float, float] | None, str] | None = None

    # -- roofline -------------------------------------------------------------------------------
    def roofline(self, config: TrainingConfig, micro_batch: int) -> RooflineStep:
        """Roofline seconds of a full-depth step at default efficiencies (no calibration)."""
        hf_config = load_model_config(config.model)
        shape = _config_shape(config)
        cuda = cuda_target(self.card, shape, hf_config)
        costs = self.traces.step_costs(shape, cuda, micro_batch)
        step_key = (shape.key, config.torch_compile, micro_batch)
        if step_key not in self._steps:  # a sweep asks for the same step once per trial
            self._steps[step_key] = roofline_step(costs, num_layers(hf_config), self.card, config)
        return self._steps[step_key]

    def prefetch(self, steps: list[tuple[TrainingConfig, int]], helper: Helper | None) -> None:
        """Trace the op costs :meth:`times` will need for ``steps`` (config, micro-batch) now, each
        step's once, shared between this process and ``helper`` (two cores): the answers are the
        ones :meth:`times` would trace itself. Steps timed from a measured profile need none."""
        if helper is None:
            return  # one process: :meth:`times` traces each when it comes
        wanted: dict[tuple[str, Any, int], tuple[TrainingConfig, Any, int]] = {}
        for config, micro_batch in steps:
            measured = self.profiles.find(config, self.card.name) if self.profiles else None
            if measured is not None or not roofline_available(self.card, config):
                continue
            shape = _config_shape(config)
            cuda = cuda_target(self.card, shape, load_model_config(config.model))
            key = (shape.key, cuda, micro_batch)
            if key not in self.traces.costs:
                wanted[key] = (shape, cuda, micro_batch)
        tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
            (costs_task, args) for args in wanted.values()
        ]
        for key, costs in zip(wanted, share(helper, tasks), strict=True):
            self.traces.costs[key] = costs

    def _calibration(self) -> tuple[float, tuple[float, float] | None, str]:
        """(scale, relative interval, note): measured/roofline over the card's CUDA profiles.

        Without profiles the scale is 1 and the interval None: each step's own (per-term) interval.
        """
        if self._scale is None:
            profiles = [
                p
                for p in (self.profiles.for_card(self.card.name) if self.profiles else [])
                if p.device == "cuda"
            ]
            ratios = []
            for profile in profiles[:CALIBRATION_PROFILES]:
                config = profile.key.training_config()
                for measurement in profile.measurements:
                    predicted = self.roofline(config, measurement.micro_batch).micro_step
                    ratios.append(measurement.forward_backward_seconds / predicted)
            if ratios:
                scale = statistics.median(ratios)
                low = min(ratios) / scale * (1 - CALIBRATED_MARGIN)
                high = max(ratios) / scale * (1 + CALIBRATED_MARGIN)
                note = f"roofline x {scale:.2f}, fitted to {len(ratios)} measured step(s) on {self.card.name}"
                self._scale = (scale, (low, high), note)
            else:
                note = (
                    "per-op model from datasheet and published kernel efficiencies (GEMMs by shape: "
                    "measured achievable peak x tile/wave quantisation; attention by FlashAttention's "
                    f"reported efficiency; the rest at {BANDWIDTH_EFFICIENCY:.0%} of bandwidth; "
                    f"{OP_DISPATCH_SECONDS * 1e6:.0f} us CPU dispatch per eager op); 80% interval from "
                    "those terms' spreads; device time only; `planner profile` on this card calibrates it"
                )
                self._scale = (1.0, None, note)
        return self._scale

    # -- answers --------------------------------------------------------------------------------
    def times(
        self,
        config: TrainingConfig,
        micro_batch: int,
        padded_length: float,
        memory: MemoryEstimate | None = None,
    ) -> StepTimes:
        """Step times at ``micro_batch`` rows padded to ``padded_length`` tokens.

        ``memory``: the step's memory estimate on this card; a paged optimizer state that does not
        fit beside its peak adds its host traffic to the optimizer step (:mod:`._paging`). A
        measured profile of this config on this card already contains it.
        """
        # Work scales with the tokens in the micro-batch: m rows of length L cost what
        # m * L / seq_len full rows cost (attention's quadratic part is small next to the matmuls).
        rows = micro_batch * min(padded_length, config.seq_len) / config.seq_len
        profile = self.profiles.find(config, self.card.name) if self.profiles else None
        if profile is not None:
            nearest = min(profile.measurements, key=lambda m: abs(m.micro_batch - rows))
            low = nearest.forward_backward_p10_seconds / nearest.forward_backward_seconds - MEASURED_MARGIN
            high = nearest.forward_backward_p90_seconds / nearest.forward_backward_seconds + MEASURED_MARGIN
            note = f"measured on {profile.device_name} ({profile.created[:10]})"
            if profile.device == "cpu" and profile.machine_load is not None and self.now is not None:
                # A host step shares the CPUs with whatever else runs: another load, another speed.
                load_low, load_high = load_interval(profile.machine_load, self.now)
                low, high = low * load_low, high * load_high
                if said := load_note(profile.machine_load, self.now):
                    note = f"{note}, {said}"
            return StepTimes(
                micro_step=profile.forward_backward_seconds(rows),
                optimizer=profile.optimizer_seconds,
                eval_forward=profile.eval_forward_seconds(rows),
                source="measured",
                relative_interval=(low, high),
                note=note,
            )
        if not roofline_available(self.card, config):
            device = "cpu" if self.card.kind == "cpu" else "cuda"
            raise ProfileError(
                "card",
                f"{self.card.name} has no datasheet throughput and no measured profile of this config",
                f"run `planner profile {config.model} --device {device}` first",
            )
        scale, interval, note = self._calibration()
        step = self.roofline(config, micro_batch)
        fraction = rows / micro_batch
        micro_step = step.micro_step * scale * fraction
        # Per optimizer step: the update, and the in-place gradient adds of every micro-step
        # after an accumulation's first.
        optimizer = (step.optimizer + (config.gradient_accumulation - 1) * step.accumulate) * scale
        relative = step.interval if interval is None else interval
        paging = host_paging(memory, self.card) if memory is not None else None
        paging_seconds = 0.0
        if paging is not None:
            paging_seconds = paging.seconds or 0.0  # untimed on a card naming no host link
            # Host-link seconds, not device kernels: outside the calibration's scale.
            stepped = config.gradient_accumulation * micro_step + optimizer
            relative = with_paging_interval(relative, stepped, paging_seconds)
            note = f"{note}; {paging.note}"
        return StepTimes(
            micro_step=micro_step,
            optimizer=optimizer + paging_seconds,
            eval_forward=step.forward * scale * fraction,
            source="default" if interval is None else "calibrated",
            relative_interval=relative,
            note=note,
            paging=paging_seconds,
        )
