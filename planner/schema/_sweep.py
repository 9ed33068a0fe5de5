"""The sweep spec: a base training config, the data, what to search over, and the budget.

Written by the user as YAML (see ``examples/``), validated here; ``planner plan`` turns it into
trials and ``planner run`` executes them. Relative paths are relative to the spec file.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from planner.schema._parallel import Strategy
from planner.schema._training import LoraSettings, TrainingConfig

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"5h"``, ``"90m"``, ``"1h30m"``, ``"45s"`` or a bare number of seconds."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        # YAML reads "budget: yes" as True (1 as a number), "budget: [1h]" as a list.
        raise ValueError(f"{text!r} is not a duration such as 5h, 90m, 1h30m or 600s")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text.lower())
        if not text.strip() or match is None or not any(match.groups()):
            raise ValueError(f"'{text}' is not a duration such as 5h, 90m, 1h30m or 600s")
        hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError("a budget must be positive")
    return seconds


class Scheduler(str, Enum):
    """Learning-rate schedules by their ``TrainingArguments.lr_scheduler_type`` names."""

    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"


class Hyperparameters(BaseModel):
    """One trial's optimisation hyperparameters (the training config holds the shapes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: PositiveFloat = 2e-4
    effective_batch: PositiveInt = 8
    """Examples per optimizer step: micro-batch x gradient accumulation x the trial's ranks."""
    epochs: PositiveFloat = 1.0
    max_steps: PositiveInt | None = None
    """Optimizer steps; when set it replaces ``epochs`` (Trainer's rule)."""
    weight_decay: NonNegativeFloat = 0.0
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    scheduler: Scheduler = Scheduler.LINEAR


# Searchable names: hyperparameters, plus training-config fields (``lora_*`` map into ``lora``).
HYPERPARAMETER_NAMES = tuple(Hyperparameters.model_fields)
CONFIG_NAMES = (
    "method",
    "precision",
    "optimizer",
    "gradient_checkpointing",
    "seq_len",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
)
SEARCHABLE = HYPERPARAMETER_NAMES + CONFIG_NAMES
# Searchable names whose values are choices, not numbers: a list of them, never a range.
_CHOICE_NAMES = frozenset({"method", "precision", "optimizer", "gradient_checkpointing", "scheduler"})


MAX_EXAMPLES = 10**12
MAX_TOKENS = 10**9
MAX_TRIALS = 10_000
"""Most trials a sweep may plan: each is estimated and timed, and more would take the planner hours."""
MAX_WORKERS = 1024
"""Most workers a plan schedules onto (one per GPU, or per GPU group): beyond it a typo, not a cluster."""


def _check_searched_value(name: str, value: Any) -> None:
    """Validate one searched value as its field would be: a bad one is refused when the spec loads,
    named as ``search``'s, not when planning reaches its trial."""
    model: type[BaseModel]
    if name in HYPERPARAMETER_NAMES:
        model, fields = Hyperparameters, {name: value}
    elif name.startswith("lora_"):
        model, fields = LoraSettings, {name.removeprefix("lora_"): value}
    else:
        model, fields = TrainingConfig, {"model": "-", name: value}
    try:
        model.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(f"'{name}' value {value!r}: {exc.errors()[0]['msg']}") from None


class Range(BaseModel):
    """A numeric range for random or TPE search (grid search needs explicit lists)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    high: float
    log: bool = False
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step (Optuna samples it continuously)")
        return self


class DataCounts(BaseModel):
    """Dataset size given as numbers, when the data is not on this machine yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Bounded far above any dataset: a bigger number is a typo, and overflows the planner's arithmetic.
    train_examples: int = Field(ge=1, le=MAX_EXAMPLES)
    mean_tokens: float | None = Field(None, gt=0, le=MAX_TOKENS)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    eval_examples: int = Field(0, ge=0, le=MAX_EXAMPLES)
    length_percentiles: dict[float, int] | None = None
    """Token length at given percentiles, e.g. ``{50: 180, 90: 700, 99: 2100}``: dynamic padding
    pads each micro-batch to its longest row, so the tail matters, not only the mean."""
    length_histogram: list[tuple[int, int]] | None = None
    """``[upper bound in tokens, examples]`` per bin, ascending, e.g. ``[[128, 5000], [512, 800]]``."""

    @model_validator(mode="after")
    def _lengths(self) -> DataCounts:
        given = [self.mean_tokens, self.length_percentiles, self.length_histogram]
        if sum(value is not None for value in given) == 0:
            raise ValueError("give mean_tokens, length_percentiles or length_histogram")
        if self.length_percentiles is not None:
            points = sorted(self.length_percentiles.items())
            if not points or any(not 0 <= p <= 100 for p, _ in points):
                raise ValueError("length_percentiles: keys are percentiles between 0 and 100")
            if any(v < 1 or v > MAX_TOKENS for _, v in points) or [v for _, v in points] != sorted(
                v for _, v in points
            ):
                raise ValueError("length_percentiles: lengths must be positive and grow with the percentile")
        if self.length_histogram is not None:
            bounds = [bound for bound, _ in self.length_histogram]
            if (
                not bounds
                or bounds != sorted(set(bounds))
                or bounds[0] < 1
                or bounds[-1] > MAX_TOKENS
                or any(count < 0 for _, count in self.length_histogram)
                or sum(count for _, count in self.length_histogram) == 0
            ):
                raise ValueError(
                    "length_histogram: [upper bound, count] bins with ascending bounds and some examples"
                )
        return self


class DataColumns(BaseModel):
    """Column names of the rows, when they differ from the usual ones (each default in brackets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None = None
    """The whole example [``text``]."""
    prompt: str | None = None
    """What the model is given [``prompt``, else alpaca's ``instruction``]."""
    input: str | None = None
    """An optional second part of the prompt [alpaca's ``input``, when the rows have it]."""
    response: str | None = None
    """What the model learns to answer [``response``, else ``output``, else ``completion``]."""
    messages: str | None = None
    """A conversation, a list of ``{role, content}`` [``messages``]."""


DataFormat = Literal["auto", "text", "prompt_response", "chat"]


class DataSpec(BaseModel):
    """The training data: a dataset on this machine (counted with the model's tokenizer) or counts.

    ``train``/``eval``: a json/jsonl/csv/parquet/arrow file, a plain text file (one example per
    non-empty line), a directory saved with ``datasets.save_to_disk`` or of data files, or a hub
    dataset id already in the local ``datasets`` cache (never downloaded). Rows are ``text``,
    prompt/response (or alpaca's instruction/input/output) or chat ``messages`` rendered with the
    tokenizer's chat template; ``format: auto`` tells them by their columns.
    ``fraction`` trains on that share of the examples (the low-fidelity rung of successive halving).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: Path | None = None
    eval: Path | None = None
    counts: DataCounts | None = None
    tokenizer: str | None = None
    """A tokenizer directory or hub id; default: the model's own directory when it has one."""
    format: DataFormat = "auto"
    columns: DataColumns = DataColumns()
    split: str = "train"
    """The split of ``train`` when it has named splits (a saved DatasetDict, a hub dataset)."""
    eval_split: str = "validation"
    """The split of ``eval`` when it has named splits."""
    completion_only: bool = False
    """Loss on the responses only: prompt tokens (prompt/response rows) or every turn but the
    assistant's (chat rows, which needs a chat template with ``{% generation %}`` markers)."""
    chat_template: Path | None = None
    """A Jinja chat template file replacing the tokenizer's own (e.g. one with generation markers)."""
    packing: bool = False
    """Concatenate the examples (each ending in EOS) and cut the stream into ``seq_len`` rows."""
    fraction: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.train is None) == (self.counts is None):
            raise ValueError("give either 'train' (a local dataset) or 'counts' (numbers), not both or none")
        return self


class EvalSpec(BaseModel):
    """When to evaluate: every N optimizer steps, once per epoch, or never."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["steps", "epoch", "no"] = "epoch"
    every_steps: PositiveInt | None = None

    @model_validator(mode="after")
    def _steps_need_every(self) -> EvalSpec:
        if self.strategy == "steps" and self.every_steps is None:
            raise ValueError("strategy 'steps' needs every_steps")
        return self


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "eval_loss"
    direction: Literal["minimize", "maximize"] = "minimize"


class SweepSpec(BaseModel):
    """A whole sweep: what ``planner plan`` estimates and ``planner run`` executes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("sweep", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    base: TrainingConfig
    """Fields of ``planner fit``'s config; ``micro_batch`` here is a fixed choice only when
    ``micro_batch`` below says so, and gradient accumulation is always derived."""
    micro_batch: PositiveInt | Literal["auto"] = "auto"
    """``auto``: the largest micro-batch that fits and divides the effective batch."""
    init: Literal["pretrained", "random"] = "pretrained"
    """``random`` builds the model from its config with fresh weights (tiny models, smoke tests)."""
    data: DataSpec
    eval: EvalSpec = EvalSpec()
    checkpoint_every_steps: PositiveInt | None = None
    """Checkpoint cadence in optimizer steps; default: at every eval, else once per epoch."""
    training: Hyperparameters = Hyperparameters()
    search: dict[str, list[Any] | Range] = {}
    strategy: Literal["grid", "random", "tpe"] = "grid"
    n_trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    seed: int = Field(0, ge=0, lt=2**32)
    """Seeds Optuna's samplers (numpy's generator takes 0 to 2**32 - 1)."""
    objective: Objective = Objective()
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    budget_seconds: PositiveFloat | None = Field(None, validation_alias="budget")
    workers: int = Field(1, ge=1, le=MAX_WORKERS)
    spec_dir: Path = Path(".")
    """Directory of the spec file; relative paths resolve against it (set by the loader)."""

    _checkpointing_explicit: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_explicit_checkpointing(cls, data: Any, handler: Any) -> Any:
        # TrainingConfig fills an unset gradient_checkpointing from its method; remember whether
        # the user set it, so a searched method gets its own recipe's default.
        spec = handler(data)
        base = data.get("base") if isinstance(data, dict) else None
        if isinstance(base, dict):
            spec._checkpointing_explicit = base.get("gradient_checkpointing") is not None
        return spec

    @field_validator("base")
    @classmethod
    def _trials_planner_run_can_launch(cls, base: TrainingConfig) -> TrainingConfig:
        parallelism = base.parallelism
        if parallelism.single_gpu:
            return base
        # planner run launches a trial's ranks with torch.distributed.run on the worker's host,
        # each running Trainer, which does DDP by itself when launched so; a plan of any other
        # engine would not be what runs.
        if parallelism.nodes > 1:
            raise ValueError(
                "parallelism.nodes: a trial's ranks run on one host (planner run launches them there); "
                "use nodes: 1, and ask `planner fit --nodes N` about several hosts"
            )
        if parallelism.strategy is not Strategy.DDP:
            # FSDP through Trainer needs accelerate's FSDP plugin, which accelerate sets up on GPUs
            # only (accelerate/state.py: a gloo CPU group stays MULTI_CPU), so no test here could
            # run what a plan of it would promise; DeepSpeed is not a dependency.
            raise ValueError(
                f"parallelism.strategy: planner run runs DDP trials only, not {parallelism.strategy.value} "
                "(the built-in recipe sets up no FSDP or DeepSpeed plugin); use ddp, and ask "
                f"`planner fit --strategy {parallelism.strategy.value}` about its memory"
            )
        return base

    @field_validator("budget_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("search")
    @classmethod
    def _known_names(cls, search: dict[str, list[Any] | Range]) -> dict[str, list[Any] | Range]:
        for name, values in search.items():
            if name not in SEARCHABLE:
                raise ValueError(f"cannot search over '{name}'; searchable: {', '.join(SEARCHABLE)}")
            if isinstance(values, list) and not values:
                raise ValueError(f"'{name}' has an empty list of values")
            if isinstance(values, Range) and name in _CHOICE_NAMES:
                raise ValueError(f"'{name}' takes a list of values, not a range")
            # A range's ends are values of the field too (an integer field takes integer ends).
            for value in values if isinstance(values, list) else [values.low, values.high]:
                _check_searched_value(name, value)
        return search

    @model_validator(mode="after")
    def _strategy_consistent(self) -> SweepSpec:
        if self.strategy == "grid":
            ranges = [name for name, values in self.search.items() if isinstance(values, Range)]
            if ranges:
                raise ValueError(f"grid search needs lists of values, not ranges ({', '.join(ranges)})")
        elif self.n_trials is None:
            raise ValueError(f"strategy '{self.strategy}' needs n_trials")
        return self

    @property
    def storage_url(self) -> str:
        """Default Optuna storage: a SQLite file next to the spec."""
        return f"sqlite:///{(self.spec_dir / f'{self.name}.db').resolve()}"

    @property
    def output_dir(self) -> Path:
        """Where trials write checkpoints and logs: ``<name>-runs/`` next to the spec."""
        return self.spec_dir / f"{self.name}-runs"

    def resolve(self, path: Path | str) -> Path:
        """A path from the spec, relative to the spec file."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.spec_dir / path

    def trial(self, params: dict[str, Any]) -> tuple[TrainingConfig, Hyperparameters]:
        """The training config and hyperparameters of one trial: the base with ``params`` applied.

        Micro-batch and accumulation are left for the planner to choose.
        """
        config_changes: dict[str, Any] = {}
        lora = self.base.lora.model_dump()
        for name, value in params.items():
            if name.startswith("lora_"):
                lora[name.removeprefix("lora_")] = value
            elif name in CONFIG_NAMES:
                config_changes[name] = value
        if "method" in config_changes and not self._checkpointing_explicit:
            # Checkpointing left unset follows each method's recipe (on for QLoRA), per trial.
            config_changes.setdefault("gradient_checkpointing", None)
        config = self.base.with_changes(**config_changes, lora=lora)
        hyper = Hyperparameters.model_validate(
            {**self.training.model_dump(), **{k: v for k, v in params.items() if k in HYPERPARAMETER_NAMES}}
        )
        return config, hyper
