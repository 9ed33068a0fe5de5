"""Predicted peak GPU memory against published measurements (issue 10 c).

The rows of ``benchmarks/data/published_memory.yaml`` are the TEST SET: no constant of the planner
may be set from them, and this script only compares (no correction, no fitting). Each row's config
and GPU become a ``TrainingConfig`` and a card (``published_rows.row_setup``, which lists every
assumption the mapping makes); the planner's ``Estimator`` estimates that config at the row's
micro-batch with its default, uncalibrated CUDA overheads, and each published statistic is
compared with the predicted figure that measures the same thing:

* ``allocated_gib`` (``max_memory_allocated`` or equivalent) with ``peak_allocated_bytes``;
* ``reserved_gib`` (``max_memory_reserved``) with ``peak_reserved_bytes``;
* ``nvidia_smi_gib`` (NVML used memory) with ``peak_bytes`` (reserved plus the CUDA context);
* ``unspecified_gib`` (the source does not say) with ``peak_bytes``, noted as such.

"Inside expected error" uses the band ``MemoryEstimate.expected_error`` states for the defaults:
±1% of the allocated peak for the trace, plus ±4% of it for fragmentation (reserved and device),
plus ±150 MiB for the context (device). Rows the planner cannot build are listed as skipped;
torchtune rows are computed but summarised apart (torchtune's model code is not the HF stack the
estimator traces). Prints a table and a summary per statistic next to the issue's targets, and
writes ``benchmarks/results/published_memory.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/published_memory.py [--only ID] [--limit N]
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from published_rows import (
    GIB,
    RESULTS,
    RowSetup,
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

from planner.estimator import CONTEXT_UNCERTAINTY_BYTES, FRAGMENTATION_UNCERTAINTY, Estimator
from planner.schema import MemoryEstimate

TRACE_UNCERTAINTY = 0.01
"""The "±1% for the trace" of ``MemoryEstimate.expected_error``."""


@dataclass(frozen=True)
class Statistic:
    """A published statistic, the predicted figure it is compared with, and the issue's target."""

    predicted: str
    """``MemoryEstimate`` attribute measuring the same thing."""
    target_percent: float | None
    note: str = ""


STATISTICS = {
    "allocated_gib": Statistic("peak_allocated_bytes", 3.0),
    "reserved_gib": Statistic("peak_reserved_bytes", 5.0),
    "nvidia_smi_gib": Statistic("peak_bytes", 5.0),
    "unspecified_gib": Statistic(
        "peak_bytes", None, "the source does not say which statistic; compared with predicted device bytes"
    ),
}


def expected_band_bytes(estimate: MemoryEstimate, statistic: Statistic) -> float:
    """Half-width of the expected-error band around the predicted figure of ``statistic``."""
    allocated = estimate.peak_allocated_bytes
    band = TRACE_UNCERTAINTY * allocated
    if statistic.predicted != "peak_allocated_bytes":
        band += FRAGMENTATION_UNCERTAINTY * allocated
    if statistic.predicted == "peak_bytes":
        band += CONTEXT_UNCERTAINTY_BYTES
    return band


def compare(row: dict[str, Any], estimate: MemoryEstimate) -> list[dict[str, Any]]:
    """One comparison per peak statistic the row publishes (non-peak extras are left out)."""
    comparisons = []
    for key, statistic in STATISTICS.items():
        if key not in row["measured"]:
            continue
        published = float(row["measured"][key])
        predicted = getattr(estimate, statistic.predicted) / GIB
        band = expected_band_bytes(estimate, statistic) / GIB
        notes = [statistic.note, row["measured"].get("unit_assumption", "")]
        comparisons.append(
            {
                "statistic": key.removesuffix("_gib"),
                "compared_with": statistic.predicted,
                "published_gib": published,
                "predicted_gib": round(predicted, 3),
                "error_percent": round(percent_error(predicted, published), 2),
                "expected_band_gib": round(band, 3),
                "inside_expected_error": abs(predicted - published) <= band,
                "note": "; ".join(note for note in notes if note),
            }
        )
    return comparisons


def group_of(row: dict[str, Any]) -> str:
    return "torchtune" if row["stack"] == "torchtune" else "hf"


def run_row(row: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """The row's record: its comparisons, or why it was skipped or failed."""
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
        setup: RowSetup = row_setup(row, scratch)
    except Skipped as exc:
        return {**record, "status": "skipped", "reason": str(exc)}
    record.update(card=setup.card.name, config=config_record(setup), assumptions=setup.assumptions)
    start = time.perf_counter()
    try:
        estimate = Estimator(setup.config, setup.card).estimate(setup.config.micro_batch)
    except Exception as exc:
        return {**record, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return {
        **record,
        "status": "compared",
        "seconds": round(time.perf_counter() - start, 1),
        "expected_error": estimate.expected_error,
        "predicted_gib": {
            "allocated": round(estimate.peak_allocated_bytes / GIB, 3),
            "reserved": round(estimate.peak_reserved_bytes / GIB, 3),
            "device": round(estimate.peak_bytes / GIB, 3),
        },
        "comparisons": compare(row, estimate),
    }


def table_lines(record: dict[str, Any]) -> list[list[str]]:
    """One table line per statistic a compared row publishes."""
    head = [record["id"], record["model"], record["method"], record["card"]]
    return [
        [
            *head,
            c["statistic"],
            f"{c['published_gib']:.2f}",
            f"{c['predicted_gib']:.2f}",
            f"{c['error_percent']:+.1f}",
            "yes" if c["inside_expected_error"] else "no",
        ]
        for c in record["comparisons"]
    ]


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group and statistic: count, median absolute and worst error, rows inside the band."""
    summary: dict[str, dict[str, Any]] = {}
    for group in ("hf", "torchtune"):
        for key, statistic in STATISTICS.items():
            name = key.removesuffix("_gib")
            found = [
                (r["id"], c)
                for r in records
                if r["group"] == group and r["status"] == "compared"
                for c in r["comparisons"]
                if c["statistic"] == name
            ]
            if not found:
                continue
            entry = error_summary([(row_id, c["error_percent"]) for row_id, c in found])
            entry["inside_expected_error"] = sum(c["inside_expected_error"] for _, c in found)
            entry["target_abs_percent"] = statistic.target_percent
            if statistic.target_percent is not None:
                entry["within_target"] = sum(
                    abs(c["error_percent"]) <= statistic.target_percent for _, c in found
                )
            summary[f"{group}/{name}"] = entry
    return summary


def print_summary(summary: dict[str, dict[str, Any]]) -> None:
    lines = [
        [
            name,
            str(s["count"]),
            f"{s['median_abs_error_percent']:.1f}",
            f"{s['worst_error_percent']:+.1f} ({s['worst_row']})",
            f"{s['inside_expected_error']}/{s['count']}",
            "-" if s["target_abs_percent"] is None else f"<= {s['target_abs_percent']:.0f}%",
            "-" if s["target_abs_percent"] is None else f"{s['within_target']}/{s['count']}",
        ]
        for name, s in summary.items()
    ]
    headers = ["group/statistic", "n", "median |err| %", "worst err %", "inside band", "target", "in target"]
    print_table(headers, lines)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])
    rows = select_rows(load_rows("published_memory.yaml"), args.only, args.limit)
    start_load = load_average()
    print(f"load average at start: {start_load}")
    records = []
    with model_directory() as scratch:
        for row in rows:
            print(f"  {row['id']} ...", flush=True)
            records.append(run_row(row, scratch))
    end_load = load_average()
    print(f"load average at end: {end_load}\n")
    headers = ["row", "model", "method", "card", "statistic", "published GiB", "predicted GiB", "error %"]
    compared = [r for r in records if r["status"] == "compared"]
    print_table([*headers, "inside expected error"], [line for r in compared for line in table_lines(r)])
    print_not_compared(records)
    summary = summarise(records)
    print("\nsummary (issue 10 targets: allocated within 3%, reserved and nvidia-smi within 5%)")
    print_summary(summary)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    write_results(
        args.out or RESULTS / "published_memory.json",
        {
            "benchmark": "published_memory",
            "test_set": "benchmarks/data/published_memory.yaml (compared only; nothing tuned from it)",
            "commit": commit.stdout.strip(),
            "load_average": {"start": start_load, "end": end_load},
            "targets_abs_percent": {"allocated": 3.0, "reserved": 5.0, "nvidia_smi": 5.0},
            "summary": summary,
            "rows": records,
        },
    )


if __name__ == "__main__":
    main()
