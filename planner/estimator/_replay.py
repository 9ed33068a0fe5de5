"""What the caching allocator reserves for a traced step: its allocations replayed through the
allocator model (:mod:`planner.allocator`), against the card's memory.

A flat "reserved = allocated x (1 + fragmentation)" cannot be right: what the allocator keeps
depends on the order and sizes of the requests, which the trace has. The replay runs the cuBLAS
workspace (taken on the first matmul), the setup (weights, quant state, optimizer state created
by the warm-up step), then the steady-state step twice: the allocator's cache is still filling in
the first step, and a peak reached in the second is one a real run reaches too.

"Fits" means the replay completes within the card's memory less the CUDA context: when the
unlimited replay reserves more, it is replayed again with that capacity, so the allocator's own
out-of-memory path (free the cache, retry) decides, as it does on the GPU.

Blocks the stream marks as outside the allocator (a paged optimizer's state, in CUDA managed
memory: bitsandbytes' ``F.get_paged`` calls ``cudaMallocManaged``) are not replayed: the caching
allocator never sees them, and the driver pages them to host memory rather than fail an
allocation, so they do not decide the fit (see :mod:`planner.estimator._estimator`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from planner.allocator import AllocatorConfig, Event, replay
from planner.step import AllocationStream


@dataclass(frozen=True)
class ReplayedPeak:
    """Predicted ``max_memory_allocated``/``max_memory_reserved`` of a step, and whether it fits."""

    allocated: int
    reserved: int
    segments: int
    """Segments the allocator holds at the reserved peak (``torch.cuda.memory_snapshot()``'s count)."""
    fits: bool


def _events(
    stream: AllocationStream, workspace_bytes: int, steps: int, empty_cache_every_step: bool = False
) -> Iterator[Event]:
    if workspace_bytes:
        yield Event.alloc("cublas-workspace", workspace_bytes)
    setup_blocks: set[int] = set()
    for block, delta in stream.setup:
        if block in stream.outside_allocator:
            continue
        if delta > 0:
            setup_blocks.add(block)
            yield Event.alloc(block, delta)
        else:
            setup_blocks.discard(block)
            yield Event.free(block)
    # Blocks are numbered by first allocation, setup first: below this one, a step only frees.
    first_step_block = 1 + max((block for block, _ in stream.setup), default=-1)
    for repeat in range(steps):
        if empty_cache_every_step:
            # The loop empties the cache after each step (the warm-up step included): the next
            # one starts from the segments its live tensors hold.
            yield Event.empty_cache()
        for block, delta in stream.step:
            if block < first_step_block:
                # State an optimizer replaces rather than updates in place is freed once; what
                # replaced it in the first step then stays through the second (a slight overcount).
                if block in setup_blocks:
                    setup_blocks.discard(block)
                    yield Event.free(block)
                continue
            # Blocks a step allocates get a name per repeat.
            name = (repeat, block)
            yield Event.alloc(name, delta) if delta > 0 else Event.free(name)


def replay_step(
    stream: AllocationStream,
    *,
    workspace_bytes: int,
    capacity: int,
    config: AllocatorConfig,
    empty_cache_every_step: bool = False,
) -> ReplayedPeak:
    """Replay ``stream`` (two steady-state steps, the cache emptied before each when the loop does
    so) and say what it reserves and whether it fits."""
    unlimited = replay(_events(stream, workspace_bytes, 2, empty_cache_every_step), config)
    if unlimited.max_reserved <= capacity:
        return ReplayedPeak(
            unlimited.max_allocated, unlimited.max_reserved, unlimited.segment_count_at_peak, True
        )
    limited = replay(_events(stream, workspace_bytes, 2, empty_cache_every_step), config, capacity)
    if limited.out_of_memory is None:
        return ReplayedPeak(limited.max_allocated, limited.max_reserved, limited.segment_count_at_peak, True)
    return ReplayedPeak(
        unlimited.max_allocated, unlimited.max_reserved, unlimited.segment_count_at_peak, False
    )
