"""A trial across several GPUs: the worker launches its ranks, feeds their metrics to Optuna, reaps them.

The worker that claimed the trial stays its only Optuna client. For each attempt it writes a
:class:`RankOrder` and starts ``python -m torch.distributed.run --standalone --nproc_per_node N
-m planner.executor --rank ORDER`` (torchrun: the engine ``accelerate launch --multi_gpu`` runs
too, accelerate/commands/launch.py ``multi_gpu_launcher``; accelerate's ``--cpu`` path,
``simple_launcher``, starts a single process unless given mpirun, so it cannot run a CPU group).
Each rank runs the built-in recipe under DDP (see ``_rank``); while they train the worker reads
rank 0's ``events.jsonl`` into its :class:`Reporter` (pruner, display) and, when the pruner says
stop, writes ``stop.json``, which the ranks agree on at their next step.

A failed rank makes torchrun stop the others (its elastic agent fails the whole group); a rank's
out-of-memory error comes back as ``torch.OutOfMemoryError``, so :func:`run_trial` halves the
micro-batch and resumes as it does on one GPU. Every process of the group records its PID and
start time in the attempt's folder: when the worker dies, the next run's recovery kills what is
left of its group (:func:`reap_group`) before continuing the trial from its last checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from planner.errors import ConfigError
from planner.schema import PlannedTrial, SweepSpec

if TYPE_CHECKING:
    from planner.executor._trial import TrialOutcome, TrialRun

logger = logging.getLogger(__name__)

GROUP_DIR = "ranks"
"""The attempt's exchange folder inside the trial's output directory."""
RANKS_LOG = "ranks.log"
"""The ranks' output, beside the trial's checkpoints."""
POLL_SECONDS = 0.2
"""How often the worker reads the ranks' events while they train."""
TERMINATE_SECONDS = 30.0
"""How long a group asked to stop (SIGTERM to torchrun, which passes it on) gets before SIGKILL."""


class RankOrder(BaseModel):
    """What every rank of one attempt of a trial runs (written by the worker, read by each rank)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: dict[str, Any]
    """The sweep spec as its loader left it (see :func:`_spec_data`)."""
    planned: PlannedTrial
    """With the attempt's micro-batch and accumulation (after any OOM)."""
    output_dir: Path
    group_dir: Path
    """Where the ranks and the worker exchange files for this attempt (inside ``output_dir``)."""
    resume: bool
    deadline_time: float | None
    """The budget's end as a ``time.time()``: every rank converts it to its own monotonic clock."""
    divergence_factor: float
    predicted_eval_seconds: float = 0.0
    predicted_save_seconds: float = 0.0
    report_to: list[str] = []
    run_name: str = "trial"
    group: str = "sweep"
    callbacks: str = ""
    """The worker's extra ``TrainerCallback`` s, pickled (base64): each rank runs its own copy."""
    worker_pid: int
    worker_started: str | None = None
    """The worker's start time in ``/proc`` (a reused PID is not the worker)."""


def process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot) from ``/proc``: with the PID, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` exists on this host and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or process_start(pid) == started


def write_whole(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: the reader may look the moment the file appears."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reap_group(output_dir: Path) -> list[int]:
    """Kill what is left of a dead worker's group in ``output_dir`` (this host's only); its PIDs.

    The launcher first (so it restarts nothing), then the ranks: torchrun starts each rank in a
    session of its own, so they outlive a launcher killed with the worker and would go on
    training, and writing checkpoints, beside the trial's continuation.
    """
    folder = output_dir / GROUP_DIR
    host = os.uname().nodename
    killed = []
    for path in [folder / "launcher.json", *sorted(folder.glob("pid-*.json"))]:
        process = _read(path)
        if process is None or process.get("host") != host:
            continue
        pid, started = int(process["pid"]), process.get("started")
        if alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for pid in killed:  # gone before the continuation starts: SIGKILL is not instantaneous
        while os.path.exists(f"/proc/{pid}") and _state(pid) not in ("Z", "X", None):
            time.sleep(0.05)
    if killed:
        logger.warning("killed %d process(es) left by a dead worker's trial in %s", len(killed), output_dir)
    return killed


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _spec_data(spec: SweepSpec) -> dict[str, Any]:
    """``spec`` as data that validates back to it (the budget is read under its spec name)."""
    data = spec.model_dump(mode="json")
    data["budget"] = data.pop("budget_seconds")
    return data


def _pickled(callbacks: Any) -> str:
    if not callbacks:
        return ""
    try:
        return base64.b64encode(pickle.dumps(list(callbacks))).decode()
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(
            "callbacks",
            f"a trial across several processes runs a copy of each callback in every rank; {exc}",
            "define the callback classes at module level, holding only picklable state",
        ) from None


class _Events:
    """Rank 0's ``events.jsonl``, read as it grows (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except FileNotFoundError:
            return []
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        return [json.loads(line) for line in whole.splitlines() if line.strip()]


def group_finished(statuses: list[dict[str, Any]], ranks: int) -> bool:
    """Every one of ``ranks`` ranks recorded its work done without an error (``rank-N.json``, the
    last thing a rank writes before it leaves its process group and exits).

    The trial is then finished, whatever the launcher's exit code says after it: an exiting gloo
    rank can still abort in the group's teardown ("terminate called without an active
    exception", SIGABRT; see ``planner.executor._rank``), which fails the launcher but not the
    trial. A rank that failed, or died before its record, leaves the trial failed.
    """
    return len(statuses) == ranks and not any(status.get("error") for status in statuses)


def group_failure(statuses: list[dict[str, Any]], code: int | None, log_path: Path) -> Exception:
    """What a failed group raises in the worker, from its ranks' statuses: an out-of-memory error
    (the worker retries smaller), a ``RuntimeError`` raised from the rank's ``OSError`` when the
    machine failed it (the worker's fault check sees a full or read-only disk as in one process),
    or a ``RuntimeError`` naming the first error and the ranks' log."""
    import torch

    failed = [s for s in statuses if s.get("error")]
    for status in failed:
        if status.get("oom"):
            return torch.OutOfMemoryError(f"rank {status['rank']}: {status['error']}")
    said = failed[0]["error"] if failed else f"torch.distributed.run exited with {code}"
    error = RuntimeError(f"the trial's ranks failed: {said} (their output: {log_path})")
    for status in failed:
        if status.get("os_error"):
            fault = status["os_error"]
            error.__cause__ = OSError(fault["errno"], fault["strerror"], fault["filename"])
            break
    return error


def group_attempt(run: TrialRun, outcome: TrialOutcome, resume: bool, *, divergence_factor: float) -> None:
    """One attempt of ``run`` on ``planned.config.parallelism.world_size`` ranks of this host.

    Fills ``outcome`` as :func:`~planner.executor._trial.trainer_attempt` does; raises what
    :func:`group_failure` says when the group failed.
    """
    config = run.planned.config.with_changes(
        micro_batch=outcome.micro_batch, gradient_accumulation=outcome.gradient_accumulation
    )
    folder = run.output_dir / GROUP_DIR
    shutil.rmtree(folder, ignore_errors=True)  # the last attempt's verdicts are not this one's
    folder.mkdir(parents=True)
    deadline = run.reporter.deadline
    order = RankOrder(
        spec=_spec_data(run.spec),
        planned=run.planned.model_copy(update={"config": config}),
        output_dir=run.output_dir.resolve(),
        group_dir=folder.resolve(),
        resume=resume,
        deadline_time=None if deadline.at is None else time.time() + deadline.remaining(),
        divergence_factor=divergence_factor,
        predicted_eval_seconds=run.predicted_eval_seconds,
        predicted_save_seconds=run.predicted_save_seconds,
        report_to=list(run.report_to),
        run_name=run.run_name,
        group=run.group,
        callbacks=_pickled(run.callbacks),
        worker_pid=os.getpid(),
        worker_started=process_start(os.getpid()),
    )
    order_path = folder / "order.json"
    order_path.write_text(order.model_dump_json())
    ranks = config.parallelism.world_size
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "--max_restarts=0",
        "-m",
        "planner.executor",
        "--rank",
        str(order_path),
    ]
    logger.info("trial %s: launching %d ranks", run.run_name, ranks)
    # The ranks' own output (library warnings, tracebacks) goes to the trial's log, not into the
    # sweep's display; every attempt appends to it.
    log_path = run.output_dir / RANKS_LOG
    with log_path.open("ab") as output:
        launcher = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    write_whole(
        folder / "launcher.json",
        {"pid": launcher.pid, "started": process_start(launcher.pid), "host": os.uname().nodename},
    )
    events = _Events(folder / "events.jsonl")
    reporter = run.reporter
    try:
        while True:
            finished = launcher.poll() is not None
            for event in events.read():
                reporter.log.max_steps = event.get("max_steps", reporter.log.max_steps)
                reporter.observe(event["step"], event["metrics"])
            if reporter.log.stopped == "pruned" and not (folder / "stop.json").exists():
                write_whole(folder / "stop.json", {"reason": reporter.log.reason})
            if finished:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if launcher.poll() is None:  # the worker is stopping (Ctrl-C, an error): so is its group
            launcher.terminate()
            try:
                launcher.wait(TERMINATE_SECONDS)
            except subprocess.TimeoutExpired:
                reap_group(run.output_dir)
                launcher.wait()
    statuses = [s for s in (_read(folder / f"rank-{r}.json") for r in range(ranks)) if s is not None]
    if statuses:
        outcome.peak_memory_bytes = max(int(s.get("peak_memory_bytes", 0)) for s in statuses)
        outcome.memory_kind = f"{statuses[0].get('memory_kind', '')}, the largest of {ranks} ranks"
    result = _read(folder / "result.json")
    if result is None or not group_finished(statuses, ranks):
        raise group_failure(statuses, launcher.returncode, log_path)
    if launcher.returncode != 0:
        logger.warning(
            "trial %s: every rank recorded its finished work, then torch.distributed.run exited with "
            "%s (a rank's exit, after the trial; its output: %s)",
            run.run_name,
            launcher.returncode,
            log_path,
        )
    outcome.metrics = {k: float(v) for k, v in result["metrics"].items()}
    outcome.training_arguments = result["training_arguments"]
    log = reporter.log
    if result["stopped"] is not None and log.stopped is None:
        log.stop(result["stopped"], result["reason"])
    log.step = max(log.step, int(result["step"]))
    log.max_steps = int(result["max_steps"])
    log.peak_rss_bytes = int(result["peak_rss_bytes"])
    log.longest_step_seconds = float(result["longest_step_seconds"])
    log.longest_save_seconds = float(result["longest_save_seconds"])
    steps = {int(s["step"]) for s in statuses}
    if len(steps) > 1:  # the step-end vote makes this impossible; say so if it ever is not
        logger.error("trial %s: ranks stopped at different steps %s", run.run_name, sorted(steps))
