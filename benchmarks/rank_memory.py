"""Per-rank memory of data-parallel jobs: the fake-world trace of one rank against real gloo ranks.

For each case (tiny models built from configs, DDP, FSDP2 and DeepSpeed ZeRO stages 1-3, 2 and 4
processes, fp32 and bf16 mixed precision, full and LoRA, hybrid sharding over 2 "nodes" of 2), the
estimated per-rank peak of live tensor bytes (the trace of the fullest rank with the sharded
shapes and the strategy's buffers: ``planner.distributed.fullest_rank``) and every real rank's
measured peak (``planner.distributed.measured_rank_peaks``: spawned processes, gloo on
127.0.0.1). ZeRO traces are of a given rank, so each ZeRO rank is also compared with its own
trace ("worst" below); elsewhere every rank is compared with the estimate. "fullest" is the
estimate against the highest measured rank, the one that decides whether the job fits. Prints a
table and writes ``benchmarks/results/rank_memory-cpu.json``. The test suite holds the fp32
cases to 2%; this script also shows the bf16 ones.

    python benchmarks/rank_memory.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from planner.distributed import measured_rank_peaks, rank_preparer  # noqa: E402
from planner.models import load_model_config  # noqa: E402
from planner.schema import TrainingConfig  # noqa: E402
from planner.step import StepTracer  # noqa: E402
from tests.conftest import TINY_CONFIGS, write_model  # noqa: E402

MICRO_BATCH = 2
CASES = [
    ("llama", "full", "fp32", "ddp", 2, 1),
    ("gpt2", "lora", "fp32", "ddp", 2, 1),
    ("llama", "lora", "fp32", "fsdp", 2, 1),
    ("gpt2", "full", "fp32", "fsdp", 2, 1),
    ("gpt2", "full", "fp32", "fsdp", 3, 1),
    ("llama", "full", "fp32", "fsdp", 4, 1),
    ("llama", "full", "bf16", "fsdp", 2, 1),
    ("llama", "lora", "bf16", "ddp", 4, 1),
    ("llama", "full", "fp32", "fsdp-hybrid", 2, 2),
    ("llama", "full", "fp32", "zero1", 2, 1),
    ("gpt2", "lora", "fp32", "zero1", 4, 1),
    ("llama", "full", "fp32", "zero2", 2, 1),
    ("gpt2", "full", "fp32", "zero2", 4, 1),
    ("llama", "lora", "fp32", "zero3", 2, 1),
    ("gpt2", "full", "fp32", "zero3", 4, 1),
    ("llama", "full", "bf16", "zero2", 2, 1),
    ("llama", "full", "bf16", "zero3", 4, 1),
]


def _traced_peak(config: TrainingConfig, rank: int | None) -> int:
    """The traced peak of ``rank`` of ``config``'s job (None: the fullest rank)."""
    prepare = rank_preparer(config, rank=rank)
    tracer = StepTracer(load_model_config(config.model), config, cuda=None, prepare=prepare)
    return tracer.trace(MICRO_BATCH).peak


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for model, method, precision, strategy, gpus, nodes in CASES:
            config = TrainingConfig(
                model=str(write_model(Path(root) / model, TINY_CONFIGS[model])),
                method=method,
                precision=precision,
                seq_len=32,
                parallelism={"gpus_per_node": gpus, "nodes": nodes, "strategy": strategy},
            )
            estimate = _traced_peak(config, None)
            measured = measured_rank_peaks(config, MICRO_BATCH)
            predicted = {
                rank: _traced_peak(config, rank) if config.parallelism.strategy.is_zero else estimate
                for rank in sorted(measured)
            }
            fullest = max(measured.values())
            row = {
                "case": f"{model} {method} {precision} {strategy} {nodes}x{gpus}",
                "predicted_bytes": estimate,
                "predicted_per_rank_bytes": list(predicted.values()),
                "measured_bytes": [measured[rank] for rank in sorted(measured)],
                "worst_error": max(abs(predicted[rank] - peak) / peak for rank, peak in measured.items()),
                "fullest_error": (estimate - fullest) / fullest,
            }
            rows.append(row)
            measured_text = ", ".join(f"{peak:,}" for peak in row["measured_bytes"])
            print(
                f"{row['case']:<32} estimate {estimate:>10,}  measured {measured_text}  "
                f"worst {row['worst_error']:.2%}  fullest {row['fullest_error']:+.2%}"
            )
    out = ROOT / "benchmarks" / "results" / "rank_memory-cpu.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":  # ZeRO's ranks are spawned: they import this file again
    main()
