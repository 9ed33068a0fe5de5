"""``planner run`` as a user runs it, a process of its own: a disk fault in the middle of a checkpoint
save, then a rerun; and a budget held by the whole process's wall time, start-up included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from planner.executor import load_results
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec

REPO = Path(__file__).resolve().parents[2]
PLANNER = "from planner.cli import main; main()"
READ_ONLY_ONCE = """
import errno
import logging
import os
from pathlib import Path

# As the CLI does before anything imports transformers (this code imports it first).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
from transformers import Trainer

saves = []
save_optimizer = Trainer._save_optimizer_and_scheduler


def read_only_once(self, output_dir):
    # The 4th checkpoint save of this process (trial 1's second) meets a read-only disk halfway:
    # its model is written, its optimizer and trainer_state.json are not.
    saves.append(output_dir)
    if len(saves) == 4:
        raise OSError(errno.EROFS, "Read-only file system", str(Path(output_dir) / "optimizer.pt"))
    save_optimizer(self, output_dir)


Trainer._save_optimizer_and_scheduler = read_only_once
from planner.cli import main

main()
"""


def planner_run(*arguments: object, code: str = PLANNER) -> subprocess.CompletedProcess[str]:
    """``planner run ARGUMENTS``, a new interpreter (this checkout's ``planner``), ``code`` first."""
    return subprocess.run(
        [sys.executable, "-c", code, "run", *map(str, arguments)],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=600,
    )


def _environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def start_up_seconds() -> float:
    """How long a ``planner run`` process takes, on this machine now, to import what it runs with.

    5 s on an idle machine, over 25 s on a loaded one: a budget shorter than that runs nothing.
    """
    started = time.monotonic()
    imports = "import planner.cli, planner.executor, transformers.trainer"
    subprocess.run([sys.executable, "-c", imports], check=True, env=_environment(), timeout=600)
    return time.monotonic() - started


def test_a_read_only_disk_mid_save_stops_the_run_and_a_rerun_completes_every_trial_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The output directory turns read-only during trial 1's second checkpoint save.

    Tests run as root in CI, where ``chmod`` stops no write: the worker's Trainer raises instead
    what a read-only disk raises (``OSError(EROFS)`` on a file under the trial's directory), once,
    between writing the checkpoint's model and its optimizer state.
    """
    learning_rates = [1e-3, 2e-3, 3e-3]
    spec_path = write_spec(  # trials of 4 optimizer steps, saved at steps 2 and 4
        tmp_path,
        tiny_model_dir,
        train=16,
        eval_examples=4,
        search={"learning_rate": learning_rates},
        checkpoint_every_steps=2,
    )
    spec = load_spec(spec_path)
    plan = tmp_path / "plan.json"
    plan.write_text(hand_plan(spec, micro_batch=4).model_dump_json())

    first = planner_run(spec_path, "--card", "cpu", "--plan", plan, code=READ_ONLY_ONCE)
    assert first.returncode == 2, first.stderr
    assert len(first.stderr.strip().splitlines()) == 1, first.stderr  # one line, no traceback
    line = first.stderr.strip()
    assert line.startswith("error: output_dir: trial 1 stopped: Read-only file system"), line
    assert line.endswith("then run again: it continues from its checkpoint at step 2"), line
    before = load_results(spec.storage_url, spec.name).trials
    # The trial it stopped is resumable, and no other trial was tried (and failed) meanwhile.
    assert [(t.status, t.state) for t in before] == [
        ("complete", "COMPLETE"),
        ("interrupted", "FAIL"),
        ("waiting", "WAITING"),
    ]

    second = planner_run(spec_path, "--card", "cpu", "--plan", plan)  # the disk is writable again
    assert second.returncode == 0, second.stderr
    assert "trial 1 was interrupted: continuing it from its checkpoint at step 2" in second.stdout
    after = load_results(spec.storage_url, spec.name).trials
    completed = Counter(t.params["learning_rate"] for t in after if t.state == "COMPLETE")
    assert completed == Counter(learning_rates)  # every trial, exactly once
    (continuation,) = [t for t in after if t.continues == 1]
    assert continuation.resumed_from_step == 2 and continuation.steps_done == 4


def test_the_budget_holds_for_the_whole_planner_run_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Wall time of the ``planner run`` process, interpreter start and imports included, against the
    budget plus the longest optimizer step and checkpoint save the run itself recorded."""
    spec_path = write_spec(
        tmp_path,
        tiny_model_dir,
        train=4096,
        eval_examples=4,
        search={"learning_rate": [1e-3 * (1 + i / 32) for i in range(32)]},
        checkpoint_every_steps=64,
    )
    spec = load_spec(spec_path)
    plan = tmp_path / "plan.json"
    # 32 trials of 1024 steps (several seconds each), predicted at 1 s: far more than the budget
    # holds however fast the machine is after a start-up measured at a busy moment (16 trials of
    # 256 steps once all fitted). Learning rates in [1e-3, 2e-3): none diverges and ends early.
    plan.write_text(hand_plan(spec, seconds=1.0, micro_batch=4).model_dump_json())
    budget = round(2 * start_up_seconds() + 10)  # time for a few trials after the start-up

    started = time.monotonic()
    ran = planner_run(spec_path, "--card", "cpu", "--plan", plan, "--budget", f"{budget:g}s", "--json")
    wall = time.monotonic() - started
    assert ran.returncode == 0, ran.stderr
    payload = json.loads(ran.stdout)
    trials = payload["trials"]
    statuses = [t["status"] for t in trials]
    assert trials and payload["left_waiting"] > 0, statuses  # the budget, not the plan, ended the run
    step = max(t["longest_step_seconds"] for t in trials)
    save = max(t["longest_save_seconds"] for t in trials)
    assert wall <= budget + step + save, (
        f"{wall:.2f}s for a {budget:g}s budget (step {step:.2f}s, save {save:.2f}s)"
    )
