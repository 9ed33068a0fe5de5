"""TrainingArguments names in a sweep spec, and ``base: {from: FILE}``: the raw mapping is
rewritten into the spec's own names before pydantic validates it.

``planner.sweep.load_spec`` calls :func:`normalise_spec` once; ``read_training_config`` uses it for
spec files given as ``--config``. Names from transformers' ``TrainingArguments``
(https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments)
and TRL's ``SFTConfig`` (``max_length``, formerly ``max_seq_length``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from planner.configs._common import ImportedTraining, optimizer_from_name
from planner.errors import ConfigError

logger = logging.getLogger(__name__)

# alias -> the spec's name, per section.
TOP_ALIASES = {"per_device_train_batch_size": "micro_batch"}
BASE_ALIASES = {
    "model_name_or_path": "model",
    "per_device_train_batch_size": "micro_batch",
    "gradient_accumulation_steps": "gradient_accumulation",
    "optim": "optimizer",
    "max_seq_length": "seq_len",
    "max_length": "seq_len",
}
TRAINING_ALIASES = {
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "scheduler",
    "warmup_steps": "warmup_ratio",
}
SEARCH_ALIASES = {
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "scheduler",
    "optim": "optimizer",
    "max_seq_length": "seq_len",
    "max_length": "seq_len",
}


def rename(section: Mapping[str, Any], aliases: Mapping[str, str], where: str) -> dict[str, Any]:
    """``section`` with aliases renamed; an alias beside its target (or a second alias) is a ConfigError."""
    renamed: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in section.items():
        name = aliases.get(key, key)
        if name in renamed:
            first, second = sorted((origin[name], key))
            raise ConfigError(
                f"{where}{first}/{where}{second}",
                f"both are set and mean the same setting ({name})",
                f"keep one of {where}{first} and {where}{second}",
            )
        renamed[name], origin[name] = value, key
    return renamed


def precision_flags(base: dict[str, Any], where: str) -> dict[str, Any]:
    """TrainingArguments' ``bf16``/``fp16`` booleans -> ``precision`` (neither true: fp32)."""
    flags = {key: base.pop(key) for key in ("bf16", "fp16") if key in base}
    if not flags:
        return base
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(
                f"{where}{key}", f"'{value}' is not true or false", f"set {where}{key}: true or false"
            )
    if "precision" in base:
        key = next(iter(flags))
        raise ConfigError(
            f"{where}precision/{where}{key}",
            "both set the precision",
            f"keep one of {where}precision and {where}{key}",
        )
    if flags.get("bf16") and flags.get("fp16"):
        raise ConfigError(
            f"{where}bf16/{where}fp16", "both true: Trainer takes one mixed precision", "keep one"
        )
    base["precision"] = "bf16" if flags.get("bf16") else "fp16" if flags.get("fp16") else "fp32"
    return base


def _optimizer_values(section: dict[str, Any], key: str, where: str) -> None:
    value = section.get(key)
    if isinstance(value, str):
        section[key] = optimizer_from_name(f"{where}{key}", value).value
    elif isinstance(value, list):
        section[key] = [
            optimizer_from_name(f"{where}{key}", v).value if isinstance(v, str) else v for v in value
        ]


def normalise_base(base: Mapping[str, Any], where: str = "base.") -> dict[str, Any]:
    """A training-config mapping in the spec's names (``from`` left for :func:`normalise_spec`)."""
    normal = precision_flags(rename(base, BASE_ALIASES, where), where)
    _optimizer_values(normal, "optimizer", where)
    return normal


def _training(section: Mapping[str, Any]) -> dict[str, Any]:
    warmup_steps = section.get("warmup_steps")
    normal = rename(section, TRAINING_ALIASES, "training.")
    if isinstance(warmup_steps, int | float) and not isinstance(warmup_steps, bool) and warmup_steps >= 1:
        raise ConfigError(
            "training.warmup_steps",
            f"{warmup_steps} steps: the spec takes warmup as a fraction of the steps",
            "give warmup_ratio (or warmup_steps below 1, a fraction as in transformers 5)",
        )
    return normal


def _from_file(
    base: dict[str, Any], spec_dir: Path, notes: list[str] | None
) -> tuple[dict[str, Any], ImportedTraining | None]:
    """``base: {from: FILE, ...}``: the file's config, then the other keys of ``base`` over it.

    The reader's notes go to ``notes`` when given, else to the log."""
    from planner.configs._read import read_training_config

    rest = dict(base)
    path = Path(str(rest.pop("from"))).expanduser()
    imported = read_training_config(
        path if path.is_absolute() else spec_dir / path, model=rest.pop("model", None)
    )
    for note in imported.notes:
        if notes is None:
            logger.info("%s: %s", path.name, note)
        else:
            notes.append(f"{path.name}: {note}")
    merged = imported.config.model_dump(mode="json")
    if isinstance(rest.get("lora"), dict):
        merged["lora"] = {**merged["lora"], **rest.pop("lora")}
    return {**merged, **rest}, imported.training


def normalise_spec(raw: Mapping[str, Any], spec_dir: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """The spec mapping with TrainingArguments names turned into the spec's and ``base.from`` read.

    Settings the imported file holds for the ``training`` section (learning rate, epochs, ...)
    fill in what the spec's own ``training`` leaves out. The imported file's notes go to ``notes``
    (else to the log).
    """
    spec = rename(raw, TOP_ALIASES, "")
    base = spec.get("base")
    if isinstance(base, Mapping):
        spec["base"] = normalise_base(base)
        if "from" in spec["base"]:
            spec["base"], imported = _from_file(spec["base"], spec_dir, notes)
            if imported is not None:
                training = spec.get("training")
                spec["training"] = {
                    **imported.spec_fields(),
                    **(training if isinstance(training, Mapping) else {}),
                }
    if isinstance(spec.get("training"), Mapping):
        spec["training"] = _training(spec["training"])
    search = spec.get("search")
    if isinstance(search, Mapping):
        spec["search"] = rename(search, SEARCH_ALIASES, "search.")
        _optimizer_values(spec["search"], "optimizer", "search.")
    return spec
