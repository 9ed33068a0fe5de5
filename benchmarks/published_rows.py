"""Shared by ``published_memory.py`` and ``published_throughput.py``: the published test-set rows.

Reads ``benchmarks/data/published_*.yaml``, turns a row's config and GPU into the planner's
``TrainingConfig`` and card (with every assumption the mapping makes written down), and does the
error arithmetic and table printing both scripts share. Nothing here tunes the planner: the rows
are the test set (see ``benchmarks/data/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import yaml

# Offline and reproducible: a model the repository does not ship is skipped, never fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from planner.cards import load_card
from planner.errors import UnknownCardError, UnknownModelError
from planner.models import load_model_config
from planner.schema import Attention, Card, LoraSettings, Method, Precision, TargetStack, TrainingConfig

DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).parent / "results"
GIB = 1024**3

# Hub ids the rows use that the repository ships under another id, and why they are the same model.
MODEL_ALIASES = {
    "bert-large-uncased": (
        "google-bert/bert-large-uncased",
        "legacy hub id bert-large-uncased redirects to google-bert/bert-large-uncased",
    ),
    "meta-llama/Llama-3.2-3B-Instruct": (
        "meta-llama/Llama-3.2-3B",
        "Llama-3.2-3B-Instruct has the architecture of the shipped Llama-3.2-3B",
    ),
}
# Models whose rows ran a head other than the one the shipped config names (its ``architectures``).
MODEL_HEADS = {"google-bert/bert-large-uncased": "BertForSequenceClassification"}
# Models transformers cannot build without the hub repository's own code.
REMOTE_CODE = {
    "Qwen/Qwen-7B-Chat": "first-generation Qwen needs trust_remote_code (QWenLMHeadModel)",
    "Qwen/Qwen-1_8B-Chat": "first-generation Qwen needs trust_remote_code (QWenLMHeadModel)",
}


class Skipped(Exception):
    """A row the planner cannot build (model or card); the message says why."""


@dataclass(frozen=True)
class RowSetup:
    """A row as the planner sees it: its config, its card and what the mapping assumed."""

    config: TrainingConfig
    card: Card
    model_id: str
    """The shipped hub id the config stands for (``config.model`` may be a local directory)."""
    assumptions: list[str]


def load_rows(name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = yaml.safe_load((DATA / name).read_text())["rows"]
    return rows


def select_rows(rows: list[dict[str, Any]], only: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The rows ``--only`` / ``--limit`` ask for; an unknown ``--only`` id is an error."""
    if only is not None:
        rows = [row for row in rows if row["id"] == only]
        if not rows:
            raise SystemExit(f"no row with id {only!r}")
    return rows[:limit] if limit is not None else rows


def parse_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", metavar="ID", help="run the one row with this id")
    parser.add_argument("--limit", type=int, metavar="N", help="run the first N rows only")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default: benchmarks/results/)")
    return parser.parse_args()


def load_average() -> str:
    return Path("/proc/loadavg").read_text().strip()


@contextmanager
def model_directory() -> Iterator[Path]:
    """A scratch directory for configs whose head differs from the shipped one (see MODEL_HEADS)."""
    with TemporaryDirectory(prefix="published-models-") as scratch:
        yield Path(scratch)


def _model_reference(row: dict[str, Any], scratch: Path, assumptions: list[str]) -> tuple[str, str]:
    """(reference for TrainingConfig.model, shipped hub id) of the row's model; Skipped if none."""
    model_id = row["model"]
    if model_id in REMOTE_CODE:
        raise Skipped(f"model {model_id}: {REMOTE_CODE[model_id]}")
    if model_id in MODEL_ALIASES:
        model_id, why = MODEL_ALIASES[model_id]
        assumptions.append(f"model {row['model']} -> {model_id} ({why})")
    try:
        hf_config = load_model_config(model_id)
    except UnknownModelError as exc:
        raise Skipped(f"model {model_id}: {exc}") from None
    head = MODEL_HEADS.get(model_id)
    if head is None:
        return model_id, model_id
    directory = scratch / model_id
    directory.mkdir(parents=True, exist_ok=True)
    raw = json.loads(hf_config.to_json_string())
    (directory / "config.json").write_text(json.dumps({**raw, "architectures": [head]}))
    assumptions.append(f"traced as {head} with 2 labels (the source's AutoModelForSequenceClassification)")
    return str(directory), model_id


def _card(row: dict[str, Any], assumptions: list[str]) -> Card:
    """The row's card: its slug, else its published name as an NVML-style alias; Skipped if none."""
    gpu = row["gpu"]
    if gpu["slug"] is not None:
        return load_card(gpu["slug"])
    name = gpu["published"].split(" (")[0]
    try:
        card = load_card(name)
    except UnknownCardError:
        raise Skipped(f"GPU {gpu['published']!r} has no card profile") from None
    assumptions.append(f"GPU {gpu['published']!r} -> card {card.name}")
    return card


def _precision(row: dict[str, Any], assumptions: list[str]) -> Precision:
    precision = Precision(row["precision"])
    if row["method"] == Method.QLORA.value and precision is Precision.PURE_BF16:
        assumptions.append(
            "qlora with pure-bf16: traced as qlora bf16 (the planner's QLoRA: NF4 base with bf16 compute, "
            "fp32 adapters under autocast; the source keeps bf16 adapters without autocast)"
        )
        return Precision.BF16
    return precision


def _lora(row: dict[str, Any], precision: Precision, assumptions: list[str]) -> LoraSettings:
    """The row's adapters; over a pure-bf16 base in fp32 where the Hugging Face stack made them
    (``get_peft_model``'s default ``autocast_adapter_dtype=True``), in bf16 under torchtune."""
    settings = dict(row.get("lora") or {})
    if precision is Precision.PURE_BF16 and row["method"] == Method.LORA.value:
        hf_stack = row["stack"] != "torchtune"
        settings["autocast_adapter_dtype"] = hf_stack
        if hf_stack:
            assumptions.append("fp32 adapters over the bf16 base: peft's default autocast_adapter_dtype")
    return LoraSettings(**settings)


def _unmodelled(row: dict[str, Any]) -> list[str]:
    """What the row's stack does that the traced Hugging Face step does not."""
    notes = []
    if row["stack"] == "torchtune":
        notes.append("torchtune stack: its own model code, not the HF modules the estimator traces")
    if row.get("torch_compile"):
        notes.append("torch.compile not modelled: the eager step is traced")
    if row.get("fused_kernels", "none") != "none":
        notes.append(f"fused kernels not modelled: {row['fused_kernels']}")
    if row.get("optimizer_in_backward"):
        notes.append("optimizer in backward not modelled: the full gradient buffer is traced")
    if row.get("activation_offloading"):
        notes.append("activation offloading not modelled: checkpointed activations stay on the GPU")
    if "Chunked" in row.get("loss", ""):
        notes.append("chunked cross-entropy not modelled: full logits are traced")
    if "torchao" in row.get("quantization", ""):
        notes.append("torchao NF4 traced as bitsandbytes NF4 with double quantization")
    elif "bitsandbytes" in row.get("quantization", "") and "double quantization" not in row["quantization"]:
        notes.append("bitsandbytes NF4 traced with double quantization (the source does not say)")
    return notes


def _attention(row: dict[str, Any]) -> Attention:
    """The row's ``attn_implementation``: its ``attention`` starts with the transformers name
    (e.g. "flash_attention_2 requested (...)"); anything else ran transformers' default (SDPA)."""
    stated = str(row.get("attention", "")).strip()
    return next((a for a in Attention if stated.startswith(a.value)), Attention.SDPA)


def _stack(row: dict[str, Any], assumptions: list[str]) -> TargetStack:
    """The behaviours of the row's software that differ from the installed stack (``target_stack``,
    each cited in the data file); the installed stack's where the row states none."""
    stated = row.get("target_stack") or {}
    if stated:
        assumptions.append(f"the source's stack: {', '.join(f'{k}={v}' for k, v in stated.items())}")
    return TargetStack(**stated)


def row_setup(row: dict[str, Any], scratch: Path, seq_len: int | None = None) -> RowSetup:
    """The planner's config and card for ``row`` (``seq_len`` overrides the row's); Skipped if none."""
    assumptions: list[str] = []
    reference, model_id = _model_reference(row, scratch, assumptions)
    card = _card(row, assumptions)
    precision = _precision(row, assumptions)
    config = TrainingConfig(
        model=reference,
        method=Method(row["method"]),
        lora=_lora(row, precision, assumptions),
        precision=precision,
        optimizer=row["optimizer"],
        attention=_attention(row),
        gradient_checkpointing=row["gradient_checkpointing"],
        seq_len=seq_len or row["seq_len"],
        micro_batch=row["micro_batch"],
        gradient_accumulation=row["gradient_accumulation"],
        stack=_stack(row, assumptions),
    )
    return RowSetup(config, card, model_id, assumptions + _unmodelled(row))


def config_record(setup: RowSetup) -> dict[str, Any]:
    """The config as JSON, naming the shipped model rather than a scratch directory."""
    return {**setup.config.model_dump(mode="json"), "model": setup.model_id}


def percent_error(predicted: float, published: float) -> float:
    return (predicted - published) / published * 100.0


def error_summary(errors: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """Count, median absolute error and worst (signed) error of ``(row id, error %)`` pairs."""
    if not errors:
        return {"count": 0}
    worst_id, worst = max(errors, key=lambda item: abs(item[1]))
    return {
        "count": len(errors),
        "median_abs_error_percent": round(statistics.median(abs(e) for _, e in errors), 2),
        "worst_error_percent": round(worst, 2),
        "worst_row": worst_id,
    }


def print_table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


def print_not_compared(records: Sequence[dict[str, Any]]) -> None:
    """The rows skipped (model or card not buildable) or failed (the planner raised), one a line."""
    for record in records:
        if record["status"] == "skipped":
            print(f"skipped: {record['id']}: {record['reason']}")
        elif record["status"] == "error":
            print(f"error: {record['id']}: {record['error']}")


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {path}")
