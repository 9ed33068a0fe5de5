"""A GPU card: datasheet figures plus what the driver reports as usable memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

if TYPE_CHECKING:
    from planner.schema._training import Precision

MIB = 1024**2
GIB = 1024**3


class Throughput(BaseModel):
    """Dense peak TFLOP/s per dtype (no sparsity; tensor cores with fp32 accumulate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bf16: PositiveFloat | None
    fp16: PositiveFloat | None
    fp32: PositiveFloat | None


# PCI Express signalling rate per lane and direction by generation (PCI-SIG base specifications:
# 3.0 runs 8 GT/s, 4.0 16 GT/s, 5.0 32 GT/s, all with 128b/130b encoding), so a lane carries
# GT/s x 128/130 / 8 bits = 0.985, 1.969, 3.938 GB/s each way: 15.75, 31.5, 63.0 GB/s at x16.
PCIE_GIGATRANSFERS = {3: 8.0, 4: 16.0, 5: 32.0}
PCIE_ENCODING = 128 / 130


class HostLink(BaseModel):
    """The PCI Express link between the card and its host's memory (what managed-memory pages
    cross when the driver migrates them), from the card's datasheet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pcie_generation: Literal[3, 4, 5]
    lanes: Literal[1, 2, 4, 8, 16]
    source: str

    @property
    def raw_gbs(self) -> float:
        """The link's raw rate in one direction (GB/s): lanes x signalling rate x encoding."""
        return self.lanes * PCIE_GIGATRANSFERS[self.pcie_generation] * PCIE_ENCODING / 8

    def describe(self) -> str:
        return f"PCIe {self.pcie_generation}.0 x{self.lanes}"


class Card(BaseModel):
    """One GPU model, from ``profiles/cards/*.yaml`` or read from the local GPU through NVML.

    ``memory_total_mib`` is the total the driver reports (smaller than the datasheet's GB).
    ``free_bytes`` is set only for the local card: memory other processes hold is not ours.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["gpu", "cpu"] = "gpu"
    """``cpu`` only for the host pseudo-card (see :mod:`planner.cards`)."""
    display_name: str
    aliases: list[str] = []
    vram_gb: PositiveFloat
    memory_total_mib: PositiveInt
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    tflops: Throughput
    bandwidth_gbs: PositiveFloat | None
    sm_count: PositiveInt | None = None
    """Streaming multiprocessors: how many GEMM tiles run at once (wave quantisation); None if unknown."""
    source: str
    free_bytes: int | None = None
    interconnect: str | None = None
    """How the card talks to its peers in one server (e.g. "PCIe 4.0 x16", "NVLink 4 (NVSwitch)")."""
    interconnect_gbs: PositiveFloat | None = None
    """Per-direction bandwidth of that link (GB/s), what a ring collective runs at."""
    interconnect_source: str | None = None
    l2_bandwidth_gbs: PositiveFloat | None = None
    """Load bandwidth of the L2 cache to all SMs together (GB/s), from a published microbenchmark:
    what bounds a GEMM whose tiles reload their input panels faster than the SMs can multiply them.
    None: unknown (the GEMM model then bounds loads by the DRAM bandwidth)."""
    l2_bandwidth_measured: bool = False
    """The figure was measured on this die with this SM count; False: scaled from a measured card
    of the same architecture by SM count (the GEMM term then takes a wider spread)."""
    l2_bandwidth_source: str | None = None
    host_link: HostLink | None = None
    """The card's link to host memory; None where its data names none (paging then goes untimed)."""

    @property
    def memory_total_bytes(self) -> int:
        return self.memory_total_mib * MIB

    @property
    def available_bytes(self) -> int:
        """Memory a new training process can take: free memory on the local card, else the total."""
        return self.free_bytes if self.free_bytes is not None else self.memory_total_bytes

    @property
    def compute_capability_tuple(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def supports_bf16(self) -> bool:
        # bf16 tensor cores arrived with Ampere (sm80); Turing (T4, sm75) has none. CPUs run bf16
        # autocast in software.
        if self.kind == "cpu":
            return True
        return self.compute_capability_tuple >= (8, 0)

    def dense_tflops(self, precision: Precision) -> float | None:
        """Datasheet dense TFLOP/s of the dtype ``precision``'s matmuls run in (None if unknown).

        Mixed precision runs its matmuls in the half dtype; fp32 in fp32 (TF32 off, PyTorch's
        default for matmuls); pure bf16 in bf16.
        """
        from planner.schema._training import Precision

        if precision is Precision.FP32:
            return self.tflops.fp32
        return self.tflops.fp16 if precision is Precision.FP16 else self.tflops.bf16
