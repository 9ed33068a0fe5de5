"""Seconds a paged optimizer's state spends crossing the host link when it does not fit on the card.

bitsandbytes' paged optimizers (``paged_adamw_8bit``) keep their state in CUDA managed memory
(``F.get_paged``: ``cudaMallocManaged``) and, before each parameter's update, prefetch its state to
the device (``Optimizer8bit.prefetch_state`` -> ``F.prefetch_tensor`` -> ``cudaMemPrefetchAsync``
on the legacy default stream), then synchronize the device after the update (``sync_gpu`` in
``Optimizer8bit.step``, bitsandbytes 0.50): the migration neither overlaps the update kernels nor
anything else, so its seconds add to the step.

**What crosses.** Managed pages only get the device memory that ``cudaMalloc`` (PyTorch's caching
allocator) leaves: the driver "may evict pages from other cuMemAllocManaged allocations to host
memory in order to make room. Device memory allocated using cuMemAlloc ... will not be evicted"
(CUDA Driver API, ``cuMemPrefetchAsync``). The room is the card's memory less the context, NCCL
and the allocator's reserved peak, which the memory estimate already works out
(``MemoryBreakdown.paged_on_device``). When the state is larger than that room, the driver evicts
the least recently *migrated* 2 MiB root chunk to make space (NVIDIA open-gpu-kernel-modules,
``kernel-open/nvidia-uvm/uvm_pmm_gpu.c``: "All allocated user memory root chunks are tracked in an
LRU list ... moved to the tail of that list whenever any of its subchunks is allocated"; accesses
to resident pages are not tracked). The optimizer sweeps its parameters in the same order every
step, and a cyclic sweep over more than an LRU cache holds misses on every chunk: each chunk it
needs next is the oldest one, evicted just before. So past the room *all* the paged state is
migrated in every step and, being updated (dirty, and the driver keeps one copy), migrated out
again: twice its bytes cross the link per optimizer step. Within the room nothing crosses.

**In and out do not overlap.** PCIe is full duplex, but the driver evicts a root chunk (its
resident pages "moved to the CPU one VA block at a time") before it returns the chunk to the
allocation the incoming pages wait for (``uvm_pmm_gpu.c``, ``evict_root_chunk``): out and in take
turns, so the seconds are both directions' bytes at one direction's rate (the conservative,
documented choice).

**Rate.** The card's host link (``Card.host_link``: PCIe generation and lanes from its
datasheet, raw rate from the PCIe spec) at the fraction pinned host-device copies reach:
NVIDIA's CUDA C++ Best Practices Guide (Memory Optimizations, "Pinned Memory"): "on PCIe x16
Gen3 cards, pinned memory can attain roughly 12 GB/s", 12 of the link's 15.75 GB/s. A prefetch
is nearly as fast as such a copy (NVIDIA developer blog "Maximizing Unified Memory Performance
in CUDA", Sakharnykh 2017, as summarised in kokkos/kokkos#2915: "an explicit prefetch ... is
nearly as fast as a cudaMemcpyAsync"), so it is taken at the copy's rate.

A card whose data names no host link leaves paging untimed, with a note of the bytes that cross:
the rate differs fourfold between the PCIe generations cards ship with (3.0 to 5.0), so a default
would be a guess the answer could not show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.schema import GIB, Card, MemoryEstimate

PINNED_COPY_FRACTION = 12.0 / 15.75
"""Fraction of a PCIe link's raw per-direction rate host-device copies reach (Best Practices Guide)."""
HOST_LINK_SPREAD = (0.85, 2.0)
"""(p10, p90) multipliers on the paging seconds, a term of the step's interval like the kernel
terms of ``planner.timing._kernels.TERM_SPREADS``. Low: bandwidth tests of pinned copies reach
up to ~83% of the raw rate on good hosts against the 76% assumed (0.92), a little under it for a
better link. High: no published measurement of prefetch *with eviction* was found; the driver
migrates one 2 MiB VA block at a time under its PMM lock, so half the copy rate is allowed."""


@dataclass(frozen=True)
class Paging:
    """The host traffic of one optimizer step of a paged optimizer whose state does not fit."""

    paged_bytes: int
    """The paged optimizer state."""
    room_bytes: int
    """Device memory left beside the allocator's peak for it (less than ``paged_bytes``)."""
    crossing_bytes: int
    """Bytes over the host link per optimizer step, in and out together."""
    seconds: float | None
    """Their seconds at the card's host link; None when the card names no link."""
    note: str


def host_paging(memory: MemoryEstimate, card: Card) -> Paging | None:
    """The paging of ``memory``'s step on ``card``, or None when the paged state fits beside the
    allocator's peak (or there is none)."""
    paged = memory.paged_bytes
    room = memory.breakdown.paged_on_device
    if paged <= room:
        return None
    crossing = 2 * paged
    said = (
        f"paged optimizer state {paged / GIB:.1f} GiB > {room / GIB:.1f} GiB left on the device: "
        f"all of it migrates in and out every optimizer step ({crossing / GIB:.1f} GiB over the host link"
    )
    link = card.host_link
    if link is None:
        return Paging(paged, room, crossing, None, f"{said}), not timed: {card.name} names no host link")
    rate = link.raw_gbs * 1e9 * PINNED_COPY_FRACTION
    seconds = crossing / rate
    note = (
        f"{said}, {seconds:.2f} s at {rate / 1e9:.1f} GB/s: {link.describe()} at "
        f"{PINNED_COPY_FRACTION:.0%} of its raw rate, in and out in turn)"
    )
    return Paging(paged, room, crossing, seconds, note)


def with_paging_interval(
    interval: tuple[float, float], step_seconds: float, paging_seconds: float
) -> tuple[float, float]:
    """The step's interval once ``paging_seconds`` join its ``step_seconds``: the step's own spread
    and the paging's (``HOST_LINK_SPREAD``) as two independent terms, their log-deviations of the
    whole combined in quadrature (as the roofline combines its terms)."""
    total = step_seconds + paging_seconds
    if total <= 0 or paging_seconds <= 0:
        return interval
    below = above = 0.0
    for deviation in (
        math.log((step_seconds * interval[0] + paging_seconds) / total),
        math.log((step_seconds * interval[1] + paging_seconds) / total),
        math.log((step_seconds + paging_seconds * HOST_LINK_SPREAD[0]) / total),
        math.log((step_seconds + paging_seconds * HOST_LINK_SPREAD[1]) / total),
    ):
        if deviation < 0:
            below += deviation**2
        else:
            above += deviation**2
    return math.exp(-math.sqrt(below)), math.exp(math.sqrt(above))
