"""NCCL's device memory on one rank: the collectives' buffers, outside PyTorch's caching allocator.

NCCL allocates its connection buffers itself (``cuMem*``/``cudaMalloc``), so they show in NVML's
used memory but never in ``torch.cuda.memory_reserved``. Each rule below names the NCCL source line
it follows (github.com/NVIDIA/nccl, ``src/``); the environment variables NCCL reads override them.

Per channel, a ring gives every rank one receive connection (from its predecessor) and one send
connection (to its successor). Over NVLink or PCIe peer-to-peer (``transport/p2p.cc``):

- the receiver allocates ``sizeof(ncclRecvMem)`` plus a buffer per protocol, LL, LL128 and Simple
  (``p2pRecvSetup``: ``recvSize += comm->buffSizes[p]``), except the Simple buffer under P2P read,
  which the sender allocates after ``sizeof(ncclSendMem)`` (``p2pSendSetup``);
- each allocation is rounded up to ``CUDA_IPC_MIN``, 2 MiB (``ALIGN_SIZE(recvSize, CUDA_IPC_MIN)``;
  ``include/comm.h``), and both headers are ``MEM_ALIGN`` = 4096 bytes (``include/comm.h``).

With the default sizes either layout takes 12 MiB a channel (10 + 2 MiB written, 6 + 6 MiB read).

Channels come from NCCL's topology search for rings (``graph/search.cc``) on a node whose GPUs all
reach each other over one kind of link (NVSwitch, or PCIe through one switch): the search tries
NCCL's per-architecture speeds from the fastest the GPU's bandwidth carries, keeps the speed whose
channels carry the most bandwidth (a slower one only while it is above 0.49 of the kept one, and
only if strictly better), doubles the channels when the speed is at least 25 GB/s
(``ncclTopoDupChannels``), and ``connectRings`` doubles them again (``graph/connect.cc``, "Duplication
should be complete now"), up to ``MAXCHANNELS``; NCCL_MAX_NCHANNELS and NCCL_MIN_NCHANNELS clamp the
result as ``ncclMaxNchannels``/``ncclMinNchannels`` do. The bandwidth is NCCL's own model of the link
(``graph/topo.h``: per NVLink link ``SM80_NVLINK_BW`` 20.0, ``SM90_NVLINK_BW`` 20.6,
``SM100_NVLINK_BW`` 40.1 GB/s; PCIe ``width * speed / 80`` with speed from ``kvDictPciGen``,
``graph/topo.cc``), not the datasheet's.

On NVSwitch nodes of compute capability 9.0 and newer NCCL also sets up NVLink SHARP (NVLS,
``transport/nvls.cc``, on by default: NCCL_NVLS_ENABLE=2 enables it where the device supports
multicast): ``ncclNvlsBufferSetup`` maps ``nvlsChannels x 2 x (NCCL_NVLS_CHUNKSIZE x NCCL_STEPS) x
nHeads`` bytes of physical memory on every rank, with 16 NVLS channels on sm90 and 24 on a single
sm100 node (``NVLS_NCHANNELS_SM90``/``_SM100_NVL``), a 128 KiB chunk, and one head per GPU of the
node (the NVLS graph's channels, ``min(NCCL_MAX_NVLS_ARITY, GPUs)``).

Not counted: tree connections (NCCL connects at run time only what a collective uses,
NCCL_RUNTIME_CONNECT=1, and the single-node collectives of DDP, FSDP and ZeRO run on rings, or on
NVLS where it is set up), the network transport's buffers of a multi-node job, and per-communicator
structures of a few KiB. Cards whose driver refuses peer-to-peer (the RTX 4090, per NVIDIA/nccl#1127)
are counted as peer-to-peer ones: NCCL's SHM transport there keeps its buffers in host shared memory
(``transport/shm.cc``, ``ncclShmOpen``), so their figure here is an overcount of a few tens of MiB.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from planner.schema import MIB, Card, Parallelism

logger = logging.getLogger(__name__)

NCCL_STEPS = 8
"""``include/device.h``: ``#define NCCL_STEPS 8`` (slots of each connection's FIFO)."""
MAXCHANNELS = 64
"""``include/device.h``: ``#define MAXCHANNELS 64``."""
SEARCH_MAX_CHANNELS = MAXCHANNELS // 2
"""``init.cc``: ``ringGraph->maxChannels = MAXCHANNELS / 2``."""
LL_BUFFSIZE = 8 * 512 * NCCL_STEPS * 16
"""``init.cc`` ``DEFAULT_LL_BUFFSIZE``: NCCL_LL_LINES_PER_THREAD (8) x NCCL_LL_MAX_NTHREADS (512) x
NCCL_STEPS x sizeof(union ncclLLFifoLine) (16) = 512 KiB."""
LL128_BUFFSIZE = 120 * 640 * NCCL_STEPS * 8
"""``init.cc`` ``DEFAULT_LL128_BUFFSIZE``: NCCL_LL128_ELEMS_PER_THREAD (120) x NCCL_LL128_MAX_NTHREADS
(640) x NCCL_STEPS x sizeof(uint64_t) = 4,915,200 bytes."""
SIMPLE_BUFFSIZE = 1 << 22
"""``init.cc`` ``DEFAULT_BUFFSIZE (1 << 22) /* 4MiB */``, NCCL_BUFFSIZE's default."""
MEM_ALIGN = 4096
"""``include/comm.h``: ncclSendMem and ncclRecvMem are unions padded to ``MEM_ALIGN`` (4096)."""
CUDA_IPC_MIN = 2 * MIB
"""``include/comm.h``: ``#define CUDA_IPC_MIN 2097152UL``, the rounding of every P2P buffer."""
DUP_MIN_SPEED = 25.0
"""``ncclTopoDupChannels``: ``if (graph->bwIntra < 25.0) return`` (no duplication below 25 GB/s)."""
KEEP_TRYING_RATIO = 0.49
"""``ncclTopoCompute``: a slower speed is tried while ``speedArray[i + 1] / graph->bwInter > .49``."""
# graph/search.cc: speedArrayIntra, sm90SpeedArrayIntra, sm100SpeedArrayIntra (GB/s per channel).
SPEEDS_INTRA = (40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0)
SPEEDS_INTRA_SM90 = (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0)
SPEEDS_INTRA_SM100 = (90.0, 80.0, 70.0, 60.0, 50.0, 45.0, 40.0, 30.0, 24.0, 20.0, 19.0, 18.0)
# graph/topo.h: NCCL's bandwidth of one NVLink link, by compute capability.
NVLINK_LINK_BW = {(7, 0): 20.0, (8, 0): 20.0, (8, 6): 12.0, (9, 0): 20.6, (10, 0): 40.1}
# Datasheet per-direction bandwidth of one NVLink link, to count a card's links from its total:
# 25 GB/s for NVLink 2, 3 and 4 (V100: 6 links, 150 GB/s; A100: 12, 300; H100: 18, 450), 50 GB/s
# for NVLink 5 (B200: 18 links, 900 GB/s).
NVLINK_DATASHEET_LINK_GBS = {2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}
# graph/topo.cc kvDictPciGen: per-lane speed in 100 Mbps units by PCIe generation; bw = width x speed / 80.
PCIE_LANE_SPEED = {1: 15, 2: 30, 3: 60, 4: 120, 5: 240, 6: 480}
NVLS_NCHANNELS_SM90 = 16
NVLS_NCHANNELS_SM100_NVL = 24
NVLS_CHUNKSIZE = 128 * 1024
"""``transport/nvls.cc``: ``NCCL_PARAM(NvlsChunkSize, "NVLS_CHUNKSIZE", 128 * 1024)``."""
NCCL_MAX_NVLS_ARITY = 32
"""``include/device.h``: ``#define NCCL_MAX_NVLS_ARITY 32`` (NVLS heads at most)."""
NVLS_ALIGN = 2 * MIB
"""``nvlsAllocateMem`` rounds the physical allocation to the recommended granularity (2 MiB)."""


@dataclass(frozen=True)
class NcclEnvironment:
    """The NCCL variables that change its buffers; None where unset (NCCL's default applies)."""

    buffsize: int | None = None
    ll_buffsize: int | None = None
    ll128_buffsize: int | None = None
    min_nchannels: int | None = None
    max_nchannels: int | None = None
    nvls_enable: int | None = None
    nvls_chunksize: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NcclEnvironment:
        """Read NCCL_BUFFSIZE, NCCL_LL_BUFFSIZE, NCCL_LL128_BUFFSIZE, NCCL_MIN_NCHANNELS (or the older
        NCCL_MIN_NRINGS), NCCL_MAX_NCHANNELS (NCCL_MAX_NRINGS), NCCL_NVLS_ENABLE, NCCL_NVLS_CHUNKSIZE."""
        env = os.environ if env is None else env

        def read(*names: str) -> int | None:
            # The newer name wins, as in ncclMinNchannels/ncclMaxNchannels (graph/connect.cc).
            value = None
            for name in names:
                raw = env.get(name, "").strip()
                if not raw:
                    continue
                try:
                    value = int(raw, 0)
                except ValueError:
                    logger.warning("ignoring %s=%r: not an integer (NCCL would ignore it too)", name, raw)
            return value

        return cls(
            buffsize=read("NCCL_BUFFSIZE"),
            ll_buffsize=read("NCCL_LL_BUFFSIZE"),
            ll128_buffsize=read("NCCL_LL128_BUFFSIZE"),
            min_nchannels=read("NCCL_MIN_NRINGS", "NCCL_MIN_NCHANNELS"),
            max_nchannels=read("NCCL_MAX_NRINGS", "NCCL_MAX_NCHANNELS"),
            nvls_enable=read("NCCL_NVLS_ENABLE"),
            nvls_chunksize=read("NCCL_NVLS_CHUNKSIZE"),
        )


@dataclass(frozen=True)
class NcclMemory:
    """NCCL's device bytes on one rank and how they were arrived at."""

    bytes: int
    ring_channels: int
    ring_bytes: int
    nvls_bytes: int
    basis: str


def _align(size: int, to: int) -> int:
    return -(-size // to) * to


def ring_channel_bytes(env: NcclEnvironment, *, p2p_read: bool) -> int:
    """Bytes one ring channel's receive and send connections take on a rank (``transport/p2p.cc``)."""
    ll = env.ll_buffsize if env.ll_buffsize is not None else LL_BUFFSIZE
    ll128 = env.ll128_buffsize if env.ll128_buffsize is not None else LL128_BUFFSIZE
    simple = env.buffsize if env.buffsize is not None else SIMPLE_BUFFSIZE
    receive = MEM_ALIGN + ll + ll128 + (0 if p2p_read else simple)
    send = MEM_ALIGN + (simple if p2p_read else 0)
    return _align(receive, CUDA_IPC_MIN) + _align(send, CUDA_IPC_MIN)


def _interconnect(card: Card) -> tuple[str, int] | None:
    """("nvswitch" | "pcie", version) from the card's interconnect, None when it names neither."""
    text = (card.interconnect or "").lower()
    words = text.replace("(", " ").replace(")", " ").split()
    if "nvlink" in words and "nvswitch" in words:
        version = next((int(float(w)) for w in words if w.replace(".", "").isdigit()), 0)
        return "nvswitch", version
    if "pcie" in words:
        version = next((int(float(w)) for w in words if w.replace(".", "").isdigit()), 0)
        return "pcie", version
    return None


def _pcie_width(card: Card) -> int:
    text = (card.interconnect or "").lower()
    digits = text.split("x")[-1].strip() if "x" in text else ""
    return int(digits) if digits.isdigit() else 16


def nccl_link_bandwidth(card: Card) -> tuple[float, str] | None:
    """NCCL's model of one GPU's bandwidth to its peers (GB/s), and the link; None if unknown."""
    link = _interconnect(card)
    if link is None:
        return None
    kind, version = link
    if kind == "nvswitch":
        per_link = NVLINK_LINK_BW.get(card.compute_capability_tuple)
        datasheet = NVLINK_DATASHEET_LINK_GBS.get(version)
        if per_link is None or datasheet is None or card.interconnect_gbs is None:
            return None
        links = round(card.interconnect_gbs / datasheet)
        return links * per_link, f"{links} NVLink links x {per_link} GB/s (NCCL's per-link figure)"
    speed = PCIE_LANE_SPEED.get(version)
    if speed is None:
        return None
    width = _pcie_width(card)
    return width * speed / 80.0, f"PCIe {version}.0 x{width}: {width} x {speed} / 80 GB/s (NCCL's model)"


def _speeds(compute_capability: tuple[int, int]) -> tuple[float, ...]:
    if compute_capability >= (10, 0):
        return SPEEDS_INTRA_SM100
    return SPEEDS_INTRA_SM90 if compute_capability >= (9, 0) else SPEEDS_INTRA


def searched_ring_channels(bandwidth: float, compute_capability: tuple[int, int]) -> int:
    """Ring channels of NCCL's search on a uniform node with ``bandwidth`` per GPU, after both
    duplications (see the module docstring), before the environment's clamps."""
    speeds = _speeds(compute_capability)
    index = next((i for i, speed in enumerate(speeds) if speed <= bandwidth), len(speeds) - 1)
    best_speed, best_channels = 0.0, 0
    while index < len(speeds):
        speed = speeds[index]
        channels = min(SEARCH_MAX_CHANNELS, math.floor(bandwidth / speed))
        if channels * speed > best_channels * best_speed:
            best_speed, best_channels = speed, channels
        if best_channels == SEARCH_MAX_CHANNELS:  # "PERFECT": the search stops
            break
        if index + 1 >= len(speeds) or speeds[index + 1] / best_speed <= KEEP_TRYING_RATIO:
            break
        index += 1
    channels = max(best_channels, 1)
    # ncclTopoDupChannels: not below 25 GB/s, nor on sm90+ below 50 GB/s with more than 4 channels.
    slow_many = compute_capability > (8, 0) and best_speed < 50.0 and channels > 4
    if best_speed >= DUP_MIN_SPEED and not slow_many:
        channels = min(channels * 2, SEARCH_MAX_CHANNELS)
    return min(MAXCHANNELS, channels * 2)


def clamp_channels(channels: int, env: NcclEnvironment) -> int:
    """``ncclMaxNchannels``/``ncclMinNchannels`` (``graph/connect.cc``) applied to ``channels``."""
    most = MAXCHANNELS if env.max_nchannels is None else max(1, min(env.max_nchannels, MAXCHANNELS))
    least = 0 if env.min_nchannels is None else max(0, min(env.min_nchannels, MAXCHANNELS))
    return max(min(most, channels), least)


def nvls_bytes(card: Card, gpus: int, env: NcclEnvironment) -> int:
    """NVLS buffers on one rank of a node of ``gpus`` NVSwitch-connected sm90+ GPUs; 0 otherwise."""
    link = _interconnect(card)
    if link is None or link[0] != "nvswitch" or card.compute_capability_tuple < (9, 0) or gpus < 2:
        return 0
    if env.nvls_enable == 0:
        return 0
    channels = NVLS_NCHANNELS_SM100_NVL if card.compute_capability_tuple >= (10, 0) else NVLS_NCHANNELS_SM90
    chunk = env.nvls_chunksize if env.nvls_chunksize is not None else NVLS_CHUNKSIZE
    heads = min(NCCL_MAX_NVLS_ARITY, gpus)
    return _align(channels * 2 * chunk * NCCL_STEPS * heads, NVLS_ALIGN)


def nccl_memory(parallelism: Parallelism, card: Card, env: NcclEnvironment | None = None) -> NcclMemory:
    """NCCL's device memory on one rank of ``parallelism``'s job on ``card`` (0 on one GPU)."""
    if parallelism.single_gpu or card.kind == "cpu":
        return NcclMemory(0, 0, 0, 0, "one GPU: no collectives")
    env = env if env is not None else NcclEnvironment.from_env()
    link = nccl_link_bandwidth(card)
    if link is None:
        return NcclMemory(0, 0, 0, 0, f"interconnect {card.interconnect!r} unknown: NCCL buffers not counted")
    bandwidth, described = link
    channels = clamp_channels(searched_ring_channels(bandwidth, card.compute_capability_tuple), env)
    # p2pGetInfo: "Queries the topology to see if the GPUs are Ampere and connected via NVLink, if
    # so we enable P2P Read by default". The bytes are the same either way at the default sizes.
    kind = _interconnect(card)
    p2p_read = kind is not None and kind[0] == "nvswitch" and card.compute_capability_tuple >= (8, 0)
    per_channel = ring_channel_bytes(env, p2p_read=p2p_read)
    ring = channels * per_channel
    nvls = nvls_bytes(card, parallelism.gpus_per_node, env)
    basis = (
        f"{channels} ring channels ({described}) x {per_channel // MIB} MiB of LL, LL128 and Simple "
        f"buffers" + (f", NVLS {nvls // MIB} MiB" if nvls else "")
    )
    return NcclMemory(ring + nvls, channels, ring, nvls, basis)
