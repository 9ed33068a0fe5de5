"""The block bookkeeping of torch's ``DeviceCachingAllocator``, on numbers instead of device memory.

Every rule cites the function of ``c10/cuda/CUDACachingAllocator.cpp`` it follows (pytorch commit
001074d25084fdb87a799823e395a50f5ec044d3), or torch 2.13's ``c10/core/AllocatorConfig.h`` where 2.13
made a constant configurable (``large_segment_size``, ``max_non_split_rounding_size``). Where a newer,
device-generic copy of these functions (``c10/core/CachingDeviceAllocator.h``) differs, it says so.
Addresses are modelled, not real: each new segment (or expandable segment's virtual range) starts
where the previous one ended, so on ties in size the older segment sorts first and every run is
deterministic.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Literal

from planner.allocator._config import (
    K_MIN_BLOCK_SIZE,
    K_MIN_LARGE_ALLOC,
    K_ROUND_LARGE,
    K_SMALL_BUFFER,
    K_SMALL_SIZE,
    AllocatorConfig,
)

# Virtual address space of an expandable segment when no capacity is given: torch reserves 1 1/8 of
# the device's memory (ExpandableSegment's constructor); without a device we take 256 TiB.
_UNBOUNDED_ADDRESS_SPACE = 1 << 48


class AllocatorOutOfMemory(Exception):
    """A request the allocator could not serve even after releasing every cached segment it could.

    ``allocation`` is the segment size torch reports ("Tried to allocate ..."); ``reserved`` and
    ``allocated`` are the allocator's totals after it released its cache.
    """

    def __init__(self, requested: int, allocation: int, reserved: int, allocated: int, capacity: int) -> None:
        self.requested = requested
        self.allocation = allocation
        self.reserved = reserved
        self.allocated = allocated
        self.capacity = capacity
        super().__init__(
            f"out of memory: tried to allocate {allocation} bytes (request of {requested}); "
            f"{allocated} bytes allocated, {reserved} reserved, capacity {capacity}"
        )

    def __reduce__(self) -> tuple[type[AllocatorOutOfMemory], tuple[int, int, int, int, int]]:
        # Survives pickling (e.g. across worker processes) with its fields, not just the message.
        return type(self), (self.requested, self.allocation, self.reserved, self.allocated, self.capacity)


@dataclass(frozen=True)
class BlockInfo:
    """One block of a segment: a live allocation (with the caller's id) or a cached free range."""

    size: int
    allocated: bool
    block_id: Hashable | None = None
    requested: int = 0


@dataclass(frozen=True)
class SegmentInfo:
    """One segment the allocator holds (for expandable segments: one contiguous mapped range)."""

    address: int
    size: int
    pool: Literal["small", "large"]
    stream: int
    expandable: bool
    blocks: tuple[BlockInfo, ...]

    @property
    def allocated_size(self) -> int:
        return sum(block.size for block in self.blocks if block.allocated)


class _Expandable:
    """The virtual range of one expandable segment: where it starts and its page size."""

    __slots__ = ("base", "page", "size")

    def __init__(self, base: int, page: int, size: int) -> None:
        self.base = base
        self.page = page
        self.size = size


class _Block:
    """A range of a segment: allocated, cached (free and mapped) or, in expandable segments, unmapped."""

    __slots__ = (
        "address",
        "allocated",
        "block_id",
        "expandable",
        "gc_count_base",
        "mapped",
        "next",
        "pool",
        "prev",
        "requested",
        "size",
        "stream",
    )

    def __init__(
        self,
        pool: _Pool,
        stream: int,
        address: int,
        size: int,
        expandable: _Expandable | None = None,
        mapped: bool = True,
    ) -> None:
        self.pool = pool
        self.stream = stream
        self.address = address
        self.size = size
        self.expandable = expandable
        self.mapped = mapped
        self.allocated = False
        self.block_id: Hashable | None = None
        self.requested = 0
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.gc_count_base = 0

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    def splice(self, before: _Block | None, after: _Block | None) -> None:
        """Link this block between two neighbours (``Block::splice``)."""
        if before is not None:
            before.next = self
        self.prev = before
        if after is not None:
            after.prev = self
        self.next = after


class _SortedBlocks:
    """A set of blocks ordered by a key: the ``std::set`` of a block pool.

    Keys must not change while a block is in the set; callers take a block out before resizing it.
    """

    def __init__(self, key: Callable[[_Block], tuple[int, ...]]) -> None:
        self._key = key
        self._keys: list[tuple[int, ...]] = []
        self._blocks: list[_Block] = []

    def add(self, block: _Block) -> None:
        key = self._key(block)
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._blocks.insert(at, block)

    def remove(self, block: _Block) -> None:
        at = bisect.bisect_left(self._keys, self._key(block))
        if at == len(self._blocks) or self._blocks[at] is not block:
            raise AssertionError("block is not in this pool set")
        del self._keys[at], self._blocks[at]

    def lower_bound(self, key: tuple[int, ...]) -> int:
        return bisect.bisect_left(self._keys, key)

    def __getitem__(self, index: int) -> _Block:
        return self._blocks[index]

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[_Block]:
        return iter(list(self._blocks))


class _Pool:
    """``BlockPool``: one size class's cached blocks, plus the unmapped ranges of its expandable segments.

    Cached blocks are ordered by (stream, size, address), as ``BlockComparatorSize``; unmapped ranges
    by (stream, address), as ``BlockComparatorAddress``.
    """

    def __init__(self, is_small: bool) -> None:
        self.is_small = is_small
        self.blocks = _SortedBlocks(lambda block: (block.stream, block.size, block.address))
        self.unmapped = _SortedBlocks(lambda block: (block.stream, block.address))
        self.get_free_blocks_call_count = 0

    def insert_into_blocks(self, block: _Block) -> None:
        # BlockPool::insert_into_blocks(): a block's age for garbage collection restarts when cached.
        block.gc_count_base = self.get_free_blocks_call_count
        self.blocks.add(block)

    def gc_count(self, block: _Block) -> int:
        return self.get_free_blocks_call_count - block.gc_count_base


class CachingAllocator:
    """A model of one device's caching allocator: ``malloc``/``free`` by caller-chosen block ids.

    ``capacity`` is the most the allocator may reserve (``torch.cuda.set_per_process_memory_fraction``
    times the device's memory, which is also what the device can give); None means unlimited, which
    also turns garbage collection off, as torch only collects when a memory fraction is set.
    """

    def __init__(self, config: AllocatorConfig | None = None, capacity: int | None = None) -> None:
        self.config = AllocatorConfig() if config is None else config
        self.capacity = capacity
        self._small = _Pool(is_small=True)
        self._large = _Pool(is_small=False)
        # block id -> its block; None for zero-byte requests, which torch never sends to malloc.
        self._active: dict[Hashable, _Block | None] = {}
        self._next_address = 0
        self._allocated = 0
        self._reserved = 0
        self._max_allocated = 0
        self._max_reserved = 0
        self.num_alloc_retries = 0
        """Times malloc had to release the whole cache and retry (``num_alloc_retries``)."""
        self.num_ooms = 0

    # -- statistics --------------------------------------------------------------------------------
    @property
    def allocated(self) -> int:
        """Bytes in allocated blocks (``allocated_bytes``): rounded block sizes, with any unsplit slack."""
        return self._allocated

    @property
    def reserved(self) -> int:
        """Bytes in segments (``reserved_bytes``); for expandable segments, the mapped pages."""
        return self._reserved

    @property
    def max_allocated(self) -> int:
        return self._max_allocated

    @property
    def max_reserved(self) -> int:
        return self._max_reserved

    def reset_peak(self) -> None:
        """Restart both peaks at the current values (``resetPeakStats``)."""
        self._max_allocated = self._allocated
        self._max_reserved = self._reserved

    def _change_allocated(self, delta: int) -> None:
        self._allocated += delta
        self._max_allocated = max(self._max_allocated, self._allocated)

    def _change_reserved(self, delta: int) -> None:
        self._reserved += delta
        self._max_reserved = max(self._max_reserved, self._reserved)

    # -- sizes -------------------------------------------------------------------------------------
    def round_size(self, size: int) -> int:
        """The block size a request of ``size`` bytes gets.

        CUDACachingAllocator.cpp round_size(): at least kMinBlockSize (512), then a multiple of 512,
        unless roundup_power2_divisions gives n > 1 divisions for this size and the size exceeds
        512 * n: then up to the next of n equal steps between two powers of two.
        """
        if size < K_MIN_BLOCK_SIZE:
            return K_MIN_BLOCK_SIZE
        divisions = self.config.divisions_for(size)
        if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
            return _roundup_power2_next_division(size, divisions)
        return -(-size // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE

    def allocation_size(self, size: int) -> int:
        """The segment size a new segment for a block of ``size`` bytes gets.

        CUDACachingAllocator.cpp get_allocation_size(): small requests (<= kSmallSize, 1 MiB) share a
        kSmallBuffer (2 MiB) segment; large ones below kMinLargeAlloc (10 MiB) share a kLargeBuffer
        segment (20 MiB; ``large_segment_size`` in torch 2.13); larger ones get their own segment
        rounded up to kRoundLarge (2 MiB).
        """
        if size <= K_SMALL_SIZE:
            return K_SMALL_BUFFER
        if size < K_MIN_LARGE_ALLOC:
            return self.config.large_segment_size
        return -(-size // K_ROUND_LARGE) * K_ROUND_LARGE

    def _pool_for(self, size: int) -> _Pool:
        # CUDACachingAllocator.cpp get_pool(): rounded sizes <= kSmallSize go to the small pool.
        return self._small if size <= K_SMALL_SIZE else self._large

    @property
    def _collects_garbage(self) -> bool:
        # get_free_block()/malloc(): only with a memory fraction set and a positive threshold.
        return self.capacity is not None and self.config.garbage_collection_threshold is not None

    # -- public operations -------------------------------------------------------------------------
    def malloc(self, block_id: Hashable, size: int, stream: int = 0) -> None:
        """Allocate ``size`` bytes as ``block_id``; raise :class:`AllocatorOutOfMemory` if it cannot fit.

        CUDACachingAllocator.cpp DeviceCachingAllocator::malloc(): best-fit from the cache; else
        garbage-collect (if set) and allocate a segment; else release cached oversize blocks and
        retry; else release every cached segment and retry; else out of memory.
        """
        if block_id in self._active:
            raise ValueError(f"block {block_id!r} is already allocated")
        if size < 0:
            raise ValueError(f"block {block_id!r}: negative size {size}")
        if size == 0:
            # NativeCachingAllocator::allocate(): a zero-byte request never reaches malloc.
            self._active[block_id] = None
            return
        rounded = self.round_size(size)
        pool = self._pool_for(rounded)
        alloc_size = self.allocation_size(rounded)
        block = self._get_free_block(pool, stream, rounded)
        if block is None:
            if self._collects_garbage:
                self._garbage_collect_cached_blocks()
            block = self._alloc_block(pool, stream, rounded, alloc_size, retry=False)
        if block is None and self._release_available_cached_blocks(pool, stream, rounded):
            block = self._alloc_block(pool, stream, rounded, alloc_size, retry=False)
        if block is None:
            self._release_cached_blocks()
            block = self._alloc_block(pool, stream, rounded, alloc_size, retry=True)
        if block is None:
            self.num_ooms += 1
            assert self.capacity is not None  # nothing fails without a capacity
            raise AllocatorOutOfMemory(size, alloc_size, self._reserved, self._allocated, self.capacity)
        self._alloc_found_block(block, rounded, block_id, size)

    def free(self, block_id: Hashable) -> None:
        """Return ``block_id``'s block to the cache, merging it with free neighbours."""
        if block_id not in self._active:
            raise KeyError(f"block {block_id!r} is not allocated")
        block = self._active.pop(block_id)
        if block is None:
            return
        self._change_allocated(-block.size)
        self._free_block(block)

    def empty_cache(self) -> None:
        """Release every cached segment (``torch.cuda.empty_cache``: emptyCache -> release_cached_blocks)."""
        self._release_cached_blocks()

    def segments(self) -> list[SegmentInfo]:
        """The segments held now, by address, with their blocks in address order.

        CUDACachingAllocator.cpp snapshot(): an expandable segment is reported as one segment per
        contiguous mapped range; unmapped address space is not reported.
        """
        blocks = [block for pool in (self._small, self._large) for block in pool.blocks]
        blocks += [block for block in self._active.values() if block is not None]
        heads = sorted(
            (block for block in blocks if block.prev is None or not block.prev.mapped),
            key=lambda block: block.address,
        )
        result = []
        for head in heads:
            infos = []
            block: _Block | None = head
            while block is not None and block.mapped:
                infos.append(BlockInfo(block.size, block.allocated, block.block_id, block.requested))
                block = block.next
            result.append(
                SegmentInfo(
                    address=head.address,
                    size=sum(info.size for info in infos),
                    pool="small" if head.pool.is_small else "large",
                    stream=head.stream,
                    expandable=head.expandable is not None,
                    blocks=tuple(infos),
                )
            )
        return result

    # -- finding and splitting blocks --------------------------------------------------------------
    def _get_free_block(self, pool: _Pool, stream: int, size: int) -> _Block | None:
        """CUDACachingAllocator.cpp get_free_block(): the best fit among the pool's cached blocks.

        The first block in (stream, size, address) order with the same stream and size >= the
        request: the smallest that fits, the lowest (oldest) address on ties.
        """
        if self._collects_garbage:
            # get_free_block(): counts the pool's searches; a cached block's age is searches since cached.
            pool.get_free_blocks_call_count += 1
        blocks = pool.blocks
        at = blocks.lower_bound((stream, size, -1))
        if at == len(blocks) or blocks[at].stream != stream:
            return None
        if blocks[at].expandable is not None:
            # get_free_block(): a free block at the end of an expandable segment can grow into the
            # unmapped range after it, so best fit compares the sizes blocks could expand to.
            while (
                blocks[at].expandable is not None
                and at + 1 < len(blocks)
                and blocks[at + 1].stream == stream
                and _expandable_size(blocks[at + 1]) < _expandable_size(blocks[at])
            ):
                at += 1
        block = blocks[at]
        max_split = self.config.max_split_size
        if max_split is not None:
            # get_free_block(): oversize blocks (>= max_split_size) serve only requests that are
            # themselves oversize, and only within max_non_split_rounding (kLargeBuffer before 2.13).
            if size < max_split <= block.size:
                return None
            if size >= max_split and block.size >= size + self.config.non_split_rounding:
                return None
        blocks.remove(block)
        return block

    def _should_split(self, block: _Block, size: int) -> bool:
        """CUDACachingAllocator.cpp should_split(): whether the rest of a too-big block becomes its own block.

        Small pool, or any pool with expandable segments: if at least kMinBlockSize (512 B) remains.
        Large pool: only requests below max_split_size, and only if more than kSmallSize (1 MiB)
        remains; a smaller rest stays in the allocated block (and counts as allocated).
        """
        remaining = block.size - size
        if block.pool.is_small or self.config.expandable_segments:
            return remaining >= K_MIN_BLOCK_SIZE
        max_split = self.config.max_split_size
        return (max_split is None or size < max_split) and remaining > K_SMALL_SIZE

    def _alloc_found_block(self, block: _Block, size: int, block_id: Hashable, requested: int) -> None:
        """CUDACachingAllocator.cpp alloc_found_block(): split if should_split, then mark allocated."""
        if self._should_split(block, size):
            remaining = block
            block = _Block(remaining.pool, remaining.stream, remaining.address, size, remaining.expandable)
            block.splice(remaining.prev, remaining)
            remaining.address += size
            remaining.size -= size
            remaining.pool.insert_into_blocks(remaining)
        block.allocated = True
        block.block_id = block_id
        block.requested = requested
        self._active[block_id] = block
        self._change_allocated(block.size)

    def _free_block(self, block: _Block) -> None:
        """CUDACachingAllocator.cpp free_block(): merge with free neighbours, then cache the block."""
        block.allocated = False
        block.block_id = None
        block.requested = 0
        self._try_merge_blocks(block, block.prev)
        self._try_merge_blocks(block, block.next)
        block.pool.insert_into_blocks(block)

    def _try_merge_blocks(self, dst: _Block, src: _Block | None) -> int:
        """CUDACachingAllocator.cpp try_merge_blocks(): absorb a free neighbour in the same mapped state.

        ``dst`` must be out of the pool's sets; returns the bytes absorbed (0 if none).
        """
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        (dst.pool.blocks if src.mapped else dst.pool.unmapped).remove(src)
        if dst.prev is src:
            dst.address = src.address
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    # -- getting memory from the device ------------------------------------------------------------
    def _alloc_block(
        self, pool: _Pool, stream: int, size: int, alloc_size: int, retry: bool
    ) -> _Block | None:
        """CUDACachingAllocator.cpp alloc_block(): a new segment, or None if it does not fit.

        The memory-fraction check compares reserved + the segment size (get_allocation_size, even
        for expandable segments) with the capacity; expandable segments then map pages instead.
        """
        if retry:
            self.num_alloc_retries += 1
        if self.capacity is not None and self._reserved + alloc_size > self.capacity:
            return None
        if self.config.expandable_segments:
            return self._try_allocate_expandable_block(pool, stream, size)
        block = _Block(pool, stream, self._new_address(alloc_size), alloc_size)
        self._change_reserved(alloc_size)
        return block

    def _new_address(self, size: int) -> int:
        address = self._next_address
        self._next_address += size
        return address

    def _try_allocate_expandable_block(self, pool: _Pool, stream: int, size: int) -> _Block | None:
        """CUDACachingAllocator.cpp try_allocate_expandable_block(): map pages until ``size`` bytes are free.

        Starts at the lowest-address free-or-unmapped run with room (find_expandable_block), maps
        the unmapped part page by page (map_block), and hands the merged free block to the caller.
        """
        candidate = self._find_expandable_block(pool, stream, size)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            assert following is not None and not following.mapped
            if not self._map_block(following, min(size - candidate.size, following.size)):
                return None
            candidate = following  # map_block merged the old candidate into it
        pool.blocks.remove(candidate)
        return candidate

    def _find_expandable_block(self, pool: _Pool, stream: int, size: int) -> _Block:
        """CUDACachingAllocator.cpp find_expandable_block(): the lowest address with ``size`` bytes of room.

        Room is a run of free and unmapped blocks starting at an unmapped range (or the free block
        just before it). Without one, a new expandable segment is reserved: its virtual range is
        1 1/8 of the capacity, in pages of kSmallBuffer (small pool) or kLargeBuffer (large pool).
        The model uses large_segment_size for the large page, which equals kLargeBuffer (20 MiB)
        unless large_segment_size_mb is set; what 2.13 does then was not visible in the sources read.
        """

        def has_room(block: _Block | None) -> bool:
            room = 0
            while room < size and block is not None and not block.allocated:
                room += block.size
                block = block.next
            return room >= size

        unmapped = pool.unmapped
        at = unmapped.lower_bound((stream, -1))
        while at < len(unmapped) and unmapped[at].stream == stream:
            start = unmapped[at]
            if start.prev is not None and not start.prev.allocated:
                start = start.prev
            if has_room(start):
                return start
            at += 1
        page = K_SMALL_BUFFER if pool.is_small else self.config.large_segment_size
        total = _UNBOUNDED_ADDRESS_SPACE if self.capacity is None else self.capacity + self.capacity // 8
        virtual = -(-total // page) * page
        segment = _Expandable(self._new_address(virtual), page, virtual)
        block = _Block(pool, stream, segment.base, virtual, segment, mapped=False)
        pool.unmapped.add(block)
        return block

    def _map_block(self, block: _Block, size: int) -> bool:
        """CUDACachingAllocator.cpp map_block(): back the first ``size`` bytes of an unmapped range.

        ExpandableSegment::map() rounds the end up to a whole page; the pages join the free block
        before them, and reserved grows by the mapped pages. False if the pages do not fit.
        """
        segment = block.expandable
        assert segment is not None
        pages = -(-size // segment.page)
        mapped = pages * segment.page
        if self.capacity is not None and self._reserved + mapped > self.capacity:
            return False
        block.pool.unmapped.remove(block)
        block.mapped = True
        if mapped < block.size:
            rest = _Block(
                block.pool, block.stream, block.address + mapped, block.size - mapped, segment, False
            )
            rest.splice(block, block.next)
            block.pool.unmapped.add(rest)
            block.size = mapped
        self._try_merge_blocks(block, block.prev)
        self._try_merge_blocks(block, block.next)
        block.pool.insert_into_blocks(block)
        self._change_reserved(mapped)
        return True

    # -- giving memory back ------------------------------------------------------------------------
    def _release_available_cached_blocks(self, pool: _Pool, stream: int, size: int) -> bool:
        """CUDACachingAllocator.cpp release_available_cached_blocks(): free oversize cached segments.

        Only with max_split_size set. The smallest cached block of at least max(size, max_split_size)
        on the stream is released; if there is none, oversize blocks from the largest down until
        that many bytes are released. Expandable blocks cannot be cudaFree'd and are passed over, as
        in the newer device-generic copy of this function (c10/core/CachingDeviceAllocator.h).
        """
        max_split = self.config.max_split_size
        if max_split is None:
            return False
        target = max(size, max_split)
        blocks = pool.blocks
        at = blocks.lower_bound((stream, target, -1))
        if at < len(blocks) and blocks[at].stream == stream and blocks[at].expandable is None:
            self._release_block(blocks[at])
            return True
        released = 0
        at -= 1
        while at >= 0 and released < target and blocks[at].size >= max_split and blocks[at].stream == stream:
            if blocks[at].expandable is None:
                released += blocks[at].size
                self._release_block(blocks[at])
            at -= 1
        return released >= target

    def _release_cached_blocks(self) -> None:
        """CUDACachingAllocator.cpp release_cached_blocks(): release every whole cached segment.

        Large pool first, then small; within a pool in (stream, size, address) order (release_blocks).
        """
        self._release_blocks(self._large)
        self._release_blocks(self._small)

    def _release_blocks(self, pool: _Pool) -> None:
        """CUDACachingAllocator.cpp release_blocks(): cudaFree unsplit blocks, unmap free expandable pages.

        A segment is freed only if it is one whole free block; in an expandable segment every free
        block gives back the whole pages inside it, and a segment left fully unmapped is released.
        """
        to_unmap = []
        for block in pool.blocks:
            if block.expandable is not None:
                to_unmap.append(block)
            elif not block.is_split():
                self._release_block(block)
        for block in to_unmap:
            self._unmap_block(block)
            if not block.is_split():
                # release_expandable_segment(): the whole virtual range is unmapped.
                assert block.expandable is not None and block.size == block.expandable.size
                pool.unmapped.remove(block)

    def _release_block(self, block: _Block) -> None:
        """CUDACachingAllocator.cpp release_block(): cudaFree a whole cached segment."""
        block.pool.blocks.remove(block)
        self._change_reserved(-block.size)

    def _unmap_block(self, block: _Block) -> None:
        """CUDACachingAllocator.cpp unmap_block(): unmap the whole pages strictly inside a free block.

        ExpandableSegment::unmap() rounds the start up and the end down to pages; the partial pages
        at either end stay mapped as free blocks of their own.
        """
        segment = block.expandable
        assert segment is not None
        offset = block.address - segment.base
        first = -(-offset // segment.page)
        last = (offset + block.size) // segment.page
        if first >= last:
            return
        pool = block.pool
        pool.blocks.remove(block)
        start = segment.base + first * segment.page
        length = (last - first) * segment.page
        before = start - block.address
        if before > 0:
            head = _Block(pool, block.stream, block.address, before, segment)
            head.splice(block.prev, block)
            pool.insert_into_blocks(head)
        after = block.size - before - length
        if after > 0:
            tail = _Block(pool, block.stream, start + length, after, segment)
            tail.splice(block, block.next)
            pool.insert_into_blocks(tail)
        block.address = start
        block.size = length
        block.mapped = False
        self._try_merge_blocks(block, block.prev)
        self._try_merge_blocks(block, block.next)
        pool.unmapped.add(block)
        self._change_reserved(-length)

    def _garbage_collect_cached_blocks(self) -> None:
        """CUDACachingAllocator.cpp garbage_collect_cached_blocks(): free old cached large segments.

        Runs when reserved exceeds threshold * capacity, to reclaim the excess. Candidates are the
        large pool's unsplit cached blocks; each round frees every candidate whose age (pool searches
        since it was cached) is at least the candidates' mean age, and rounds repeat until enough is
        reclaimed or a round frees nothing. Rounds do not stop mid-way at the target. Expandable
        blocks are never candidates to free (the newer c10/core/CachingDeviceAllocator.h says so
        explicitly; in 001074d they are always split, so never candidates either).
        """
        assert self.capacity is not None and self.config.garbage_collection_threshold is not None
        threshold = int(self.config.garbage_collection_threshold * self.capacity)
        if self._reserved <= threshold:
            return
        target = self._reserved - threshold
        pool = self._large
        ages = [pool.gc_count(block) for block in pool.blocks if not block.is_split()]
        total_age, candidates = sum(ages), len(ages)
        reclaimed, freed = 0, True
        while reclaimed < target and freed and candidates > 0:
            mean_age = total_age / candidates
            freed = False
            for block in pool.blocks:
                if not block.is_split() and block.expandable is None and pool.gc_count(block) >= mean_age:
                    freed = True
                    reclaimed += block.size
                    total_age -= pool.gc_count(block)
                    candidates -= 1
                    self._release_block(block)


def _expandable_size(block: _Block) -> int:
    following = block.next
    return block.size + (following.size if following is not None and not following.mapped else 0)


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    """CUDACachingAllocator.cpp roundup_power2_next_division(): the next of ``divisions`` steps.

    E.g. 1200 B with 4 divisions: between 1024 and 2048 the steps are 1024, 1280, 1536, 1792 -> 1280.
    """
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    rounded = size & ~(step - 1)
    return size if rounded == size else rounded + step
