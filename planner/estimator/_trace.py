"""Trace one real training step and report its steady-state peak of live tensor bytes.

The step is the Trainer's: forward under autocast with labels (the loss, logits upcast included),
backward, optimizer step, ``zero_grad(set_to_none=True)``. Optimizer state is created by a warm-up
step first, so the traced step is the steady state every later step repeats. With gradient
accumulation the second micro-batch runs with the first one's gradients alive, which is the
accumulation peak. Under :class:`FakeTensorMode` no memory is allocated and no weight is read.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from planner.estimator._setup import TrainingSetup, _in, build_training_setup, patched
from planner.estimator._tracker import LiveBytesTracker
from planner.schema import TrainingConfig

# CUDA's caching allocator hands out blocks in multiples of 512 bytes (c10/cuda/CUDACachingAllocator.cpp,
# kMinBlockSize), so every tensor's storage costs its size rounded up to 512.
CUDA_BLOCK_BYTES = 512


@dataclass(frozen=True)
class StepTrace:
    """Peak of one steady-state step, split by owner (bytes)."""

    peak: int
    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    temporaries: int


@dataclass(frozen=True)
class CudaTarget:
    """What changes when the step would run on CUDA rather than the CPU it is traced on.

    ``sdpa_backend`` is the attention kernel CUDA would pick ("flash", "efficient" or "math"). The
    fused kernels draw dropout in-kernel and save only the output and a log-sum-exp, as the CPU's
    fused kernel does without dropout; "math" saves the attention probabilities.
    """

    sdpa_backend: str


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


class StepTracer:
    """One built training setup whose steady-state step can be traced at several micro-batches.

    Building the model and creating optimizer state dominate a shallow trace, so they are done
    once; each :meth:`trace` then runs one step (the state after it equals the state before).
    ``cuda`` set: allocations are rounded to CUDA blocks and attention follows CUDA's kernel choice.
    ``cuda`` None: plain CPU semantics, which is what a real CPU run measures.
    """

    def __init__(self, hf_config: Any, config: TrainingConfig, *, cuda: CudaTarget | None, fake: bool = True):
        self.config = config
        self.cuda = cuda
        self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.setup = build_training_setup(
            hf_config, config, fake_mode=self._fake_mode, cuda_optimizer_layout=cuda is not None
        )
        self.tracker = LiveBytesTracker(round_to=CUDA_BLOCK_BYTES if cuda is not None else 1)
        self.tracker.track(_weight_tensors(self.setup.model))
        if self.setup.loss_head is not None:
            self.setup.loss_head.register_forward_pre_hook(lambda *_: setattr(self.tracker, "phase", "loss"))
        with self._tracing():
            _create_optimizer_state(self.setup)
        self.resident_bytes = self.tracker.live_bytes
        """Bytes live between steps (weights, quant state, optimizer state): a floor under every peak."""

    def _tracing(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(_in(self._fake_mode))
        stack.enter_context(self.tracker)
        stack.enter_context(_attention_as_on(self.cuda))
        stack.enter_context(_rows_are_single_sequences())
        return stack

    def trace(self, micro_batch: int) -> StepTrace:
        """Run (or fake) one steady-state training step at ``micro_batch`` and return its peak."""
        setup, tracker = self.setup, self.tracker
        with self._tracing():
            tracker.reset_peak()
            for _ in range(min(self.config.gradient_accumulation, 2)):
                tracker.phase = "forward"
                batch = setup.make_batch(micro_batch, self.config.seq_len)
                with setup.autocast():
                    loss = setup.model(**batch).loss
                tracker.phase = "backward"
                (loss / self.config.gradient_accumulation).backward()
                del loss, batch
            gradients = {
                tracker.storage_id(p.grad) for p in setup.trainable_parameters() if p.grad is not None
            }
            tracker.phase = "optimizer"
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
        optimizer_state = {
            tracker.storage_id(t)
            for state in setup.optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        }
        return _split(tracker, gradients, optimizer_state)


def trace_step(
    hf_config: Any, config: TrainingConfig, *, micro_batch: int, cuda: CudaTarget | None, fake: bool = True
) -> StepTrace:
    """Build ``config`` and trace one steady-state step at ``micro_batch`` (see :class:`StepTracer`)."""
    return StepTracer(hf_config, config, cuda=cuda, fake=fake).trace(micro_batch)


def _weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers, and the quant state (absmax, code...) of bitsandbytes 4-bit weights."""
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            tensors += [t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor)]
            state = state.state2
    return tensors


def _create_optimizer_state(setup: TrainingSetup) -> None:
    """One step on zero gradients: optimizers create their state lazily in the first ``step``."""
    for param in setup.trainable_parameters():
        param.grad = torch.zeros_like(param)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)


def _attention_as_on(cuda: CudaTarget | None) -> Any:
    """Make the traced attention keep what CUDA's kernel would keep (see :class:`CudaTarget`)."""
    if cuda is None:
        return _in(None)
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


def _rows_are_single_sequences() -> Any:
    """Tell transformers our rows are not packed, which it cannot check on fake tensors.

    On data it looks at the position ids and, seeing one sequence per row, uses causal attention
    with no mask; on fake tensors it cannot look and builds a (batch, 1, seq, seq) mask instead.
    """
    from transformers import masking_utils

    return patched(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


def _split(
    tracker: LiveBytesTracker, gradients: set[int | None], optimizer_state: set[int | None]
) -> StepTrace:
    peak = tracker.peak()
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
    return StepTrace(peak=peak.bytes, **totals)
