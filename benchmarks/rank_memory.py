"""Per-rank memory of data-parallel jobs: the fake-world trace of one rank against real gloo ranks.

For each case (tiny models built from configs, DDP, FSDP2 and DeepSpeed ZeRO stages 1-3, 2 and 4
processes, fp32 and bf16 mixed precision, full and LoRA, hybrid sharding over 2 "nodes" of 2), the
predicted per-rank peak of live tensor bytes (the trace of rank 0 with the sharded shapes and the
strategy's buffers) and every real rank's measured peak
(``planner.distributed.measured_rank_peaks``: forked processes, spawned for ZeRO, gloo on
127.0.0.1). Prints a table and writes ``benchmarks/results/rank_memory-cpu.json``. The test suite
holds the fp32 cases to 2%; this script also shows the bf16 ones.

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
            tracer = StepTracer(
                load_model_config(config.model), config, cuda=None, prepare=rank_preparer(config)
            )
            predicted = tracer.trace(MICRO_BATCH).peak
            measured = measured_rank_peaks(config, MICRO_BATCH)
            worst = max(abs(predicted - peak) / peak for peak in measured.values())
            row = {
                "case": f"{model} {method} {precision} {strategy} {nodes}x{gpus}",
                "predicted_bytes": predicted,
                "measured_bytes": [measured[rank] for rank in sorted(measured)],
                "worst_error": worst,
            }
            rows.append(row)
            measured_text = ", ".join(f"{peak:,}" for peak in row["measured_bytes"])
            print(
                f"{row['case']:<32} predicted {predicted:>10,}  measured {measured_text}  worst {worst:.2%}"
            )
    out = ROOT / "benchmarks" / "results" / "rank_memory-cpu.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":  # ZeRO's ranks are spawned: they import this file again
    main()
