"""Worker processes start through the library entry point (``python -m planner.executor``), not the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from planner.executor import WorkerOrder, load_results, open_study, run_workers
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec


def test_workers_run_an_order_through_the_library_entry_point(tmp_path: Path, tiny_model_dir: Path) -> None:
    spec_path = write_spec(tmp_path, tiny_model_dir, train=8, eval_examples=4)
    spec = load_spec(spec_path)
    plan = hand_plan(spec, micro_batch=4)
    open_study(spec, plan, spec.storage_url, spec.name)
    order = WorkerOrder(
        spec=spec_path,
        plan=plan,
        card="cpu",
        storage_url=spec.storage_url,
        study_name=spec.name,
        show_progress=False,
    )
    # "" hides every GPU: two CPU workers stand for two GPUs.
    assert run_workers(["", ""], order) == 0
    results = load_results(spec.storage_url, spec.name)
    assert sorted(t.params["learning_rate"] for t in results.trials if t.status == "complete") == [1e-3, 3e-3]
    assert len({t.worker["pid"] for t in results.trials if t.worker}) >= 1


def test_a_bad_order_is_one_line_and_exit_2(tmp_path: Path) -> None:
    order = tmp_path / "order.json"
    order.write_text('{"spec": "missing.yaml"}')
    done = subprocess.run(
        [sys.executable, "-m", "planner.executor", str(order)],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
