"""Cold wall-clock of `planner fit` for the 8B acceptance commands (issue 2, target: <= 10 s each).

Each command runs in a fresh process (imports included), as a user would run it. Prints a table
and writes benchmarks/results/fit_time-<host>.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "full bf16 adamw (does not fit)": ["--method", "full", "--precision", "bf16", "--optimizer", "adamw"],
    "qlora bf16 adamw": ["--method", "qlora", "--precision", "bf16", "--optimizer", "adamw"],
}
BASE = ["fit", "meta-llama/Llama-3.1-8B", "--seq-len", "2048", "--card", "rtx-4090", "--json"]


def main() -> None:
    planner = shutil.which("planner") or str(Path(sys.executable).parent / "planner")
    results = []
    for name, extra in COMMANDS.items():
        start = time.perf_counter()
        done = subprocess.run([planner, *BASE, *extra], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
        report = json.loads(done.stdout)
        results.append(
            {
                "config": name,
                "seconds": round(seconds, 2),
                "max_micro_batch": report["max_micro_batch"],
                "fixes": [f"{fix['change']} -> {fix['max_micro_batch']}" for fix in report["fixes"]],
            }
        )
    print(f"{'config':34} {'seconds':>8} {'max micro-batch':>16}")
    for row in results:
        print(f"{row['config']:34} {row['seconds']:8.2f} {row['max_micro_batch']:16d}")
    out = Path(__file__).parent / "results" / f"fit_time-{platform.node() or 'host'}.json"
    out.write_text(json.dumps({"cpu_count": __import__("os").cpu_count(), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
