"""Cold wall-clock of `planner fit` for the 8B acceptance commands (issue 2, target: <= 10 s each).

Each command runs in a fresh process (imports included), as a user would run it. The machine is
shared, so next to wall-clock each run records the CPU time (user + sys) of the command and of the
helper process it forks, and the 1-minute load average just before it started. ``--runs`` repeats
each command; ``--max-load`` waits (up to ``--wait`` seconds) for a quiet machine before each run.
Prints a table and writes benchmarks/results/fit_time-<host>.json.

    .venv/bin/python benchmarks/fit_time.py --runs 3 --max-load 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "full bf16 adamw (does not fit)": ["--method", "full", "--precision", "bf16", "--optimizer", "adamw"],
    "qlora bf16 adamw": ["--method", "qlora", "--precision", "bf16", "--optimizer", "adamw"],
}
BASE = ["fit", "meta-llama/Llama-3.1-8B", "--seq-len", "2048", "--card", "rtx-4090", "--json"]


def load_1min() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(max_load: float | None, wait: float) -> None:
    deadline = time.monotonic() + wait
    while max_load is not None and load_1min() > max_load and time.monotonic() < deadline:
        time.sleep(5)


def run_once(planner: str, extra: list[str]) -> tuple[dict[str, float], dict[str, object]]:
    """One cold run: (wall and CPU seconds of the process tree, load before it), and its answer."""
    load = Path("/proc/loadavg").read_text().strip()
    print(f"  /proc/loadavg before: {load}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([planner, *BASE, *extra], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {
        "seconds": round(seconds, 2),
        "cpu_user": round(after.ru_utime - before.ru_utime, 2),
        "cpu_sys": round(after.ru_stime - before.ru_stime, 2),
        "load_1min_before": float(load.split()[0]),
    }
    print(f"  {timing}", flush=True)
    report = json.loads(done.stdout)
    answer = {
        "max_micro_batch": report["max_micro_batch"],
        "peak_gib_at_max": round(report["at_max"]["peak_bytes"] / 2**30, 2),
        "fixes": [f"{fix['change']} -> {fix['max_micro_batch']}" for fix in report["fixes"]],
    }
    return timing, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="Cold runs of each command.")
    parser.add_argument("--max-load", type=float, help="Wait for the 1-minute load to drop below this.")
    parser.add_argument("--wait", type=float, default=180.0, help="Longest wait for --max-load (s).")
    parser.add_argument(
        "--planner", help="The command to time (default: this environment's); e.g. an older checkout's."
    )
    parser.add_argument("--out", type=Path, help="JSON to write (default: results/fit_time-<host>.json).")
    args = parser.parse_args()
    planner = args.planner or shutil.which("planner") or str(Path(sys.executable).parent / "planner")
    results = []
    for name, extra in COMMANDS.items():
        print(name, flush=True)
        runs, answers = [], []
        for _ in range(args.runs):
            wait_for_quiet(args.max_load, args.wait)
            timing, answer = run_once(planner, extra)
            runs.append(timing)
            answers.append(answer)
        if any(answer != answers[0] for answer in answers):
            raise SystemExit(f"runs of {name} disagree: {answers}")
        seconds = [run["seconds"] for run in runs]
        results.append(
            {
                "config": name,
                "seconds_median": round(statistics.median(seconds), 2),
                "seconds_min": min(seconds),
                "cpu_seconds_median": round(statistics.median(r["cpu_user"] + r["cpu_sys"] for r in runs), 2),
                "load_1min_median": round(statistics.median(r["load_1min_before"] for r in runs), 2),
                **answers[0],
                "runs": runs,
            }
        )
    print(f"\n{'config':32} {'median s':>9} {'min s':>7} {'cpu s':>7} {'load':>6} {'max mb':>7}")
    for row in results:
        print(
            f"{row['config']:32} {row['seconds_median']:9.2f} {row['seconds_min']:7.2f} "
            f"{row['cpu_seconds_median']:7.2f} {row['load_1min_median']:6.2f} {row['max_micro_batch']:7d}"
        )
    out = args.out or Path(__file__).parent / "results" / f"fit_time-{platform.node() or 'host'}.json"
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
