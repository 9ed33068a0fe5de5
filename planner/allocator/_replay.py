"""Replaying a traced stream of allocations and frees through the allocator model."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Literal

from planner.allocator._config import AllocatorConfig
from planner.allocator._model import AllocatorOutOfMemory, CachingAllocator, SegmentInfo


@dataclass(frozen=True)
class Event:
    """One request in a traced stream: allocate ``size`` bytes as ``block_id``, free ``block_id``,
    or empty the cache (``torch.cuda.empty_cache()``, which a training loop may call between steps).

    ``op`` labels who made the request (e.g. the aten op); ``stream`` keeps blocks apart the way
    torch keeps them per CUDA stream (nothing else about streams is modelled).
    """

    kind: Literal["alloc", "free", "empty_cache"]
    block_id: Hashable
    size: int = 0
    op: str | None = None
    stream: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("alloc", "free", "empty_cache"):
            raise ValueError(f"event kind must be 'alloc', 'free' or 'empty_cache', not {self.kind!r}")
        if self.size < 0 or (self.kind != "alloc" and self.size):
            raise ValueError(f"{self.kind} event for {self.block_id!r} has size {self.size}")

    @classmethod
    def alloc(cls, block_id: Hashable, size: int, op: str | None = None, stream: int = 0) -> Event:
        return cls("alloc", block_id, size, op, stream)

    @classmethod
    def free(cls, block_id: Hashable, op: str | None = None, stream: int = 0) -> Event:
        return cls("free", block_id, 0, op, stream)

    @classmethod
    def empty_cache(cls) -> Event:
        return cls("empty_cache", None)


@dataclass(frozen=True)
class ReplayResult:
    """What the allocator did over a stream.

    ``segments_at_peak`` is the segment layout when reserved memory first reached its peak, after
    event ``peak_event_index`` (-1 if nothing was ever reserved). ``out_of_memory`` is set when
    the stream stopped at a request that did not fit; the other fields then cover the events before.
    """

    max_allocated: int
    max_reserved: int
    segments_at_peak: tuple[SegmentInfo, ...]
    peak_event_index: int
    out_of_memory: AllocatorOutOfMemory | None
    num_alloc_retries: int
    events_replayed: int

    @property
    def segment_count_at_peak(self) -> int:
        return len(self.segments_at_peak)


def replay(
    events: Iterable[Event], config: AllocatorConfig | None = None, capacity: int | None = None
) -> ReplayResult:
    """Run ``events`` through a fresh :class:`CachingAllocator`; stop at the first out-of-memory.

    The segment layout is taken once, at the reserved peak, by replaying the events up to it a
    second time: taking it at every new peak costs more than the replay itself on long streams.
    """
    stream = list(events)
    allocator, peak_index, replayed, out_of_memory = _run(stream, config, capacity, len(stream))
    segments: tuple[SegmentInfo, ...] = ()
    if peak_index >= 0:
        at_peak = _run(stream, config, capacity, peak_index + 1)[0]
        segments = tuple(at_peak.segments())
    return ReplayResult(
        max_allocated=allocator.max_allocated,
        max_reserved=allocator.max_reserved,
        segments_at_peak=segments,
        peak_event_index=peak_index,
        out_of_memory=out_of_memory,
        num_alloc_retries=allocator.num_alloc_retries,
        events_replayed=replayed,
    )


def _run(
    stream: list[Event], config: AllocatorConfig | None, capacity: int | None, count: int
) -> tuple[CachingAllocator, int, int, AllocatorOutOfMemory | None]:
    """The first ``count`` events through a fresh allocator: (allocator, index of the event that
    first reached the reserved peak, events replayed, the out-of-memory that stopped it)."""
    allocator = CachingAllocator(config, capacity)
    peak, peak_index, replayed = 0, -1, 0
    for index in range(count):
        event = stream[index]
        try:
            if event.kind == "alloc":
                allocator.malloc(event.block_id, event.size, event.stream)
            elif event.kind == "free":
                allocator.free(event.block_id)
            else:
                allocator.empty_cache()
        except AllocatorOutOfMemory as error:
            return allocator, peak_index, replayed, error
        replayed = index + 1
        # Within one event reserved only falls before it rises (releases precede new segments),
        # so its value after the event is that event's high point.
        if allocator.reserved > peak:
            peak, peak_index = allocator.reserved, index
    return allocator, peak_index, replayed, None
