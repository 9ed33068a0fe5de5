"""Seconds of one op on a card, by kind: matmuls from their shape, attention from its lengths,
everything else at bandwidth, and the floor each kernel launch costs.

Every rule below states its source. None is set from the published throughput rows
(``benchmarks/data/published_throughput.yaml``), which are the test set of this model.

- **GEMM**: the output is computed in CTA tiles, each loading its A panel (tm x k) and B panel
  (k x tn) through L2 and doing tm*tn*k multiply-adds (NVIDIA's "Matrix Multiplication Background
  User's Guide", Deep Learning Performance docs, sections "GPU Implementation" and "Typical Tile
  Dimensions in cuBLAS and Performance": larger tiles reuse each loaded element more and so need
  less bandwidth). A tiling (tm, tn) thus loads about m*n*k*(1/tm + 1/tn) elements. A partial tile
  costs a whole one (*tile quantisation*) and tiles run in waves of one per SM, a partial last wave
  costing a whole one (*wave quantisation*), both from the guide's sections of those names. Each
  SM's tile takes the slower of its multiply-adds at the card's per-SM share of its achievable
  matmul rate (measured "maximum achievable matmul FLOPS", MAMF, per card and input width:
  tensor-core half precision and plain fp32 reach different fractions of their datasheet peaks) and
  its panel loads at its per-SM share of the card's measured L2 bandwidth (``Card.l2_bandwidth_gbs``,
  published microbenchmarks; each card's file cites its own). The GEMM's time is its best candidate
  tile's, and the whole op stays bounded below by its DRAM bytes (``DeviceModel.device_seconds``).
  Candidate tiles: for half-precision (tensor-core) GEMMs the guide's cuBLAS list; for fp32, which
  runs on the CUDA cores without TF32, CUTLASS's SIMT SGEMM tiles, which add 128x32 and 32x128
  (see ``FP32_GEMM_TILES``). A GEMM with too few output tiles to fill the card may instead split
  its K dimension (CUTLASS's "Efficient GEMM in CUDA", section "Parallelized Reductions: Split K -
  reduction across threadblocks": for small M x N and large K, "there are too few threadblocks to
  efficiently occupy the entire GPU", so the K dimension is partitioned, each partition launched as
  its own set of threadblocks, and a second, batched-reduction kernel sums the partitions' outputs
  from a workspace). A split into p partitions is a candidate when its tiles still fit one wave
  (more partitions add reduction work, no parallelism); it costs the partitions' tiles as above,
  each over ceil(k / p), plus the reduction: the p fp32 partial outputs written and read back at
  bandwidth, and one more kernel launch. Other shape-specific kernels are not modelled.
- **Fused attention** (SDPA flash / memory-efficient kernels): the FlashAttention-2 paper (Dao,
  2023, arXiv:2307.08691) reports 50-73% of the A100's dense peak, rising with sequence length
  (its benchmarks run 512 to 16k tokens); the FlashAttention-3 paper (Shah et al., 2024,
  arXiv:2407.08608) reports FlashAttention-2 at 35% of the H100's peak; the FlashAttention-2
  paper reports FlashAttention-1 (the algorithm of PyTorch's memory-efficient kernel) at 25-40%.
- **Memory-bound ops** (element-wise, norms, casts, the optimizer's update, 4-bit dequantisation):
  bytes moved at a fraction of the datasheet bandwidth; stream-style copy/triad microbenchmarks
  (BabelStream, NVIDIA's nvbandwidth) reach 80-92% on A100/H100, ordinary strided PyTorch kernels
  less, so 0.8 with 0.7-0.9 as its spread.
- **Launch floor**: no kernel takes less than ~3 us of GPU time including launch (NVIDIA
  developer blog "Getting Started with CUDA Graphs", 2019: a ~2.9 us kernel issued back to back
  costs ~3.8 us per kernel with stream launches).
- **CPU dispatch** (eager PyTorch): kernels are launched asynchronously (CUDA programming guide,
  "Asynchronous Concurrent Execution"), so the GPU idles only when the CPU falls behind. PyTorch's
  operator microbenchmarks show ~3.3 us per bare eager op (pytorch PR #32194's timings); autograd
  recording and the Hugging Face modules' Python between ops add to that, hence 10 us per traced op
  with 5-20 us as its spread. Compiled code launches its kernels from generated wrapper code
  without the dispatcher: ~4 us per kernel, the CUDA-graphs blog's launch cost.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from planner.schema import Card
from planner.step import sdpa_backend
from planner.timing._counter import AttentionShape, GemmShape, OpCost


@dataclass(frozen=True)
class Achievable:
    """Measured best matmul rate of a card as fractions of its datasheet dense peaks: ``half`` of the
    fp16/bf16 tensor-core peak (the dtype :meth:`DeviceModel._peak` takes), ``fp32`` of the plain
    fp32 peak (PyTorch runs fp32 matmuls without TF32 by default). None: not measured."""

    half: float | None = None
    fp32: float | None = None


# Half: MAMF as a fraction of the dense bf16 datasheet peak, measured with mamf-finder.py (Stas
# Bekman, "Machine Learning Engineering", compute/accelerator/README.md, "Maximum Achievable Matmul
# FLOPS comparison table", CUDA 12.1-12.5): A100 SXM 267.9/312, H100 SXM 792.1/989. The H200 is the
# same GH100 die and power limit as the H100 SXM.
# Cards that table lacks, and every fp32 fraction, come from the crowd-sourced torch.mm table of
# github.com/zzc0721/torch-performance-test-data (test.py: the best of square 1024-10240 matmuls,
# 30 timed after 6 warm-up; database.md at commit 0785868, the V100 SXM2 from its issue #140), the
# median of a card's rows over its datasheet peak (same card and memory size only):
#   V100 SXM2 16GB (issue #140): fp32 14.51/15.7, fp16 97.36/125 -- a Volta fp32 matmul runs on the
#     CUDA cores (no TF32 before Ampere) and keeps a larger share of its (lower) peak than tensor
#     cores do of theirs;
#   RTX 4090 24GB: bf16 median(170.06, 173.31, 162.39, 163.09)/165.2 = 1.008, fp32
#     median(55.01, 54.77, 46.48, 54.67)/82.6 -- above 1: GeForce cards boost past the rated boost
#     clock the datasheet peak assumes; RTX 3090 24GB: bf16 median(76.34, 76.68, 76.58)/71, fp32
#     median(24.46, 24.84, 24.79)/35.6 (likewise);
#   L40S: bf16 269.15/362, fp32 46.88/91.6; RTX A6000: bf16 123.34/154.8, fp32 23.92/38.7;
#   T4: fp16 median(41.91, 42.71)/65, fp32 median(4.17, 4.43)/8.1;
#   A100 SXM4 80GB fp32 19.18/19.5; A100 40GB fp32 18.11/19.5; H100 80GB HBM3 fp32 52.11/67 (its
#     other row, 403.74, is above the fp32 peak: TF32, not an fp32 matmul); H200 fp32 51.34/67.
# Ada's fp32 peak counts both of its FP32 datapaths (Ada whitepaper), one shared with INT32, hence
# the low fp32 fractions there. Cards without a measurement take the lowest NVIDIA MAMF row
# (H100 SXM, 80%) with a wider spread.
ACHIEVABLE: dict[str, Achievable] = {
    "a100-80gb": Achievable(half=0.859, fp32=19.18 / 19.5),
    "a100-40gb": Achievable(half=0.859, fp32=18.11 / 19.5),
    "h100-sxm": Achievable(half=0.801, fp32=52.11 / 67.0),
    "h200-sxm": Achievable(half=0.801, fp32=51.34 / 67.0),
    "v100-sxm2-16gb": Achievable(half=97.36 / 125.0, fp32=14.51 / 15.7),
    "rtx-4090": Achievable(half=166.575 / 165.2, fp32=54.72 / 82.6),
    "rtx-3090": Achievable(half=76.58 / 71.0, fp32=24.79 / 35.6),
    "l40s": Achievable(half=269.15 / 362.0, fp32=46.88 / 91.6),
    "rtx-a6000": Achievable(half=123.34 / 154.8, fp32=23.92 / 38.7),
    "t4": Achievable(half=42.31 / 65.0, fp32=4.30 / 8.1),
}
DEFAULT_MAMF_FRACTION = 0.80
# Candidate CTA tiles (output rows x columns) of cuBLAS's tensor-core GEMMs: the Matrix
# Multiplication Background guide, "Typical Tile Dimensions in cuBLAS and Performance": 256x128 and
# 128x256 (most efficient), 128x128, 256x64 and 64x256, 128x64 and 64x128, 64x64 (least efficient).
HALF_GEMM_TILES = ((256, 128), (128, 256), (128, 128), (256, 64), (64, 256), (128, 64), (64, 128), (64, 64))
# fp32 GEMMs run on the CUDA cores (SIMT). CUTLASS's SIMT SGEMM kernels, which cuBLASLt ships as
# ``cutlass_80_simt_sgemm_*`` (NVIDIA/CUDALibrarySamples issue #309), are generated for 128x128,
# 128x64, 64x128, 64x64, 128x32 and 32x128 tiles (NVIDIA/cutlass python/cutlass_library/generator.py,
# GenerateSM50_Simt, commit 03447b6); cuBLAS's own fp32 kernels are named by the same tiles
# (``ampere_sgemm_128x32_nn``, ``ampere_sgemm_32x128_tn`` in PyTorch profiles).
FP32_GEMM_TILES = ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128))

# FlashAttention-2 on A100: 50% at 512 tokens, 73% at 16k; ``peak * L / (L + L_HALF)`` passes through
# both points (L_HALF = 236 tokens, peak 0.74).
ATTENTION_PEAK_FRACTION = 0.74
ATTENTION_HALF_LENGTH = 236.0
# FlashAttention-2 on Hopper reaches 35% rather than ~73% (FlashAttention-3 paper).
HOPPER_ATTENTION_SCALE = 0.35 / 0.73
# PyTorch's memory-efficient kernel is FlashAttention-1's algorithm: 25-40% vs FA2's 50-73%.
EFFICIENT_ATTENTION_SCALE = 0.40 / 0.73
# FlashAttention-2 processes queries in blocks of 128 rows, one thread block each (paper, sec. 3.2).
ATTENTION_QUERY_BLOCK = 128

BANDWIDTH_EFFICIENCY = 0.80
# Split-K's partial outputs are kept in the compute type (cuBLASLt's CUBLASLT_REDUCTION_SCHEME_
# COMPUTE_TYPE workspace; CUTLASS's partitionedK GEMM writes its C per partition): fp32 for the
# fp16/bf16 and fp32 GEMMs of training.
SPLIT_K_PARTIAL_BYTES = 4
KERNEL_FLOOR_SECONDS = 3e-6
OP_DISPATCH_SECONDS = 10e-6
COMPILED_LAUNCH_SECONDS = 4e-6


@dataclass(frozen=True)
class Spreads:
    """Multipliers on each term's *time*; 1.0 everywhere is the central estimate.

    The 80% interval of a step evaluates each term at its p10 and p90 (``TERM_SPREADS``).
    """

    gemm: float = 1.0
    attention: float = 1.0
    bandwidth: float = 1.0
    floor: float = 1.0
    dispatch: float = 1.0


# (p10, p90) multipliers on each term's time, from the ranges its sources give: MAMF varies
# ~±10% between cards of a kind and software versions (the table's caveats) and the tile model is
# coarse, so 0.9-1.2; FlashAttention's reported range is 50-73%, so 0.85-1.25 around the curve;
# bandwidth 70-90% around 80%; the launch floor 2-5 us around 3; dispatch 5-20 us around 10.
# A paged optimizer's host traffic, where its state does not fit, is one more term with its own
# spread (``planner.timing._paging.HOST_LINK_SPREAD``), joined to the step's interval there.
TERM_SPREADS: dict[str, tuple[float, float]] = {
    "gemm": (0.9, 1.2),
    "attention": (0.85, 1.25),
    "bandwidth": (0.88, 1.14),
    "floor": (0.67, 1.67),
    "dispatch": (0.5, 2.0),
}
# A card without a MAMF measurement, or whose L2 bandwidth is scaled from another card: wider, since
# its achievable fraction or the load bound of its smaller tiles is assumed.
UNMEASURED_GEMM_SPREAD = (0.85, 1.35)


def achievable_fraction(card: Card, half: bool = True) -> float:
    """The measured fraction of ``card``'s dense peak its best matmuls reach, for half-precision
    (tensor-core) or fp32 inputs; the default where the card was not measured."""
    measured = ACHIEVABLE.get(card.name, Achievable())
    fraction = measured.half if half else measured.fp32
    return DEFAULT_MAMF_FRACTION if fraction is None else fraction


def term_spreads(card: Card) -> dict[str, tuple[float, float]]:
    """The per-term (p10, p90) time multipliers on ``card``."""
    if card.name in ACHIEVABLE and card.l2_bandwidth_measured:
        return dict(TERM_SPREADS)
    return {**TERM_SPREADS, "gemm": UNMEASURED_GEMM_SPREAD}


def l2_bytes_per_second(card: Card) -> float:
    """The card's L2 load bandwidth; without a published figure its DRAM bandwidth, a lower bound
    (every DRAM byte an SM reads passes through L2, and every measured card's L2 is 2-6x faster)."""
    gbs = card.l2_bandwidth_gbs or card.bandwidth_gbs
    if gbs is None:
        raise ValueError(f"{card.name} has neither an L2 nor a DRAM bandwidth to bound its GEMM loads")
    return gbs * 1e9


def gemm_seconds(card: Card, shape: GemmShape, half: bool, peak_flops: float) -> float:
    """Seconds of a matmul of ``shape`` on ``card`` (dense peak ``peak_flops`` for its input width),
    at the best candidate tile: whole tiles in whole waves (one tile per SM per wave), each taking
    the slower of its multiply-adds at the SM's share of the achievable rate and its A and B panel
    loads at the SM's share of the L2 bandwidth.

    A tiling too small to fill one wave may also split K (see the module's docstring), at the cost
    of its reduction. Without the card's SM count, only tile quantisation applies (the whole card's
    rates per tile), and no split. Integer tile and wave counts, per-tile costs non-decreasing in
    ``k`` and fewer splits allowed as the tiles grow make this non-decreasing in every dimension.
    """
    # Split-K's reduction moves the partitions' fp32 partial outputs through DRAM: without the
    # card's bandwidth (or its SM count, which says when a split fills the card) it is not a candidate.
    dram = card.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY if card.bandwidth_gbs and card.sm_count else None
    return _best_tiling(
        shape,
        half,
        peak_flops * achievable_fraction(card, half),
        l2_bytes_per_second(card),
        dram,
        card.sm_count,
    )


@functools.lru_cache(maxsize=65536)
def _best_tiling(
    shape: GemmShape, half: bool, rate: float, l2: float, dram: float | None, sm_count: int | None
) -> float:
    """:func:`gemm_seconds` on plain numbers (a step repeats its layers' few GEMM shapes: cached)."""
    width = 2 if half else 4
    best = math.inf
    for tm, tn in HALF_GEMM_TILES if half else FP32_GEMM_TILES:
        tiles = shape.batch * math.ceil(shape.m / tm) * math.ceil(shape.n / tn)
        splits = min(max(1, sm_count // tiles), shape.k) if sm_count and dram else 1
        for parts in range(1, splits + 1):
            blocks = tiles * parts
            slots = math.ceil(blocks / sm_count) * sm_count if sm_count else blocks
            depth = math.ceil(shape.k / parts)
            multiply = 2 * depth * tm * tn * slots / rate
            load = depth * (tm + tn) * width * slots / l2
            reduction = 0.0
            if parts > 1:
                assert dram is not None
                partials = parts * shape.batch * shape.m * shape.n * SPLIT_K_PARTIAL_BYTES
                reduction = 2 * partials / dram + KERNEL_FLOOR_SECONDS
            best = min(best, max(multiply, load) + reduction)
    return best


def dense_peak_flops(card: Card, half: bool) -> float | None:
    """The card's datasheet dense FLOP/s for half-precision (bf16, else fp16) or fp32 inputs."""
    tflops = (card.tflops.bf16 or card.tflops.fp16) if half else card.tflops.fp32
    return None if tflops is None else tflops * 1e12


def gemm_efficiency(card: Card, shape: GemmShape, half: bool = True) -> float:
    """Fraction of the dense peak a matmul of ``shape`` reaches on ``card`` (never above the card's
    measured achievable fraction for that input width)."""
    peak = dense_peak_flops(card, half)
    if peak is None:
        raise ValueError(f"{card.name} has no datasheet peak for {'half' if half else 'fp32'} matmuls")
    useful = 2 * shape.batch * shape.m * shape.n * shape.k
    # useful <= issued exactly; the float quotient can put a whole-tile shape a hair above the fraction.
    efficiency = useful / (gemm_seconds(card, shape, half, peak) * peak)
    return min(achievable_fraction(card, half), efficiency)


def attention_efficiency(card: Card, shape: AttentionShape, half: bool) -> float:
    """Fraction of the dense peak SDPA's fused kernel reaches for ``shape`` on ``card``."""
    fraction = ATTENTION_PEAK_FRACTION * shape.kv_len / (shape.kv_len + ATTENTION_HALF_LENGTH)
    if sdpa_backend(card, half, shape.head_dim) != "flash":
        fraction *= EFFICIENT_ATTENTION_SCALE
    elif card.compute_capability_tuple >= (9, 0):
        fraction *= HOPPER_ATTENTION_SCALE
    if card.sm_count:
        blocks = shape.batch_heads * math.ceil(shape.q_len / ATTENTION_QUERY_BLOCK)
        waves = math.ceil(blocks / card.sm_count)
        fraction *= blocks / (waves * card.sm_count)
    return fraction


@dataclass(frozen=True)
class DeviceModel:
    """Per-op seconds on one card, for the precision a config's matmuls default to."""

    card: Card
    default_peak_flops: float
    spreads: Spreads = Spreads()

    def with_spreads(self, spreads: Spreads) -> DeviceModel:
        return replace(self, spreads=spreads)

    def _peak(self, half: bool) -> float:
        peak = dense_peak_flops(self.card, half)
        return self.default_peak_flops if peak is None else peak

    def _bandwidth_seconds(self, nbytes: float) -> float:
        assert self.card.bandwidth_gbs is not None
        rate = self.card.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
        return nbytes / rate * self.spreads.bandwidth

    def device_seconds(self, op: OpCost, kernels: int = 1) -> float:
        """GPU seconds of ``op``: the slower of its compute and its memory traffic, at least the
        launch floor of each of its ``kernels``."""
        memory = self._bandwidth_seconds(op.bytes)
        compute = 0.0
        if op.gemm is not None:
            compute = gemm_seconds(self.card, op.gemm, op.half, self._peak(op.half)) * self.spreads.gemm
        elif op.attention is not None and op.flops:
            rate = self._peak(op.half) * attention_efficiency(self.card, op.attention, op.half)
            compute = op.flops / rate * self.spreads.attention
        return max(compute, memory, kernels * KERNEL_FLOOR_SECONDS * self.spreads.floor)


@dataclass(frozen=True)
class Kernel:
    """What the GPU queue sees: one op's device seconds and the CPU seconds spent issuing it."""

    device: float
    cpu: float


def queue_seconds(kernels: list[Kernel]) -> float:
    """Wall seconds of kernels issued in order by one CPU thread to one stream.

    Launches are asynchronous: a kernel starts when the CPU has issued it and the previous kernel
    has finished, so the step is GPU-bound when kernels are long and CPU-bound when they are short.
    """
    cpu = gpu = 0.0
    for kernel in kernels:
        cpu += kernel.cpu
        gpu = max(gpu, cpu) + kernel.device
    return max(cpu, gpu)


def eager_kernels(ops: list[OpCost], device: DeviceModel) -> list[Kernel]:
    """Eager PyTorch: every traced op is dispatched from Python and runs as its own kernel."""
    dispatch = OP_DISPATCH_SECONDS * device.spreads.dispatch
    return [Kernel(device.device_seconds(op), dispatch) for op in ops]
