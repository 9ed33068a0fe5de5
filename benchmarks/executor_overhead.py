"""Executor overhead: one trial through the executor vs a bare `Trainer.train()` (issue 5 h, <= 3%).

The trial is one of examples/tiny-sweep (a 4-layer Llama-style model from its config, 768 examples,
micro-batch 4 x accumulation 2, one epoch with an eval and a checkpoint at its end). Both sides
build the same model (same seed), tokenizer, datasets and Trainer on the same TrainingArguments:

- executor: ``run_sweep`` on a fresh study of that one trial, timed from the call to its return
  (storage and study creation, claiming, the per-step callbacks, storing the result, releasing
  memory: everything the executor adds);
- bare: tokenizer, datasets, model, ``Trainer(...)``, ``train()``, with the executor's
  TrainingArguments (``same args``) and, as a second reference, with the exported best config
  plus what running needs (``exported args``: Trainer's default logging cadence, what a user
  who copied the exported config would run).

Runs alternate (bare, exported, executor) after one warm-up of each; medians of ``--repeats``.
The machine is shared: the 1-minute load average is recorded before each run and in the JSON.
Prints a table and writes benchmarks/results/executor_overhead-<host>.json.

    .venv/bin/python benchmarks/executor_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from planner.cards import host_card
from planner.executor import run_sweep
from planner.executor._recipe import build_model, load_datasets, tokenizer_for, training_arguments
from planner.schema import Plan, SweepSpec
from planner.sweep import load_spec, plan_for_card

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "tiny-sweep" / "spec.yaml"
TRIAL = {"learning_rate": 3.0e-3, "effective_batch": 8}


def load_1min() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one_trial_spec(work: Path, name: str) -> SweepSpec:
    """The example's spec narrowed to one trial, writing its study and checkpoints under ``work``."""
    spec = load_spec(SPEC)
    data = spec.data.model_copy(
        update={"train": spec.resolve(spec.data.train or ""), "eval": spec.resolve(spec.data.eval or "")}
    )
    return spec.model_copy(
        update={
            "name": name,
            "spec_dir": work,
            "data": data,
            "search": {k: [v] for k, v in TRIAL.items()},
            "budget_seconds": None,
        }
    )


def bare(spec: SweepSpec, plan: Plan, output_dir: Path, exported: bool) -> None:
    """What the executor's built-in recipe runs, minus the executor: Trainer on the same inputs."""
    planned = plan.trials[0]
    if exported:
        arguments = training_arguments(spec, planned, None)
        arguments.update(
            output_dir=str(output_dir), disable_tqdm=True, remove_unused_columns=False, use_cpu=True
        )
    else:
        arguments = training_arguments(spec, planned, output_dir)
    tokenizer = tokenizer_for(spec)
    train, evaluation = load_datasets(spec, tokenizer, planned.config.seq_len)
    transformers.set_seed(spec.seed)
    trainer = Trainer(
        model=build_model(spec, planned.config),
        args=TrainingArguments(**arguments),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    # The executor removes these too (its display replaces them); printing is not training.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()


def timed(kind: str, run: Callable[[], Any]) -> dict[str, float]:
    load = load_1min()
    start = time.perf_counter()
    returned = run()
    timing = {"seconds": time.perf_counter() - start, "load_1min_before": load}
    if kind == "executor":
        # The executor's own measure of the trial (around Trainer and its OOM loop; no storage).
        timing["trial_seconds"] = returned.trials[0].seconds
    print(f"  {kind:<14} {timing['seconds']:7.2f} s   (load before {load:.2f})", flush=True)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each kind (after a warm-up).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="executor-overhead-"))
    try:
        plan = plan_for_card(one_trial_spec(work, "plan"), host_card())
        planned = plan.trials[0]
        print(
            f"trial {TRIAL}: micro-batch {planned.config.micro_batch} x accumulation "
            f"{planned.config.gradient_accumulation}, {planned.optimizer_steps} optimizer steps",
            flush=True,
        )
        runs: dict[str, list[dict[str, float]]] = {"bare": [], "exported": [], "executor": []}
        for repeat in range(args.repeats + 1):
            print("warm-up" if repeat == 0 else f"repeat {repeat}", flush=True)
            name = f"overhead-{repeat}"
            spec = one_trial_spec(work, name)
            kinds: dict[str, Callable[[], Any]] = {
                "bare": partial(bare, spec, plan, work / "bare", exported=False),
                "exported": partial(bare, spec, plan, work / "exported", exported=True),
                "executor": partial(run_sweep, spec, plan),
            }
            for kind, run in kinds.items():
                timing = timed(kind, run)
                if repeat > 0:
                    runs[kind].append(timing)
            for leftover in (work / "bare", work / "exported", spec.output_dir):
                shutil.rmtree(leftover, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {kind: statistics.median(r["seconds"] for r in timings) for kind, timings in runs.items()}
    trial_median = statistics.median(r["trial_seconds"] for r in runs["executor"])
    start = time.perf_counter()
    gc.collect()
    full_collection = time.perf_counter() - start
    overhead = {
        "vs_same_args": median["executor"] / median["bare"] - 1,
        "vs_exported_args": median["executor"] / median["exported"] - 1,
    }
    print()
    print(f"{'run':<36} {'median s':>9} {'min s':>7} {'max s':>7}")
    labels = {
        "bare": "bare Trainer.train(), same args",
        "exported": "bare Trainer.train(), exported args",
        "executor": "executor (run_sweep, one trial)",
    }
    for kind, timings in runs.items():
        seconds = [r["seconds"] for r in timings]
        print(f"{labels[kind]:<36} {median[kind]:9.2f} {min(seconds):7.2f} {max(seconds):7.2f}")
    print(
        f"overhead: {overhead['vs_same_args']:+.1%} vs same args, "
        f"{overhead['vs_exported_args']:+.1%} vs exported args (target <= +3%)"
    )
    print(
        f"of the executor's {median['executor']:.2f} s, {trial_median:.2f} s is the trial itself "
        f"(Trainer with the executor's callbacks); the rest is the sweep's storage and bookkeeping. "
        f"One full gc.collect() here: {full_collection:.2f} s (Trainer's accelerate runs one per "
        f"train(); the executor freezes the heap it starts with, so its collections skip that)"
    )
    host = platform.node() or "host"
    out = REPO / "benchmarks" / "results" / f"executor_overhead-{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "trial": TRIAL,
                "micro_batch": planned.config.micro_batch,
                "gradient_accumulation": planned.config.gradient_accumulation,
                "optimizer_steps": planned.optimizer_steps,
                "repeats": args.repeats,
                "threads": args.threads,
                "median_seconds": median,
                "executor_median_trial_seconds": trial_median,
                "full_gc_collect_seconds": full_collection,
                "overhead": overhead,
                "target": 0.03,
                "runs": runs,
                "loadavg_after": Path("/proc/loadavg").read_text().strip(),
                "cpu": platform.processor() or platform.machine(),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
