"""Predicted training throughput against published measurements (issue 12 b).

The rows of ``benchmarks/data/published_throughput.yaml`` are the TEST SET: no constant of the
planner may be set from them, and this script only compares (no correction, no fitting). Each
row's config and GPU become a ``TrainingConfig`` and a card (``published_rows.row_setup``, which
lists every assumption the mapping makes). ``StepTimeModel(card).times(config, micro_batch,
padded_length)``, without measured profiles (the per-op model of ``planner/timing/_kernels.py``
from datasheets and published kernel efficiencies), gives the seconds of one micro-step and of the
optimizer step; the prediction is

    tokens/s = tokens per optimizer step / (accumulation x micro_step + optimizer + clipping)

(clipping: rows whose stack clips gradients to ``max_grad_norm``, at the passes the trial model
counts; a paged optimizer's rows pass the step's memory estimate, so that the state that does not
fit on the card crosses the host link in the optimizer step, as ``planner plan`` times it)
and is compared with the published tokens/s. A row that publishes samples/s or seconds/step is
converted with its tokens per sample (its fixed or packed sequence length). The published figure
is "inside the interval" when it lies within the prediction scaled by ``relative_interval``
(step times from low x to high x the estimate). Rows padded per batch (peft MetaMathQA) are
traced at their mean real tokens per sample, since length-bucketed batches carry little padding.

Rows with torch.compile run with the config's ``torch_compile`` (inductor's fusion is modelled);
other fused kernels (Liger/unsloth-style) are not modelled and run as eager. Those rows and the
torchtune stack are summarised apart as well as in "all". Rows the planner cannot build are listed
as skipped.
Prints a table and a summary next to the issue's targets (median within 10%, none beyond 25%),
and writes ``benchmarks/results/published_throughput.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/published_throughput.py [--only ID] [--limit N]
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from published_rows import (
    RESULTS,
    Skipped,
    config_record,
    error_summary,
    load_average,
    load_rows,
    model_directory,
    parse_arguments,
    percent_error,
    print_not_compared,
    print_table,
    row_setup,
    select_rows,
    write_results,
)

from planner.estimator import Estimator
from planner.schema import GIB, Card, MemoryEstimate, OptimizerName, TrainingConfig
from planner.timing import BANDWIDTH_EFFICIENCY, StepTimeModel

MEDIAN_TARGET_PERCENT = 10.0
WORST_TARGET_PERCENT = 25.0
# Passes over the trainable gradients' bytes that clipping them to ``max_grad_norm`` costs:
# torch.nn.utils.clip_grad_norm_ reads every gradient once for the total norm (foreach norm) and
# then multiplies each in place by the clip coefficient, unconditionally (read + write); the
# planner's trial model counts the same passes per optimizer step (planner.timing trial_time).
CLIP_PASSES = 3


def clip_seconds(row: dict[str, Any], config: TrainingConfig, card: Card) -> float:
    """Device seconds of the row's gradient clipping (0 when it does not clip): memory-bound passes
    over the trainable gradients at the device model's bandwidth efficiency."""
    if not row.get("max_grad_norm") or card.bandwidth_gbs is None:
        return 0.0
    trainable = Estimator(config, card).trainable_bytes()
    return CLIP_PASSES * trainable / (card.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)


def paged_memory(config: TrainingConfig, card: Card) -> MemoryEstimate | None:
    """The memory estimate a paged optimizer's step time needs (how much of its state fits on the
    card: the rest crosses the host link every step), from the linear fit like ``planner plan``'s;
    None for the other optimizers, which keep no paged state (no estimate, no traces spent)."""
    if config.optimizer is not OptimizerName.PAGED_ADAMW_8BIT:
        return None
    return Estimator(config, card).estimate(config.micro_batch, trace=False)


def padded_per_batch(row: dict[str, Any]) -> bool:
    """Batches padded to their longest sample: ``seq_len`` is then only the truncation limit."""
    return "batch max" in row["packing"]


def tokens_per_sample(row: dict[str, Any]) -> tuple[float, str]:
    """Tokens one sample carries, and how that was worked out."""
    measured = row["measured"]
    if padded_per_batch(row):
        per_step = measured["tokens_per_second"] * measured["seconds_per_step_derived"]
        per_sample = per_step / (row["micro_batch"] * row["gradient_accumulation"])
        return per_sample, (
            f"mean real tokens per sample {per_sample:.0f} = published tokens/s x seconds per step / "
            f"samples per step (batches padded to their longest sample; padding not counted)"
        )
    return float(row["seq_len"]), f"every sample is {row['seq_len']} tokens ({row['packing']})"


def published_tokens_per_second(row: dict[str, Any], per_sample: float) -> tuple[float, str]:
    """The published speed in tokens/s, converting samples/s or seconds/step where needed."""
    measured = row["measured"]
    per_step = per_sample * row["micro_batch"] * row["gradient_accumulation"]
    if "tokens_per_second" in measured:
        return float(measured["tokens_per_second"]), "published tokens/s"
    if "samples_per_second" in measured:
        value = measured["samples_per_second"] * per_sample
        return value, f"published samples/s x {per_sample:.0f} tokens per sample"
    if "seconds_per_step" in measured:
        value = per_step / measured["seconds_per_step"]
        return value, f"{per_step:.0f} tokens per step / published seconds per step"
    raise ValueError(f"row {row['id']} publishes no speed this script can read")


def group_of(row: dict[str, Any]) -> str:
    compiled = row.get("torch_compile") or row.get("fused_kernels", "none") != "none"
    return "compiled/fused/torchtune" if compiled or row["stack"] == "torchtune" else "eager-hf"


def run_row(row: dict[str, Any], scratch: Path, models: dict[str, StepTimeModel]) -> dict[str, Any]:
    """The row's record: predicted against published tokens/s, or why it was skipped or failed."""
    record: dict[str, Any] = {
        "id": row["id"],
        "model": row["model"],
        "method": row["method"],
        "stack": row["stack"],
        "group": group_of(row),
        "source": row["source"],
        "source_unknowns": row.get("unknowns", []),
    }
    try:
        per_sample, sample_note = tokens_per_sample(row)
        published, published_note = published_tokens_per_second(row, per_sample)
    except (KeyError, ValueError) as exc:
        return {**record, "status": "error", "error": f"unreadable row: {type(exc).__name__}: {exc}"}
    padded_length = round(per_sample)
    try:
        setup = row_setup(row, scratch, seq_len=padded_length)
    except Skipped as exc:
        return {**record, "status": "skipped", "reason": str(exc)}
    assumptions = [sample_note, *setup.assumptions]
    record.update(card=setup.card.name, config=config_record(setup), assumptions=assumptions)
    # The planner models Trainer's torch_compile (planner.timing._compiled); other fused kernels
    # (Liger/unsloth-style cross-entropy, RMSNorm, RoPE) are not, and such rows run as eager.
    config = setup.config.with_changes(torch_compile=bool(row.get("torch_compile")))
    record["config"]["torch_compile"] = config.torch_compile
    if config.torch_compile:
        assumptions.append("torch_compile: step timed as inductor-compiled (fused memory-bound runs)")
    elif row.get("fused_kernels", "none") != "none":
        assumptions.append(f"fused kernels ({row['fused_kernels']}) not modelled: timed as eager")
    start = time.perf_counter()
    try:
        memory = paged_memory(config, setup.card)
        times = step_model(setup.card, models).times(config, config.micro_batch, padded_length, memory)
    except Exception as exc:
        return {**record, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if memory is not None:
        assumptions.append(
            f"paged optimizer: {memory.paged_bytes / GIB:.1f} GiB of state, "
            f"{memory.breakdown.paged_on_device / GIB:.1f} GiB of room beside the planner's predicted "
            f"peak ({memory.peak_bytes / GIB:.1f} GiB device, linear fit)"
        )
    # The published step clips the gradients before the optimizer steps (max_grad_norm).
    clip = clip_seconds(row, config, setup.card)
    if clip:
        norm = row["max_grad_norm"]
        assumptions.append(f"gradient clipping (max_grad_norm {norm}): {clip * 1e3:.1f} ms per step")
    step_seconds = config.gradient_accumulation * times.micro_step + times.optimizer + clip
    tokens_per_step = per_sample * config.micro_batch * config.gradient_accumulation
    predicted = tokens_per_step / step_seconds
    low, high = times.relative_interval
    # A step taking ``high`` x the estimate gives the fewest tokens/s, ``low`` x the most.
    interval = (predicted / high, predicted / low)
    return {
        **record,
        "status": "compared",
        "seconds": round(time.perf_counter() - start, 1),
        "published_tokens_per_second": round(published, 1),
        "published_from": published_note,
        "tokens_per_step": round(tokens_per_step, 1),
        "predicted": {
            "micro_step_seconds": round(times.micro_step, 4),
            "optimizer_seconds": round(times.optimizer, 4),
            "paging_seconds": round(times.paging, 4),
            "clip_seconds": round(clip, 4),
            "step_seconds": round(step_seconds, 4),
            "tokens_per_second": round(predicted, 1),
            "tokens_per_second_interval": [round(interval[0], 1), round(interval[1], 1)],
            "source": times.source,
            "note": times.note,
        },
        "error_percent": round(percent_error(predicted, published), 2),
        "inside_interval": interval[0] <= published <= interval[1],
    }


def step_model(card: Card, models: dict[str, StepTimeModel]) -> StepTimeModel:
    """One step-time model per card, so its shallow traces are shared between rows."""
    if card.name not in models:
        models[card.name] = StepTimeModel(card)
    return models[card.name]


def table_line(record: dict[str, Any]) -> list[str]:
    """The table line of a compared row."""
    low, high = record["predicted"]["tokens_per_second_interval"]
    return [
        record["id"],
        record["model"],
        record["method"],
        record["card"],
        f"{record['published_tokens_per_second']:.0f}",
        f"{record['predicted']['tokens_per_second']:.0f}",
        f"{low:.0f}-{high:.0f}",
        f"{record['error_percent']:+.1f}",
        "yes" if record["inside_interval"] else "no",
    ]


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: count, median absolute and worst error, rows inside the interval, targets met."""
    summary = {}
    for group in ("eager-hf", "compiled/fused/torchtune", "all"):
        found = [r for r in records if group in (r["group"], "all") and r["status"] == "compared"]
        if not found:
            continue
        entry = error_summary([(r["id"], r["error_percent"]) for r in found])
        entry["inside_interval"] = sum(r["inside_interval"] for r in found)
        entry["interval_coverage_percent"] = round(100.0 * entry["inside_interval"] / len(found), 1)
        entry["median_target_met"] = entry["median_abs_error_percent"] <= MEDIAN_TARGET_PERCENT
        entry["beyond_worst_target"] = sum(abs(r["error_percent"]) > WORST_TARGET_PERCENT for r in found)
        summary[group] = entry
    return summary


def print_summary(summary: dict[str, dict[str, Any]]) -> None:
    lines = [
        [
            group,
            str(s["count"]),
            f"{s['median_abs_error_percent']:.1f}",
            f"{s['worst_error_percent']:+.1f} ({s['worst_row']})",
            f"{s['inside_interval']}/{s['count']} ({s['interval_coverage_percent']:.0f}%)",
            "yes" if s["median_target_met"] else "no",
            str(s["beyond_worst_target"]),
        ]
        for group, s in summary.items()
    ]
    headers = ["group", "n", "median |err| %", "worst err %", "inside 80% interval", "median <= 10%", "> 25%"]
    print_table(headers, lines)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])
    rows = select_rows(load_rows("published_throughput.yaml"), args.only, args.limit)
    start_load = load_average()
    print(f"load average at start: {start_load}")
    records = []
    models: dict[str, StepTimeModel] = {}
    with model_directory() as scratch:
        for row in rows:
            print(f"  {row['id']} ...", flush=True)
            records.append(run_row(row, scratch, models))
    end_load = load_average()
    print(f"load average at end: {end_load}\n")
    headers = ["row", "model", "method", "card", "published tok/s", "predicted tok/s", "interval"]
    compared = [r for r in records if r["status"] == "compared"]
    print_table([*headers, "error %", "inside"], [table_line(r) for r in compared])
    print_not_compared(records)
    summary = summarise(records)
    print("\nsummary (issue 12 targets: median within 10%, none beyond 25%)")
    print_summary(summary)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    write_results(
        args.out or RESULTS / "published_throughput.json",
        {
            "benchmark": "published_throughput",
            "test_set": "benchmarks/data/published_throughput.yaml (compared only; nothing tuned from it)",
            "commit": commit.stdout.strip(),
            "load_average": {"start": start_load, "end": end_load},
            "targets_abs_percent": {"median": MEDIAN_TARGET_PERCENT, "worst": WORST_TARGET_PERCENT},
            "summary": summary,
            "rows": records,
        },
    )


if __name__ == "__main__":
    main()
