"""One worker process per GPU of this host (``planner run --gpus 0,1,2,3``), or per GPU group.

The parent plans once and creates the study; each child is started with ``CUDA_VISIBLE_DEVICES``
set to its GPU (its group's, ``0,1``, for trials across ranks: see ``_group``) as
``python -m planner.executor ORDER.json`` (:func:`worker_main`): it reads the
:class:`WorkerOrder` and runs :func:`~planner.executor.run_sweep` on the shared study, which hands
each trial to exactly one of them. No CLI is involved: the same entry serves any launcher.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from planner._files import read_model
from planner.errors import PlannerError
from planner.schema import Plan

logger = logging.getLogger(__name__)


class WorkerOrder(BaseModel):
    """What a worker process runs: the spec, the plan made for it, the study, the budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: Path
    plan: Plan
    card: str
    storage_url: str
    study_name: str
    budget_seconds: float | None = None
    budget_start: float | None = None
    """When the budget began (a ``time.time()``): the launching process's start, say."""
    report_to: list[str] = []
    show_progress: bool = True
    """Print one line per event (prefixed with the GPU) on stdout."""


def run_workers(gpus: Sequence[str], order: WorkerOrder) -> int:
    """Start one worker per entry of ``gpus`` (its ``CUDA_VISIBLE_DEVICES``: ``"2"``, or a group
    ``"2,3"``) on ``order`` and wait for all; returns the worst exit code."""
    with tempfile.TemporaryDirectory(prefix="planner-run-") as directory:
        path = Path(directory) / "order.json"
        path.write_text(order.model_dump_json())
        children = []
        for gpu in gpus:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            command = [sys.executable, "-m", "planner.executor", str(path)]
            logger.info("starting a worker on GPU(s) %s", gpu)
            children.append(subprocess.Popen(command, env=env))
        try:
            codes = [child.wait() for child in children]
        except KeyboardInterrupt:
            for child in children:
                child.terminate()
            codes = [child.wait() for child in children]
    return max(codes, key=abs)


def worker_main(argv: Sequence[str]) -> int:
    """Run the :class:`WorkerOrder` in the file ``argv[0]``; 0 when done, 2 on a user error."""
    from planner.cards import load_card
    from planner.executor._display import PlainObserver, SweepObserver
    from planner.executor._sweep import run_sweep
    from planner.sweep import load_spec

    if argv[:1] == ["--rank"]:  # one rank of a trial across several GPUs, under torch.distributed.run
        from planner.executor._rank import rank_main

        return rank_main(argv[1:])
    if len(argv) != 1:
        print("usage: python -m planner.executor ORDER.json", file=sys.stderr)
        return 2
    try:
        order = read_model(
            argv[0], WorkerOrder, field="order", expect="a worker order written by run_workers"
        )
        spec = load_spec(order.spec)
        observer = PlainObserver(sys.stdout) if order.show_progress else SweepObserver()
        run_sweep(
            spec,
            order.plan,
            storage_url=order.storage_url,
            study_name=order.study_name,
            budget_seconds=order.budget_seconds,
            budget_start=order.budget_start,
            observer=observer,
            card=load_card(order.card),
            report_to=order.report_to,
        )
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
