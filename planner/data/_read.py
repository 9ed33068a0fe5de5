"""Reading a spec's dataset into training rows, and finding its tokenizer, offline.

One reader serves the planner (counting) and the executor (training), so both see the same rows:
:func:`read_sequences` loads through ``datasets`` (:mod:`planner.data._load`) and tokenizes each
row's shape with its labels (:mod:`planner.data._shapes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from planner._files import read_text
from planner.data._load import load_rows
from planner.data._shapes import TokenRow, render_texts, tokenize_rows
from planner.errors import ConfigError
from planner.schema import DataSpec

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from planner.schema import SweepSpec

Split = Literal["train", "eval"]
ROW_READER = "datasets"
"""The library :func:`read_rows` loads rows with, imported on first use (about half a second cold)."""


def read_examples(path: Path, *, field: str = "data.train", data: DataSpec | None = None) -> list[str]:
    """The examples of ``path`` as texts (text, or ``prompt\nresponse``), for counting without a
    tokenizer; ``data`` gives the format and column names (default: told by the columns)."""
    data = data if data is not None else DataSpec(train=path)
    return render_texts(load_rows(path, spec_dir=Path("."), field=field, split=data.split), data, field)


def read_rows(spec: SweepSpec, which: Split) -> datasets.Dataset:
    """The spec's train rows (``data.fraction`` of them, the first ones) or its eval rows."""
    data = spec.data
    source = data.train if which == "train" else data.eval
    if source is None:
        raise ConfigError(
            f"data.{which}",
            "the built-in recipe trains on a local dataset, and the spec gives only counts",
            "point data.train at a local dataset, or run your own code with run_function",
        )
    split = data.split if which == "train" else data.eval_split
    rows = load_rows(source, spec_dir=spec.spec_dir, field=f"data.{which}", split=split)
    if which == "train":
        rows = rows.select(range(max(1, round(len(rows) * data.fraction))))
    return rows


def read_texts(spec: SweepSpec, which: Split) -> list[str]:
    """The rows of :func:`read_rows` as texts, for the byte-proxy count when no tokenizer is here."""
    return render_texts(read_rows(spec, which), spec.data, f"data.{which}")


def read_sequences(spec: SweepSpec, tokenizer: PreTrainedTokenizerBase, which: Split) -> list[TokenRow]:
    """The rows of :func:`read_rows` tokenized with their labels, untruncated: what both the
    recipe trains on and the planner counts (cut or packed to ``seq_len`` by ``fit_to_length``)."""
    return tokenize_rows(read_rows(spec, which), tokenizer, spec.data, f"data.{which}")


def load_tokenizer(spec: SweepSpec) -> PreTrainedTokenizerBase | None:
    """The tokenizer named by ``data.tokenizer``, else the one in the model's directory; None if
    neither. ``data.chat_template`` replaces its chat template.

    Only local files are read: a hub id works when its tokenizer is already in the local cache.
    """
    tokenizer = _find_tokenizer(spec)
    if tokenizer is not None and spec.data.chat_template is not None:
        tokenizer.chat_template = read_text(
            spec.resolve(spec.data.chat_template), field="data.chat_template", expect="a Jinja chat template"
        )
    return tokenizer


def _find_tokenizer(spec: SweepSpec) -> PreTrainedTokenizerBase | None:
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
