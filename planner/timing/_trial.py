"""A whole trial's wall-clock: start-up, optimizer steps, eval passes and checkpoint saves.

Counts follow ``transformers.Trainer``'s own arithmetic (``set_initial_training_values``): an epoch
is ceil(rows / micro-batch) micro-batches, and ceil(that / accumulation) optimizer steps.

Around the device's forward, backward and optimizer step (:class:`StepTimes`) a trial spends host
time; each piece is this machine's measured speed (:class:`planner.schema.HostProfile`) times the
trial's own count, no constant taken from an example:

- start-up: Trainer's construction and ``train()`` set-up (measured), a trial across ranks its
  rank processes importing Trainer (measured in a fresh process), re-tokenising the data
  (measured with the real tokenizer while counting it), building the model (random init: its
  weight bytes at the measured init throughput, twice: torch's default init in each module's
  constructor, then the model's ``_init_weights`` in ``post_init``) or loading it (its bytes at the
  storage's measured read speed);
- per micro-batch: the collator on the expected padded shape (measured fixed + per row + per
  token) and Trainer's per-micro-batch loop (measured);
- per optimizer step: Trainer's bookkeeping (logging every step, callbacks, scheduler; measured)
  and clipping the gradients to ``max_grad_norm`` (Trainer's default 1.0): a norm over every
  trainable gradient, then scaling each, ~3 passes over their bytes at the device's bandwidth;
- per eval pass: Trainer's fixed cost (measured) and per batch its loop (measured), the collator
  and the device's forward;
- per checkpoint: Trainer's fixed files (measured on a one-tensor model) and the weights and
  optimizer state at the disk's measured write speed.

Without a host profile only the device's parts and the I/O at the storage figures below count,
and the estimate says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.schema import EvalSpec, HostProfile, Hyperparameters, MachineLoad, TimeEstimate
from planner.timing._load import load_interval, load_note
from planner.timing._step import StepTimes

# Without a measured host: safetensors from a warm page cache or NVMe, ~2 GB/s end to end, and
# checkpoints to local disk at ~1 GB/s (NVMe sequential write, before the page cache absorbs it).
LOAD_BYTES_PER_SECOND = 2e9
SAVE_BYTES_PER_SECOND = 1e9
# Passes over the trainable gradients' bytes to clip them: torch.nn.utils.clip_grad_norm_ reads
# each for its norm, then multiplies each in place by the clip coefficient (read + write).
CLIP_PASSES = 3
# Host figures without a measured repeat spread (a profile of the cheap part only, or one cached
# before the spread was recorded): a stated ±10% each side for their run-to-run spread.
HOST_MARGIN = 0.10


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
    """Weights read from storage (``init: pretrained``), else 0."""
    micro_batch: int = 1
    padded_length: float = 0.0
    """Expected tokens per row of a training micro-batch after dynamic padding."""
    eval_padded_length: float = 0.0
    build_bytes: int = 0
    """Weights initialised from the config (``init: random``), else 0."""
    trainable_bytes: int = 0
    tokenize_seconds: float = 0.0
    """Tokenising the training and eval data once, as each trial does."""
    device_bytes_per_second: float | None = None
    """Memory bandwidth the gradient clipping runs at (the card's, or the host's on the CPU)."""
    launch_seconds: float = 0.0
    """A trial across ranks: its fresh rank processes importing Trainer (side by side: one import)."""


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
    padded_length: float = 0.0,
    eval_padded_length: float = 0.0,
    build_bytes: int = 0,
    trainable_bytes: int = 0,
    tokenize_seconds: float = 0.0,
    device_bytes_per_second: float | None = None,
    launch_seconds: float = 0.0,
) -> TrialWork:
    """Optimizer steps, micro-steps, eval passes and saves of one trial, as Trainer counts them."""
    batches_per_epoch = math.ceil(rows / micro_batch)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    steps = hyper.max_steps if hyper.max_steps is not None else math.ceil(hyper.epochs * steps_per_epoch)
    full_epochs, rest = divmod(steps, steps_per_epoch)
    # The last step of an epoch takes only the micro-batches left over.
    micro_steps = full_epochs * batches_per_epoch + min(rest * accumulation, batches_per_epoch)
    epochs_started = math.ceil(steps / steps_per_epoch)
    final_eval = 0
    if eval_examples == 0 or eval_spec.strategy == "no":
        evals = 0
    elif eval_spec.strategy == "epoch":
        evals = epochs_started
    else:
        assert eval_spec.every_steps is not None
        evals = steps // eval_spec.every_steps
        # The objective is the metric at the end of training: when the cadence leaves the last
        # steps unevaluated, the recipe evaluates once more after train() (executor's
        # ``trainer_attempt``), a pass without a checkpoint save.
        final_eval = 1 if steps % eval_spec.every_steps else 0
    if checkpoint_every_steps is not None:
        saves = steps // checkpoint_every_steps
    elif evals:
        saves = evals
    else:
        saves = epochs_started
    evals += final_eval
    return TrialWork(
        optimizer_steps=steps,
        micro_steps=micro_steps,
        eval_passes=evals,
        eval_batches=math.ceil(eval_examples / micro_batch) if eval_examples else 0,
        checkpoint_saves=saves,
        checkpoint_bytes=checkpoint_bytes,
        load_bytes=load_bytes,
        micro_batch=micro_batch,
        padded_length=padded_length,
        eval_padded_length=eval_padded_length or padded_length,
        build_bytes=build_bytes,
        trainable_bytes=trainable_bytes,
        tokenize_seconds=tokenize_seconds,
        device_bytes_per_second=device_bytes_per_second,
        launch_seconds=launch_seconds,
    )


def _collate(host: HostProfile, rows: int, padded_length: float) -> float:
    """Seconds of the collator on ``rows`` rows padded to ``padded_length`` (0 if not measured)."""
    if host.collate_fixed_seconds is None:
        return 0.0
    return (
        host.collate_fixed_seconds
        + rows * (host.collate_row_seconds or 0.0)
        + rows * padded_length * (host.collate_token_seconds or 0.0)
    )


def host_parts(work: TrialWork, host: HostProfile) -> dict[str, float]:
    """Host seconds of a trial by phase (see the module's docstring); Trainer parts 0 if unmeasured."""
    build = (
        2 * work.build_bytes / host.init_bytes_per_second
        + work.load_bytes / host.storage_read_bytes_per_second
    )
    clip = (
        CLIP_PASSES * work.trainable_bytes / work.device_bytes_per_second
        if work.device_bytes_per_second
        else 0.0
    )
    micro = _collate(host, work.micro_batch, work.padded_length) + (host.trainer_micro_step_seconds or 0.0)
    eval_batch = _collate(host, work.micro_batch, work.eval_padded_length) + (host.eval_batch_seconds or 0.0)
    return {
        "startup": (host.trainer_setup_seconds or 0.0) + work.tokenize_seconds + build + work.launch_seconds,
        "train": work.micro_steps * micro
        + work.optimizer_steps * ((host.trainer_step_seconds or 0.0) + clip),
        "eval": work.eval_passes * ((host.eval_fixed_seconds or 0.0) + work.eval_batches * eval_batch),
        "checkpoints": work.checkpoint_saves
        * ((host.save_fixed_seconds or 0.0) + work.checkpoint_bytes / host.disk_write_bytes_per_second),
    }


def _without_host(work: TrialWork) -> dict[str, float]:
    """Start-up and saves at the documented storage figures when this machine was not measured."""
    return {
        "startup": work.load_bytes / LOAD_BYTES_PER_SECOND,
        "train": 0.0,
        "eval": 0.0,
        "checkpoints": work.checkpoint_saves * work.checkpoint_bytes / SAVE_BYTES_PER_SECOND,
    }


def host_spread(host: HostProfile) -> tuple[float, float]:
    """Multipliers giving the 80% interval of the host's parts: the repeat spread measured with
    them (p10 and p90 of the same Trainer step over its median), else ``HOST_MARGIN`` each side."""
    if host.repeat_spread_low is None or host.repeat_spread_high is None:
        return 1 - HOST_MARGIN, 1 + HOST_MARGIN
    return min(1.0, host.repeat_spread_low), max(1.0, host.repeat_spread_high)


def trial_time(
    work: TrialWork, step: StepTimes, host: HostProfile | None = None, now: MachineLoad | None = None
) -> TimeEstimate:
    """Predicted seconds of a trial, by phase, with the interval its sources allow.

    The device's parts take the step source's interval; the host's parts the repeat spread measured
    with them (:func:`host_spread`), both widened when ``now``'s load differs from the host
    profile's (see :mod:`._load`).
    """
    device = {
        "startup": 0.0,
        "train": work.micro_steps * step.micro_step + work.optimizer_steps * step.optimizer,
        "eval": work.eval_passes * work.eval_batches * step.eval_forward,
        "checkpoints": 0.0,
    }
    host_side = host_parts(work, host) if host is not None else _without_host(work)
    parts = {name: device[name] + host_side[name] for name in device}
    stepped = sum(device.values())
    hosted = sum(host_side.values())
    low, high = step.relative_interval
    notes = [step.note]
    load_low, load_high = (1.0, 1.0)
    host_low, host_high = 1 - HOST_MARGIN, 1 + HOST_MARGIN
    if host is not None:
        host_low, host_high = host_spread(host)
        load_low, load_high = load_interval(host.machine_load, now)
        if now is not None and (said := load_note(host.machine_load, now)):
            notes.append(f"host speeds {said}")
    else:
        notes.append("host-side costs (Trainer bookkeeping, collation, set-up) not measured on this machine")
    return TimeEstimate(
        seconds=stepped + hosted,
        low_seconds=stepped * low + hosted * host_low * load_low,
        high_seconds=stepped * high + hosted * host_high * load_high,
        source=step.source,
        micro_step_seconds=step.micro_step,
        optimizer_step_seconds=step.optimizer,
        paging_seconds=step.paging,
        parts=parts,
        note="; ".join(notes),
    )
