"""What every importer shares: the result model, reading keys with one-line errors, name tables.

An importer reads a foreign config through a :class:`Source`, which records the keys it used, so
the keys left over become one note, and turns bad values into a :class:`ConfigError` naming the
key as the file spells it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from planner.errors import ConfigError, from_validation_error
from planner.schema import Attention, OptimizerName, Precision, Scheduler, TrainingConfig

Format = Literal["axolotl", "llama-factory", "trl", "training-arguments", "peft-adapter", "vram-planner"]
FORMATS: tuple[Format, ...] = get_args(Format)

# ``TrainingArguments.optim`` names (transformers ``OptimizerNames``; axolotl's ``optimizer`` and
# LLaMA-Factory's ``optim`` take the same values) -> the optimizer the estimator builds. The fused
# and unfused torch AdamW keep the same state but not the same step: unfused runs foreach on CUDA,
# with parameter-sized intermediates. ``adamw_hf`` is the pre-5.0 name of the same maths.
OPTIMIZER_NAMES: dict[str, OptimizerName] = {
    "adamw": OptimizerName.ADAMW,
    "adamw_torch": OptimizerName.ADAMW_TORCH,
    "adamw_torch_fused": OptimizerName.ADAMW,
    "adamw_hf": OptimizerName.ADAMW,
    "adamw_8bit": OptimizerName.ADAMW_8BIT,
    "adamw_bnb_8bit": OptimizerName.ADAMW_8BIT,
    "paged_adamw_8bit": OptimizerName.PAGED_ADAMW_8BIT,
    "sgd": OptimizerName.SGD,
    "adafactor": OptimizerName.ADAFACTOR,
}

SCHEDULER_NAMES = tuple(s.value for s in Scheduler)


class ImportedTraining(BaseModel):
    """The optimisation settings a foreign config names, each ``None`` when it does not.

    Same names and meanings as the spec's ``training`` section (:class:`~planner.schema.Hyperparameters`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: PositiveFloat | None = None
    epochs: PositiveFloat | None = None
    max_steps: PositiveInt | None = None
    scheduler: Scheduler | None = None
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat | None = None
    effective_batch: PositiveInt | None = None
    """Micro-batch x gradient accumulation on one device."""

    def spec_fields(self) -> dict[str, Any]:
        """The settings that were given, as the spec's ``training`` section spells them."""
        return self.model_dump(mode="json", exclude_none=True)


class ImportedConfig(BaseModel):
    """A training config read from another tool's file, with what was assumed or left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: TrainingConfig
    format: Format
    notes: list[str] = []
    """Keys ignored, settings the estimate does not model, defaults assumed; one line each."""
    training: ImportedTraining | None = None


def did_you_mean(value: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def trainer_default_optim() -> str:
    """``TrainingArguments.optim``'s default under the installed torch: ``adamw_torch_fused`` from
    torch 2.8 on, ``adamw_torch`` before (transformers' ``TrainingArguments.default_optim``; read
    from torch's version, since importing transformers' training_args takes seconds)."""
    major, minor = (int(part) for part in re.findall(r"\d+", version("torch"))[:2])
    return "adamw_torch_fused" if (major, minor) >= (2, 8) else "adamw_torch"


def optimizer_from_name(key: str, value: object) -> OptimizerName:
    """The estimator's optimizer for a ``TrainingArguments.optim`` name, or a ConfigError naming ``key``."""
    name = str(value).strip().lower()
    if name in OPTIMIZER_NAMES:
        return OPTIMIZER_NAMES[name]
    raise ConfigError(
        key,
        f"'{value}' is not an optimizer the planner models{did_you_mean(name, OPTIMIZER_NAMES)}",
        f"use one of {', '.join(OPTIMIZER_NAMES)}",
    )


def attention_from_name(key: str, value: object) -> Attention:
    """The attention for a transformers ``attn_implementation`` name, or a ConfigError naming ``key``."""
    name = str(value).strip().lower()
    names = [a.value for a in Attention]
    if name in names:
        return Attention(name)
    raise ConfigError(
        key,
        f"'{value}' is not an attention implementation the planner models{did_you_mean(name, names)}",
        f"use one of {', '.join(names)}",
    )


class Source:
    """A foreign config mapping being read: typed access by key, the keys used, and notes.

    A key set to ``None`` (YAML's empty value) counts as unset, as axolotl and the
    ``HfArgumentParser`` treat it.
    """

    def __init__(self, raw: Mapping[str, Any], name: str) -> None:
        self.raw = dict(raw)
        self.name = name
        self.used: set[str] = set()
        self.notes: list[str] = []
        self.origins: dict[str, str] = {}
        """TrainingConfig field (``lora.r``) -> the key it came from, to word validation errors."""

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def value(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.raw.get(key)
        return default if value is None else value

    def set_keys(self, *keys: str) -> list[str]:
        """Which of ``keys`` are set (marking them all used)."""
        self.used.update(keys)
        return [key for key in keys if self.has(key)]

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.value(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ConfigError(key, f"'{value}' in {self.name} is not true or false", f"set {key}: true or false")

    def number(self, key: str, kind: type[int] | type[float], default: Any = None) -> Any:
        """An int or float; numeric strings such as ``"2e-4"`` (YAML 1.1 reads them as text) are accepted."""
        value = self.value(key)
        if value is None:
            return default
        if isinstance(value, bool):
            value = str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                key, f"'{value}' in {self.name} is not a number", f"set {key} to a number"
            ) from None
        if kind is int:
            if not number.is_integer():
                raise ConfigError(
                    key, f"'{value}' in {self.name} is not a whole number", f"set {key} to an integer"
                )
            return int(number)
        return number

    def conflict(self, first: str, second: str, why: str) -> ConfigError:
        return ConfigError(
            f"{first}/{second}",
            f"{self.name} sets both {first} and {second}, which conflict ({why})",
            f"keep one of {first} and {second}",
        )

    def note(self, text: str) -> None:
        self.notes.append(text)

    def leftovers(self, not_modelled: Mapping[str, str]) -> None:
        """Notes on the keys no mapping used: one each for settings that change memory but are not
        modelled (``not_modelled``: key -> what the estimate does instead), one for near-misses of
        keys that are read (likely typos), and one line listing the rest. Keys left empty, false
        or 0 (defaults, in every format) are not worth a note."""
        unused = [
            key for key in self.raw if key not in self.used and self.raw[key] not in (None, False, "", [], {})
        ]
        rest = []
        for key in unused:
            if key in not_modelled:
                self.note(f"{key}: not modelled; {not_modelled[key]}")
            elif hint := did_you_mean(key, self.used, cutoff=0.8):  # typos, not related keys
                self.note(f"{key}: unknown key ignored{hint}")
            else:
                rest.append(key)
        if rest:
            shown = ", ".join(rest[:12]) + (f" and {len(rest) - 12} more" if len(rest) > 12 else "")
            self.note(f"ignored {len(rest)} key(s) the estimate does not use: {shown}")

    def finish(self, fields: dict[str, Any], training: dict[str, Any], fmt: Format) -> ImportedConfig:
        """Validate what was read into an :class:`ImportedConfig`, naming the file's key on error."""
        try:
            config = TrainingConfig.model_validate(fields)
            hyper = ImportedTraining.model_validate(training)
        except ValidationError as exc:
            error = from_validation_error(exc)
            key = self.origins.get(error.field, error.field)
            raise ConfigError(
                key, f"{error.problem} (in {self.name})", f"set '{key}' to a valid value"
            ) from None
        return ImportedConfig(
            config=config,
            format=fmt,
            notes=self.notes,
            training=hyper if hyper.spec_fields() else None,
        )


def precision_from_flags(source: Source, bf16_key: str = "bf16", fp16_key: str = "fp16") -> Precision:
    """Trainer's mixed-precision flags: ``bf16`` -> bf16, ``fp16`` -> fp16, neither -> fp32, both -> error."""
    bf16, fp16 = source.flag(bf16_key), source.flag(fp16_key)
    if bf16 and fp16:
        raise source.conflict(bf16_key, fp16_key, "Trainer takes one mixed precision")
    return Precision.BF16 if bf16 else Precision.FP16 if fp16 else Precision.FP32


def scheduler_from_name(source: Source, key: str, default: str | None = None) -> Scheduler | None:
    """``lr_scheduler_type`` names the spec has; any other schedule becomes a note and is left unset."""
    value = source.value(key, default)
    if value is None:
        return None
    name = str(value).strip().lower()
    if name in SCHEDULER_NAMES:
        return Scheduler(name)
    source.note(
        f"{key}: '{value}' is not a schedule the planner's runs use"
        f" ({', '.join(SCHEDULER_NAMES)}); left unset"
    )
    return None


def lora_targets(value: object) -> list[str] | Literal["all-linear"]:
    """peft ``target_modules``: a list, a comma-separated string, or ``all-linear``."""
    if isinstance(value, str):
        if value.strip() in ("all-linear", "all"):
            return "all-linear"
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value] if isinstance(value, list | tuple) else [str(value)]


def warmup(source: Source, training: dict[str, Any], ratio_key: str = "warmup_ratio") -> None:
    """``warmup_ratio``, or ``warmup_steps`` below 1 (a fraction of the steps since transformers 5);
    a whole number of warmup steps has no place in the spec and becomes a note."""
    ratio, steps = source.number(ratio_key, float), source.number("warmup_steps", float)
    if ratio and steps:
        raise source.conflict(ratio_key, "warmup_steps", "one warmup length")
    if ratio is not None:
        training["warmup_ratio"] = ratio
        source.origins["warmup_ratio"] = ratio_key
    elif steps is not None and steps < 1:
        training["warmup_ratio"] = steps
        source.origins["warmup_ratio"] = "warmup_steps"
    elif steps:
        source.note(f"warmup_steps: {steps:g} steps left out (the spec takes warmup_ratio, a fraction)")
