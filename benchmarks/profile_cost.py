"""What a profile costs next to the sweep it serves (issue 3, acceptance d: at most 2%).

The sweep is planned from an empty profile store, so each distinct config of it is profiled on
the spot at its trial's micro-batch (what the planner does on the host); each config is also
profiled as `planner profile` does by default (three sizes the estimator picks). The sweep it
serves is the plan's total on one worker, and with ``--run`` (host only) the sweep run for real
by `planner run`. Prints both figures and their ratios; writes
benchmarks/results/profile_cost-<card>-<host>.json.

    python benchmarks/profile_cost.py                       # the tiny example sweep on this CPU
    python benchmarks/profile_cost.py --run                 # ... and run it for real, timed
    python benchmarks/profile_cost.py --spec examples/llama-8b-4090/spec.yaml --card local  # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_SPEC = ROOT / "examples" / "tiny-sweep" / "spec.yaml"
TARGET = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=TINY_SPEC, help="Sweep spec (default: tiny-sweep).")
    parser.add_argument("--card", default="cpu", help="'cpu' (default) or 'local' (this machine's GPU).")
    parser.add_argument("--run", action="store_true", help="Also run the sweep for real (host only).")
    args = parser.parse_args()
    from planner.cards import host_card
    from planner.profiler import ProfileStore, device_card, local_device, profile_config
    from planner.schema import MeasuredProfile, ProfileKey, TrainingConfig
    from planner.sweep import MeasuringProfiles, load_spec, plan_sweep

    device = local_device("cpu" if args.card == "cpu" else "cuda")
    card = host_card() if device.type == "cpu" else device_card(device)
    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory() as measured:
        store = ProfileStore(measured)
        taken: list[float] = []

        def measure(config: TrainingConfig) -> MeasuredProfile:
            profile = profile_config(config, card, [config.micro_batch], device=device)
            store.save(profile)
            taken.append(profile.seconds or 0.0)
            return profile

        plan = plan_sweep(spec, card, profiles=MeasuringProfiles(store, card, measure))
    configs = {ProfileKey.of(t.config, card.name): t.config for t in plan.trials if t.feasible}
    planner_seconds = sum(taken)
    default_seconds = sum(
        profile_config(config, card, device=device).seconds or 0.0 for config in configs.values()
    )
    results: dict[str, object] = {
        "host": platform.node(),
        "card": card.name,
        "device": card.display_name,
        "sweep": spec.name,
        "trials": len(plan.trials),
        "feasible_trials": sum(t.feasible for t in plan.trials),
        "configs_profiled": len(configs),
        "profile_seconds_default_sizes": round(default_seconds, 2),
        "profile_seconds_planner": round(planner_seconds, 2),
        "sweep_seconds_planned": round(plan.total_seconds, 1),
    }
    rows = [("planned sweep (plan total, 1 worker)", "planned", plan.total_seconds)]
    if args.run:
        if card.kind != "cpu":
            parser.error("--run times the host's sweep only")
        sweep_seconds = _run_sweep(args.spec)
        results["sweep_seconds_run"] = round(sweep_seconds, 1)
        rows.append(("sweep run for real (planner run)", "run", sweep_seconds))
    print(f"{spec.name} on {card.display_name}: {len(plan.trials)} trials, {len(configs)} config(s) profiled")
    print(f"{'profile':44} {'seconds':>9}")
    print(f"{'  planner profile (default sizes)':44} {default_seconds:9.2f}")
    print(f"{'  planner auto-profile (trial micro-batch)':44} {planner_seconds:9.2f}")
    print(f"{'sweep it serves':44} {'seconds':>9} {'default':>8} {'auto':>8}  (target <= {TARGET:.0%})")
    for name, against, seconds in rows:
        print(f"  {name:42} {seconds:9.1f} {default_seconds / seconds:8.2%} {planner_seconds / seconds:8.2%}")
        results[f"ratio_default_vs_{against}"] = round(default_seconds / seconds, 4)
        results[f"ratio_auto_vs_{against}"] = round(planner_seconds / seconds, 4)
    out = ROOT / "benchmarks" / "results" / f"profile_cost-{card.name}-{platform.node() or 'host'}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def _run_sweep(spec: Path) -> float:
    """Wall-clock of `planner run` on a scratch copy of the spec's folder and its model."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / spec.parent.name
        # Only the spec and its data: a study or runs left beside it would make a resumed, shorter run.
        shutil.copytree(spec.parent, copy, ignore=shutil.ignore_patterns("*.db*", "*-runs", "*.lock"))
        model = ROOT / "examples" / "tiny-llama"
        shutil.copytree(model, Path(scratch) / model.name)
        planner = shutil.which("planner") or str(Path(sys.executable).parent / "planner")
        env = {**os.environ, "VRAM_PLANNER_MEASURED": str(Path(scratch) / "measured")}
        start = time.perf_counter()
        done = subprocess.run(
            [planner, "run", str(copy / spec.name), "--card", "cpu", "--json"],
            check=True,
            capture_output=True,
            cwd=scratch,
            env=env,
        )
        seconds = time.perf_counter() - start
        trials = json.loads(done.stdout)["trials"]
        if not trials:
            sys.exit("planner run ran no trial: the sweep time would be meaningless")
        return seconds


if __name__ == "__main__":
    main()
