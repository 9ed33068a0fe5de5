"""A whole trial's wall-clock: start-up, optimizer steps, eval passes and checkpoint saves.

Counts follow ``transformers.Trainer``'s own arithmetic (``set_initial_training_values``): an epoch
is ceil(rows / micro-batch) micro-batches, and ceil(that / accumulation) optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.schema import EvalSpec, Hyperparameters, TimeEstimate
from planner.timing._step import StepTimes

# Per trial, before its first step: building the model (or loading it: see below), the Trainer
# and the tokenised dataset. ~0.1 s for the tiny CPU example: the sweep's clock minus its trials'
# training windows (benchmarks/sweep_e2e.py, quiet 2-core VM).
TRIAL_FIXED_SECONDS = 0.1
# Per micro-batch, on the host, beyond the profiled forward/backward: collating and padding the
# batch, Trainer's loss and logging bookkeeping, callbacks. ~2 ms: the tiny CPU example's
# train_runtime minus its profiled steps, eval and saves, over its 192 micro-batches (same
# benchmark). Invisible next to GPU steps of a model worth sweeping; it dominates tiny ones.
HOST_SECONDS_PER_MICRO_STEP = 0.002
# safetensors from a warm page cache or NVMe into GPU memory: ~2 GB/s end to end.
LOAD_BYTES_PER_SECOND = 2e9
# Checkpoints (weights or adapters, optimizer state, scheduler, RNG) to local disk: ~1 GB/s,
# plus a fixed cost for the small files and fsync.
SAVE_BYTES_PER_SECOND = 1e9
SAVE_FIXED_SECONDS = 0.2


@dataclass(frozen=True)
class TrialWork:
    """What a trial repeats, counted before it runs."""

    optimizer_steps: int
    micro_steps: int
    eval_passes: int
    eval_batches: int
    """Micro-batches in one eval pass."""
    checkpoint_saves: int
    checkpoint_bytes: int
    load_bytes: int


def count_work(
    hyper: Hyperparameters,
    *,
    micro_batch: int,
    accumulation: int,
    rows: int,
    eval_examples: int,
    eval_spec: EvalSpec,
    checkpoint_every_steps: int | None,
    checkpoint_bytes: int,
    load_bytes: int,
) -> TrialWork:
    """Optimizer steps, micro-steps, eval passes and saves of one trial, as Trainer counts them."""
    batches_per_epoch = math.ceil(rows / micro_batch)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    steps = hyper.max_steps if hyper.max_steps is not None else math.ceil(hyper.epochs * steps_per_epoch)
    full_epochs, rest = divmod(steps, steps_per_epoch)
    # The last step of an epoch takes only the micro-batches left over.
    micro_steps = full_epochs * batches_per_epoch + min(rest * accumulation, batches_per_epoch)
    epochs_started = math.ceil(steps / steps_per_epoch)
    if eval_examples == 0 or eval_spec.strategy == "no":
        evals = 0
    elif eval_spec.strategy == "epoch":
        evals = epochs_started
    else:
        assert eval_spec.every_steps is not None
        evals = steps // eval_spec.every_steps
    if checkpoint_every_steps is not None:
        saves = steps // checkpoint_every_steps
    elif evals:
        saves = evals
    else:
        saves = epochs_started
    return TrialWork(
        optimizer_steps=steps,
        micro_steps=micro_steps,
        eval_passes=evals,
        eval_batches=math.ceil(eval_examples / micro_batch) if eval_examples else 0,
        checkpoint_saves=saves,
        checkpoint_bytes=checkpoint_bytes,
        load_bytes=load_bytes,
    )


def trial_time(work: TrialWork, step: StepTimes) -> TimeEstimate:
    """Predicted seconds of a trial, by phase, with the interval its step-time source allows."""
    parts = {
        "startup": TRIAL_FIXED_SECONDS + work.load_bytes / LOAD_BYTES_PER_SECOND,
        "train": work.micro_steps * (step.micro_step + HOST_SECONDS_PER_MICRO_STEP)
        + work.optimizer_steps * step.optimizer,
        "eval": work.eval_passes * work.eval_batches * step.eval_forward,
        "checkpoints": work.checkpoint_saves
        * (SAVE_FIXED_SECONDS + work.checkpoint_bytes / SAVE_BYTES_PER_SECOND),
    }
    total = sum(parts.values())
    # The interval applies to the step-driven parts; start-up and saves are I/O figures we keep.
    stepped = parts["train"] + parts["eval"]
    fixed = total - stepped
    low, high = step.relative_interval
    return TimeEstimate(
        seconds=total,
        low_seconds=fixed + stepped * low,
        high_seconds=fixed + stepped * high,
        source=step.source,
        micro_step_seconds=step.micro_step,
        optimizer_step_seconds=step.optimizer,
        parts=parts,
        note=step.note,
    )
