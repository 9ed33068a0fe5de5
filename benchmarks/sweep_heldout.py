"""Held-out CPU sweeps: is the time model right on sweeps it was never tuned on? (issue 12 a)

Four small sweeps that differ from the shipped example (``examples/tiny-sweep``: a 4-layer Llama,
full fine-tuning, short uniform question/answer pairs, micro-batch 4) in architecture (GPT-2,
Qwen2, Mistral), method (full and LoRA), data lengths (a log-normal with a tail far beyond
``seq_len``, a bimodal mix, packing), micro-batch and accumulation. Models are built from configs
(random init), the data generated here from a seeded RNG, the tokenizer borrowed from the tiny
example. Each trains a few hundred to a thousand rows, so that a trial lasts seconds, not one: a
trial of a second or two is this shared VM's second-to-second speed swings (identical runs differ
by a quarter) more than the model's error, and the plan's own profile, capped at 5% of the sweep,
is a few steps long. No constant of the time model is set from these sweeps: host speeds and
step times are measured by the planner itself (`planner plan` profiles what it lacks, as on a
fresh machine).

For each sweep: `planner plan --card cpu --json`, then `planner run --card cpu --json` (real
Trainer runs through the executor); per trial, predicted seconds (and the plan's 80% interval)
against the trial's measured seconds (``run_trial``: build, tokenise, train, evaluate, save); per
sweep, the plan's total plus its start-up against the sweep's clock (``elapsed_seconds``: from the
`planner run` process's start to the last trial's end). Targets on a quiet machine: totals within
10%, trials within 15%, the interval covering at least 80% of trials. The machine's load before
and after each sweep is recorded: on a shared machine the run's load differs from the plan's, and
no prediction taken before can hold.

    python benchmarks/sweep_heldout.py [--quick] [--tag loaded]

writes benchmarks/results/sweep_heldout-<host>[-<tag>].json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any

import yaml
from sweep_e2e import planner  # the same `planner ... --json` runner

ROOT = Path(__file__).parents[1]
TOKENIZER = ROOT / "examples" / "tiny-llama"
TARGET_TOTAL = 0.10
TARGET_TRIAL = 0.15
TARGET_COVERAGE = 0.80

MODELS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": 128,
        "n_layer": 3,
        "n_head": 4,
        "vocab_size": 1024,
        "n_positions": 512,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 96,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 128,
        "intermediate_size": 320,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 1024,
        "max_position_embeddings": 512,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
}

WORDS = [
    "amber", "basin", "cedar", "delta", "ember", "fjord", "grove", "harbor", "inlet", "jetty", "kelp",
    "lagoon", "meadow", "nectar", "orchard", "pebble", "quarry", "ridge", "summit", "thicket", "upland",
    "valley", "willow", "yarrow", "zephyr", "the", "a", "of", "and", "near", "under", "beside", "runs",
    "grows", "shines", "falls", "rises", "quietly", "slowly", "north", "south", "river", "stone", "light",
]  # fmt: skip


def lognormal_words(rng: random.Random, median: float, sigma: float) -> int:
    return max(2, round(rng.lognormvariate(math.log(median), sigma)))


LENGTHS = {
    # A long tail: median ~30 words, a few of several hundred (beyond seq_len: truncated).
    "long-tail": lambda rng: lognormal_words(rng, 30, 0.9),
    # Short chat turns and long documents, 80/20.
    "bimodal": lambda rng: (
        lognormal_words(rng, 12, 0.4) if rng.random() < 0.8 else lognormal_words(rng, 150, 0.3)
    ),
    # Uniform short rows.
    "short": lambda rng: rng.randint(5, 40),
}


def write_data(path: Path, examples: int, lengths: str, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(examples):
            words = [rng.choice(WORDS) for _ in range(LENGTHS[lengths](rng))]
            out.write(json.dumps({"text": " ".join(words) + "."}) + "\n")


SWEEPS: list[dict[str, Any]] = [
    {
        "name": "gpt2-lora-longtail",
        "model": "gpt2",
        "lengths": "long-tail",
        "examples": (768, 24),
        "base": {
            "method": "lora",
            "precision": "fp32",
            "optimizer": "adamw",
            "seq_len": 128,
            "lora": {"r": 8},
        },
        "micro_batch": 4,
        "search": {"learning_rate": [1.0e-3, 3.0e-3], "effective_batch": [4, 16]},
        "quick": True,
    },
    {
        "name": "qwen2-full-packed",
        "model": "qwen2",
        "lengths": "long-tail",
        "packing": True,
        "examples": (480, 16),
        "base": {"method": "full", "precision": "fp32", "optimizer": "adamw", "seq_len": 96},
        "micro_batch": 2,
        "search": {"learning_rate": [3.0e-4], "effective_batch": [2, 8]},
        "quick": True,
    },
    {
        "name": "mistral-lora-short",
        "model": "mistral",
        "lengths": "short",
        "examples": (1024, 24),
        "base": {
            "method": "lora",
            "precision": "fp32",
            "optimizer": "adamw",
            "seq_len": 64,
            "lora": {"r": 16},
        },
        "micro_batch": "auto",
        "search": {"learning_rate": [5.0e-4, 2.0e-3], "effective_batch": [8, 32]},
        "quick": False,
    },
    {
        "name": "gpt2-full-bimodal",
        "model": "gpt2",
        "lengths": "bimodal",
        "examples": (384, 12),
        "base": {"method": "full", "precision": "fp32", "optimizer": "adamw", "seq_len": 256},
        "micro_batch": 1,
        "eval": {"strategy": "steps", "every_steps": 30},
        "search": {"learning_rate": [1.0e-4], "effective_batch": [1, 4]},
        "quick": False,
    },
]


def build(sweep: dict[str, Any], root: Path, seed: int) -> Path:
    """The sweep's model directory, data and spec under ``root``; returns the spec's path."""
    model_dir = root / "models" / sweep["model"]
    if not model_dir.exists():
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text(
            json.dumps({**MODELS[sweep["model"]], "torch_dtype": "float32"})
        )
    folder = root / sweep["name"]
    folder.mkdir()
    train, evaluation = sweep["examples"]
    write_data(folder / "train.jsonl", train, sweep["lengths"], seed)
    write_data(folder / "eval.jsonl", evaluation, sweep["lengths"], seed + 1)
    spec = {
        "name": sweep["name"],
        "base": {"model": str(model_dir), **sweep["base"]},
        "micro_batch": sweep["micro_batch"],
        "init": "random",
        "data": {
            "train": "train.jsonl",
            "eval": "eval.jsonl",
            "tokenizer": str(TOKENIZER),
            "packing": sweep.get("packing", False),
        },
        "eval": sweep.get("eval", {"strategy": "epoch"}),
        "training": {"epochs": 1, "warmup_ratio": 0.05, "scheduler": "linear"},
        "search": sweep["search"],
        "strategy": "grid",
        "objective": {"metric": "eval_loss", "direction": "minimize"},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load() -> float:
    return os.getloadavg()[0]


def run_sweep(spec: Path, env: dict[str, str]) -> dict[str, Any]:
    load_before = load()
    plan, plan_seconds = planner("plan", str(spec), "--card", "cpu", env=env, cwd=spec.parent)
    run, run_seconds = planner("run", str(spec), "--card", "cpu", env=env, cwd=spec.parent)
    by_params = {json.dumps(t["params"], sort_keys=True): t for t in plan["trials"] if t["time"]}
    trials = []
    for trial in run["trials"]:
        planned = by_params[json.dumps(trial["params"], sort_keys=True)]
        predicted = planned["time"]
        actual = trial["seconds"]
        trials.append(
            {
                "trial": planned["number"],
                "params": trial["params"],
                "shape": "{micro_batch}x{gradient_accumulation}".format(**planned["config"]),
                "status": trial["status"],
                "predicted_seconds": round(predicted["seconds"], 2),
                "interval": [round(predicted["low_seconds"], 2), round(predicted["high_seconds"], 2)],
                "actual_seconds": round(actual, 2),
                "error": round(actual / predicted["seconds"] - 1, 3),
                "inside_interval": predicted["low_seconds"] <= actual <= predicted["high_seconds"],
                "parts": {name: round(value, 2) for name, value in predicted["parts"].items()},
                "note": predicted["note"],
            }
        )
    # The sweep's clock runs from the `planner run` process's start: the plan's trials plus its
    # start-up (interpreter, imports, planning, importing Trainer) and the study's storage work.
    actual_total = run["elapsed_seconds"]
    startup = (plan.get("startup_seconds") or 0.0) + (plan.get("storage_seconds") or 0.0)
    predicted_total = plan["total_seconds"] + startup
    return {
        "sweep": spec.parent.name,
        "load_before": round(load_before, 2),
        "load_after": round(load(), 2),
        "plan_load": plan.get("machine_load"),
        "plan_seconds": round(plan_seconds, 2),
        "measuring_seconds": plan.get("measuring_seconds"),
        "run_wall_seconds": round(run_seconds, 2),
        "predicted_total_seconds": round(predicted_total, 2),
        "predicted_startup_seconds": round(startup, 2),
        "interval": [
            round(plan["total_low_seconds"] + startup, 2),
            round(plan["total_high_seconds"] + startup, 2),
        ],
        "actual_total_seconds": round(actual_total, 2),
        "actual_trials_seconds": round(sum(t["seconds"] for t in run["trials"]), 2),
        "total_error": round(actual_total / predicted_total - 1, 3),
        "data": plan["data"],
        "trials": trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the sweeps marked quick")
    parser.add_argument("--tag", default="", help="suffix of the result file, e.g. 'loaded'")
    parser.add_argument("--seed", type=int, default=12)
    options = parser.parse_args()
    sweeps = [s for s in SWEEPS if s["quick"] or not options.quick]
    results = []
    with tempfile.TemporaryDirectory(prefix="heldout-") as scratch:
        root = Path(scratch)
        # One profile store for all the sweeps, empty at first: the plan measures this machine.
        env = {**os.environ, "VRAM_PLANNER_MEASURED": str(root / "measured")}
        for index, sweep in enumerate(sweeps):
            spec = build(sweep, root, options.seed + 10 * index)
            print(f"== {sweep['name']} (load {load():.2f})", flush=True)
            result = run_sweep(spec, env)
            results.append(result)
            for row in result["trials"]:
                low, high = row["interval"]
                print(
                    f"  trial {row['trial']:2d} {row['shape']:>5} "
                    f"predicted {row['predicted_seconds']:7.1f} s "
                    f"[{low:.1f}, {high:.1f}] actual {row['actual_seconds']:7.1f} s "
                    f"({row['error']:+.1%}){'' if row['inside_interval'] else '  OUTSIDE'}"
                )
            print(
                f"  total predicted {result['predicted_total_seconds']:.1f} s, actual "
                f"{result['actual_total_seconds']:.1f} s ({result['total_error']:+.1%}); plan "
                f"{result['plan_seconds']:.1f} s (measuring {result['measuring_seconds']} s); load "
                f"{result['load_before']} -> {result['load_after']}",
                flush=True,
            )
            write(results, options)
    summary = write(results, options)
    print(
        f"{summary['totals_within_target']}/{len(results)} sweep totals within {TARGET_TOTAL:.0%}, "
        f"{summary['trials_within_target']}/{summary['trials']} trials within {TARGET_TRIAL:.0%}, "
        f"interval coverage {summary['interval_coverage']:.0%} (target {TARGET_COVERAGE:.0%})"
    )


def write(results: list[dict[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    """Write what has run so far (after every sweep: a long run cut short keeps its results)."""
    trials = [row for result in results for row in result["trials"]]
    coverage = sum(row["inside_interval"] for row in trials) / len(trials) if trials else 0.0
    summary = {
        "sweeps": len(results),
        "trials": len(trials),
        "totals_within_target": sum(abs(r["total_error"]) <= TARGET_TOTAL for r in results),
        "trials_within_target": sum(abs(row["error"]) <= TARGET_TRIAL for row in trials),
        "interval_coverage": round(coverage, 3),
        "targets": {"total": TARGET_TOTAL, "trial": TARGET_TRIAL, "coverage": TARGET_COVERAGE},
    }
    name = f"sweep_heldout-{platform.node() or 'host'}{'-' + options.tag if options.tag else ''}.json"
    out = ROOT / "benchmarks" / "results" / name
    result = {"cpu_count": os.cpu_count(), "quick": options.quick, "summary": summary, "sweeps": results}
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
