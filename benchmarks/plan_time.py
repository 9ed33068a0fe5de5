"""Cold wall-clock of `planner plan` on the 8B example (issue 12 e, target: <= 10 s on 2 cores).

Runs the command in a fresh process (imports included), as a user would, and checks the answer's
shape: full fine-tuning pruned with a reason and fix, QLoRA trials planned with micro x accumulation
and times. The answer's digest (the plan's JSON less what depends on this run: start-up seconds,
machine load, measuring) is recorded, and compared with the one recorded before, so that a change
made for speed shows whether it kept the answers. Prints a table and writes
benchmarks/results/plan_time-<host>.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
RUN_DEPENDENT = ("startup_seconds", "machine_load", "measuring_seconds")
"""Fields of a plan that depend on this run, not on the answer."""


def _canonical(value: Any) -> Any:
    """``value`` with floats to 10 significant digits: sums whose order follows a set's (string
    hashing differs per process) differ in the last bit between runs of the same code."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


COMMAND = ["plan", str(ROOT / "examples" / "llama-8b-4090" / "spec.yaml"), "--card", "rtx-4090", "--json"]


def main() -> None:
    planner = shutil.which("planner") or str(Path(sys.executable).parent / "planner")
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([planner, *COMMAND], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    plan = json.loads(done.stdout)
    answer = _canonical({key: value for key, value in plan.items() if key not in RUN_DEPENDENT})
    digest = hashlib.sha256(json.dumps(answer, sort_keys=True).encode()).hexdigest()[:16]
    out = ROOT / "benchmarks" / "results" / f"plan_time-{platform.node() or 'host'}.json"
    recorded = json.loads(out.read_text()).get("answer_sha256") if out.exists() else None
    pruned = [t for t in plan["trials"] if not t["feasible"]]
    planned = [t for t in plan["trials"] if t["feasible"]]
    result = {
        "command": "planner plan examples/llama-8b-4090/spec.yaml --card rtx-4090 --json",
        "wall_seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "load_1min_before": load,
        "cpu_count": os.cpu_count(),
        "pruned": len(pruned),
        "pruned_reason": pruned[0]["reason"] if pruned else None,
        "pruned_fix": pruned[0]["fix"] if pruned else None,
        "planned": len(planned),
        "shapes": sorted({"{micro_batch}x{gradient_accumulation}".format(**t["config"]) for t in planned}),
        "total_hours": round(plan["total_seconds"] / 3600, 2),
        "answer_sha256": digest,
        "load_1min_after": Path("/proc/loadavg").read_text().split()[0] if load != "?" else "?",
        "target_seconds": 10,
    }
    print(f"{'wall s':>7} {'cpu s':>6} {'load':>5} {'pruned':>6} {'planned':>7} {'total h':>8}  shapes")
    print(
        f"{result['wall_seconds']:7.2f} {result['cpu_seconds']:6.2f} {load:>5} {len(pruned):6d} "
        f"{len(planned):7d} {result['total_hours']:8.2f}  {', '.join(result['shapes'])}"
    )
    print(f"pruned because: {result['pruned_reason']}; fix: {result['pruned_fix']}")
    if recorded is not None:
        print(f"answer {digest}: {'the same as' if recorded == digest else 'NOT the same as'} recorded")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
