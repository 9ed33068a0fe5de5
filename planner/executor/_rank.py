"""One rank of a trial that spans several processes (``python -m planner.executor --rank ORDER``).

``torch.distributed.run`` starts one of these per GPU of the trial's group (see ``_group``); each
builds the built-in recipe's Trainer (:func:`~planner.executor._trial.trainer_attempt`), which
runs DDP by itself when launched distributed (``TrainingArguments`` builds accelerate's
``PartialState`` from the launcher's ``RANK``/``WORLD_SIZE``: NCCL on GPUs, gloo on the CPU).

Decisions that stop training are collective, or the ranks would deadlock in the next all-reduce:

- divergence: every rank sees the same logged loss (Trainer all-gathers and averages it before
  ``on_log``) and the same eval metrics (gathered over the ranks), so each rank's own
  :class:`Reporter` decides the same;
- budget, pruning and a dead worker: after every optimizer step each rank votes (its own
  projection past the deadline; rank 0 adds the worker's "stop" file and whether the worker
  still lives) and one ``all_reduce(MAX)`` gives every rank the same verdict at the same step.

Only the worker talks to Optuna: rank 0 streams what it observes (losses, evals) to
``events.jsonl`` for the worker's reporter and pruner, and leaves its results in ``result.json``;
every rank leaves ``rank-N.json`` (its last step, peak memory, an OOM or error).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from planner._files import read_model
from planner.errors import PlannerError
from planner.executor._display import SweepObserver
from planner.executor._group import RankOrder, alive, process_start, write_whole
from planner.executor._monitor import Deadline, Reporter, TrialLog
from planner.executor._trial import TrialOutcome, TrialRun, tracker_environment, trainer_attempt
from planner.schema import SweepSpec
from planner.step import is_out_of_memory

logger = logging.getLogger(__name__)

# The verdicts of the step-end vote, larger wins: a dead worker over pruning over the budget.
CARRY_ON, BUDGET, PRUNED, ORPHANED = 0, 1, 2, 3


class StreamingReporter(Reporter):
    """Rank 0's reporter: also appends what it observes to the worker's ``events.jsonl``."""

    def __init__(self, events: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def observe(self, step: int, metrics: dict[str, float]) -> Any:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        with self.events.open("a") as stream:
            event = {"step": step, "metrics": numbers, "max_steps": self.log.max_steps}
            stream.write(json.dumps(event) + "\n")
        return super().observe(step, metrics)


class AgreementCallback(TrainerCallback):
    """The step-end vote (see the module's docstring); runs after the budget callback's own check."""

    def __init__(self, order: RankOrder, reporter: Reporter, rank: int) -> None:
        self.order, self.reporter, self.rank = order, reporter, rank
        self.stop_file = order.group_dir / "stop.json"
        self.step = 0
        """The last optimizer step this rank finished (every rank stops at the same one)."""

    def _vote(self, control: TrainerControl) -> int:
        vote = BUDGET if self.reporter.log.stopped == "budget" and control.should_training_stop else CARRY_ON
        if self.rank == 0:
            if not alive(self.order.worker_pid, self.order.worker_started):
                vote = ORPHANED
            elif self.stop_file.exists():
                vote = max(vote, PRUNED)
        return vote

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        import torch.distributed as dist

        self.step = state.global_step
        verdict = torch.tensor([self._vote(control)], dtype=torch.int64, device=args.device)
        dist.all_reduce(verdict, op=dist.ReduceOp.MAX)
        code = int(verdict.item())
        log = self.reporter.log
        if code == BUDGET:
            log.stop("budget", f"stopped at step {state.global_step} to stay inside the budget")
            control.should_evaluate = False
            control.should_save = True
            control.should_training_stop = True
        elif code in (PRUNED, ORPHANED):
            if code == PRUNED:
                reason = "the pruner stopped it"
                if self.rank == 0:
                    reason = json.loads(self.stop_file.read_text()).get("reason", reason)
                log.stopped, log.reason = "pruned", reason
            else:
                # Its worker died: the next run's recovery continues the trial from its last
                # checkpoint; nothing is saved or evaluated here.
                log.stopped, log.reason = "pruned", "its worker died"
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = False


def _callbacks(order: RankOrder) -> list[TrainerCallback]:
    if not order.callbacks:
        return []
    callbacks = pickle.loads(base64.b64decode(order.callbacks))
    return list(callbacks)


def run_rank(order: RankOrder, rank: int) -> int:
    """Run this rank's share of the attempt; 0 when it trained, 1 on an error (OOM included)."""
    group_dir = order.group_dir
    write_whole(
        group_dir / f"pid-{rank}.json",
        {"pid": os.getpid(), "started": process_start(os.getpid()), "host": os.uname().nodename},
    )
    deadline = Deadline(
        None if order.deadline_time is None else time.monotonic() + order.deadline_time - time.time()
    )
    spec = SweepSpec.model_validate(order.spec)
    common = (None, spec.objective.metric, deadline, SweepObserver())
    reporter = (
        StreamingReporter(group_dir / "events.jsonl", *common, divergence_factor=order.divergence_factor)
        if rank == 0
        else Reporter(*common, divergence_factor=order.divergence_factor)
    )
    agreement = AgreementCallback(order, reporter, rank)
    run = TrialRun(
        spec=spec,
        planned=order.planned,
        output_dir=order.output_dir,
        reporter=reporter,
        resume=order.resume,
        predicted_eval_seconds=order.predicted_eval_seconds,
        predicted_save_seconds=order.predicted_save_seconds,
        report_to=order.report_to,
        callbacks=[agreement, *_callbacks(order)],
        run_name=order.run_name,
        group=order.group,
    )
    config = order.planned.config
    outcome = TrialOutcome(micro_batch=config.micro_batch, gradient_accumulation=config.gradient_accumulation)
    status: dict[str, Any] = {"rank": rank, "step": reporter.log.step, "oom": False, "error": None}
    code = 0
    if torch.cuda.is_available():
        # This rank's GPU (accelerate picks the same from LOCAL_RANK), before anything opens a
        # context on the first one.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.reset_peak_memory_stats()
    try:
        with tracker_environment(run, spec.output_dir / "runs"):
            trainer_attempt(run, outcome, order.resume)
    except Exception as exc:  # written for the worker, which decides (OOM: a smaller micro-batch)
        status["oom"] = is_out_of_memory(exc)
        status["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        status["os_error"] = os_error(exc)
        logger.error("rank %d failed", rank, exc_info=not status["oom"])
        code = 1
    status["step"] = agreement.step
    if torch.cuda.is_available():
        status.update(peak_memory_bytes=torch.cuda.max_memory_allocated(), memory_kind="cuda allocated")
    else:
        status.update(peak_memory_bytes=reporter.log.peak_rss_bytes, memory_kind="process RSS")
    if rank == 0 and code == 0:
        write_whole(group_dir / "result.json", _result(outcome, reporter.log))
    write_whole(group_dir / f"rank-{rank}.json", status)
    return code


def os_error(error: BaseException) -> dict[str, Any] | None:
    """The first ``OSError`` in ``error``'s chain, as data for the worker (which tells a failing
    disk from a trial's own error), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            filename = None if current.filename is None else os.fsdecode(current.filename)
            return {"errno": current.errno, "strerror": current.strerror, "filename": filename}
        current = current.__cause__ or current.__context__
    return None


def _result(outcome: TrialOutcome, log: TrialLog) -> dict[str, Any]:
    return {
        "metrics": outcome.metrics,
        "training_arguments": outcome.training_arguments,
        "stopped": log.stopped,
        "reason": log.reason,
        "step": log.step,
        "max_steps": log.max_steps,
        "peak_rss_bytes": log.peak_rss_bytes,
        "longest_step_seconds": log.longest_step_seconds,
        "longest_save_seconds": log.longest_save_seconds,
    }


def rank_main(argv: Sequence[str]) -> int:
    """``python -m planner.executor --rank ORDER.json`` under ``torch.distributed.run``."""
    if len(argv) != 1:
        print("usage: python -m planner.executor --rank ORDER.json (torch.distributed.run)", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    try:
        order = read_model(argv[0], RankOrder, field="order", expect="a rank order written by the worker")
        return run_rank(order, rank)
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Destroy the rank's process group (Trainer's, started by accelerate) before the interpreter
    exits. Left to the interpreter's teardown, a gloo group's threads can abort the process
    ("terminate called without an active exception", SIGABRT) after a complete trial; torch's docs
    ask for the call too. It narrows that race without closing it (a rank aborted so once in a
    loaded CI run), so the worker judges the trial by the ranks' records (``group_finished``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
