"""``read_training_config``: a training config from another tool's file (or the planner's own)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from planner.configs._axolotl import read_axolotl
from planner.configs._common import FORMATS, Format, ImportedConfig, ImportedTraining, Source, did_you_mean
from planner.configs._detect import PEFT_FILE_NAME, PLANNER_KEYS, detect_format
from planner.configs._hf_args import read_hf_args
from planner.configs._llamafactory import read_llamafactory
from planner.configs._peft import read_peft
from planner.configs._spec import normalise_base, normalise_spec
from planner.errors import ConfigError


def load_mapping(path: Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML file, or a one-line ConfigError."""
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "config", f"{path.name} is not valid JSON at line {exc.lineno}", "fix the JSON syntax"
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError("config", f"{path.name} is not valid YAML{line}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "config", f"{path.name} is not a mapping of keys to values", "give a training config file"
        )
    return raw


def read_planner(source: Source, path: Path, model: str | None) -> ImportedConfig:
    """The planner's own spec (its ``base`` and ``training``) or a bare training config."""
    if isinstance(source.raw.get("base"), Mapping):
        spec = normalise_spec(source.raw, path.parent, source.notes)
        fields = dict(spec["base"])
        local = path.parent / str(fields.get("model", ""))
        if fields.get("model") and local.is_dir():
            # As load_spec does: a spec's "../tiny-llama" is next to the spec, not the working directory.
            fields["model"] = str(local.resolve())
        if isinstance(spec.get("micro_batch"), int):  # the spec's fixed micro-batch, not "auto"
            fields["micro_batch"] = spec["micro_batch"]
        training = {
            key: value
            for key, value in (spec.get("training") or {}).items()
            if key in ImportedTraining.model_fields
        }
    else:
        known = {key: value for key, value in source.raw.items() if key in PLANNER_KEYS}
        source.used.update(known)
        source.leftovers({})
        fields, training = normalise_base(known, ""), {}
    if model:
        fields["model"] = model
    return source.finish(fields, training, "vram-planner")


def read_training_config(
    path: Path | str, *, format: Format | None = None, model: str | None = None
) -> ImportedConfig:
    """Read an axolotl or LLaMA-Factory YAML, a TrainingArguments/SFTConfig JSON, a peft
    ``adapter_config.json`` (or the directory holding one) or a planner spec, as a TrainingConfig.

    ``format`` overrides detection from the keys; ``model`` replaces the file's model (and is
    needed for TrainingArguments files, which name none). Keys the estimate does not use,
    settings it does not model and defaults it assumed are listed in ``notes``.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / PEFT_FILE_NAME).is_file():
        path = path / PEFT_FILE_NAME
    if not path.is_file():
        raise ConfigError(
            "config", f"{path} does not exist", "give the path of a training config (YAML or JSON)"
        )
    if format is not None and format not in FORMATS:
        raise ConfigError(
            "format",
            f"'{format}' is not a known format{did_you_mean(format, FORMATS)}",
            f"use one of {', '.join(FORMATS)}",
        )
    raw = load_mapping(path)
    fmt = format or detect_format(raw, path)
    source = Source(raw, path.name)
    if fmt == "axolotl":
        return read_axolotl(source, model)
    if fmt == "llama-factory":
        return read_llamafactory(source, model)
    if fmt == "peft-adapter":
        return read_peft(source, model)
    if fmt == "vram-planner":
        return read_planner(source, path, model)
    return read_hf_args(source, fmt, model)
