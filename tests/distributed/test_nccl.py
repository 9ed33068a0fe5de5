"""NCCL's buffers per rank, from the rules of NCCL's source (see planner.distributed._nccl), by hand."""

from __future__ import annotations

import pytest

from planner.cards import load_card
from planner.distributed import NcclEnvironment, nccl_memory
from planner.distributed._nccl import ring_channel_bytes, searched_ring_channels
from planner.schema import MIB, Parallelism

DEFAULTS = NcclEnvironment()
EIGHT = Parallelism(gpus_per_node=8)


@pytest.mark.parametrize("p2p_read", [False, True], ids=["write", "read"])
def test_a_ring_channel_takes_12_mib_at_the_default_sizes(p2p_read: bool) -> None:
    # Write: receiver 4096 + 524,288 (LL) + 4,915,200 (LL128) + 4,194,304 (Simple) = 9,637,888 -> 10 MiB,
    # sender 4096 -> 2 MiB. Read: receiver 5,443,584 -> 6 MiB, sender 4096 + 4 MiB -> 6 MiB.
    assert ring_channel_bytes(DEFAULTS, p2p_read=p2p_read) == 12 * MIB


def test_nccl_buffsize_grows_the_simple_buffer() -> None:
    # NCCL_BUFFSIZE=8 MiB, written: 4096 + 524,288 + 4,915,200 + 8,388,608 = 13,832,192 -> 14 MiB, + 2 MiB.
    env = NcclEnvironment.from_env({"NCCL_BUFFSIZE": str(8 * MIB)})
    assert ring_channel_bytes(env, p2p_read=False) == 16 * MIB


@pytest.mark.parametrize(
    ("bandwidth", "capability", "channels"),
    [
        # A100 NVSwitch: 12 links x 20.0 = 240 GB/s; 6 channels at 40 (30 and 20 carry no more),
        # doubled at >= 25 GB/s to 12, doubled again by connectRings: 24.
        (240.0, (8, 0), 24),
        # H100 NVSwitch: 18 x 20.6 = 370.8; 6 channels at 60 (360), then 12, then 24.
        (370.8, (9, 0), 24),
        # PCIe 4.0 x16: 16 x 120 / 80 = 24; 1 channel at 20, 2 at 12 carry 24 (better), no doubling
        # below 25 GB/s, connectRings: 4.
        (24.0, (8, 9), 4),
        # PCIe 3.0 x16: 12; 1 channel at 12, then 2 at 6 carry no more: 1, connectRings: 2.
        (12.0, (7, 5), 2),
    ],
)
def test_searched_ring_channels(bandwidth: float, capability: tuple[int, int], channels: int) -> None:
    assert searched_ring_channels(bandwidth, capability) == channels


def test_an_a100_node_rank_holds_24_ring_channels() -> None:
    memory = nccl_memory(EIGHT, load_card("a100-80gb"), DEFAULTS)
    assert (memory.ring_channels, memory.nvls_bytes, memory.bytes) == (24, 0, 24 * 12 * MIB)
    assert "24 ring channels" in memory.basis


def test_an_h100_node_adds_nvls_buffers() -> None:
    # NVLS: 16 channels x 2 x (128 KiB x 8 steps) x 8 heads = 256 MiB; with 2 GPUs, 2 heads: 64 MiB.
    memory = nccl_memory(EIGHT, load_card("h100-sxm"), DEFAULTS)
    assert (memory.nvls_bytes, memory.bytes) == (256 * MIB, 24 * 12 * MIB + 256 * MIB)
    assert nccl_memory(Parallelism(gpus_per_node=2), load_card("h100-sxm"), DEFAULTS).nvls_bytes == 64 * MIB
    off = NcclEnvironment.from_env({"NCCL_NVLS_ENABLE": "0"})
    assert nccl_memory(EIGHT, load_card("h100-sxm"), off).nvls_bytes == 0


def test_the_environment_clamps_the_channels() -> None:
    card = load_card("a100-80gb")
    fewer = nccl_memory(EIGHT, card, NcclEnvironment.from_env({"NCCL_MAX_NCHANNELS": "4"}))
    more = nccl_memory(EIGHT, card, NcclEnvironment.from_env({"NCCL_MIN_NCHANNELS": "32"}))
    assert (fewer.ring_channels, fewer.bytes) == (4, 4 * 12 * MIB)
    assert more.ring_channels == 32
    # The newer name wins over the old one, as in ncclMaxNchannels.
    both = NcclEnvironment.from_env({"NCCL_MAX_NRINGS": "2", "NCCL_MAX_NCHANNELS": "8"})
    assert nccl_memory(EIGHT, card, both).ring_channels == 8


def test_one_gpu_and_unknown_links_hold_none() -> None:
    assert nccl_memory(Parallelism(), load_card("a100-80gb"), DEFAULTS).bytes == 0
    # V100 SXM2's hybrid cube-mesh is not a uniform node: not counted, and said so.
    memory = nccl_memory(EIGHT, load_card("v100-sxm2-16gb"), DEFAULTS)
    assert memory.bytes == 0 and "not counted" in memory.basis
