"""Measured profiles: what ``planner profile`` saw on a real device, per micro-batch.

A profile is keyed by everything that changes memory or speed (card, model, method, precision,
optimizer, checkpointing, sequence length, LoRA rank, library versions). The estimator takes its
CUDA overheads from profiles of the card; the planner takes step times from the profile of the
exact config when one exists.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from planner.schema._training import LoraSettings, Method, OptimizerName, Precision, TrainingConfig


class ProfileKey(BaseModel):
    """What must match for a profile to describe a config on a card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    card: str
    """A card name from ``profiles/cards``, or ``cpu`` for the host."""
    model: str
    method: Method
    precision: Precision
    optimizer: OptimizerName
    gradient_checkpointing: bool
    seq_len: PositiveInt
    lora_r: PositiveInt | None
    """None for full fine-tuning."""
    lora_target_modules: str | None = None
    """``all-linear`` or the sorted, comma-joined module names; None for full fine-tuning."""

    @classmethod
    def of(cls, config: TrainingConfig, card: str) -> ProfileKey:
        targets = config.lora.target_modules
        return cls(
            card=card,
            model=config.model,
            method=config.method,
            precision=config.precision,
            optimizer=config.optimizer,
            gradient_checkpointing=config.gradient_checkpointing,
            seq_len=config.seq_len,
            lora_r=None if config.method is Method.FULL else config.lora.r,
            lora_target_modules=(
                None
                if config.method is Method.FULL
                else targets
                if isinstance(targets, str)
                else ",".join(sorted(targets))
            ),
        )

    def training_config(self) -> TrainingConfig:
        """The config this key describes, as far as the key goes: everything a profile was keyed
        by, LoRA rank and targets included; the rest (alpha, dropout, shapes) at their defaults."""
        lora: dict[str, object] = {}
        if self.lora_r is not None:
            lora["r"] = self.lora_r
        if self.lora_target_modules is not None:
            targets = self.lora_target_modules
            lora["target_modules"] = targets if targets == "all-linear" else targets.split(",")
        return TrainingConfig(
            model=self.model,
            method=self.method,
            precision=self.precision,
            optimizer=self.optimizer,
            gradient_checkpointing=self.gradient_checkpointing,
            seq_len=self.seq_len,
            lora=LoraSettings(**lora),
        )


class StepMeasurement(BaseModel):
    """Timings and memory of real training steps at one micro-batch size.

    Times are medians over several steps after warm-up, with device synchronisation.
    ``forward_backward_seconds`` is one micro-batch's forward (with loss) and backward;
    ``optimizer_seconds`` the optimizer step plus zero_grad; ``eval_forward_seconds`` one
    no-grad forward with loss, what an eval pass repeats. Memory fields are None where the
    device cannot report them (NVML and reserved bytes on CPU).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    micro_batch: PositiveInt
    forward_backward_seconds: PositiveFloat
    forward_backward_p10_seconds: PositiveFloat
    forward_backward_p90_seconds: PositiveFloat
    optimizer_seconds: float
    eval_forward_seconds: PositiveFloat
    tokens_per_second: PositiveFloat
    achieved_tflops: float | None = None
    mfu: float | None = None
    peak_allocated_bytes: NonNegativeInt | None = None
    peak_reserved_bytes: NonNegativeInt | None = None
    nvml_used_bytes: NonNegativeInt | None = None
    live_peak_bytes: NonNegativeInt | None = None
    """CPU only: peak of live tensor bytes, what the estimator's trace predicts before CUDA terms."""
    context_bytes: NonNegativeInt | None = None
    """CUDA only: NVML used minus reserved at the same instant (context, cuBLAS/cuDNN handles)."""

    @property
    def device_bytes(self) -> int | None:
        """What the estimator's ``peak_bytes`` predicts: NVML used on CUDA, live tensor bytes on CPU."""
        return self.nvml_used_bytes if self.nvml_used_bytes is not None else self.live_peak_bytes


class ProbeResult(BaseModel):
    """One probe of the max-micro-batch finder: a step sequence reaching the run's peak at one size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    micro_batch: PositiveInt
    fits: bool
    peak_bytes: NonNegativeInt | None
    """Measured device bytes (NVML used on CUDA, live tensor bytes on CPU); None after an OOM."""
    outcome: Literal["fits", "out of memory", "over the card's memory"]
    seconds: NonNegativeFloat


class MaxBatchSearch(BaseModel):
    """What the finder answered, from which prediction, with how many probes and how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_micro_batch: NonNegativeInt
    """0 when not even micro-batch 1 fits."""
    predicted: NonNegativeInt
    """The estimator's max micro-batch the search started from."""
    probes: list[ProbeResult]
    seconds: NonNegativeFloat

    @property
    def probe_count(self) -> int:
        return len(self.probes)


class MachineLoad(BaseModel):
    """How busy the host was: a step measured on a shared machine holds only under the same load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_count: PositiveInt
    """CPUs this process may run on (its affinity mask)."""
    load_average: NonNegativeFloat
    """The 1-minute load average (runnable processes, ours included)."""
    free_cores: NonNegativeFloat = 0.0
    """CPUs not taken by the runnable processes the load average counts (derived, kept for readers)."""

    @model_validator(mode="before")
    @classmethod
    def _derive_free_cores(cls, data: Any) -> Any:
        if isinstance(data, dict) and "free_cores" not in data:
            free = max(0.0, float(data.get("cpu_count", 0)) - float(data.get("load_average", 0)))
            data = {**data, "free_cores": round(free, 2)}
        return data


class HostProfile(BaseModel):
    """This machine's speeds for the host-side work of a trial, measured once and cached.

    Each figure is measured with the code a trial runs (``transformers.Trainer``, its collator,
    ``torch`` itself) on a stand-in small enough that its own compute is negligible; the Trainer
    and collator figures are None when only the cheap parts were measured (plans for a GPU card).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    created: str
    versions: dict[str, str]
    machine_load: MachineLoad
    dispatch_seconds: PositiveFloat
    """One small eager torch op, dispatch to return."""
    memory_bytes_per_second: PositiveFloat
    """Host memory copy throughput (a large tensor's ``copy_``)."""
    init_bytes_per_second: PositiveFloat
    """Random weight initialisation (``normal_`` on fp32), what building a model from its config costs."""
    disk_write_bytes_per_second: PositiveFloat
    """Writing a file and ``fsync``-ing it in the profile directory (checkpoints go to local disk)."""
    storage_read_bytes_per_second: PositiveFloat
    """Reading a file back after asking the kernel to drop it from the page cache."""
    collate_fixed_seconds: NonNegativeFloat | None = None
    collate_row_seconds: NonNegativeFloat | None = None
    collate_token_seconds: NonNegativeFloat | None = None
    """``DataCollatorForLanguageModeling`` per micro-batch: fixed + per row + per padded token."""
    trainer_setup_seconds: NonNegativeFloat | None = None
    """``Trainer(...)`` plus ``train()``'s set-up before its first step and teardown after its last."""
    trainer_step_seconds: NonNegativeFloat | None = None
    """Per optimizer step: logging (every step, as the executor sets it), callbacks, scheduler,
    gradient clipping and the optimizer call of a one-tensor model."""
    trainer_micro_step_seconds: NonNegativeFloat | None = None
    """Per further micro-batch under accumulation: the dataloader, loss accumulation."""
    eval_fixed_seconds: NonNegativeFloat | None = None
    eval_batch_seconds: NonNegativeFloat | None = None
    """``Trainer.evaluate``: per pass (loader, metrics, callbacks) and per batch (loop, gathering)."""
    save_fixed_seconds: NonNegativeFloat | None = None
    """A checkpoint of a one-tensor model: the files Trainer writes whatever the model's size."""
    repeat_spread_low: PositiveFloat | None = None
    repeat_spread_high: PositiveFloat | None = None
    """p10 and p90 over the median of the timed Trainer steps: how much the same host-side work
    varied from one repeat to the next while measured (the host parts' 80% interval)."""
    study_open_seconds: NonNegativeFloat | None = None
    """Opening a new SQLite study (Optuna's tables created): what ``planner run`` does first."""
    study_trial_seconds: NonNegativeFloat | None = None
    """The study's commits for one trial (enqueued, claimed, started, reported, recorded), outside
    the trial's own clock."""
    seconds: NonNegativeFloat
    """What measuring all this cost (less importing what a run imports anyway: Trainer, the
    study's storage)."""

    @property
    def has_trainer(self) -> bool:
        return self.trainer_step_seconds is not None


class MeasuredProfile(BaseModel):
    """One config measured on one device: a measurement per micro-batch, plus what was found."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: ProfileKey
    device: Literal["cuda", "cpu"]
    device_name: str
    versions: dict[str, str]
    """torch, transformers, peft, bitsandbytes versions the profile was taken with."""
    measurements: list[StepMeasurement]
    max_micro_batch: int | None = None
    """Largest micro-batch verified on the device (None when the finder was not run)."""
    context_bytes: NonNegativeInt | None = None
    """CUDA only: NVML used minus reserved, the process's context and libraries."""
    created: str
    """ISO timestamp."""
    gradient_accumulation: PositiveInt = 1
    """Accumulation the memory was measured with (2 or more keeps a micro-batch's gradients alive)."""
    out_of_memory: list[PositiveInt] = []
    """Micro-batches asked for that ran out of memory (no measurement for them)."""
    search: MaxBatchSearch | None = None
    """The finder's probes when it ran; ``max_micro_batch`` is its answer."""
    seconds: NonNegativeFloat | None = None
    """Wall-clock of the whole profile (model build, estimator, steps, probes): its cost."""
    machine_load: MachineLoad | None = None
    """The host's load while measuring (None in profiles written before it was recorded)."""

    def measurement(self, micro_batch: int) -> StepMeasurement | None:
        return next((m for m in self.measurements if m.micro_batch == micro_batch), None)

    def _linear(self, field: str, micro_batch: float) -> float:
        """``field`` at ``micro_batch``: measured if present, else a line through the measurements.

        ``micro_batch`` may be fractional: rows shorter than seq_len count as a fraction of a row.

        Step time is affine in micro-batch once the GPU is busy (fixed launch cost plus per-sample
        work), so two measurements are enough to interpolate; one scales proportionally.
        """
        points = sorted((float(m.micro_batch), float(getattr(m, field))) for m in self.measurements)
        exact = dict(points)
        if micro_batch in exact:
            return exact[micro_batch]
        if len(points) == 1:
            ((m0, v0),) = points
            return v0 * micro_batch / m0
        below = [p for p in points if p[0] < micro_batch]
        above = [p for p in points if p[0] > micro_batch]
        if below and above:
            (m0, v0), (m1, v1) = below[-1], above[0]
        elif below:
            (m0, v0), (m1, v1) = points[-2], points[-1]
        else:
            (m0, v0), (m1, v1) = points[0], points[1]
        slope = (v1 - v0) / (m1 - m0)
        return max(v0 + slope * (micro_batch - m0), 1e-9)

    def forward_backward_seconds(self, micro_batch: float) -> float:
        return self._linear("forward_backward_seconds", micro_batch)

    def eval_forward_seconds(self, micro_batch: float) -> float:
        return self._linear("eval_forward_seconds", micro_batch)

    @property
    def optimizer_seconds(self) -> float:
        """The optimizer step does not depend on the micro-batch: the median over measurements."""
        values = sorted(m.optimizer_seconds for m in self.measurements)
        return values[len(values) // 2]


class MeasuredRow(BaseModel):
    """A measured micro-batch next to the estimator's prediction for it (shown by ``planner fit``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    micro_batch: PositiveInt
    predicted_peak_bytes: NonNegativeInt
    measured_peak_bytes: NonNegativeInt | None
    """NVML used on CUDA, live tensor bytes on CPU: what ``predicted_peak_bytes`` predicts."""
    error: float | None
    """(predicted - measured) / measured; positive when the estimate is conservative."""
    forward_backward_seconds: PositiveFloat
    tokens_per_second: PositiveFloat
