"""The planner's answers on the shipped examples, to show a refactor changed none of them.

Runs `planner fit` and `planner plan` on the shipped examples in fresh processes (as a user
would) and keeps what the answer is, not how long it took to compute: memory estimates, max
micro-batches, fixes, plan shapes and feasibility, and the plan's predicted times where they
come from a deterministic model (the roofline on a datasheet card). A CPU plan's times come from
a profile measured on this machine and vary run to run, so they are dropped.

    python benchmarks/answers.py --out before.json      # on the old code
    python benchmarks/answers.py --check before.json    # on the new code: exit 1 on any difference
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
FITS = {
    "8b-qlora-4090": [
        "meta-llama/Llama-3.1-8B",
        "--method",
        "qlora",
        "--seq-len",
        "2048",
        "--card",
        "rtx-4090",
    ],
    "8b-full-4090": [
        "meta-llama/Llama-3.1-8B",
        *("--method", "full", "--precision", "bf16", "--optimizer", "adamw"),
        *("--seq-len", "2048", "--card", "rtx-4090"),
    ],
    "tiny-llama-cpu": [
        str(EXAMPLES / "tiny-llama"),
        "--card",
        "cpu",
        "--precision",
        "fp32",
        "--seq-len",
        "64",
    ],
    "gpt2-lora-t4": [
        "openai-community/gpt2",
        "--method",
        "lora",
        "--card",
        "t4",
        "--precision",
        "fp16",
        "--seq-len",
        "512",
    ],
}
PLANS = {
    "llama-8b-4090": [str(EXAMPLES / "llama-8b-4090" / "spec.yaml"), "--card", "rtx-4090"],
    "tiny-sweep-cpu": [str(EXAMPLES / "tiny-sweep" / "spec.yaml"), "--card", "cpu"],
}
# Keys whose values are measured on this machine (CPU plans) or name when/where a run happened.
# The checkout the committed answers were written in (paths in answers name it).
CHECKOUT_WRITTEN = "/work/main"
VOLATILE = {"created", "versions", "host", "elapsed_seconds"}
MEASURED_TIME_KEYS = ("seconds", "interval", "start", "end", "makespan", "time", "parts", "note", "worker")
# On the host, which trials fit a budget follows from the measured times too.
MEASURED_BUDGET_KEYS = ("fits_budget", "successive_halving", "status")


def _run(planner: str, args: list[str], measured_dir: str) -> Any:
    done = subprocess.run(
        [planner, *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VRAM_PLANNER_MEASURED": measured_dir},
    )
    return json.loads(done.stdout)


def _strip(value: Any, *, drop_times: bool) -> Any:
    """What an answer is, without what the machine or checkout changes: on the host card its free
    RAM (``available_bytes``) and measured times; everywhere the checkout's path."""
    if isinstance(value, dict):
        return {
            key: _strip(item, drop_times=drop_times)
            for key, item in value.items()
            if key not in VOLATILE
            and not (
                drop_times
                and (
                    key in ("available_bytes", *MEASURED_BUDGET_KEYS)
                    or any(k in key for k in MEASURED_TIME_KEYS)
                )
            )
        }
    if isinstance(value, str):
        return value.replace(str(ROOT), "<checkout>").replace(CHECKOUT_WRITTEN, "<checkout>")
    if isinstance(value, list):
        items = [_strip(item, drop_times=drop_times) for item in value]
        if drop_times and all(isinstance(item, dict) and "number" in item for item in items):
            # Measured times decide the order of a CPU plan's trials; compare them by number.
            items.sort(key=lambda item: item["number"])
        return items
    return value


def answers() -> dict[str, Any]:
    planner = shutil.which("planner") or str(Path(sys.executable).parent / "planner")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as measured:
        for name, args in FITS.items():
            result[f"fit/{name}"] = _strip(_run(planner, ["fit", *args], measured), drop_times="cpu" in name)
        for name, args in PLANS.items():
            result[f"plan/{name}"] = _strip(
                _run(planner, ["plan", *args], measured), drop_times="cpu" in name
            )
    return result


def _differences(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key not in before:
                found.append(f"{path}/{key}: added (new output, not a changed answer)")
            elif key not in after:
                found.append(f"{path}/{key}: removed")
            else:
                found += _differences(before[key], after[key], f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for d in _differences(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the answers here")
    group.add_argument("--check", type=Path, help="compare with answers written earlier")
    options = parser.parse_args()
    now = answers()
    if options.out:
        options.out.write_text(json.dumps(now, indent=2, sort_keys=True))
        print(f"wrote {len(now)} answers to {options.out}")
        return
    before = json.loads(options.check.read_text())
    # Normalised again on both sides, so that rules refined since the file was written apply to both.
    before, now = ({k: _strip(v, drop_times="cpu" in k) for k, v in d.items()} for d in (before, now))
    differences = _differences(before, now)
    print(f"{'answer':<24} {'same':>5}")
    for name in now:
        print(f"{name:<24} {'yes' if not any(d.startswith('/' + name) for d in differences) else 'NO':>5}")
    for difference in differences:
        print(f"  {difference}")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
