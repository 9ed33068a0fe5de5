"""Bookkeeping invariants of the allocator model over random streams, for every kind of setting."""

from __future__ import annotations

import itertools
import random

import pytest

from planner.allocator import AllocatorConfig, AllocatorOutOfMemory, CachingAllocator

MiB = 1 << 20

CONFIGS = [
    "",
    "max_split_size_mb:40",
    "expandable_segments:True",
    "garbage_collection_threshold:0.6,max_split_size_mb:30,roundup_power2_divisions:4",
    "expandable_segments:True,garbage_collection_threshold:0.5,max_split_size_mb:25",
    "roundup_power2_divisions:[1:2,64:8,>:4]",
]


def check(allocator: CachingAllocator) -> None:
    segments = allocator.segments()
    assert sum(segment.size for segment in segments) == allocator.reserved
    assert sum(segment.allocated_size for segment in segments) == allocator.allocated
    assert allocator.allocated <= allocator.max_allocated and allocator.reserved <= allocator.max_reserved
    if allocator.capacity is not None:
        assert allocator.reserved <= allocator.capacity
    for segment in segments:
        assert segment.size % (2 * MiB) == 0
        for left, right in itertools.pairwise(segment.blocks):
            assert left.allocated or right.allocated, "free neighbours were not merged"


@pytest.mark.parametrize("text", CONFIGS)
def test_random_streams_keep_the_books_and_release_everything(text: str) -> None:
    """Reserved is the sum of the segments, allocated of the allocated blocks, the capacity holds,
    free neighbours are always merged, and freeing everything then emptying the cache leaves nothing."""
    config = AllocatorConfig.parse(text)
    rng = random.Random(text)
    for capacity in (None, 64 * MiB, 300 * MiB):
        allocator = CachingAllocator(config, capacity)
        live: list[int] = []
        for block_id in range(150):
            if live and rng.random() < 0.45:
                allocator.free(live.pop(rng.randrange(len(live))))
            else:
                size = rng.choice([rng.randint(0, 4096), rng.randint(1, 3 * MiB), rng.randint(MiB, 60 * MiB)])
                try:
                    allocator.malloc(block_id, size, stream=rng.choice([0, 0, 1]))
                    live.append(block_id)
                except AllocatorOutOfMemory as error:
                    assert capacity is not None and error.capacity == capacity
            check(allocator)
        for block_id in live:
            allocator.free(block_id)
        allocator.empty_cache()
        assert (allocator.reserved, allocator.allocated, allocator.segments()) == (0, 0, [])
