"""``plan_sweep``: every trial's micro-batch x accumulation, feasibility and time, against a budget."""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from collections.abc import Callable
from typing import Any

from planner.data import LengthProfile, count_data
from planner.errors import ConfigError, PlannerError, UnknownModelError
from planner.estimator import (
    CudaOverhead,
    Estimator,
    Helper,
    cheapest_fix,
    import_what_builds,
    predicted_max,
    probe_depths,
    spare_core,
)
from planner.models import load_model_config
from planner.schema import (
    GIB,
    Card,
    DataStats,
    HostProfile,
    Hyperparameters,
    MachineLoad,
    Parallelism,
    Plan,
    PlannedTrial,
    SweepSpec,
    TrainingConfig,
)
from planner.step import num_layers
from planner.sweep._budget import ORDER_RULE, halving_schedule, schedule
from planner.sweep._space import expand_trials
from planner.timing import ProfileLookup, StepTimeModel, count_work, rank_step_times, trial_time

logger = logging.getLogger(__name__)

INCLUDES = [
    "memory: the estimator's linear fit of shallow fake-tensor traces at each trial's micro-batch",
    "time: start-up, forward+backward per micro-batch, optimizer steps, eval passes, checkpoint saves",
    "host time (with a host profile): Trainer set-up and bookkeeping, collation, tokenising, model "
    "build or load, gradient clipping, eval loop, checkpoint files, at this machine's measured speeds",
    "ranks (a trial across GPUs): one rank's memory (its traced DDP step) and its share of the "
    "rows; its optimizer step waits for the gradient all-reduce DDP does not hide behind backward; "
    "its rank processes import Trainer at start-up (measured)",
    "lengths: each micro-batch padded to its expected longest row (dynamic padding), truncated at "
    "seq_len, or packed",
    "interval: from the step-time source (measured p10-p90, calibrated spread, or the default "
    "model's 80% interval from its terms' spreads)",
]


def largest_divisor_at_most(number: int, limit: int) -> int:
    """The largest divisor of ``number`` that is at most ``limit`` (0 when limit < 1)."""
    return max((d for d in range(1, min(number, limit) + 1) if number % d == 0), default=0)


class _Shapes:
    """Memory answers per config shape (micro-batch and accumulation aside), computed once."""

    def __init__(
        self,
        card: Card,
        overhead: CudaOverhead | None,
        oom_limit: Callable[[TrainingConfig], int | None] | None = None,
        helper: Helper | None = None,
    ) -> None:
        self.card = card
        self.overhead = overhead
        self.oom_limit = oom_limit
        self.helper = helper
        # Keyed by the step's shape (accumulation 1 or 2; micro-batch aside).
        self._estimators: dict[str, Estimator] = {}
        self._max: dict[str, int] = {}
        self._fix: dict[str, str] = {}
        self._pending: dict[str, int] = {}
        """Shape -> the helper's task predicting its max micro-batch."""

    def prefetch(self, configs: list[TrainingConfig]) -> None:
        """Have the helper (if any) predict these configs' max micro-batches meanwhile, in order;
        :meth:`max_micro_batch` takes in its traces when asked, and answers as without them."""
        if self.helper is None:
            return
        for config in configs:
            shape = config.step_shape()
            if shape.key not in self._max and shape.key not in self._pending:
                self._pending[shape.key] = self.helper.submit(predicted_max, shape, self.card, self.overhead)

    def estimator(self, config: TrainingConfig) -> Estimator:
        shape = config.step_shape()
        key = shape.key
        if key not in self._estimators:
            self._estimators[key] = Estimator(shape, self.card, self.overhead)
        return self._estimators[key]

    def max_micro_batch(self, config: TrainingConfig) -> int:
        key = config.step_shape().key
        if key not in self._max:
            if self.helper is not None and key in self._pending:
                _, taken = self.helper.result(self._pending.pop(key))
                self.estimator(config).traces.absorb(taken)
            best = self.estimator(config).max_micro_batch(confirm=False)
            # A micro-batch that ran out of memory in a real run of this config will again.
            limit = self.oom_limit(config) if self.oom_limit is not None else None
            self._max[key] = best if limit is None else min(best, limit)
        return self._max[key]

    def fix(self, config: TrainingConfig) -> str:
        """The cheapest change that makes ``config`` fit at micro-batch 1, with what it allows."""
        shape = config.step_shape()
        key = shape.key
        if key not in self._fix:
            cheapest = cheapest_fix(shape, self.card, self.overhead)
            self._fix[key] = (
                f"{cheapest.change} (max micro-batch {cheapest.max_micro_batch})"
                if cheapest is not None
                else "a larger card"
            )
        return self._fix[key]


def _infeasible(
    number: int, params: dict[str, Any], config: TrainingConfig, hyper: Hyperparameters, reason: str, fix: str
) -> PlannedTrial:
    return PlannedTrial(
        number=number,
        params=params,
        config=config,
        hyper=hyper,
        feasible=False,
        reason=reason,
        fix=fix,
        status="infeasible",
    )


def _shape_trial(
    spec: SweepSpec, shapes: _Shapes, number: int, params: dict[str, Any]
) -> PlannedTrial | tuple[TrainingConfig, Hyperparameters]:
    """Choose micro-batch x accumulation, or say why the trial cannot run."""
    config, hyper = spec.trial(params)
    try:
        best = shapes.max_micro_batch(config)
    except ConfigError as exc:  # e.g. bf16 searched on a card without it
        return _infeasible(number, params, config, hyper, exc.problem, exc.fix)
    ranks = config.parallelism.world_size
    if hyper.effective_batch % ranks:
        return _infeasible(
            number,
            params,
            config,
            hyper,
            f"effective batch {hyper.effective_batch} does not split over {ranks} ranks",
            f"an effective_batch that is a multiple of {ranks}",
        )
    # Each rank trains on its share of every optimizer step's examples: micro-batch and
    # accumulation are per rank (Trainer's per_device_train_batch_size under DDP).
    effective = hyper.effective_batch // ranks
    if best == 0:
        need = shapes.estimator(config).estimate(1, trace=False).peak_bytes
        available = shapes.card.available_bytes / GIB
        reason = f"needs {need / GIB:.1f} GiB at micro-batch 1; {shapes.card.name} has {available:.1f} GiB"
        return _infeasible(number, params, config, hyper, reason, shapes.fix(config))
    # With accumulation the previous micro-batches' gradients stay alive: a smaller maximum.
    accumulating = config.with_changes(gradient_accumulation=2)
    if spec.micro_batch == "auto":
        micro = largest_divisor_at_most(effective, best)
        if micro < effective:
            micro = largest_divisor_at_most(effective, shapes.max_micro_batch(accumulating))
    else:
        micro = spec.micro_batch
        if effective % micro:
            divisor = largest_divisor_at_most(effective, min(micro, best))
            return _infeasible(
                number,
                params,
                config,
                hyper,
                f"micro-batch {micro} does not divide effective batch {effective}"
                if ranks == 1
                else f"micro-batch {micro} does not divide a rank's share {effective} of effective batch "
                f"{hyper.effective_batch} over {ranks} ranks",
                f"micro_batch: {divisor} (or auto)",
            )
        limit = best if micro == effective else shapes.max_micro_batch(accumulating)
        if micro > limit:
            return _infeasible(
                number,
                params,
                config,
                hyper,
                f"micro-batch {micro} does not fit (max {limit} on {shapes.card.name})",
                f"micro_batch: {largest_divisor_at_most(effective, limit)} (or auto)",
            )
    if micro == 0:
        reason = f"no micro-batch fits while accumulating gradients on {shapes.card.name}"
        return _infeasible(number, params, config, hyper, reason, shapes.fix(accumulating))
    return config.with_changes(micro_batch=micro, gradient_accumulation=effective // micro), hyper


class _HostSide:
    """What the host contributes to every trial's time: its measured speeds and its load now."""

    def __init__(self, card: Card, host: HostProfile | None, now: MachineLoad | None) -> None:
        self.host = host
        self.now = now
        # Gradient clipping runs where the gradients are: the card's bandwidth, or the host's.
        if card.kind == "cpu":
            self.bandwidth = host.memory_bytes_per_second if host is not None else None
        else:
            self.bandwidth = card.bandwidth_gbs * 1e9 if card.bandwidth_gbs else None

    def launch_seconds(self) -> float:
        """A rank group's start-up, measured where the host's Trainer costs are (the host card)."""
        if self.host is None or not self.host.has_trainer:
            return 0.0
        from planner.profiler import rank_launch_seconds

        return rank_launch_seconds()


def _time_trial(
    spec: SweepSpec,
    shapes: _Shapes,
    steps: StepTimeModel,
    lengths: LengthProfile,
    eval_examples: int,
    hosting: _HostSide,
    number: int,
    params: dict[str, Any],
    config: TrainingConfig,
    hyper: Hyperparameters,
) -> PlannedTrial:
    micro = config.micro_batch
    ranks = config.parallelism.world_size
    estimate = shapes.estimator(config).estimate(micro, trace=False)  # one rank's, under DDP
    parts = estimate.breakdown
    trainable = shapes.estimator(config).trainable_bytes()
    padded = lengths.padded_length(micro)
    # A checkpoint holds what trains (all weights for full fine-tuning, else the adapters: peft's
    # save_pretrained writes only those) and the optimizer state.
    saved = trainable + parts.optimizer_state
    work = count_work(
        hyper,
        micro_batch=micro,
        accumulation=config.gradient_accumulation,
        # Each rank's share: the distributed samplers pad the rows to a multiple of the ranks.
        rows=math.ceil(lengths.sequences / ranks),
        eval_examples=math.ceil(eval_examples / ranks),
        eval_spec=spec.eval,
        checkpoint_every_steps=spec.checkpoint_every_steps,
        checkpoint_bytes=saved,
        load_bytes=parts.weights if spec.init == "pretrained" else 0,
        padded_length=padded,
        eval_padded_length=lengths.eval_padded_length(micro),
        build_bytes=parts.weights if spec.init == "random" else 0,
        trainable_bytes=trainable,
        tokenize_seconds=lengths.tokenize_seconds,
        device_bytes_per_second=hosting.bandwidth,
        launch_seconds=hosting.launch_seconds() if ranks > 1 else 0.0,
    )
    # The estimate tells the step time how much paged optimizer state does not fit on the card.
    if ranks == 1:
        step = steps.times(config, micro, padded, estimate)
    else:
        # A rank's micro-step costs what one GPU's does; its optimizer step waits for the
        # communication the strategy does not hide.
        single = config.with_changes(parallelism=Parallelism())
        step = rank_step_times(steps.times(single, micro, padded, estimate), config, shapes.card)
    return PlannedTrial(
        number=number,
        params=params,
        config=config,
        hyper=hyper,
        feasible=True,
        peak_bytes=estimate.peak_bytes,
        peak_allocated_bytes=estimate.peak_allocated_bytes,
        optimizer_steps=work.optimizer_steps,
        eval_passes=work.eval_passes,
        checkpoint_saves=work.checkpoint_saves,
        time=trial_time(work, step, hosting.host, hosting.now),
    )


def import_what_plans(spec: SweepSpec) -> None:
    """Import the model classes and adapter libraries the spec's trials build (a head start: a
    trial that cannot be built says why where the plan shapes it)."""
    with contextlib.suppress(PlannerError, ValueError):
        trials = (spec.trial(params)[0] for params in expand_trials(spec))
        for config in {c.step_shape().key: c for c in trials}.values():
            import_what_builds(config)


def plan_sweep(
    spec: SweepSpec,
    card: Card,
    *,
    workers: int | None = None,
    budget_seconds: float | None = None,
    profiles: ProfileLookup | None = None,
    overhead: CudaOverhead | None = None,
    oom_limit: Callable[[TrainingConfig], int | None] | None = None,
    host: HostProfile | None = None,
    now: MachineLoad | None = None,
    data: tuple[DataStats, LengthProfile] | None = None,
    helper: bool = True,
) -> Plan:
    """Plan ``spec`` on ``card``: shapes, feasibility, predicted times, and what fits the budget.

    ``workers`` and ``budget_seconds`` override the spec's. ``profiles`` supplies measured step
    times (default: none, so times come from the roofline); ``overhead`` the card's calibrated CUDA
    overheads for the memory answers (default: the estimator's documented defaults);
    ``oom_limit`` the largest micro-batch a config may use by the OOMs recorded in real runs;
    ``host`` this machine's measured host-side speeds (default: host costs not counted) and ``now``
    its load while planning; ``data`` the counted data when the caller has counted it already;
    ``helper`` False: no forked helper process, whatever the card and model (a caller with
    threads of its own, such as a running sweep's, does not fork).
    """
    try:
        hf_config = load_model_config(spec.base.model)
    except UnknownModelError as exc:
        raise UnknownModelError("base.model", exc.problem, exc.fix) from None
    workers = workers or spec.workers
    budget = budget_seconds if budget_seconds is not None else spec.budget_seconds
    stats, lengths = data if data is not None else count_data(spec)
    hosting = _HostSide(card, host, now)
    searched = [(number, params, *spec.trial(params)) for number, params in enumerate(expand_trials(spec))]
    # Tracing shallow copies of a deeper model is what a plan spends its time on: on a GPU card a
    # forked helper process takes some of it, when a second core is free for it. Not on the host
    # card, whose plan may time real steps here (a missing host profile), which a helper would slow.
    helped = (
        helper and card.kind != "cpu" and num_layers(hf_config) > probe_depths(hf_config)[-1] and spare_core()
    )
    if helped:
        import_what_plans(spec)  # here, once: the helper inherits them
    with Helper.fork(worth_it=helped) as forked:
        shapes = _Shapes(card, overhead, oom_limit, forked)
        # The helper predicts, meanwhile, the steps that accumulate gradients, which this process
        # asks for only when a trial's effective batch does not fit in one micro-batch.
        shapes.prefetch(
            [
                config.with_changes(gradient_accumulation=2)
                for _, _, config, hyper in searched
                if hyper.effective_batch > (1 if spec.micro_batch == "auto" else spec.micro_batch)
            ]
        )
        shaped = [(n, p, _shape_trial(spec, shapes, n, p)) for n, p, _, _ in searched]
        steps = StepTimeModel(card, profiles, now=now)
        # Every planned trial's step costs, traced on both processes (a step traced once).
        steps.prefetch([(s[0], s[0].micro_batch) for _, _, s in shaped if isinstance(s, tuple)], forked)
        trials = [
            _time_trial(spec, shapes, steps, lengths, stats.eval_examples, hosting, n, p, *s)
            if isinstance(s, tuple)
            else s
            for n, p, s in shaped
        ]

    timed = sorted(
        ((t, t.time) for t in trials if t.time is not None),
        key=lambda pair: (pair[1].seconds, pair[0].number),
    )
    durations = [time.seconds for _, time in timed]
    slots, _ = schedule(durations, workers, budget)
    _, makespan = schedule(durations, workers, None)
    ordered = [
        t.model_copy(update={"start_seconds": s.start, "worker": s.worker})
        if s is not None
        else t.model_copy(update={"status": "over budget"})
        for (t, _), s in zip(timed, slots, strict=True)
    ]
    ordered.sort(key=lambda t: (t.status != "planned", t.start_seconds or 0.0, t.number))
    ordered += [t for t in trials if not t.feasible]

    fits = None if budget is None else makespan <= budget
    logger.info(
        "%s on %s: %d trial(s), %d feasible, %.0f s in total",
        spec.name,
        card.name,
        len(trials),
        len(timed),
        sum(durations),
    )
    halving = None
    if budget is not None and not fits and timed:
        fixed = statistics.mean(time.parts["startup"] + time.parts["checkpoints"] for _, time in timed)
        scaled = statistics.mean(time.parts["train"] + time.parts["eval"] for _, time in timed)
        halving = halving_schedule(len(timed), fixed, scaled, workers, budget)
    return Plan(
        spec_name=spec.name,
        card=card.name,
        workers=workers,
        data=stats,
        trials=ordered,
        total_seconds=sum(durations),
        total_low_seconds=sum(time.low_seconds for _, time in timed),
        total_high_seconds=sum(time.high_seconds for _, time in timed),
        makespan_seconds=makespan,
        budget_seconds=budget,
        fits_budget=fits,
        order_rule=ORDER_RULE,
        successive_halving=halving,
        includes=INCLUDES,
        machine_load=now,
    )
