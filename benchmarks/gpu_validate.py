"""The estimator against a real CUDA GPU (issue 2, acceptance d): predicted vs measured peak memory
and predicted vs real max micro-batch, for 14 configs.

Three model sizes (Qwen2.5 0.5B, Llama 3.2 3B, Llama 3.1 8B), full / LoRA / QLoRA, bf16 and
fp32, checkpointing on and off, sequence lengths 512 and 1024, several micro-batches. Models are
built from their shipped configs with random init directly on the GPU: no weights are read or
downloaded. Per micro-batch, the step sequence that reaches a run's peak (two training steps, an
eval pass, a training step; see ``planner.profiler.StepRunner.probe``) is measured with
``torch.cuda.max_memory_allocated``/``max_memory_reserved`` and NVML, against the estimator's
``peak_allocated_bytes``/``peak_reserved_bytes``/``peak_bytes`` (default, uncalibrated overheads).
The real max micro-batch comes from the profiler's finder (a size that fits and the size above
that does not, both run). Targets: median error <= 3%, worst <= 6% (NVML), max micro-batch exact
in >= 90% of configs.

Writes benchmarks/results/gpu_validate-<card>.json and .md. Stops starting configs after
``--budget-seconds`` (default 420) so that it fits one 9-minute call; what ran is written.

    python benchmarks/gpu_validate.py                 # on a CUDA machine
    python benchmarks/gpu_validate.py --smoke         # a tiny config on this CPU: the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "examples" / "tiny-llama"

# (name, model, method, precision, gradient checkpointing, seq_len, micro-batches), sizes
# interleaved so that a run cut by the time budget still covers all three.
CONFIGS: list[tuple[str, str, str, str, bool, int, list[int]]] = [
    ("0.5b-full-bf16", "Qwen/Qwen2.5-0.5B", "full", "bf16", False, 512, [1, 4, 8]),
    ("3b-lora-bf16", "meta-llama/Llama-3.2-3B", "lora", "bf16", False, 512, [1, 4]),
    ("8b-qlora-bf16-ckpt", "meta-llama/Llama-3.1-8B", "qlora", "bf16", True, 1024, [1, 2]),
    ("0.5b-full-fp32-ckpt", "Qwen/Qwen2.5-0.5B", "full", "fp32", True, 1024, [1, 2, 4]),
    ("3b-qlora-bf16-ckpt", "meta-llama/Llama-3.2-3B", "qlora", "bf16", True, 1024, [1, 4]),
    ("8b-lora-bf16-ckpt", "meta-llama/Llama-3.1-8B", "lora", "bf16", True, 512, [1, 4]),
    ("0.5b-lora-bf16", "Qwen/Qwen2.5-0.5B", "lora", "bf16", False, 1024, [1, 4]),
    ("3b-full-bf16-ckpt", "meta-llama/Llama-3.2-3B", "full", "bf16", True, 512, [1, 2]),
    ("8b-qlora-fp32", "meta-llama/Llama-3.1-8B", "qlora", "fp32", False, 512, [1]),
    ("0.5b-qlora-bf16-ckpt", "Qwen/Qwen2.5-0.5B", "qlora", "bf16", True, 512, [1, 8]),
    ("3b-lora-fp32-ckpt", "meta-llama/Llama-3.2-3B", "lora", "fp32", True, 1024, [1, 2]),
    ("8b-lora-bf16", "meta-llama/Llama-3.1-8B", "lora", "bf16", False, 1024, [1]),
    ("0.5b-lora-fp32", "Qwen/Qwen2.5-0.5B", "lora", "fp32", False, 512, [1, 4]),
    ("8b-qlora-bf16-ckpt-512", "meta-llama/Llama-3.1-8B", "qlora", "bf16", True, 512, [4, 8]),
]
SMOKE = [("tiny-full-fp32", str(TINY_MODEL), "full", "fp32", False, 64, [1, 2])]


def _error(predicted: int, measured: int | None) -> float | None:
    return None if not measured else (predicted - measured) / measured


def validate(spec: tuple[str, str, str, str, bool, int, list[int]], card: Any, device: Any) -> dict[str, Any]:
    """One config: each micro-batch's predicted vs measured memory, and the max micro-batch."""
    from planner.estimator import Estimator
    from planner.profiler import Prediction, StepRunner, runner_probe, search_max_micro_batch
    from planner.schema import TrainingConfig

    name, model, method, precision, checkpointing, seq_len, sizes = spec
    config = TrainingConfig(
        model=model, method=method, precision=precision, gradient_checkpointing=checkpointing, seq_len=seq_len
    )
    start = time.perf_counter()
    estimator = Estimator(config, card)
    prediction = Prediction.of(estimator)
    estimate_seconds = time.perf_counter() - start
    runner = StepRunner(config, device)
    rows = []
    try:
        for size in sizes:
            # Traced at full depth, so on CUDA the allocator replay predicts reserved and segments.
            predicted = estimator.estimate(size)
            memory = runner.attempt(runner.probe, size)
            measured_device = None if memory is None else memory.device_bytes(prediction.context_bytes)
            rows.append(
                {
                    "micro_batch": size,
                    "predicted_fits": predicted.fits,
                    "out_of_memory": memory is None,
                    "predicted_allocated": predicted.peak_allocated_bytes,
                    "predicted_reserved": predicted.peak_reserved_bytes,
                    "predicted_device": predicted.peak_bytes,
                    "measured_allocated": None if memory is None else memory.allocated,
                    "measured_reserved": None if memory is None else memory.reserved,
                    "measured_nvml": None if memory is None else memory.nvml_used,
                    "measured_live": None if memory is None else memory.live,
                    "measured_device": measured_device,
                    "error_allocated": _error(predicted.peak_allocated_bytes, memory and memory.allocated),
                    "error_reserved": _error(predicted.peak_reserved_bytes, memory and memory.reserved),
                    "error_device": _error(predicted.peak_bytes, measured_device),
                    "predicted_segments": predicted.segments,
                    "measured_segments": None if memory is None else memory.segments,
                }
            )
        search = search_max_micro_batch(prediction, runner_probe(runner, prediction))
    finally:
        runner.close()
    return {
        "name": name,
        "config": config.model_dump(mode="json"),
        "rows": rows,
        "predicted_max": prediction.max_micro_batch,
        "real_max": search.max_micro_batch,
        "max_exact": prediction.max_micro_batch == search.max_micro_batch,
        "probes": [p.model_dump(mode="json") for p in search.probes],
        "estimate_seconds": round(estimate_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(r["error_device"]) for c in results for r in c["rows"] if r["error_device"] is not None]
    allocated = [
        abs(r["error_allocated"]) for c in results for r in c["rows"] if r["error_allocated"] is not None
    ]
    reserved = [
        abs(r["error_reserved"]) for c in results for r in c["rows"] if r["error_reserved"] is not None
    ]
    segments = [
        (r["predicted_segments"], r["measured_segments"])
        for c in results
        for r in c["rows"]
        if r.get("predicted_segments") is not None and r.get("measured_segments")
    ]
    return {
        "configs": len(results),
        "measured_points": len(errors),
        "median_abs_error_device": statistics.median(errors) if errors else None,
        "worst_abs_error_device": max(errors) if errors else None,
        "median_abs_error_allocated": statistics.median(allocated) if allocated else None,
        # Issue 10 d targets: reserved median <= 2%, worst <= 5%; max micro-batch exact >= 90%.
        "median_abs_error_reserved": statistics.median(reserved) if reserved else None,
        "worst_abs_error_reserved": max(reserved) if reserved else None,
        "median_abs_error_segments": (
            statistics.median(abs(p - m) / m for p, m in segments) if segments else None
        ),
        "max_micro_batch_exact": sum(c["max_exact"] for c in results) / len(results) if results else None,
    }


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def markdown(card: Any, results: list[dict[str, Any]], totals: dict[str, Any], device_name: str) -> str:
    lines = [
        f"# Estimator vs {device_name} ({card.name})",
        "",
        "Predicted (default context; reserved and segments by the allocator replay) vs measured per "
        "micro-batch; device = NVML used "
        "(reserved + context) on CUDA, live tensor bytes on the CPU smoke run. GiB.",
        "",
        "| config | micro-batch | pred alloc | alloc | err | pred reserved | reserved | err "
        "| pred device | device | err | pred segments | segments |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        for r in c["rows"]:
            lines.append(
                f"| {c['name']} | {r['micro_batch']} | {_gib(r['predicted_allocated'])} | "
                f"{_gib(r['measured_allocated'])} | {_pct(r['error_allocated'])} | "
                f"{_gib(r['predicted_reserved'])} | {_gib(r['measured_reserved'])} | "
                f"{_pct(r['error_reserved'])} | {_gib(r['predicted_device'])} | "
                f"{_gib(r['measured_device'])} | {_pct(r['error_device'])} | "
                f"{r.get('predicted_segments') or '-'} | {r.get('measured_segments') or '-'} |"
                + (" OOM" if r["out_of_memory"] else "")
            )
    lines += [
        "",
        "| config | predicted max | real max | exact | probes | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for c in results:
        lines.append(
            f"| {c['name']} | {c['predicted_max']} | {c['real_max']} | {'yes' if c['max_exact'] else 'no'} | "
            f"{len(c['probes'])} | {c['seconds']} |"
        )
    lines += ["", "```", json.dumps(totals, indent=2), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="Run one tiny config on this CPU.")
    parser.add_argument("--only", help="Comma-separated config names to run.")
    parser.add_argument("--budget-seconds", type=float, default=420.0)
    parser.add_argument(
        "--out", type=Path, help="Results folder (default: benchmarks/results; smoke: a temp dir)."
    )
    args = parser.parse_args()

    import torch

    from planner.cards import host_card
    from planner.estimator import Estimator
    from planner.profiler import device_card

    if args.smoke:
        device = torch.device("cpu")
        # The host card with room for a few micro-batches, so the finder has a real answer.
        config_card = host_card()
        from planner.schema import TrainingConfig

        line = Estimator(TrainingConfig(model=str(TINY_MODEL), precision="fp32", seq_len=64), config_card)
        card = config_card.model_copy(update={"free_bytes": line.estimate(6).peak_bytes + 1})
        specs = SMOKE
        device_name = card.display_name
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_validate.py needs a CUDA GPU (run with --smoke to check it on this CPU)")
        device = torch.device("cuda")
        card = device_card(device)  # free memory read before this process allocates anything
        specs = CONFIGS
        device_name = torch.cuda.get_device_name(device)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for s in specs if s[0] in wanted]
    out = args.out or (Path(tempfile.mkdtemp()) if args.smoke else ROOT / "benchmarks" / "results")
    started = time.perf_counter()
    results, skipped = [], []
    for spec in specs:
        if time.perf_counter() - started > args.budget_seconds:
            skipped.append(spec[0])
            continue
        print(f"[{time.perf_counter() - started:6.0f} s] {spec[0]}", flush=True)
        try:
            results.append(validate(spec, card, device))
        except Exception as exc:  # one config failing must not lose the others' results
            print(f"  failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
            results.append({"name": spec[0], "error": f"{type(exc).__name__}: {exc}", "rows": []})
        done = results[-1]
        for r in done["rows"]:
            print(
                f"  m={r['micro_batch']:<4} device pred {_gib(r['predicted_device'])} meas "
                f"{_gib(r['measured_device'])} ({_pct(r['error_device'])})",
                flush=True,
            )
        if "real_max" in done:
            print(
                f"  max micro-batch: predicted {done['predicted_max']}, real {done['real_max']}", flush=True
            )
    ran = [r for r in results if "error" not in r]
    totals = {**summary(ran), "failed": [r["name"] for r in results if "error" in r], "skipped": skipped}
    stem = f"gpu_validate-{'smoke' if args.smoke else card.name}"
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "card": card.model_dump(mode="json"),
        "device": device_name,
        "summary": totals,
        "configs": results,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(markdown(card, ran, totals, device_name))
    print(json.dumps(totals, indent=2))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
