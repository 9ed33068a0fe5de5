"""Where a trial's time goes, phase by phase, next to what the plan predicted for each (issue 12 a).

Runs one held-out sweep of ``sweep_heldout.py`` in this process through the executor's real trial
path (``planner.sweep.plan_for_card``, then ``planner.executor.run_sweep`` with the built-in
recipe), timestamping each trial through public hooks only: the sweep observer's
``trial_started`` and ``trial_finished`` and a ``TrainerCallback`` (Trainer constructed, training
begun, each optimizer step, each evaluation and save, training ended). Per trial it prints:

- set-up: from the trial's start to ``Trainer`` constructed (tokenise, build the model, Trainer's
  constructor) plus ``train()``'s set-up to its first step: the plan's ``startup`` part;
- steps: first step's begin to the last step's end, evaluations and saves inside taken out: the
  plan's ``train`` part;
- eval and saves: each evaluation (from the step's end to ``on_evaluate``) and save (to
  ``on_save``): the plan's ``eval`` and ``checkpoints`` parts;
- after: the last step's end to the trial recorded (a final evaluation, releasing memory, the
  study's commits): in the plan's ``storage_seconds`` (commits) and ``eval`` (a final pass).

    python benchmarks/trial_phases.py [--sweep mistral-lora-short]

writes benchmarks/results/trial_phases-<host>.json. The machine's load is recorded before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from sweep_heldout import SWEEPS, build

ROOT = Path(__file__).parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="mistral-lora-short", choices=[s["name"] for s in SWEEPS])
    parser.add_argument("--seed", type=int, default=12)
    options = parser.parse_args()
    index, sweep = next((i, s) for i, s in enumerate(SWEEPS) if s["name"] == options.sweep)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="phases-") as scratch:
        root = Path(scratch)
        os.environ["VRAM_PLANNER_MEASURED"] = str(root / "measured")
        spec_path = build(sweep, root, options.seed + 10 * index)
        os.chdir(spec_path.parent)
        rows, plan = run(spec_path)
    summary = {
        "sweep": options.sweep,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "startup_seconds": plan.startup_seconds,
        "storage_seconds": plan.storage_seconds,
        "trials": rows,
    }
    header = f"{'trial':>5} {'shape':>5} | {'phase':<8} {'predicted':>9} {'actual':>8}"
    print(header)
    for row in rows:
        for phase in ("startup", "train", "eval", "checkpoints"):
            print(
                f"{row['trial']:5d} {row['shape']:>5} | {phase:<8} {row['predicted'][phase]:9.3f} "
                f"{row['actual'][phase]:8.3f}"
            )
        print(f"{'':5} {'':>5} | {'total':<8} {sum(row['predicted'].values()):9.3f} {row['seconds']:8.3f}")
        print(f"{'':5} {'':>5} | {'after':<8} {'':>9} {row['actual']['after']:8.3f}")
    print(f"load {summary['load_before']} -> {summary['load_after']}")
    out = ROOT / "benchmarks" / "results" / f"trial_phases-{platform.node() or 'host'}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


def run(spec_path: Path) -> tuple[list[dict[str, Any]], Any]:
    from transformers import TrainerCallback

    from planner.cards import load_card
    from planner.executor import SweepObserver, run_sweep
    from planner.sweep import load_spec, plan_for_card

    stamps: list[tuple[str, Any, float]] = []

    def stamp(name: str, params: dict[str, Any] | None = None) -> None:
        stamps.append((name, params, time.perf_counter()))

    class Observer(SweepObserver):
        def trial_started(self, number: int, params: dict[str, Any], *_: Any) -> None:
            stamp("started", params)

        def trial_finished(self, *_: Any) -> None:
            stamp("finished")

    class Stamps(TrainerCallback):
        def on_init_end(self, *_: Any, **__: Any) -> None:
            stamp("built")

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            stamp("step_begin")

        def on_step_end(self, *_: Any, **__: Any) -> None:
            stamp("step_end")

        def on_evaluate(self, *_: Any, **__: Any) -> None:
            stamp("evaluated")

        def on_save(self, *_: Any, **__: Any) -> None:
            stamp("saved")

    spec = load_spec(spec_path)
    card = load_card("cpu")
    plan = plan_for_card(spec, card)
    run_sweep(spec, plan, card=card, callbacks=[Stamps()], observer=Observer())
    rows = []
    for params, events in _by_trial(stamps):
        at = {name: [t for n, _, t in events if n == name] for name in {n for n, _, _ in events}}
        first, last = at["step_begin"][0], at["step_end"][-1]
        # Trainer evaluates, then saves, after a step's end: each takes from the mark before it.
        marks = [(n, t) for n, _, t in events if n in ("step_end", "evaluated", "saved")]
        spent = {"evaluated": [0.0, 0.0], "saved": [0.0, 0.0]}  # inside the steps' span, after it
        for (_, before), (name, t) in itertools.pairwise(marks):
            if name in spent:
                spent[name][t > last] += t - before
        planned = next(p for p in plan.trials if p.params == params)
        assert planned.time is not None
        rows.append(
            {
                "trial": planned.number,
                "shape": f"{planned.config.micro_batch}x{planned.config.gradient_accumulation}",
                "steps": len(at["step_begin"]),
                "predicted": {k: round(v, 3) for k, v in planned.time.parts.items()},
                "actual": {
                    "startup": round(first - at["started"][0], 3),
                    "train": round(last - first - spent["evaluated"][0] - spent["saved"][0], 3),
                    "eval": round(sum(spent["evaluated"]), 3),
                    "checkpoints": round(sum(spent["saved"]), 3),
                    "after": round(at["finished"][-1] - last - spent["evaluated"][1] - spent["saved"][1], 3),
                },
                "seconds": round(at["finished"][-1] - at["started"][0], 3),
            }
        )
    return rows, plan


def _by_trial(stamps: list[tuple[str, Any, float]]) -> list[tuple[Any, list[tuple[str, Any, float]]]]:
    """The stamps split at each ``started``, with that trial's params."""
    trials: list[tuple[Any, list[tuple[str, Any, float]]]] = []
    for stamp in stamps:
        if stamp[0] == "started":
            trials.append((stamp[1], []))
        if trials:
            trials[-1][1].append(stamp)
    return trials


if __name__ == "__main__":
    main()
