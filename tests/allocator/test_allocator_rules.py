"""One test per rule of the caching allocator model, with the expected numbers worked out by hand.

Addresses are the model's: each new segment starts where the previous one ended, from 0.
"""

from __future__ import annotations

import pytest

from planner.allocator import AllocatorConfig, AllocatorOutOfMemory, CachingAllocator, SegmentInfo

MiB = 1 << 20


def layout(allocator: CachingAllocator) -> list[tuple[str, int, list[tuple[int, object]]]]:
    """(pool, segment MiB, [(block bytes, block id or None if free)]) for every segment, by address."""
    return [(s.pool, s.size // MiB, [(b.size, b.block_id) for b in s.blocks]) for s in allocator.segments()]


def test_rule1_rounding_to_512_bytes_and_power2_divisions() -> None:
    """round_size(): below 512 B -> 512; otherwise up to a multiple of 512.

    With roundup_power2_divisions:4, a size above 4 * 512 B rounds to the next quarter between powers
    of two: 1_100_000 B lies in [1 MiB, 2 MiB), quarters of 262_144 B, so 1_048_576 + 262_144 =
    1_310_720 (512-rounding alone would give 1_100_288). Sizes not above 4 * 512 = 2048 B keep
    512-rounding: 1200 B -> 1536 B.
    """
    plain = CachingAllocator()
    assert [plain.round_size(n) for n in (1, 512, 513, 1000, 1_100_000)] == [512, 512, 1024, 1024, 1_100_288]
    plain.malloc("a", 1)
    plain.malloc("b", 1000)
    assert plain.allocated == 512 + 1024

    quarters = CachingAllocator(AllocatorConfig(roundup_power2_divisions=4))
    assert quarters.round_size(1200) == 1536
    assert quarters.round_size(5 * MiB + 1) == 6 * MiB  # quarters of [4, 8) MiB: 4, 5, 6, 7
    assert quarters.round_size(4 * MiB) == 4 * MiB  # powers of two stay
    quarters.malloc("x", 1_100_000)
    assert quarters.allocated == 1_310_720


def test_rule2_small_pool_packs_requests_into_2mib_segments() -> None:
    """Rounded requests <= 1 MiB share 2 MiB small-pool segments; 1 MiB + 1 B goes to the large pool.

    Two 1 MiB requests fill one 2 MiB segment (the first is split, its 1 MiB rest serves the
    second exactly); a third needs a second small segment. 1 MiB + 1 B rounds to 1_049_088 B, a
    large request, and gets a 20 MiB large segment: reserved = 2 + 2 + 20 = 24 MiB.
    """
    allocator = CachingAllocator()
    for name in ("a", "b", "c"):
        allocator.malloc(name, MiB)
    allocator.malloc("big", MiB + 1)
    assert layout(allocator) == [
        ("small", 2, [(MiB, "a"), (MiB, "b")]),
        ("small", 2, [(MiB, "c"), (MiB, None)]),
        ("large", 20, [(1_049_088, "big"), (20 * MiB - 1_049_088, None)]),
    ]
    assert allocator.reserved == 24 * MiB


def test_rule3_large_segments_20mib_below_10mib_else_rounded_to_2mib() -> None:
    """get_allocation_size(): 10 MiB -> its own 10 MiB segment; 15 MiB + 1 B (rounded to 15 MiB +
    512 B) -> a 16 MiB segment, whose 1 MiB - 512 B rest is too small to split (<= 1 MiB) and stays
    in the block; 2 MiB (< 10 MiB) -> a 20 MiB segment, split into 2 + 18 MiB.

    reserved = 10 + 16 + 20 = 46 MiB; allocated counts block sizes: 10 + 16 + 2 = 28 MiB.
    """
    allocator = CachingAllocator()
    allocator.malloc("ten", 10 * MiB)
    allocator.malloc("fifteen", 15 * MiB + 1)
    allocator.malloc("two", 2 * MiB)
    assert [segment.size // MiB for segment in allocator.segments()] == [10, 16, 20]
    assert allocator.reserved == 46 * MiB
    assert allocator.allocated == 28 * MiB
    assert allocator.allocation_size(9 * MiB) == 20 * MiB
    assert allocator.allocation_size(10 * MiB + 1) == 12 * MiB


def test_rule4_best_fit_smallest_block_then_oldest_address_per_stream() -> None:
    """get_free_block(): the first cached block in (stream, size, address) order that fits.

    Segments: a 12 MiB @0, b 14 MiB @12 MiB, c 12 MiB @26 MiB, all freed. An 11 MiB request takes
    a 12 MiB block (smallest that fits), and of the two the one at the lower address, @0 (its 1 MiB
    rest is not split off). A 13 MiB request takes the 14 MiB block @12 MiB. A 12 MiB request on
    stream 1 cannot use stream 0's cached 12 MiB @26 MiB and gets a new segment @38 MiB.
    """
    allocator = CachingAllocator()
    for name, size in (("a", 12), ("b", 14), ("c", 12)):
        allocator.malloc(name, size * MiB)
    for name in ("a", "b", "c"):
        allocator.free(name)
    allocator.malloc("d", 11 * MiB)
    allocator.malloc("e", 13 * MiB)
    allocator.malloc("f", 12 * MiB, stream=1)
    by_owner = {b.block_id: s for s in allocator.segments() for b in s.blocks}
    assert (by_owner["d"].address, by_owner["e"].address, by_owner["f"].address) == (0, 12 * MiB, 38 * MiB)
    assert by_owner[None].address == 26 * MiB  # stream 0's 12 MiB block stays cached
    assert by_owner["f"].stream == 1
    assert allocator.reserved == 50 * MiB


def test_rule5_split_thresholds_and_merging_on_free() -> None:
    """should_split(): the small pool splits off any rest >= 512 B; the large pool only a rest > 1 MiB.

    Large: 9 MiB in a 20 MiB segment leaves 11 MiB cached (split). A 10 MiB request then takes that
    11 MiB block whole (rest 1 MiB is not > 1 MiB): allocated = 9 + 11 = 20 MiB for 19 MiB asked.
    Small: 1000 B -> a 1024 B block and a 2 MiB - 1024 B rest. free_block() merges free neighbours:
    freeing both large blocks leaves one unsplit 20 MiB block, which empty_cache() can release.
    """
    allocator = CachingAllocator()
    allocator.malloc("nine", 9 * MiB)
    assert layout(allocator) == [("large", 20, [(9 * MiB, "nine"), (11 * MiB, None)])]
    allocator.malloc("ten", 10 * MiB)
    assert layout(allocator) == [("large", 20, [(9 * MiB, "nine"), (11 * MiB, "ten")])]
    assert allocator.allocated == 20 * MiB
    allocator.malloc("tiny", 1000)
    assert layout(allocator)[1] == ("small", 2, [(1024, "tiny"), (2 * MiB - 1024, None)])

    allocator.free("nine")
    allocator.free("ten")
    assert layout(allocator)[0] == ("large", 20, [(20 * MiB, None)])
    allocator.empty_cache()
    assert layout(allocator) == [("small", 2, [(1024, "tiny"), (2 * MiB - 1024, None)])]
    assert allocator.reserved == 2 * MiB


def test_rule6_max_split_size_keeps_oversize_blocks_whole() -> None:
    """max_split_size_mb:40: cached blocks >= 40 MiB are oversize.

    A cached 60 MiB block does not serve a 30 MiB request (not oversize): new 30 MiB segment. It
    serves a 41 MiB request (oversize, and 60 < 41 + 20 MiB of max_non_split_rounding) unsplit,
    so allocated = 30 + 60 = 90 MiB. Freed again, it does not serve a 40 MiB request, as
    60 >= 40 + 20: that one gets a new 40 MiB segment, reserved = 60 + 30 + 40 = 130 MiB.
    """
    allocator = CachingAllocator(AllocatorConfig.parse("max_split_size_mb:40"))
    allocator.malloc("sixty", 60 * MiB)
    allocator.free("sixty")
    allocator.malloc("thirty", 30 * MiB)
    assert allocator.reserved == 90 * MiB
    allocator.malloc("forty-one", 41 * MiB)
    assert allocator.reserved == 90 * MiB
    assert allocator.allocated == 90 * MiB
    allocator.free("forty-one")
    allocator.malloc("forty", 40 * MiB)
    assert allocator.reserved == 130 * MiB
    assert [s.size // MiB for s in allocator.segments() if s.allocated_size == 0] == [60]


def test_rule7_garbage_collection_frees_cached_blocks_older_than_average() -> None:
    """garbage_collection_threshold:0.5 with capacity C: before a new segment, if reserved > 0.5 C,
    free cached unsplit large blocks whose age (large-pool searches since cached) >= the mean age,
    round after round, until reserved - 0.5 C is reclaimed or a round frees nothing.

    a 20, b 22, c 24 MiB segments. Ages when d (26 MiB) searches (the 4th search): a cached after
    search 1 -> age 3, b after 2 -> age 2, c after 3 -> age 1; mean 2, so a and b go (42 MiB, more
    than the 66 - 50 = 16 MiB needed, as rounds do not stop midway); c stays. reserved = 24 + 26.

    Iterated: capacity 88 MiB (gc above 44, so not yet when c makes reserved 66). a age 3, b and c
    age 1 (both freed after search 3); mean 5/3 frees a (20 MiB < 66 - 44 = 22 MiB needed); the
    next round's mean 2/2 = 1 frees b and c. Only d's 40 MiB remain.
    """
    config = AllocatorConfig.parse("garbage_collection_threshold:0.5")
    allocator = CachingAllocator(config, capacity=100 * MiB)
    for name, size in (("a", 20), ("b", 22), ("c", 24)):
        allocator.malloc(name, size * MiB)
        allocator.free(name)
    allocator.malloc("d", 26 * MiB)
    assert layout(allocator) == [("large", 24, [(24 * MiB, None)]), ("large", 26, [(26 * MiB, "d")])]

    # Without garbage collection the same stream keeps everything cached: 20+22+24+26 = 92 MiB.
    keeps = CachingAllocator(AllocatorConfig(), capacity=100 * MiB)
    for name, size in (("a", 20), ("b", 22), ("c", 24)):
        keeps.malloc(name, size * MiB)
        keeps.free(name)
    keeps.malloc("d", 26 * MiB)
    assert keeps.reserved == 92 * MiB

    iterated = CachingAllocator(config, capacity=88 * MiB)
    iterated.malloc("a", 20 * MiB)
    iterated.free("a")
    iterated.malloc("b", 22 * MiB)
    iterated.malloc("c", 24 * MiB)
    iterated.free("b")
    iterated.free("c")
    iterated.malloc("d", 40 * MiB)
    assert layout(iterated) == [("large", 40, [(40 * MiB, "d")])]
    assert iterated.max_reserved == 66 * MiB


def test_rule8_expandable_segments_grow_by_pages_and_unmap_only_on_release() -> None:
    """expandable_segments:True: one segment per pool and stream, mapped in 2 MiB (small) or
    20 MiB (large) pages; blocks split whenever >= 512 B remain.

    1000 B maps one 2 MiB small page; 5 MiB maps one 20 MiB large page (5 used, 15 free). 30 MiB
    does not fit the 15 MiB free block, so the segment grows from that block by one more page:
    15 + 20 = 35 MiB, split into 30 + 5. reserved = 2 + 40 = 42 MiB. Freeing 30 MiB unmaps
    nothing. empty_cache() unmaps whole pages inside free blocks: the free 35 MiB spans 5-40 MiB,
    so page 20-40 MiB goes and 5-20 MiB stays mapped (reserved 22 MiB); once all is free,
    emptying releases both segments.
    """
    allocator = CachingAllocator(AllocatorConfig.parse("expandable_segments:True"))
    allocator.malloc("tiny", 1000)
    allocator.malloc("five", 5 * MiB)
    assert allocator.reserved == 22 * MiB
    allocator.malloc("thirty", 30 * MiB)
    assert layout(allocator) == [
        ("small", 2, [(1024, "tiny"), (2 * MiB - 1024, None)]),
        ("large", 40, [(5 * MiB, "five"), (30 * MiB, "thirty"), (5 * MiB, None)]),
    ]
    assert all(segment.expandable for segment in allocator.segments())
    assert allocator.reserved == 42 * MiB
    allocator.free("thirty")
    assert allocator.reserved == 42 * MiB
    allocator.empty_cache()
    assert allocator.reserved == 22 * MiB
    assert layout(allocator)[1] == ("large", 20, [(5 * MiB, "five"), (15 * MiB, None)])
    allocator.free("five")
    allocator.free("tiny")
    allocator.empty_cache()
    assert (allocator.reserved, allocator.segments(), allocator.max_reserved) == (0, [], 42 * MiB)


def test_rule9_out_of_memory_path_releases_oversize_then_everything_then_fails() -> None:
    """malloc(): alloc_block fails -> release_available_cached_blocks (oversize cached blocks only,
    the smallest >= max(request, max_split_size)) -> retry -> release_cached_blocks -> retry -> OOM.

    max_split 40 MiB, capacity 150 MiB: cached 100 MiB (oversize) and 20 MiB, live 30 MiB. A 39 MiB
    request needs a 40 MiB segment: 150 + 40 > 150; releasing the oversize 100 MiB is enough
    (50 + 40 <= 150) and the cached 20 MiB survives, with no full-release retry.

    Default config, capacity 60 MiB: a cached 2 MiB small segment blocks a 59 MiB request (needs
    60 MiB); only releasing the whole cache helps (one retry). A 1 B request then needs a 2 MiB
    segment with 60 MiB live and nothing cached: out of memory.
    """
    allocator = CachingAllocator(AllocatorConfig.parse("max_split_size_mb:40"), capacity=150 * MiB)
    allocator.malloc("hundred", 100 * MiB)
    allocator.free("hundred")
    allocator.malloc("thirty", 30 * MiB)
    allocator.malloc("twenty", 20 * MiB)
    allocator.free("twenty")
    allocator.malloc("thirty-nine", 39 * MiB)
    assert [s.size // MiB for s in allocator.segments()] == [30, 20, 40]
    assert allocator.num_alloc_retries == 0

    tight = CachingAllocator(AllocatorConfig(), capacity=60 * MiB)
    tight.malloc("small", 1)
    tight.free("small")
    tight.malloc("big", 59 * MiB)
    assert (tight.num_alloc_retries, tight.reserved) == (1, 60 * MiB)
    with pytest.raises(AllocatorOutOfMemory) as raised:
        tight.malloc("one", 1)
    error = raised.value
    assert (error.requested, error.allocation) == (1, 2 * MiB)
    assert (error.reserved, error.allocated, error.capacity) == (60 * MiB, 60 * MiB, 60 * MiB)
    assert tight.num_ooms == 1


def test_stats_count_block_and_segment_sizes_with_running_peaks() -> None:
    """allocated_bytes counts rounded block sizes, reserved_bytes segment sizes; max_* are running peaks.

    100 B -> a 512 B block in a 2 MiB segment; 3 MiB -> a 3 MiB block in a 20 MiB segment.
    Freeing the 3 MiB block lowers allocated, not reserved; reset_peak() restarts both peaks.
    """
    allocator = CachingAllocator()
    allocator.malloc("a", 100)
    allocator.malloc("b", 3 * MiB)
    assert (allocator.allocated, allocator.reserved) == (512 + 3 * MiB, 22 * MiB)
    allocator.free("b")
    assert (allocator.allocated, allocator.max_allocated) == (512, 512 + 3 * MiB)
    assert (allocator.reserved, allocator.max_reserved) == (22 * MiB, 22 * MiB)
    allocator.empty_cache()
    allocator.reset_peak()
    assert (allocator.max_allocated, allocator.max_reserved) == (512, 2 * MiB)
    segment = allocator.segments()[0]
    assert isinstance(segment, SegmentInfo)
    assert (segment.allocated_size, segment.blocks[0].requested) == (512, 100)
