"""``profile_config``: measure a config on this machine's device, per micro-batch, into a MeasuredProfile."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from planner.errors import ConfigError
from planner.estimator import Estimator
from planner.profiler._calibration import calibrated_overhead
from planner.profiler._device import device_name, profile_card_name, resolve_device
from planner.profiler._finder import Prediction, runner_probe, search_max_micro_batch
from planner.profiler._host import machine_load
from planner.profiler._runner import ProbeMemory, StepRunner
from planner.profiler._store import library_versions
from planner.schema import Card, MeasuredProfile, ProfileKey, StepMeasurement, TrainingConfig

Progress = Callable[[str], None]

# On the CPU a profile is a quick local check (tests, tiny sweeps): cap the sizes it times.
CPU_MAX_MICRO_BATCH = 8
CPU_MAX_TOKENS = 4096
DEFAULT_STEPS = 5
DEFAULT_WARMUP = 2
# A budgeted profile still times this many steps per size: fewer give no spread (p10-p90).
MIN_BUDGETED_STEPS = 3

Budget = Callable[[float], float]
"""Given the measured seconds per row of a step, the seconds a profile may take in all."""


def profiled_micro_batches(max_micro_batch: int, device: torch.device, seq_len: int) -> list[int]:
    """1, half the max and the max: the line through them gives step time at any size between.

    On the CPU the max is capped to ``CPU_MAX_MICRO_BATCH`` and ``CPU_MAX_TOKENS`` per micro-batch.
    """
    top = max(1, max_micro_batch)
    if device.type == "cpu":
        top = min(top, CPU_MAX_MICRO_BATCH, max(1, CPU_MAX_TOKENS // seq_len))
    return sorted({1, max(1, top // 2), top})


def profile_config(
    config: TrainingConfig,
    card: Card,
    micro_batches: list[int] | None = None,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    steps: int = DEFAULT_STEPS,
    warmup: int = DEFAULT_WARMUP,
    find_max: bool = False,
    budget: Budget | None = None,
) -> MeasuredProfile:
    """Run real training steps of ``config`` on ``card``'s device and return what they measured.

    Per micro-batch (default: points the estimator picks, see :func:`profiled_micro_batches`): step
    times (median, p10, p90 of ``steps`` after ``warmup``), optimizer and eval-forward times,
    tokens/s, achieved TFLOP/s and MFU, and peak memory (CUDA: allocated, reserved, NVML; CPU: live
    tensor bytes). A size that runs out of memory is listed in ``out_of_memory``. ``find_max`` runs
    the max-micro-batch finder first (on the CPU within half the available memory) and profiles
    around its answer. ``budget`` holds the profile to a time allowance it computes from the first
    timed steps; the sizes are then timed alternating (see ``StepRunner.measure_alternating``: the
    budgeted profile is the planner's own, read through the line between its sizes) for at least
    ``MIN_BUDGETED_STEPS`` rounds, until the allowance is spent. Nothing is saved here.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(
            "steps", f"need at least 1 timed step and no negative warm-up, got {steps}", "e.g. 5"
        )
    if micro_batches is not None and (not micro_batches or any(m <= 0 for m in micro_batches)):
        raise ConfigError(
            "micro-batch", f"sizes must be positive integers, got {micro_batches}", "e.g. 1,2,4"
        )
    start = time.perf_counter()
    say = progress or (lambda _message: None)
    target = resolve_device(device, card)
    # The estimator is asked only for what it decides: the default sizes, the finder's start.
    estimator = (
        Estimator(config, card, calibrated_overhead(card)) if find_max or micro_batches is None else None
    )
    say(f"building {config.model} on {target.type}")
    runner = StepRunner(config, target)
    try:
        search = None
        if estimator is not None and find_max:
            say("estimating the max micro-batch")
            finder = estimator
            if target.type == "cpu":
                # A failed CPU allocation kills the process instead of raising: keep the probes
                # to half the host's available memory.
                half = card.model_copy(update={"free_bytes": card.available_bytes // 2})
                finder = Estimator(config, half, estimator.overhead)
            prediction = Prediction.of(finder)
            search = search_max_micro_batch(prediction, runner_probe(runner, prediction), say)
        sizes = micro_batches or []
        if estimator is not None and micro_batches is None:
            say("estimating the max micro-batch")
            top = search.max_micro_batch if search is not None else estimator.max_micro_batch()
            sizes = profiled_micro_batches(top, target, config.seq_len)
        measured: list[StepMeasurement] = []
        out_of_memory: list[int] = []
        if budget is not None:
            measured = _measure_within(runner, sizes, budget, start, steps, warmup, card, out_of_memory, say)
        else:
            ordered = sorted(set(sizes))
            for done, size in enumerate(ordered):
                say(f"micro-batch {size} ({done + 1}/{len(ordered)}): {warmup} warm-up + {steps} timed steps")
                result = runner.attempt(
                    functools.partial(runner.measure, steps=steps, warmup=warmup, card=card), size
                )
                if result is None:
                    out_of_memory.append(size)
                else:
                    measured.append(result)
    finally:
        runner.close()
    if not measured:
        raise ConfigError(
            "micro-batch",
            f"every micro-batch asked ({', '.join(map(str, sizes))}) ran out of memory on {card.name}",
            "ask for smaller sizes, or turn on gradient checkpointing",
        )
    contexts = [m.context_bytes for m in measured if m.context_bytes is not None]
    measured.sort(key=lambda m: m.micro_batch)
    return MeasuredProfile(
        key=ProfileKey.of(config, profile_card_name(card)),
        device="cuda" if target.type == "cuda" else "cpu",
        device_name=device_name(target, card),
        versions=library_versions(),
        measurements=measured,
        max_micro_batch=None if search is None else search.max_micro_batch,
        context_bytes=int(statistics.median(contexts)) if contexts else None,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        gradient_accumulation=config.gradient_accumulation,
        out_of_memory=out_of_memory,
        search=search,
        seconds=time.perf_counter() - start,
        # The 1-minute load average at the end covers the timed steps just run.
        machine_load=machine_load() if target.type == "cpu" else None,
    )


def _measure_within(
    runner: StepRunner,
    sizes: list[int],
    budget: Budget,
    start: float,
    steps: int,
    warmup: int,
    card: Card,
    out_of_memory: list[int],
    say: Progress,
) -> list[StepMeasurement]:
    """The sizes that fit (the others appended to ``out_of_memory``), timed alternating
    (:meth:`StepRunner.measure_alternating`) until ``budget``, counted from the profile's
    ``start`` (a ``time.perf_counter()``), is spent, after at least ``MIN_BUDGETED_STEPS`` rounds;
    one eval forward each (a small share of a trial's time)."""
    memory: dict[int, ProbeMemory] = {}
    for size in dict.fromkeys(sizes):
        probed = runner.attempt(runner.probe, size)
        if probed is None:
            out_of_memory.append(size)
        else:
            memory[size] = probed
    if not memory:
        return []
    allowed: list[float] = []  # the budget's answer, once the first size has been timed

    def enough(times: list[float]) -> bool:
        if len(times) < MIN_BUDGETED_STEPS:
            return False
        if not allowed:
            allowed.append(budget(statistics.median(times) / next(iter(memory))))
        return time.perf_counter() - start >= allowed[0]

    fitting = list(memory)
    sizes_text = ", ".join(map(str, fitting))
    say(f"micro-batch {sizes_text}: {warmup} warm-up + up to {steps} timed steps each, alternating")
    return runner.measure_alternating(
        fitting, steps=steps, warmup=warmup, card=card, enough=enough, eval_repeats=1, memory=memory
    )
