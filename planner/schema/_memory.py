"""Memory estimates: the peak of one training step, broken down by what holds the bytes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, NonNegativeInt

from planner.schema._profile import MeasuredRow
from planner.schema._training import TrainingConfig


class MemoryBreakdown(BaseModel):
    """Bytes held at the moment of peak, by owner. Sums to ``MemoryEstimate.peak_bytes``.

    ``activations`` are tensors autograd saved for backward; ``temporaries`` everything else live
    at the peak that is not weights/gradients/optimizer state (logits and their fp32 copy, loss
    gradients, matmul outputs in flight). ``cuda_context`` and ``allocator_overhead`` exist only
    on CUDA: the driver context plus cuBLAS workspace, and the caching allocator's reserved but
    unallocated bytes (fragmentation). ``paged_on_device`` is the part of a paged optimizer's
    state (CUDA managed memory, outside the allocator) resident on the device at the peak; that
    state is not in ``optimizer_state``. ``collective_buffers`` is NCCL's device memory on a rank of a
    multi-GPU job (its ring and NVLS buffers, allocated by NCCL outside the caching allocator).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: NonNegativeInt
    gradients: NonNegativeInt
    optimizer_state: NonNegativeInt
    activations: NonNegativeInt
    temporaries: NonNegativeInt
    cuda_context: NonNegativeInt = 0
    allocator_overhead: NonNegativeInt = 0
    paged_on_device: NonNegativeInt = 0
    collective_buffers: NonNegativeInt = 0

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.temporaries
            + self.cuda_context
            + self.allocator_overhead
            + self.paged_on_device
            + self.collective_buffers
        )


class MemoryEstimate(BaseModel):
    """Predicted peak memory of one steady-state training step of ``config`` on ``card``.

    ``peak_allocated_bytes`` predicts ``torch.cuda.max_memory_allocated``; ``peak_reserved_bytes``
    predicts ``torch.cuda.max_memory_reserved``; ``peak_bytes`` (what decides fit) predicts the NVML
    "used" figure of the process: reserved plus CUDA context, plus NCCL's buffers on a rank of a
    multi-GPU job, plus the paged optimizer state (``paged_bytes``) as far as the device has room.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: TrainingConfig
    card: str
    micro_batch: int
    peak_allocated_bytes: NonNegativeInt
    peak_reserved_bytes: NonNegativeInt
    peak_bytes: NonNegativeInt
    available_bytes: NonNegativeInt
    breakdown: MemoryBreakdown
    includes: list[str]
    expected_error: str
    traced: bool
    """True when this micro-batch was traced at full depth; False when it is the linear fit."""
    segments: NonNegativeInt | None = None
    """CUDA, traced: segments the caching allocator holds at the reserved peak (by replay)."""
    collective_buffers_basis: str | None = None
    """Multi-GPU: how NCCL's buffers (``breakdown.collective_buffers``) were sized."""
    paged_bytes: NonNegativeInt = 0
    """CUDA: optimizer state in managed (paged) memory, outside the caching allocator (bitsandbytes'
    paged optimizers). Not in allocated or reserved and never the cause of an OOM: it stays on the
    device while there is room and the driver pages the rest to host RAM, at a speed cost."""

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.available_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.available_bytes - self.peak_bytes


class Fix(BaseModel):
    """A change to the config that makes it fit, with the largest micro-batch it then allows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    change: str
    config: TrainingConfig
    max_micro_batch: int


class ModelledStack(BaseModel):
    """The software a memory answer modelled, and the choices it makes for the step.

    What Trainer runs depends on the installed versions (e.g. its default ``optim``, and whether
    torch's AdamW runs fused, foreach or a per-parameter loop on the device), so an answer names them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    torch: str
    transformers: str
    peft: str | None = None
    bitsandbytes: str | None = None
    trainer_optim: str
    """``TrainingArguments.optim`` of the modelled optimizer."""
    optimizer_implementation: str
    """How its step runs on the device: fused, foreach, for-loop, or bitsandbytes' kernel."""
    attention: str
    """The SDPA kernel traced: flash, efficient or math on CUDA; the CPU's on the host."""
    batch: str
    """What one traced micro-batch holds."""


class FitReport(BaseModel):
    """The answer of ``planner fit``: per-micro-batch estimates, the max micro-batch, fixes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: TrainingConfig
    card: str
    rows: list[MemoryEstimate]
    max_micro_batch: int
    """0 when not even micro-batch 1 fits."""
    at_max: MemoryEstimate
    """The estimate at the max micro-batch (at micro-batch 1 when nothing fits)."""
    fixes: list[Fix]
    calibration: str
    """Where the CUDA overhead figures came from: a measured profile of this card, or defaults."""
    measured: list[MeasuredRow] = []
    """Micro-batches ``planner profile`` measured for this config on this card, next to the prediction."""
    profile: str | None = None
    """The measured profile those figures come from (a file path)."""
    stack: ModelledStack | None = None
    """The versions and choices modelled (None only in reports older than this field)."""
    oom_limit: int | None = None
    """Set when a real run of this config on this card ran out of memory above this micro-batch
    (``oom.jsonl`` beside the measured profiles): the max micro-batch is capped at it."""
