"""Trace one real training step and report its steady-state peak of live tensor bytes.

The step is the Trainer's: forward under autocast with labels (the loss, logits upcast included),
backward, optimizer step, ``zero_grad`` (``set_to_none`` as the stack states, torch's True by
default: see ``TargetStack.zero_grad_set_to_none``). Optimizer state is created by a warm-up
step first, so the traced step is the steady state every later step repeats. With gradient
accumulation the second micro-batch runs with the first one's gradients alive, which is the
accumulation peak. Under :class:`FakeTensorMode` no memory is allocated and no weight is read.

Next to the step's peak, the peak of each of its :data:`WINDOWS` is reported: within a window the
peak stays at one moment whatever the micro-batch, so its bytes are linear in micro-batch (and,
for identical layers, in depth); the step's peak, their maximum, is not. Gradients pile up as the
backward pass frees activations, so small micro-batches peak at its end (or in the optimizer
step), large ones at its start. Between the first and the last layer the backward reaches, each
layer's peak is linear in its index (identical layers), so those two layers bound the others.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import sys
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_leaves

from planner.errors import ConfigError
from planner.schema import TrainingConfig
from planner.step._autocast import CudaAutocastPolicy
from planner.step._imports import entered, patched
from planner.step._loss import loss_as_stated
from planner.step._optimizers import paged_state_tensors
from planner.step._setup import TrainingSetup, build_training_setup
from planner.step._target import CUDA_BLOCK_BYTES, CudaTarget
from planner.step._tracker import LiveBytesTracker, LivePeak


@dataclass(frozen=True)
class PeakSplit:
    """A peak of live tensor bytes, split by owner (bytes)."""

    peak: int
    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    temporaries: int


_GRADIENT_BUCKETS = "gradient_buckets"
"""The attribute a prepared model keeps DDP's gradient buckets in (``planner.distributed``)."""
ZERO_ENGINE = "zero_engine"
"""The attribute of a prepared model that holds how to wrap its setup in DeepSpeed's ZeRO engine
(``planner.distributed``): a function of the built :class:`TrainingSetup` returning the engine's,
called while the tracker watches so that every buffer the engine allocates is counted."""

WINDOWS = (
    "forward",
    "head_backward",
    "first_layer_backward",
    "last_layer_backward",
    "tail_backward",
    "optimizer_step",
)
"""The windows of a step whose peaks a trace reports: forward and loss; backward through the
output head; through the first layer (block, for alternating layers) it reaches; through the last
one; after it (embeddings); optimizer step and ``zero_grad``. With accumulation, the higher of the
micro-batches' peaks in each."""


@dataclass(frozen=True)
class StepTrace(PeakSplit):
    """Peak of one steady-state step, split by owner (bytes), and the peak of each of its windows."""

    windows: tuple[PeakSplit, ...]
    """The peak of each of :data:`WINDOWS`, in that order."""
    allocations: AllocationStream | None = None
    """On a CUDA target: what the caching allocator is asked for, in order (see
    :class:`AllocationStream`); None on the host."""


@dataclass(frozen=True)
class AllocationStream:
    """The allocations and frees behind a traced step, as a caching allocator would receive them.

    ``setup`` is what exists before the first step (weights, quant state) and what the warm-up
    step creates (optimizer state), in order; ``step`` is one steady-state step. Each event is
    ``(block, bytes)``: an allocation when ``bytes`` > 0, the block's free when < 0. Blocks are
    numbered by first appearance, so the same step traced twice gives equal streams. Frees of
    blocks the stream never allocated (storages of an earlier step dying late) are left out.
    """

    setup: tuple[tuple[int, int], ...]
    step: tuple[tuple[int, int], ...]
    outside_allocator: frozenset[int] = frozenset()
    """Setup blocks a CUDA run takes outside the caching allocator (a paged optimizer's managed
    memory); they are in the stream, sized, so the trace's live bytes still hold them."""

    @classmethod
    def of(
        cls, setup: list[tuple[int, int]], step: list[tuple[int, int]], outside: Collection[int | None] = ()
    ) -> AllocationStream:
        numbers: dict[int, int] = {}
        numbered: list[list[tuple[int, int]]] = [[], []]
        allocations = itertools.count()
        for part, events in enumerate((setup, step)):
            for block, delta in events:
                if delta > 0:
                    # A new number per allocation: a storage resized in place (freed, then
                    # allocated again) is a new block each time it grows.
                    numbers[block] = next(allocations)
                elif block not in numbers:
                    continue
                numbered[part].append((numbers[block], delta))
        return cls(
            setup=tuple(numbered[0]),
            step=tuple(numbered[1]),
            outside_allocator=frozenset(numbers[block] for block in outside if block in numbers),
        )


def truncated_config(hf_config: Any, layers: int) -> Any:
    """A copy of ``hf_config`` with ``layers`` decoder/encoder layers (per-layer patterns sliced)."""
    config = copy.deepcopy(hf_config)
    config.num_hidden_layers = layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):
        config.layer_types = layer_types[:layers]
    return config


def num_layers(hf_config: Any) -> int:
    return int(hf_config.num_hidden_layers)


def layer_period(hf_config: Any) -> int:
    """How many layers the layer pattern repeats over (1; 2 where e.g. Gemma 2 alternates)."""
    layer_types = getattr(hf_config, "layer_types", None)
    if not isinstance(layer_types, list) or not layer_types:
        return 1
    return next(
        p
        for p in range(1, len(layer_types) + 1)
        if all(layer_types[i] == layer_types[i % p] for i in range(len(layer_types)))
    )


class StepTracer:
    """One built training setup whose steady-state step can be traced at several micro-batches.

    Building the model and creating optimizer state dominate a shallow trace, so they are done
    once; each :meth:`trace` then runs one step (the state after it equals the state before).
    ``cuda`` set: allocations are rounded to CUDA blocks and attention follows CUDA's kernel choice.
    ``cuda`` None: plain CPU semantics, which is what a real CPU run measures.
    """

    def __init__(
        self,
        hf_config: Any,
        config: TrainingConfig,
        *,
        cuda: CudaTarget | None,
        fake: bool = True,
        prepare: Callable[[nn.Module], nn.Module] | None = None,
    ):
        self.config = config
        self.cuda = cuda
        self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.setup = build_training_setup(
            hf_config,
            config,
            fake_mode=self._fake_mode,
            cuda_optimizer_layout=cuda is not None,
            prepare=prepare,
        )
        self.tracker = LiveBytesTracker(
            round_to=CUDA_BLOCK_BYTES if cuda is not None else 1, record_stream=cuda is not None
        )
        self.tracker.track(_weight_tensors(self.setup.model))
        if self.setup.loss_head is not None:
            self.setup.loss_head.register_forward_pre_hook(lambda *_: setattr(self.tracker, "phase", "loss"))
        self._buckets = list(getattr(self.setup.model, _GRADIENT_BUCKETS, ()))
        self.tracker.track(self._buckets)
        self.trainable_bytes = sum(p.numel() * p.element_size() for p in self.setup.trainable_parameters())
        """Bytes of the weights that train (all of them, or the adapters): what a checkpoint saves
        besides the optimizer state."""
        engine = getattr(self.setup.model, ZERO_ENGINE, None)
        with self._tracing():
            _gather_fsdp_units_once(self.setup.model)
            if engine is None:
                _create_optimizer_state(self.setup, self.config.stack.zero_grad_set_to_none)
            else:
                self.setup = engine(self.setup)
        if engine is not None:
            # The engine makes its optimizer state at construction; one step more makes what
            # its first step allocates lazily (stage 3's record of the order it gathers
            # parameters in), so every traced step is a steady one.
            with self._tracing():
                _warm_up_engine(self.setup, config)
            self.tracker.phase = "setup"  # what the warm-up left is resident, like the weights
        self._setup_stream = list(self.tracker.stream or [])
        paged = paged_state_tensors(config.optimizer, self.setup.optimizer) if cuda is not None else []
        self._paged = {self.tracker.storage_id(t) for t in paged}
        self.paged_bytes = sum(delta for sid, delta in self._setup_stream if sid in self._paged and delta > 0)
        """Bytes (as the trace counts them) of optimizer state a CUDA run keeps in managed (paged)
        memory, outside the caching allocator (bitsandbytes' paged optimizers); 0 on the host."""
        self._layers = _repeated_layers(self.setup.model, num_layers(hf_config))
        self._period = layer_period(hf_config)
        self.resident_bytes = self.tracker.live_bytes
        """Bytes live between steps (weights, quant state, optimizer state): a floor under every peak."""

    def _tracing(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(entered(self._fake_mode))
        if self.setup.step_context is not None:
            stack.enter_context(self.setup.step_context())
        stack.enter_context(self.tracker)
        stack.enter_context(_attention_as_on(self.cuda))
        stack.enter_context(_rows_are_single_sequences())
        stack.enter_context(_experts_through_their_fallback())
        stack.enter_context(_labels_are_known())
        target = self.config.stack
        stack.enter_context(
            loss_as_stated(self.setup.model, self.setup.task, target.loss_upcast, target.loss_shifts_logits)
        )
        if self.cuda is not None and self.setup.autocast_dtype is not None:
            stack.enter_context(CudaAutocastPolicy())
        return stack

    def trace(self, micro_batch: int) -> StepTrace:
        """Run (or fake) one steady-state training step at ``micro_batch`` and return its peaks.

        An op with a data-dependent output size (e.g. ``nonzero``) runs on the batch's labels,
        whose values the trace knows (see :func:`_labels_are_known`); on any other data it cannot
        be followed without it: that is a one-line :class:`ConfigError` naming the op.
        """
        try:
            return self._trace(micro_batch)
        except (DataDependentOutputException, DynamicOutputShapeException) as exc:
            model = type(self.setup.model).__name__
            raise ConfigError(
                "model",
                f"{model}'s training step runs {exc.func}, whose output size depends on the data, "
                "so a trace without data cannot follow it",
                "measure it on the device with `planner profile`"
                + (
                    ", or set problem_type (e.g. single_label_classification) in its config.json"
                    if self.setup.task == "sequence-classification"
                    else ""
                ),
            ) from None

    def _trace(self, micro_batch: int) -> StepTrace:
        setup, tracker = self.setup, self.tracker
        marks = _WindowMarks(tracker, self._layers, self._period)
        stream_start = len(tracker.stream) if tracker.stream is not None else 0
        with self._tracing(), marks:
            tracker.reset_peak()
            for _ in range(min(self.config.gradient_accumulation, 2)):
                marks.start_micro_batch()
                tracker.phase = "forward"
                batch = setup.make_batch(micro_batch, self.config.seq_len)
                with setup.autocast():
                    loss = setup.model(**batch).loss
                tracker.phase = "backward"
                marks.reached("backward")
                setup.run_backward(loss / self.config.gradient_accumulation)
                marks.reached("backward_done")
                del loss, batch
            # DDP's gradient buckets (see planner.distributed) hold a copy of the gradients.
            gradients = {
                tracker.storage_id(p.grad) for p in setup.trainable_parameters() if p.grad is not None
            } | {tracker.storage_id(bucket) for bucket in self._buckets}
            optimizer_start = tracker.mark()
            tracker.phase = "optimizer"
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=self.config.stack.zero_grad_set_to_none)
            spans = [*marks.spans(), (optimizer_start, tracker.mark())]
            step, *peaks = [tracker.peak(), *tracker.peaks(spans)]
        optimizer_state = {
            tracker.storage_id(t)
            for state in setup.optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        }
        *passes, optimizer = [_split(peak, gradients, optimizer_state) for peak in peaks]
        allocations = None
        if tracker.stream is not None:
            allocations = AllocationStream.of(self._setup_stream, tracker.stream[stream_start:], self._paged)
            # A reused tracer keeps only what comes before its first step.
            del tracker.stream[stream_start:]
        # Spans come micro-batch by micro-batch; a window's peak is its higher one (the first on a tie).
        per_pass = len(WINDOWS) - 1
        windows = [max(passes[w::per_pass], key=lambda split: split.peak) for w in range(per_pass)]
        return StepTrace(
            **asdict(_split(step, gradients, optimizer_state)),
            windows=(*windows, optimizer),
            allocations=allocations,
        )


def trace_step(
    hf_config: Any, config: TrainingConfig, *, micro_batch: int, cuda: CudaTarget | None, fake: bool = True
) -> StepTrace:
    """Build ``config`` and trace one steady-state step at ``micro_batch`` (see :class:`StepTracer`)."""
    return StepTracer(hf_config, config, cuda=cuda, fake=fake).trace(micro_batch)


class _WindowMarks:
    """Where each micro-batch's windows (all of :data:`WINDOWS` but the optimizer's) start and end.

    Positions are the tracker's :meth:`~LiveBytesTracker.mark`; the backward's passage through the
    first and last layer blocks it reaches is marked by hooks on their outputs' and inputs'
    gradients, set in forward (not in a checkpointed layer's recomputation during backward).
    Marks that never come (no layers found, an input without gradient) fall back on the
    backward's end.
    """

    def __init__(self, tracker: LiveBytesTracker, layers: list[nn.Module], period: int) -> None:
        self.tracker = tracker
        self.micro_batches: list[dict[str, int]] = []
        # (module, "output" or "input" gradient, mark): the backward meets the last layers first.
        self._hooked: list[tuple[nn.Module, str, str]] = []
        if layers:
            self._hooked = [
                (layers[-1], "output", "first_layer"),
                (layers[-period], "input", "first_layer_done"),
                (layers[period - 1], "output", "last_layer"),
                (layers[0], "input", "last_layer_done"),
            ]
        self._handles: list[Any] = []

    def __enter__(self) -> _WindowMarks:
        for module, which, mark in self._hooked:
            if which == "output":
                handle = module.register_forward_hook(functools.partial(self._hook_output, mark))
            else:
                handle = module.register_forward_pre_hook(
                    functools.partial(self._hook_input, mark), with_kwargs=True
                )
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def start_micro_batch(self) -> None:
        self.micro_batches.append({"forward": self.tracker.mark()})

    def reached(self, mark: str) -> None:
        """Note that the step reached ``mark`` now (the first time, in this micro-batch)."""
        self.micro_batches[-1].setdefault(mark, self.tracker.mark())

    def _hook_gradient(self, mark: str, tensor: Any) -> None:
        if self.tracker.phase == "forward" and isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            tensor.register_hook(lambda grad: self.reached(mark))

    def _hook_output(self, mark: str, module: nn.Module, args: Any, output: Any) -> None:
        self._hook_gradient(mark, next((t for t in tree_leaves(output) if isinstance(t, torch.Tensor)), None))

    def _hook_input(self, mark: str, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        self._hook_gradient(mark, hidden)

    def spans(self) -> list[tuple[int, int]]:
        """Each micro-batch's window spans, in :data:`WINDOWS` order (the optimizer's excepted)."""
        spans = []
        for marks in self.micro_batches:
            done = marks["backward_done"]
            first, first_done = marks.get("first_layer", done), marks.get("first_layer_done", done)
            last, last_done = marks.get("last_layer", done), marks.get("last_layer_done", done)
            spans += [
                (marks["forward"], marks["backward"]),
                (marks["backward"], first),
                (first, first_done),
                (last, last_done),
                (last_done, done),
            ]
        return spans


def _repeated_layers(model: nn.Module, depth: int) -> list[nn.Module]:
    """The model's ``depth`` repeated layers: its largest list of that many modules of one class."""
    candidates = [
        list(modules)
        for modules in model.modules()
        if isinstance(modules, nn.ModuleList)
        and len(modules) == depth
        and len({type(m) for m in modules}) == 1
    ]
    if not candidates:
        return []
    return max(candidates, key=lambda layers: sum(p.numel() for layer in layers for p in layer.parameters()))


def _weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers, and the quant state (absmax, code...) of bitsandbytes 4-bit weights."""
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            tensors += [t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor)]
            state = state.state2
    return tensors


def _gather_fsdp_units_once(model: nn.Module) -> None:
    """All-gather and reshard every FSDP2 unit once, as the first step's forward would.

    FSDP2 allocates a unit's all-gather buffers at its first all-gather and from then on frees and
    regrows their storage in place; gathering once in the setup makes them exist (at size 0) from
    then on, so each traced step sees them regrow, counted as weights.
    """
    if "torch.distributed.fsdp" not in sys.modules:
        return  # nothing imported FSDP, so no module is sharded by it
    from torch.distributed.fsdp import FSDPModule

    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for unit in units:
        unit.unshard()
    for unit in units:
        unit.reshard()


def _create_optimizer_state(setup: TrainingSetup, set_to_none: bool) -> None:
    """One step on zero gradients: optimizers create their state lazily in the first ``step``.
    Without ``set_to_none`` the gradients stay, resident like the weights (``TargetStack``)."""
    for param in setup.trainable_parameters():
        param.grad = torch.zeros_like(param)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=set_to_none)


def _warm_up_engine(setup: TrainingSetup, config: TrainingConfig) -> None:
    """One step of an engine-wrapped setup (a micro-batch of one row per accumulated micro-batch)."""
    for _ in range(min(config.gradient_accumulation, 2)):
        loss = setup.model(**setup.make_batch(1, config.seq_len)).loss
        setup.run_backward(loss)
        del loss
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=config.stack.zero_grad_set_to_none)


def _attention_as_on(cuda: CudaTarget | None) -> Any:
    """Make the traced attention keep what CUDA's kernel would keep (see :class:`CudaTarget`)."""
    if cuda is None:
        return entered(None)
    if cuda.sdpa_backend == "math":
        return sdpa_kernel(SDPBackend.MATH)
    original = F.scaled_dot_product_attention

    @functools.wraps(original)
    def fused_attention(
        query: Any,
        key: Any,
        value: Any,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        # CUDA's fused kernels regenerate the dropout mask from a seed in backward, storing nothing
        # extra; the CPU's fused kernel refuses dropout, so trace it without.
        return original(query, key, value, attn_mask, 0.0, *args, **kwargs)

    return patched(F, "scaled_dot_product_attention", fused_attention)


def _experts_through_their_fallback() -> Any:
    """Run mixture-of-experts layers through transformers' own grouped-matmul op.

    transformers' MoE layers call ``torch.nn.functional.grouped_mm`` when the device has a kernel
    for the dtype, else its registered fallback op (``transformers::grouped_mm_fallback``). The
    traced CPU device has grouped_mm for bf16 only (so fp32 and mixed-precision experts fail on
    fake tensors); the fallback has a fake implementation and, like the kernel, allocates just
    the output (and in backward the input and weight gradients), so the trace keeps the bytes a
    CUDA step allocates.
    """
    try:
        from transformers.integrations import moe
    except ImportError:  # a transformers without MoE integrations has nothing to redirect
        return entered(None)
    return patched(moe, "_can_use_grouped_mm", lambda *args, **kwargs: False)


# Elements of the largest tensor whose values a fake trace keeps: a micro-batch's class labels
# (one per row; the estimator's micro-batches stop at 4096).
_KNOWN_VALUES_NUMEL = 4096


def _labels_are_known() -> Any:
    """Let the fake trace compute on the batch's labels, whose values we chose.

    ``FakeTensorMode`` keeps the real value of a tensor made with ``torch.tensor`` (a "constant")
    and runs ops whose inputs are all constants for real, so data-dependent ops on them (DeBERTa's
    classifier keeps the labelled rows with ``(labels >= 0).nonzero()`` when the config names no
    ``problem_type``) get the shape a real step gets. It keeps only constants of at most
    ``CONSTANT_NUMEL_LIMIT`` elements (1: scalars), too few for a micro-batch of labels; raised
    while tracing. Nothing else the step makes is a constant: weights and activations stay fake.
    """
    from torch._subclasses import fake_tensor

    return patched(fake_tensor, "CONSTANT_NUMEL_LIMIT", _KNOWN_VALUES_NUMEL)


def _rows_are_single_sequences() -> Any:
    """Tell transformers our rows are not packed, which it cannot check on fake tensors.

    On data it looks at the position ids and, seeing one sequence per row, uses causal attention
    with no mask; on fake tensors it cannot look and builds a (batch, 1, seq, seq) mask instead.
    """
    from transformers import masking_utils

    return patched(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


def _split(peak: LivePeak, gradients: set[int | None], optimizer_state: set[int | None]) -> PeakSplit:
    totals = {"weights": 0, "gradients": 0, "optimizer_state": 0, "activations": 0, "temporaries": 0}
    for sid, nbytes in peak.live.items():
        if sid in optimizer_state:
            owner = "optimizer_state"
        elif sid in gradients:
            owner = "gradients"
        elif peak.phases[sid] == "setup":
            owner = "weights"
        elif peak.phases[sid] == "forward":
            owner = "activations"
        else:
            owner = "temporaries"
        totals[owner] += nbytes
    return PeakSplit(peak=peak.bytes, **totals)
