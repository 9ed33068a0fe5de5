"""Reading a local dataset into texts, and finding its tokenizer, offline.

One reader serves the planner (counting) and the executor (training), so both see the same text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner._files import read_text
from planner.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from planner.schema import SweepSpec


def _text_of(row: Any, where: str) -> str:
    """A JSONL row's text: ``text``, or ``prompt`` and ``response`` on two lines."""
    if isinstance(row, dict):
        if isinstance(row.get("text"), str):
            return row["text"]
        if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
            return f"{row['prompt']}\n{row['response']}"
    raise ConfigError(where, "a row has neither 'text' nor 'prompt' and 'response'", "fix that line")


def read_examples(path: Path, *, field: str = "data.train") -> list[str]:
    """The examples of ``path``: JSONL (``text`` or ``prompt``/``response``), text lines, or a
    ``datasets.save_to_disk`` directory (its ``text`` column, or ``prompt``/``response``)."""
    if path.is_dir():
        return _read_saved_dataset(path, field)
    text = read_text(
        path, field=field, expect="a JSONL file, a text file or a saved dataset", allow_empty=True
    )
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{field} ({path.name} line {number})", f"not valid JSON ({exc.msg})", "fix that line"
                ) from None
            texts.append(_text_of(row, f"{field} ({path.name} line {number})"))
    else:
        texts = lines
    if not texts:
        raise ConfigError(field, f"{path} holds no examples", "add examples, one per line")
    return texts


def _read_saved_dataset(path: Path, field: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            field, f"{path} is a directory; reading a saved dataset needs `datasets`", "pip install datasets"
        ) from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise ConfigError(
            field, f"{path} is not a dataset saved with save_to_disk", "point it at one"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    return [_text_of(row, f"{field} ({path.name})") for row in dataset]


def load_tokenizer(spec: SweepSpec) -> PreTrainedTokenizerBase | None:
    """The tokenizer named by ``data.tokenizer``, else the one in the model's directory; None if neither.

    Only local files are read: a hub id works when its tokenizer is already in the local cache.
    """
    from transformers import AutoTokenizer

    if spec.data.tokenizer is not None:
        local = spec.resolve(spec.data.tokenizer)
        reference = str(local) if local.exists() else spec.data.tokenizer
        try:
            return AutoTokenizer.from_pretrained(reference, local_files_only=True)
        except (OSError, ValueError):
            raise ConfigError(
                "data.tokenizer",
                f"no tokenizer found at '{spec.data.tokenizer}' on this machine",
                "give a directory with tokenizer.json, or drop the field to count with a byte proxy",
            ) from None
    model_dir = spec.resolve(spec.base.model)
    if model_dir.is_dir() and any(
        (model_dir / name).exists() for name in ("tokenizer.json", "tokenizer.model")
    ):
        try:
            return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:  # tokenizers and sentencepiece raise their own kinds on a bad file
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                "base.model",
                f"the tokenizer in {model_dir} does not load ({detail})",
                "fix or remove its tokenizer files, or name one with data.tokenizer",
            ) from None
    return None
