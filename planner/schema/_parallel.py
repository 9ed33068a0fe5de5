"""How a training step is spread over GPUs: the data-parallel strategy, its sharding and offload."""

from __future__ import annotations

from enum import Enum

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PositiveInt, model_validator


class Strategy(str, Enum):
    """The data-parallel engines people train with, by what each rank keeps whole.

    - ``ddp``: torch ``DistributedDataParallel``: everything replicated, gradients all-reduced in
      buckets.
    - ``fsdp``: FSDP2 ``fully_shard`` as accelerate applies it (one unit per decoder layer, the
      input embedding, the tail of final norm and output head, the root): weights, gradients and
      optimizer state sharded over every rank.
    - ``fsdp-hybrid``: FSDP2 over a 2-D mesh, sharded within a node and replicated across nodes
      (``HYBRID_SHARD``).
    - ``zero1``/``zero2``/``zero3``: DeepSpeed ZeRO stages: optimizer state; plus gradients; plus
      weights partitioned.
    """

    DDP = "ddp"
    FSDP = "fsdp"
    FSDP_HYBRID = "fsdp-hybrid"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"

    @property
    def is_fsdp(self) -> bool:
        return self in (Strategy.FSDP, Strategy.FSDP_HYBRID)

    @property
    def is_zero(self) -> bool:
        return self in (Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3)


class Offload(str, Enum):
    """What lives in host RAM instead of the GPU: nothing; the optimizer state (ZeRO-Offload,
    FSDP's ``CPUOffloadPolicy`` moves it with the parameters); or the parameters too."""

    NONE = "none"
    OPTIMIZER = "optimizer"
    PARAMS = "params"


class Parallelism(BaseModel):
    """GPUs a step runs on and how it is spread over them. The default is one GPU, no engine:
    every single-GPU answer is what it was before strategies existed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus_per_node: PositiveInt = Field(1, validation_alias=AliasChoices("gpus_per_node", "gpus"))
    """Ranks on each node (``gpus`` in a spec reads the same)."""
    nodes: PositiveInt = 1
    strategy: Strategy = Strategy.DDP
    offload: Offload = Offload.NONE

    @model_validator(mode="after")
    def _offload_needs_a_sharding_engine(self) -> Parallelism:
        if self.offload is not Offload.NONE and self.strategy is Strategy.DDP:
            raise ValueError("offload needs a sharding strategy (fsdp, zero1-3), not ddp")
        if self.offload is Offload.PARAMS and self.strategy in (Strategy.ZERO1, Strategy.ZERO2):
            raise ValueError("offload params needs zero3 or fsdp (ZeRO stages 1-2 keep the weights whole)")
        if self.strategy is Strategy.FSDP_HYBRID and self.nodes < 2:
            raise ValueError("fsdp-hybrid replicates across nodes: give nodes >= 2, or use fsdp")
        return self

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def single_gpu(self) -> bool:
        """One GPU with no engine around the step (the default): the plain single-device trace."""
        return self == Parallelism()

    @property
    def shard_size(self) -> int:
        """Ranks each sharded tensor is split over (1 where nothing is sharded)."""
        if self.strategy is Strategy.DDP:
            return 1
        if self.strategy is Strategy.FSDP_HYBRID:
            return self.gpus_per_node
        return self.world_size

    def describe(self) -> str:
        """E.g. "FSDP over 4 x rtx-4090" (without the card: "FSDP over 4 GPUs")."""
        gpus = (
            f"{self.gpus_per_node} GPUs" if self.nodes == 1 else f"{self.nodes} x {self.gpus_per_node} GPUs"
        )
        offload = "" if self.offload is Offload.NONE else f", {self.offload.value} offloaded to the host"
        return f"{self.strategy.value.upper()} over {gpus}{offload}"


class RankFit(BaseModel):
    """One row of the "how many cards" answer: a job of ``gpus`` ranks, seen from one rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: PositiveInt
    """Ranks in the job (GPUs per node x nodes)."""
    strategy: str
    """The engine ("single GPU" for one)."""
    max_micro_batch: int
    """Per rank; 0 when not even 1 fits."""
    peak_bytes: int
    """Predicted device bytes per rank (NVML used) at the max micro-batch (at 1 when nothing fits)."""
    resident_bytes: int
    """Tensor bytes each rank keeps between steps (its shard of weights and optimizer state)."""
    tokens_per_step: int
    """Tokens the whole job trains on per micro-batch step at the max micro-batch."""
    step_seconds: float | None = None
    """One optimizer step at the max micro-batch (at 1 when nothing fits): roofline compute plus
    the communication the strategy does not hide; None where the card has no datasheet figures."""
    communication_seconds: float | None = None
    """All the step's collectives at the interconnect's bandwidth, hidden or not."""
    exposed_communication_seconds: float | None = None
    tokens_per_second_per_gpu: float | None = None
