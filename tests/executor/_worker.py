"""A worker process for the multi-process tests: ``python -m tests.executor._worker SPEC PLAN URL STUDY``.

Options: ``--step-seconds S`` makes every optimizer step S seconds slower; ``--wait FILE`` waits for
FILE to exist before starting (so several workers start together).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from planner.executor import run_sweep
from planner.schema import Plan
from planner.sweep import load_spec


class SlowSteps(TrainerCallback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", type=Path)
    parser.add_argument("plan", type=Path)
    parser.add_argument("storage")
    parser.add_argument("study")
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--wait", type=Path)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    plan = Plan.model_validate_json(args.plan.read_text())
    import transformers.trainer  # noqa: F401  (import before the start barrier)

    while args.wait is not None and not args.wait.exists():
        time.sleep(0.05)
    run_sweep(
        spec, plan, storage_url=args.storage, study_name=args.study, callbacks=[SlowSteps(args.step_seconds)]
    )


if __name__ == "__main__":
    main()
