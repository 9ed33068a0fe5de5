"""Real training steps of a config on a device: the model the estimator traces, run for real and timed.

The model, adapters, 4-bit base and optimizer come from the estimator's own builder
(:func:`planner.step.build_training_setup`), so what is measured is what was predicted.
A step is Trainer's: ``model.train()``, forward with labels under autocast and backward per
micro-batch, then the optimizer step and ``model.zero_grad()``; with gradient accumulation a
second micro-batch runs with the first one's gradients alive. (Trainer's per-step calls walk the
whole model, frozen base included: on a small model on a CPU they are a few percent of a step.)
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from planner.errors import DeviceError, PlannerError
from planner.models import head_dim, load_model_config
from planner.profiler._device import nvml_used_bytes, release_memory, synchronize
from planner.schema import Card, Method, StepMeasurement, TrainingConfig
from planner.step import BITSANDBYTES_OPTIMIZERS, StepTracer, build_training_setup, is_out_of_memory

T = TypeVar("T")

_EVAL_REPEATS = 3


@dataclass(frozen=True)
class ProbeMemory:
    """Peak memory of the step sequence that reaches a run's peak, as the device reports it."""

    allocated: int | None = None
    reserved: int | None = None
    nvml_used: int | None = None
    context: int | None = None
    """CUDA: NVML used minus reserved at the same instant (context, cuBLAS/cuDNN handles)."""
    live: int | None = None
    """CPU: peak of live tensor bytes."""
    segments: int | None = None
    """CUDA: segments the caching allocator holds after the probe (``torch.cuda.memory_snapshot()``;
    the cache was emptied before it, and keeps what the peak reserved)."""

    def device_bytes(self, context_fallback: int) -> int:
        """What the estimator's ``peak_bytes`` predicts: peak reserved plus context, or live bytes."""
        if self.live is not None:
            return self.live
        assert self.reserved is not None
        return self.reserved + (self.context if self.context is not None else context_fallback)


class StepRunner:
    """The real model of ``config`` on ``device``, running Trainer-shaped steps at any micro-batch.

    On the CPU the model is built by the estimator's :class:`StepTracer` with real tensors, so the
    live-bytes peak is measured exactly as the trace tests measure it. On CUDA it is built directly
    on the GPU (random init from the config there: no weights read, no host-side init).
    """

    def __init__(
        self,
        config: TrainingConfig,
        device: torch.device | str = "cpu",
        *,
        prepare: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        """``prepare`` makes the built model one rank of a data-parallel job before its optimizer is
        built (``planner.distributed.rank_preparer(config, mesh=..., real=True)``)."""
        self.config = config
        self.device = torch.device(device)
        self.hf_config = load_model_config(config.model)
        self._tracer: StepTracer | None = None
        try:
            if self.device.type == "cpu":
                self._tracer = StepTracer(self.hf_config, config, cuda=None, fake=False, prepare=prepare)
                self.setup = self._tracer.setup
                _same_4bit_kernels_in_eval(self.setup.model)
            else:
                with torch.device(self.device):
                    self.setup = build_training_setup(
                        self.hf_config, config, fake_mode=None, cuda_optimizer_layout=False, prepare=prepare
                    )
        except PlannerError:
            raise
        except (RuntimeError, NotImplementedError, AssertionError, ValueError) as exc:
            if not _uses_bitsandbytes(config):
                raise
            raise DeviceError(
                "device",
                f"bitsandbytes cannot run {config.method.value}/{config.optimizer.value} on "
                f"{self.device.type}: {str(exc).splitlines()[0][:160]}",
                "profile on a CUDA machine, or choose --optimizer adamw",
            ) from None
        self.flops_per_token = training_flops_per_token(self.setup.model, self.hf_config, config.seq_len)

    # -- one step ---------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.setup.autocast_dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _batch(self, micro_batch: int) -> dict[str, torch.Tensor]:
        batch = self.setup.make_batch(micro_batch, self.config.seq_len)
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    def _timed(self, action: Callable[[], object]) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        action()
        synchronize(self.device)
        return max(time.perf_counter() - start, 1e-9)

    def _forward_backward(self, batch: dict[str, torch.Tensor]) -> None:
        # Trainer.training_step begins each micro-batch with model.train(), a walk over every
        # module (transformers trainer.py, training_step).
        self.setup.model.train()
        with self._autocast():
            loss = self.setup.model(**batch).loss
        (loss / self.config.gradient_accumulation).backward()

    def _optimizer_step(self) -> None:
        self.setup.optimizer.step()
        # Trainer clears gradients with model.zero_grad() (every parameter, frozen ones included),
        # not the optimizer's (trainer.py, _inner_training_loop, after optimizer and scheduler step).
        self.setup.model.zero_grad(set_to_none=True)

    def train_step(self, micro_batch: int) -> tuple[list[float], float]:
        """One optimizer step: seconds of each micro-batch's forward+backward, and of step+zero_grad.

        With accumulation, two micro-batches run (the second with the first's gradients alive, the
        accumulation peak); more would repeat the second.
        """
        times = []
        for _ in range(min(self.config.gradient_accumulation, 2)):
            batch = self._batch(micro_batch)
            times.append(self._timed(functools.partial(self._forward_backward, batch)))
            del batch
        return times, self._timed(self._optimizer_step)

    def eval_forward(self, micro_batch: int) -> float:
        """Seconds of one no-grad forward with loss in eval mode, what an eval pass repeats."""
        batch = self._batch(micro_batch)
        model = self.setup.model
        model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self._timed(lambda: model(**batch).loss)
        finally:
            model.train()

    # -- memory -----------------------------------------------------------------------------------
    def probe(self, micro_batch: int) -> ProbeMemory:
        """Peak memory of the steps that reach a run's peak at ``micro_batch``; raises on OOM.

        CUDA: from an emptied cache, two training steps (optimizer state exists after the first),
        an eval pass, and a training step after it, as a run alternates them. CPU: the live tensor
        bytes of one steady-state step and of an eval forward.
        """
        if self._tracer is not None:
            train_peak = self._tracer.trace(micro_batch).peak
            tracker = self._tracer.tracker
            with tracker:
                tracker.reset_peak()
                self.eval_forward(micro_batch)
                eval_peak = tracker.peak().bytes
            return ProbeMemory(live=max(train_peak, eval_peak))
        release_memory(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.train_step(micro_batch)
        self.train_step(micro_batch)
        self.eval_forward(micro_batch)
        self.train_step(micro_batch)
        synchronize(self.device)
        nvml = nvml_used_bytes(self.device)
        return ProbeMemory(
            allocated=torch.cuda.max_memory_allocated(self.device),
            reserved=torch.cuda.max_memory_reserved(self.device),
            nvml_used=nvml,
            context=None if nvml is None else max(0, nvml - torch.cuda.memory_reserved(self.device)),
            segments=len(torch.cuda.memory_snapshot()),
        )

    # -- a measurement ----------------------------------------------------------------------------
    def measure(
        self,
        micro_batch: int,
        *,
        steps: int,
        warmup: int,
        card: Card,
        enough: Callable[[list[float]], bool] | None = None,
        eval_repeats: int | None = None,
    ) -> StepMeasurement:
        """Memory, then ``warmup`` untimed and up to ``steps`` timed steps and a few eval forwards.

        ``enough``, given the forward+backward seconds timed so far, may end the timing early (a
        profile held to a time budget, which also times fewer eval forwards).
        """
        (measurement,) = self.measure_alternating(
            [micro_batch], steps=steps, warmup=warmup, card=card, enough=enough, eval_repeats=eval_repeats
        )
        return measurement

    def measure_alternating(
        self,
        micro_batches: list[int],
        *,
        steps: int,
        warmup: int,
        card: Card,
        enough: Callable[[list[float]], bool] | None = None,
        eval_repeats: int | None = None,
        memory: dict[int, ProbeMemory] | None = None,
    ) -> list[StepMeasurement]:
        """:meth:`measure` of several sizes at once, their timed steps alternating (a round times
        one step of each size, in order).

        Why alternate: a profile of two sizes is read through the line between them, whose
        intercept (the fixed cost per step) is a small difference of two step times, and a padded
        row much shorter than ``seq_len`` sits far down that line. On a shared machine whose
        speed drifts over seconds, sizes timed one after the other each catch a different moment,
        and the drift lands in that difference. Seen on the 2-core VM (tiny GPT-2, full, seq 256,
        sizes 1 and 2, ten budgeted profiles each way, the line read at 0.4 of a row): one after
        the other 5-77 ms, alternating 9-27 ms. Alternating, every size sees the same moments.

        ``enough`` is asked after each round with the first size's forward+backward seconds;
        ``memory``: the sizes' :meth:`probe` when the caller has probed them already.
        """
        memory = memory or {size: self.probe(size) for size in micro_batches}
        for size in micro_batches:
            for _ in range(warmup):
                self.train_step(size)
        forward_backward: dict[int, list[float]] = {size: [] for size in micro_batches}
        optimizer: dict[int, list[float]] = {size: [] for size in micro_batches}
        for _ in range(steps):
            for size in micro_batches:
                times, step = self.train_step(size)
                forward_backward[size] += times
                optimizer[size].append(step)
            if enough is not None and enough(forward_backward[micro_batches[0]]):
                break
        repeats = _EVAL_REPEATS if eval_repeats is None else max(1, eval_repeats)
        return [
            self._measurement(
                size,
                memory[size],
                forward_backward[size],
                optimizer[size],
                [self.eval_forward(size) for _ in range(repeats)],
                card,
            )
            for size in micro_batches
        ]

    def _measurement(
        self,
        micro_batch: int,
        memory: ProbeMemory,
        forward_backward: list[float],
        optimizer: list[float],
        evals: list[float],
        card: Card,
    ) -> StepMeasurement:
        fb = statistics.median(forward_backward)
        opt = statistics.median(optimizer)
        accumulation = self.config.gradient_accumulation
        tokens_per_second = micro_batch * self.config.seq_len * accumulation / (accumulation * fb + opt)
        achieved = self.flops_per_token * tokens_per_second / 1e12
        peak = None if card.kind == "cpu" else card.dense_tflops(self.config.precision)
        return StepMeasurement(
            micro_batch=micro_batch,
            forward_backward_seconds=fb,
            forward_backward_p10_seconds=percentile(forward_backward, 0.1),
            forward_backward_p90_seconds=percentile(forward_backward, 0.9),
            optimizer_seconds=opt,
            eval_forward_seconds=statistics.median(evals),
            tokens_per_second=tokens_per_second,
            achieved_tflops=achieved,
            mfu=None if peak is None else achieved / peak,
            peak_allocated_bytes=memory.allocated,
            peak_reserved_bytes=memory.reserved,
            nvml_used_bytes=memory.nvml_used,
            live_peak_bytes=memory.live,
            context_bytes=memory.context,
        )

    # -- out of memory ----------------------------------------------------------------------------
    def attempt(self, action: Callable[[int], T], micro_batch: int) -> T | None:
        """``action(micro_batch)``, or None if it ran out of memory (then everything it held is freed)."""
        try:
            return action(micro_batch)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Outside the handler: the exception and its traceback (whose frames hold the failed
        # step's tensors) are gone, so the collection below can free them.
        self.recover()
        return None

    def recover(self) -> None:
        """Drop what a failed step left behind (partial gradients, eval mode, cached blocks)."""
        self.setup.optimizer.zero_grad(set_to_none=True)
        self.setup.model.train()
        release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        """Free the model and optimizer (the device memory they hold)."""
        del self.setup
        self._tracer = None
        release_memory(self.device)


def training_flops_per_token(model: nn.Module, hf_config: Any, seq_len: int) -> float:
    """Model FLOPs of one trained token: ``4N + 2N_trainable + 3A``.

    ``N`` counts every matmul weight (4-bit ones by their logical shape), ``A = 4 * layers * seq_len
    * attention width`` the score and value matmuls per token. Forward is ``2N + A``, backward
    ``2N + 2A`` for input gradients plus ``2N_trainable`` for weight gradients, so full fine-tuning
    gives PaLM's ``6N + 12LHQT``. Recomputation under checkpointing is not counted (MFU, not HFU).
    """
    from transformers.pytorch_utils import Conv1D

    matmul = trainable = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            count = module.in_features * module.out_features
        elif isinstance(module, Conv1D):
            count = module.weight.shape[0] * module.weight.shape[1]
        else:
            continue
        matmul += count
        if module.weight.requires_grad:
            trainable += count
    heads = int(hf_config.num_attention_heads)
    attention = 4 * int(hf_config.num_hidden_layers) * seq_len * heads * head_dim(hf_config)
    return float(4 * matmul + 2 * trainable + 3 * attention)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _uses_bitsandbytes(config: TrainingConfig) -> bool:
    return config.method is Method.QLORA or config.optimizer in BITSANDBYTES_OPTIMIZERS


def _same_4bit_kernels_in_eval(model: nn.Module) -> None:
    """Keep bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16 it repacks a 4-bit weight in place on the first eval-mode no-grad
    forward, which fails for small shapes and changes the layout under the training steps that
    follow; an eval pass on CUDA runs the training kernels, so the CPU run keeps them too.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False  # type: ignore[assignment]
