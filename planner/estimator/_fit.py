"""Does a config fit on a card, and what is its largest micro-batch? Pure answers, no printing.

:func:`fit` answers with estimates at several micro-batches, the confirmed max and, when nothing
fits, the changes that would (:func:`suggest_fixes`). On two or more cores it builds and traces
the full-depth model in a forked helper process while it probes (see
:mod:`planner.estimator.helper`): the machine it answers on may have two cores and ten seconds.
"""

from __future__ import annotations

import logging
from typing import Any

from planner.estimator._cuda import CudaOverhead
from planner.estimator._estimator import Estimator
from planner.estimator._helper import Helper, share
from planner.estimator._linear import MAX_MICRO_BATCH
from planner.estimator._traces import TakenTraces, build_full_depth_task, probed_task
from planner.models import load_model_config
from planner.schema import (
    Card,
    FitReport,
    Fix,
    MemoryEstimate,
    Method,
    Offload,
    OptimizerName,
    Parallelism,
    Precision,
    Strategy,
    TrainingConfig,
)
from planner.step import (
    BITSANDBYTES_OPTIMIZERS,
    import_bitsandbytes,
    import_peft,
    model_class,
    modelled_stack,
)

logger = logging.getLogger(__name__)


def _fix_candidates(config: TrainingConfig) -> list[tuple[str, dict[str, Any]]]:
    """Changes worth trying, cheapest first for the practitioner (least change to the experiment)."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if not config.gradient_checkpointing:
        changes.append(
            ("gradient checkpointing (~30% slower steps, same results)", {"gradient_checkpointing": True})
        )
    sharded = config.parallelism.strategy.is_fsdp and not config.parallelism.single_gpu
    if config.optimizer is OptimizerName.ADAMW_TORCH:
        changes.append(("fused AdamW (adamw_torch_fused, same results)", {"optimizer": OptimizerName.ADAMW}))
    # bitsandbytes' 8-bit optimizers and QLoRA are not traced under FSDP (check_traceable).
    if config.optimizer in (OptimizerName.ADAMW, OptimizerName.ADAMW_TORCH) and not sharded:
        changes.append(("8-bit AdamW (bitsandbytes)", {"optimizer": OptimizerName.ADAMW_8BIT}))
    if config.method is Method.FULL:
        changes.append(("LoRA instead of full fine-tuning", {"method": Method.LORA}))
    if config.method is not Method.QLORA and not sharded:
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
    with Helper.fork(worth_it=worth_it) as helper:
        return _suggest_fixes(config, card, overhead, helper)


def _suggest_fixes(
    config: TrainingConfig, card: Card, overhead: CudaOverhead | None, helper: Helper | None
) -> list[Fix]:
    candidates = [(change, config.with_changes(**changed)) for change, changed in _fix_candidates(config)]
    # The sharding fix (several shallow per-rank builds) goes first, to the helper when there is one.
    sharded, *answers = share(
        helper,
        [
            (_sharding_fix, (config, card, overhead)),
            *[(predicted_max, (candidate, card, overhead)) for _, candidate in candidates],
        ],
    )
    fixes = []
    for (change, candidate), (best, traces) in zip(candidates, answers, strict=True):
        Estimator(candidate, card, overhead).traces.absorb(traces)
        if best >= 1:
            fixes.append(Fix(change=change, config=candidate, max_micro_batch=best))
    if sharded is not None:
        fixes.append(sharded)
    if not fixes:
        shorter = _shorter_sequences(config, card, overhead)
        fixes += [shorter] if shorter is not None else []
    return fixes


def cheapest_fix(config: TrainingConfig, card: Card, overhead: CudaOverhead | None = None) -> Fix | None:
    """The first of :func:`suggest_fixes`' answers, found by trying the candidates cheapest first
    and stopping at the first that fits: what a plan shows for a trial it prunes, at a fraction of
    the traces (sharding and shorter sequences are tried only when no single-card change fits)."""
    for change, changed in _fix_candidates(config):
        candidate = config.with_changes(**changed)
        best = Estimator(candidate, card, overhead).max_micro_batch(confirm=False)
        if best >= 1:
            return Fix(change=change, config=candidate, max_micro_batch=best)
    return _sharding_fix(config, card, overhead) or _shorter_sequences(config, card, overhead)


def _shorter_sequences(config: TrainingConfig, card: Card, overhead: CudaOverhead | None) -> Fix | None:
    """The longest sequence, halving down to 128 tokens, at which ``config`` fits."""
    seq_len = config.seq_len // 2
    while seq_len >= 128:
        candidate = config.with_changes(seq_len=seq_len)
        best = Estimator(candidate, card, overhead).max_micro_batch(confirm=False)
        if best >= 1:
            return Fix(
                change=f"shorter sequences: --seq-len {seq_len}", config=candidate, max_micro_batch=best
            )
        seq_len //= 2
    return None


SHARDING_GPUS = (2, 4, 8, 16, 32, 64)
"""Card counts the sharding fix tries, fewest first; past 8 as nodes of 8 (GPUs per server)."""


def _sharding_fix(config: TrainingConfig, card: Card, overhead: CudaOverhead | None) -> Fix | None:
    """FSDP (full sharding, accelerate's units) over the fewest cards of this kind that fit, if any.

    For a single-GPU or DDP config, from its own card count up; for an FSDP config, above it. Not
    for QLoRA, optimizers other than fused AdamW and SGD, offload or hybrid sharding (not traced
    sharded: ``planner.distributed.check_traceable``). With
    checkpointing off it is turned on too (the usual FSDP recipe; the change says so). Card counts
    whose share of the bytes resident between steps (all sharded by FSDP) is already over the
    limit are skipped untraced; each other count is answered by the linear fit of its per-rank
    traces.
    """
    parallelism = config.parallelism
    if (
        config.method is Method.QLORA
        or config.optimizer not in (OptimizerName.ADAMW, OptimizerName.SGD)
        or parallelism.offload is not Offload.NONE
        or parallelism.strategy not in (Strategy.DDP, Strategy.FSDP)
    ):
        return None
    single = Estimator(config.with_changes(parallelism=Parallelism()), card, overhead)
    resident = single.traces.resident_bytes()
    limit = single.allocated_limit - single.overhead.workspace_bytes
    checkpointing = "" if config.gradient_checkpointing else " + gradient checkpointing"
    fewest = parallelism.world_size + (1 if parallelism.strategy is Strategy.FSDP else 0)
    for gpus in SHARDING_GPUS:
        if gpus < fewest or resident / gpus > limit:
            continue
        per_node = min(gpus, 8)
        sharded = {"gpus_per_node": per_node, "nodes": gpus // per_node, "strategy": Strategy.FSDP}
        candidate = config.with_changes(parallelism=sharded, gradient_checkpointing=True)
        best = Estimator(candidate, card, overhead).max_micro_batch(confirm=False)
        if best >= 1:
            change = f"FSDP over {gpus} x {card.name}{checkpointing}: max micro-batch {best} per rank"
            return Fix(change=change, config=candidate, max_micro_batch=best)
    return None


def predicted_max(
    config: TrainingConfig, card: Card, overhead: CudaOverhead | None
) -> tuple[int, TakenTraces]:
    """``config``'s predicted max micro-batch (unconfirmed), and the traces behind it: what a helper
    process answers, for the asking process to absorb (it then answers the same without tracing)."""
    estimator = Estimator(config, card, overhead)
    return estimator.max_micro_batch(confirm=False), estimator.traces.taken()


def micro_batches_around(max_micro_batch: int) -> list[int]:
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
        import_what_builds(config)  # here, once: the copy inherits them
    with Helper.fork(worth_it=worth_it) as helper:
        estimator.helper = helper
        if helper is not None:
            helper.submit(build_full_depth_task, config, estimator.cuda)
        predicted = estimator.max_micro_batch(confirm=False)
        estimator.prefetch(max(predicted, 1))
        fixes: list[Fix] = []
        if predicted == 0:
            # An early "cannot fit" skipped probes the rows still need: the helper queues them
            # after its full-depth trace, and both processes share the fixes meanwhile.
            line = helper.submit(probed_task, config, estimator.cuda) if helper is not None else None
            fixes = _suggest_fixes(config, card, estimator.overhead, helper)
            if helper is not None and line is not None:
                traces.absorb(helper.result(line))
        best = estimator.max_micro_batch()
        if best:
            fixes = []
        elif predicted:
            fixes = _suggest_fixes(config, card, estimator.overhead, helper)
        at_max = estimator.estimate(max(best, 1))
        estimator.helper = None
    logger.debug("%s on %s: linear fit says %d, traces confirm %d", config.model, card.name, predicted, best)
    sizes = micro_batches or micro_batches_around(best)
    rows = [estimator.estimate(m, trace=m in traces.full) for m in sizes]
    return FitReport(
        config=config,
        card=card.name,
        rows=rows,
        max_micro_batch=best,
        at_max=at_max,
        fixes=fixes,
        calibration=estimator.overhead.source,
        stack=modelled_stack(config, estimator.cuda),
    )


def estimate_memory(
    config: TrainingConfig, card: Card, *, overhead: CudaOverhead | None = None
) -> MemoryEstimate:
    """Predicted peak memory of ``config`` at its own micro-batch, traced at full depth."""
    return Estimator(config, card, overhead).estimate(config.micro_batch)


# -- a second process ---------------------------------------------------------------------------
def import_what_builds(config: TrainingConfig) -> None:
    """Import the model class and adapter libraries a build of ``config`` needs (before forking a
    helper process: the copy then inherits them instead of importing them again)."""
    model_class(load_model_config(config.model))
    if config.method is not Method.FULL:
        import_peft()
    if config.optimizer in BITSANDBYTES_OPTIMIZERS:
        import_bitsandbytes()
