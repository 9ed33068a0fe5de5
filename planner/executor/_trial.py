"""One trial through ``transformers.Trainer``: build, train, evaluate, recover from OOM, release memory.

An out-of-memory error frees everything the attempt held, halves the micro-batch and multiplies the
accumulation by the same factor (the effective batch, hence the experiment, stays the same), then
resumes from the trial's last checkpoint, or restarts when there is none.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from planner.executor._monitor import Reporter, rss_bytes
from planner.executor._recipe import build_model, collator, load_datasets, tokenizer_for, training_arguments
from planner.schema import PlannedTrial, SweepSpec
from planner.step import is_out_of_memory

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import TrainerCallback


@dataclass
class TrialRun:
    """What the worker hands a trial runner: the planned trial, where it writes, how it reports."""

    spec: SweepSpec
    planned: PlannedTrial
    """With the micro-batch and accumulation to start from (already reduced by an earlier OOM)."""
    output_dir: Path
    reporter: Reporter
    resume: bool
    """Continue from the last checkpoint in ``output_dir`` (an interrupted trial's continuation)."""
    predicted_eval_seconds: float = 0.0
    predicted_save_seconds: float = 0.0
    report_to: Sequence[str] = ()
    callbacks: Sequence[TrainerCallback] = ()
    run_name: str = "trial"
    """The trial's name for experiment trackers: ``<study>-trial-<number>``."""
    group: str = "sweep"
    """What groups the sweep's runs in the trackers: the study's name."""


@dataclass
class TrialOutcome:
    """How a trial ended: its metrics, its final shape, and any OOM recoveries on the way."""

    metrics: dict[str, float] = field(default_factory=dict)
    micro_batch: int = 1
    gradient_accumulation: int = 1
    oom: list[dict[str, int]] = field(default_factory=list)
    """One entry per OOM: micro-batch and accumulation before and after, optimizer step reached."""
    failed: str | None = None
    """Why the trial could not finish (OOM at micro-batch 1), else None."""
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    resumed_from_step: int | None = None
    training_arguments: dict[str, Any] = field(default_factory=dict)


class Attempt(Protocol):
    """One try at a trial with ``outcome``'s micro-batch and accumulation; fills ``outcome.metrics``."""

    def __call__(self, run: TrialRun, outcome: TrialOutcome, resume: bool) -> None: ...


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` directory Trainer left in ``output_dir``.

    Trainer writes ``trainer_state.json`` last; a checkpoint without a readable one was cut short
    (``kill -9`` during the save) and is skipped, so the trial resumes from the one before it.
    """
    if not output_dir.is_dir():
        return None
    complete = []
    for path in output_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and _complete(path):
            complete.append((int(step), path))
    return max(complete)[1] if complete else None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint is not None else 0


DISK_FAULTS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO})
"""OS errors that say the disk failed, wherever the file was."""
ACCESS_FAULTS = frozenset({errno.EACCES, errno.EPERM})
"""OS errors that say the machine failed when they concern the run's own files (output, storage)."""


def infrastructure_fault(error: BaseException, roots: Sequence[Path]) -> tuple[str, str] | None:
    """What failed on the machine, ``storage`` or ``output_dir``, and how, if ``error`` (or an error
    it was raised from) is the machine's; else None.

    A read-only or full disk (anywhere), a permission refused on the run's own files (under
    ``roots``), or the storage failing (SQLAlchemy's ``OperationalError``) would fail every later
    trial too, in no time: these stop the sweep instead of failing the trial. Anything else, a
    permission refused on a dataset for instance, is the trial's (or the user's) error.
    """
    from sqlalchemy.exc import OperationalError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError):
            cause = current.orig if current.orig is not None else current
            return "storage", f"it failed ({type(cause).__name__}: {(str(cause).splitlines() or [''])[0]})"
        if isinstance(current, OSError) and current.errno in DISK_FAULTS | ACCESS_FAULTS:
            where = current.filename
            if current.errno in DISK_FAULTS or (
                where is not None and _under(Path(os.fsdecode(where)), roots)
            ):
                problem = os.strerror(current.errno)
                return "output_dir", f"{problem}: {where}" if where is not None else problem
        current = current.__cause__ or current.__context__
    return None


def _under(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def release_memory() -> None:
    """Return what a finished attempt held: collect cycles, and empty CUDA's cache when there is one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_micro_batch(micro_batch: int) -> int | None:
    """The largest divisor of ``micro_batch`` at most half of it (so accumulation stays whole)."""
    return next((d for d in range(micro_batch // 2, 0, -1) if micro_batch % d == 0), None)


def run_trial(run: TrialRun, attempt: Attempt) -> TrialOutcome:
    """Run ``attempt`` until it finishes without running out of memory (or fails at micro-batch 1)."""
    config = run.planned.config
    outcome = TrialOutcome(micro_batch=config.micro_batch, gradient_accumulation=config.gradient_accumulation)
    resume = run.resume
    if resume:
        outcome.resumed_from_step = checkpoint_step(last_checkpoint(run.output_dir))
    # A trial across ranks trains in their processes, which measure their own memory: this one
    # (the worker) must not even open a CUDA context on their GPUs.
    here = config.parallelism.world_size == 1
    if here and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    while True:
        out_of_memory = False
        try:
            with tracker_environment(run, run.spec.output_dir / "runs"):
                attempt(run, outcome, resume)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            # Leave the except block before cleaning up: the traceback pins the attempt's frames.
            out_of_memory = True
        if not out_of_memory:
            break
        release_memory()
        smaller = smaller_micro_batch(outcome.micro_batch)
        step = checkpoint_step(last_checkpoint(run.output_dir))
        if smaller is None:
            outcome.failed = "out of memory at micro-batch 1"
            break
        factor = outcome.micro_batch // smaller
        outcome.oom.append(
            {
                "micro_batch": outcome.micro_batch,
                "gradient_accumulation": outcome.gradient_accumulation,
                "new_micro_batch": smaller,
                "new_gradient_accumulation": outcome.gradient_accumulation * factor,
                "checkpoint_step": step,
            }
        )
        logger.warning(
            "out of memory at micro-batch %d: continuing at %d x %d (same effective batch)",
            outcome.micro_batch,
            smaller,
            outcome.gradient_accumulation * factor,
        )
        outcome.micro_batch, outcome.gradient_accumulation = smaller, outcome.gradient_accumulation * factor
        resume = step > 0
        run.reporter.log.stopped = None
    if here and torch.cuda.is_available():
        outcome.peak_memory_bytes, outcome.memory_kind = torch.cuda.max_memory_allocated(), "cuda allocated"
    elif here:
        outcome.peak_memory_bytes, outcome.memory_kind = run.reporter.log.peak_rss_bytes, "process RSS"
    release_memory()
    return outcome


@contextlib.contextmanager
def tracker_environment(run: TrialRun, runs_dir: Path) -> Iterator[None]:
    """The trial's name and the sweep's group where the trackers ``report_to`` names read them.

    Trainer's integrations take the run's name from ``TrainingArguments.run_name`` but their
    grouping from the environment (transformers/integrations/integration_utils.py): W&B's
    ``wandb.init`` reads ``WANDB_RUN_GROUP``; ``TensorBoardCallback`` writes to
    ``TENSORBOARD_LOGGING_DIR`` (else a timestamped folder under the trial's output directory),
    so each trial gets ``<dir>/<run_name>`` and ``tensorboard --logdir <dir>`` shows the sweep's
    trials side by side. A group or directory the user set already is kept (the directory as the
    parent of the trials'). Restored afterwards: trials of one process run one after another.
    """
    if not run.report_to:
        yield
        return
    saved = {key: os.environ.get(key) for key in ("WANDB_RUN_GROUP", "TENSORBOARD_LOGGING_DIR")}
    os.environ["WANDB_RUN_GROUP"] = saved["WANDB_RUN_GROUP"] or run.group
    parent = Path(saved["TENSORBOARD_LOGGING_DIR"] or runs_dir)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(parent / run.run_name)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def trainer_attempt(run: TrialRun, outcome: TrialOutcome, resume: bool) -> None:
    """The built-in recipe: Trainer over the spec's local dataset, as the trial's config says."""
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from planner.executor._callbacks import BudgetCallback, ReportingCallback

    spec = run.spec
    planned = run.planned.model_copy(
        update={
            "config": run.planned.config.with_changes(
                micro_batch=outcome.micro_batch, gradient_accumulation=outcome.gradient_accumulation
            )
        }
    )
    arguments = training_arguments(spec, planned, run.output_dir, run.report_to)
    arguments["run_name"] = run.run_name
    outcome.training_arguments = training_arguments(spec, planned, None, run.report_to)
    tokenizer = tokenizer_for(spec)
    train, evaluation = load_datasets(spec, tokenizer, planned.config.seq_len)
    set_seed(spec.seed)
    model = build_model(spec, planned.config)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**arguments),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator(tokenizer),
        callbacks=[
            ReportingCallback(run.reporter),
            BudgetCallback(
                run.reporter, eval_seconds=run.predicted_eval_seconds, save_seconds=run.predicted_save_seconds
            ),
            *run.callbacks,
        ],
    )
    # The sweep's display shows progress; Trainer's own printing would interleave with it.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    checkpoint = last_checkpoint(run.output_dir) if resume else None
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        metrics: dict[str, float] = dict(result.metrics)
        log = run.reporter.log
        if log.stopped is None and evaluation is not None and spec.eval.strategy != "no":
            evaluated = log.evals[-1][0] if log.evals else -1
            if evaluated != trainer.state.global_step:
                # The objective is the metric at the end of training; Trainer's cadence may have
                # left the last steps unevaluated.
                final = trainer.evaluate()
                run.reporter.observe(trainer.state.global_step, final)
        for _, evaluated_metrics in log.evals[-1:]:
            metrics.update(evaluated_metrics)
        outcome.metrics = metrics
        log.peak_rss_bytes = max(log.peak_rss_bytes, rss_bytes())
    finally:
        # Drop every reference to the model and optimizer before the next trial (or retry).
        trainer.callback_handler.callbacks.clear()
        del trainer, model
