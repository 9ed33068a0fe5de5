"""What has been traced of a training step, kept so that no step is traced twice.

A :class:`TraceCache` keeps :class:`StepTraces` per traced step: asking again about the same
config, at any micro-batch, on any card with the same CUDA kernels, traces nothing new. The
estimator takes one cache (by default the process's :func:`shared_cache`); tests and long-lived
callers can give their own. The ``*_task`` functions are what a helper process runs (see
:mod:`planner.estimator._helper`): they work on its copy of the shared cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from planner.distributed import rank_preparer
from planner.estimator._linear import LinearPeak, probe_depths
from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import WINDOWS, CudaTarget, StepTrace, StepTracer, num_layers, truncated_config


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
        self.trainable: dict[int, int] = {}
        """depth -> bytes of the weights that train."""
        self.paged: dict[int, int] = {}
        """depth -> bytes of optimizer state in CUDA managed (paged) memory."""
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
            self._tracers[depth] = StepTracer(
                hf_config, self.config, cuda=self.cuda, prepare=rank_preparer(self.config)
            )
            self.resident[depth] = self._tracers[depth].resident_bytes
            self.trainable[depth] = self._tracers[depth].trainable_bytes
            self.paged[depth] = self._tracers[depth].paged_bytes
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

    def trainable_bytes(self) -> float:
        """Bytes of the weights that train, at full depth (what a checkpoint saves of the model)."""
        for depth in self.depths:
            if depth not in self.trainable:
                self.tracer(depth)
        return self._at_full_depth({d: float(self.trainable[d]) for d in self.depths})

    def paged_bytes(self) -> float:
        """Bytes of optimizer state a CUDA run keeps in managed memory (paged optimizers), at full
        depth: the full-depth model's own figure once built, else linear in depth from the probes."""
        if self.depth in self.paged:
            return float(self.paged[self.depth])
        for depth in self.depths:
            if depth not in self.paged:
                self.tracer(depth)
        return self._at_full_depth({d: float(self.paged[d]) for d in self.depths})

    def peak_at_one(self) -> float:
        """The fit's full-depth peak at micro-batch 1, from the probes at micro-batch 1 alone."""
        return max(
            self._at_full_depth({d: float(self.probe(d, 1).windows[w].peak) for d in self.depths})
            for w in range(len(WINDOWS))
        )

    def line_at_one(self) -> LinearPeak:
        """The fit, or until it is taken a line through the probes at micro-batch 1 alone, flat in
        micro-batch: at micro-batch 1 both give the depth extrapolation of those probes (the
        same bytes: integer arithmetic over one or two repeats of the layer pattern)."""
        if self._linear is not None:
            return self._linear
        at_one = {(d, m): self.probe(d, 1) for d in self.depths for m in (1, 2)}
        return LinearPeak.through(at_one, self.depth)

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
        return TakenTraces(
            resident=self.resident,
            trainable=self.trainable,
            paged=self.paged,
            probes=self.probes,
            full=self.full,
        )

    def absorb(self, taken: TakenTraces) -> None:
        """Add traces of this same step taken elsewhere (a helper process's)."""
        self.resident = {**taken.resident, **self.resident}
        self.trainable = {**taken.trainable, **self.trainable}
        self.paged = {**taken.paged, **self.paged}
        self.probes = {**taken.probes, **self.probes}
        self.full = {**taken.full, **self.full}


@dataclass(frozen=True)
class TakenTraces:
    """The traces of a :class:`StepTraces`, as plain data."""

    resident: dict[int, int]
    trainable: dict[int, int]
    paged: dict[int, int]
    probes: dict[tuple[int, int], StepTrace]
    full: dict[int, StepTrace]


class TraceCache:
    """The traces of the last ``kept`` steps asked for, each keyed by its step and CUDA target.

    Keyed by the step's shape (:meth:`~planner.schema.TrainingConfig.step_shape`) and ``cuda``, the
    only way a card or its overheads change a trace. Each entry holds at most one built
    full-depth model, which bounds the memory a cache holds.
    """

    def __init__(self, kept: int = 8) -> None:
        self.kept = kept
        self._steps: OrderedDict[tuple[str, CudaTarget | None], StepTraces] = OrderedDict()

    def get(self, config: TrainingConfig, cuda: CudaTarget | None) -> StepTraces:
        """The traces of ``config``'s step on ``cuda`` (new and empty the first time)."""
        step = config.step_shape()
        key = (step.key, cuda)
        if key not in self._steps:
            self._steps[key] = StepTraces(step, cuda)
            while len(self._steps) > self.kept:
                self._steps.popitem(last=False)
        self._steps.move_to_end(key)
        return self._steps[key]

    def clear(self) -> None:
        self._steps.clear()


_SHARED = TraceCache()


def shared_cache() -> TraceCache:
    """The process's cache: every estimator that is given none shares it (and so does a forked
    helper, which starts with a copy of it)."""
    return _SHARED


# -- what a helper process runs (module-level functions: they travel by name) --------------------
def build_full_depth_task(config: TrainingConfig, cuda: CudaTarget | None) -> None:
    """Build the full-depth model, to be traced by the next :func:`full_trace_task` here."""
    traces = shared_cache().get(config, cuda)
    traces.tracer(traces.depth)


def full_trace_task(config: TrainingConfig, cuda: CudaTarget | None, micro_batch: int) -> StepTrace:
    return shared_cache().get(config, cuda).full_trace(micro_batch)


def probed_task(config: TrainingConfig, cuda: CudaTarget | None) -> TakenTraces:
    """The traces behind ``config``'s linear fit, for the asking process to absorb."""
    traces = shared_cache().get(config, cuda)
    _ = traces.linear  # fitting takes the probes
    return traces.taken()
