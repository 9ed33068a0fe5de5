"""Max micro-batch on one GPU: our finder vs Lightning's binsearch vs accelerate's x0.9 retry (issue 3 c).

On the same model (built from its config, random init on the GPU), in one run:

- ours: the estimator's prediction verified by a step sequence reaching the run's peak, and the
  size above it probed (``planner.profiler.find_max_micro_batch``);
- Lightning: ``Tuner(trainer).scale_batch_size(mode="binsearch", steps_per_trial=3)``;
- accelerate: ``find_executable_batch_size`` around a 3-step training function (its default start
  of 128, times 0.9 after each OOM).

For each: the batch found, the training steps executed, the wall-clock, and whether the batch
survives 50 real training steps plus an eval pass. The true max is established by probing the
sizes within 2 of our answer. Writes benchmarks/results/max_batch-<card>.json.

On the GPU, Lightning is imported if installed, else installed with pip (``pip install
lightning``); a GPU machine without network needs the wheel brought along. Without CUDA the
script refuses, except ``--smoke``: a tiny model on this CPU with a simulated memory limit (the
real ``torch.OutOfMemoryError`` above a micro-batch), so every code path runs (Lightning's if
it is installed).

    python benchmarks/max_batch.py [--model meta-llama/Llama-3.2-1B --method lora --seq-len 1024]
    python benchmarks/max_batch.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_TRIAL = 3


def import_lightning(install: bool) -> Any | None:
    """``lightning.pytorch``; when missing, installed with pip if ``install``. None if unavailable."""
    for attempt in range(2):
        try:
            return importlib.import_module("lightning.pytorch")
        except ImportError:
            if attempt or not install:
                return None
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "lightning"], check=False)
            if done.returncode != 0:
                return None
            importlib.invalidate_caches()
    return None


class Counter:
    """Training steps executed by a method (forward+backward+optimizer step, OOM'd ones included)."""

    def __init__(self) -> None:
        self.steps = 0


def ours(config: Any, card: Any, runner: Any, prediction: Any, estimate_seconds: float) -> dict[str, Any]:
    from planner.profiler import find_max_micro_batch

    start = time.perf_counter() - estimate_seconds  # the estimator's answer is part of the method
    search = find_max_micro_batch(config, card, runner=runner, prediction=prediction)
    # A probe runs three training steps and an eval pass (see StepRunner.probe); on the CPU one
    # traced step and an eval forward.
    per_probe = 3 if runner.device.type == "cuda" else 1
    return {
        "batch": search.max_micro_batch,
        "trials": search.probe_count,
        "training_steps": per_probe * search.probe_count,
        "seconds": round(time.perf_counter() - start, 2),
        "estimate_seconds": round(estimate_seconds, 2),
        "predicted": search.predicted,
        "probes": [(p.micro_batch, p.outcome) for p in search.probes],
    }


def accelerate_finder(config: Any, runner: Any) -> dict[str, Any]:
    from accelerate.utils import find_executable_batch_size

    counter, tried = Counter(), []
    start = time.perf_counter()

    @find_executable_batch_size(starting_batch_size=128)
    def train(batch_size: int) -> int:
        tried.append(batch_size)
        runner.recover()  # what its caller would do: start the job again from a clean state
        for _ in range(STEPS_PER_TRIAL):
            counter.steps += 1
            runner.train_step(batch_size)
        return batch_size

    batch = train()
    return {
        "batch": batch,
        "trials": len(tried),
        "training_steps": counter.steps,
        "seconds": round(time.perf_counter() - start, 2),
        "tried": tried,
    }


def lightning_finder(pl: Any, config: Any, runner: Any) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from planner.step import make_optimizer

    setup, seq_len = runner.setup, config.seq_len

    class RandomTokens(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 1_000_000

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {k: v[0] for k, v in setup.make_batch(1, seq_len).items()}

    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = setup.model
            self.batch_size = 2
            self.steps = 0

        def training_step(self, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
            self.steps += 1
            return self.model(**batch).loss

        def configure_optimizers(self) -> Any:
            return make_optimizer(config.optimizer, [p for p in self.model.parameters() if p.requires_grad])

        def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
            return DataLoader(RandomTokens(), batch_size=self.batch_size)

    precision = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true", "pure-bf16": "bf16-true"}
    trainer = pl.Trainer(
        accelerator="gpu" if runner.device.type == "cuda" else "cpu",
        devices=1,
        max_steps=10**6,
        precision=precision[config.precision.value],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(),
    )
    module = Module()
    start = time.perf_counter()
    batch = pl.tuner.Tuner(trainer).scale_batch_size(
        module, mode="binsearch", steps_per_trial=STEPS_PER_TRIAL, init_val=2, max_trials=25
    )
    return {
        "batch": batch,
        "trials": None,
        "training_steps": module.steps,
        "seconds": round(time.perf_counter() - start, 2),
    }


def survives(runner: Any, batch: int, steps: int) -> bool:
    """Whether ``batch`` runs ``steps`` training steps and an eval pass without running out of memory."""

    def run(size: int) -> bool:
        for _ in range(steps):
            runner.train_step(size)
        runner.eval_forward(size)
        runner.train_step(size)
        return True

    runner.recover()
    return batch > 0 and runner.attempt(run, batch) is not None


def true_max(runner: Any, prediction: Any, answer: int) -> int | None:
    """The largest size within 2 of ``answer`` that fits, if the ones below it fit and the one above not."""
    from planner.profiler import runner_probe

    probe = runner_probe(runner, prediction)
    fits = {size: probe(size).fits for size in range(max(1, answer - 2), answer + 3)}
    best = max((size for size, ok in fits.items() if ok), default=0)
    return best if best + 1 in fits and not fits[best + 1] else None


@contextlib.contextmanager
def limit(smoke_limit: int | None, seq_len: int) -> Iterator[None]:
    if smoke_limit is None:
        yield
        return
    from planner.profiler import OutOfMemoryAbove

    with OutOfMemoryAbove(smoke_limit, seq_len):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="meta-llama/Llama-3.2-1B")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--survival-steps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="A tiny model on this CPU, simulated OOM.")
    args = parser.parse_args()

    import torch

    from planner.cards import host_card
    from planner.estimator import Estimator
    from planner.profiler import Prediction, StepRunner, device_card
    from planner.schema import TrainingConfig

    smoke_limit = None
    if args.smoke:
        # A card with room for 6 micro-batches, and the simulated OOM from 7 on: the true max is 6.
        config = TrainingConfig(model=str(ROOT / "examples" / "tiny-llama"), precision="fp32", seq_len=96)
        line = Estimator(config, host_card())
        card = host_card().model_copy(
            update={"free_bytes": (line.estimate(6).peak_bytes + line.estimate(7).peak_bytes) // 2}
        )
        device, smoke_limit, survival_steps = torch.device("cpu"), 7, 3
    else:
        if not torch.cuda.is_available():
            sys.exit("max_batch.py compares batch finders on a CUDA GPU; use --smoke to check it on this CPU")
        config = TrainingConfig(
            model=args.model, method=args.method, precision=args.precision, seq_len=args.seq_len
        )
        device = torch.device("cuda")
        card = device_card(device)
        survival_steps = args.survival_steps
    # On the GPU machine Lightning is part of the comparison; the CPU smoke check uses it if present.
    pl = import_lightning(install=not args.smoke)
    start = time.perf_counter()
    prediction = Prediction.of(Estimator(config, card))
    estimate_seconds = time.perf_counter() - start
    runner = StepRunner(config, device)
    results: dict[str, Any] = {"config": config.model_dump(mode="json"), "card": card.name}
    with limit(smoke_limit, config.seq_len):
        results["ours"] = ours(config, card, runner, prediction, estimate_seconds)
        results["accelerate"] = accelerate_finder(config, runner)
        results["lightning"] = (
            lightning_finder(pl, config, runner) if pl is not None else {"error": "lightning not installed"}
        )
        for name in ("ours", "accelerate", "lightning"):
            batch = results[name].get("batch")
            if batch is not None:
                results[name]["survives"] = survives(runner, batch, survival_steps)
        results["true_max"] = true_max(runner, prediction, results["ours"]["batch"])
    runner.close()
    print(f"{'method':12} {'batch':>6} {'trials':>7} {'steps':>6} {'seconds':>8} {'survives':>9}")
    for name in ("ours", "lightning", "accelerate"):
        r = results[name]
        if "error" in r:
            print(f"{name:12} {r['error']}")
            continue
        print(
            f"{name:12} {r['batch']:6d} {r['trials'] or '-':>7} {r['training_steps']:6d} "
            f"{r['seconds']:8.1f} {'yes' if r.get('survives') else 'no':>9}"
        )
    print(f"true max (probed within 2 of ours): {results['true_max']}")
    if not args.smoke:
        out = ROOT / "benchmarks" / "results" / f"max_batch-{card.name}.json"
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
