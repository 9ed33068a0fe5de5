"""Replaying streams through the allocator: a hand-made one, and one recorded from a real training step."""

from __future__ import annotations

import functools
import itertools
import weakref
from typing import Any

import pytest
import torch
import torch._dynamo  # the optimizer imports it lazily (~3 s): paid here, at collection, not in a test
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from planner.allocator import AllocatorConfig, Event, replay

MiB = 1 << 20


class _Recorder(TorchDispatchMode):
    """Records an alloc event for each new storage an op returns and a free event when it dies.

    Storages are keyed by ``id(untyped_storage())`` (views share one) with a weakref callback that
    emits the free before the id can be reused, as the estimator's live-bytes tracker does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self._ids: dict[int, int] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._next = itertools.count()

    def track(self, tensors: Any, op: str) -> None:
        for leaf in tree_leaves(tensors):
            if isinstance(leaf, torch.Tensor):
                self._register(leaf, op)

    def _register(self, tensor: torch.Tensor, op: str) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._ids:
            return
        block = next(self._next)
        self._ids[key] = block
        self._refs[block] = weakref.ref(storage, functools.partial(self._release, key, block))
        self.events.append(Event.alloc(block, storage.nbytes(), op))

    def _release(self, key: int, block: int, _: weakref.ref[Any]) -> None:
        del self._ids[key], self._refs[block]
        self.events.append(Event.free(block))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.track(out, str(func))
        return out


def _record_training_step() -> list[Event]:
    """Forward, backward and an AdamW step of Linear(1024, 3000) -> GELU -> Linear(3000, 1024), batch 4.

    The 11.7 MiB weights (and their grads and AdamW states) are large-pool requests with segments of
    their own, 12 MiB each: the 0.3 MiB rest is not split off and counts as allocated. The rest is small.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 3000), torch.nn.GELU(), torch.nn.Linear(3000, 1024))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    batch, target = torch.randn(4, 1024), torch.randn(4, 1024)
    recorder = _Recorder()
    recorder.track([*model.parameters(), batch, target], "setup")
    with recorder:
        loss = torch.nn.functional.mse_loss(model(batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    return list(recorder.events)


@pytest.fixture(scope="module")
def step_events() -> list[Event]:
    return _record_training_step()


def _rounded_live_peak(events: list[Event]) -> int:
    """The peak of live bytes with each request rounded up to 512 B (and at least 512 B, if not empty)."""
    sizes: dict[object, int] = {}
    live = peak = 0
    for event in events:
        if event.kind == "alloc":
            sizes[event.block_id] = -(-event.size // 512) * 512
            live += sizes[event.block_id]
            peak = max(peak, live)
        else:
            live -= sizes.pop(event.block_id)
    return peak


def test_replay_reports_peaks_layout_and_stops_at_out_of_memory() -> None:
    """Hand-made stream: 9 MiB (20 MiB segment), 100 KiB (2 MiB segment), free 9 MiB, 30 MiB (own
    30 MiB segment). Reserved peaks at 52 MiB after event 3; allocated at 9 + 30 MiB + 100 KiB.

    With capacity 40 MiB the 30 MiB request fails at first (22 + 30 > 40), releasing the cached
    20 MiB segment makes room (2 + 30 <= 40), so the stream completes at 32 MiB reserved. With
    capacity 31 MiB it cannot (2 + 30 > 31): out of memory at event 3, after 3 events.
    """
    events = [
        Event.alloc("w", 9 * MiB, op="aten::empty"),
        Event.alloc("x", 100 * 1024),
        Event.free("w"),
        Event.alloc("y", 30 * MiB),
    ]
    result = replay(events, AllocatorConfig())
    assert (result.max_reserved, result.peak_event_index, result.segment_count_at_peak) == (52 * MiB, 3, 3)
    assert result.max_allocated == 30 * MiB + 100 * 1024
    assert result.out_of_memory is None and result.events_replayed == 4

    fits = replay(events, AllocatorConfig(), capacity=40 * MiB)
    assert (fits.out_of_memory, fits.max_reserved, fits.num_alloc_retries) == (None, 32 * MiB, 1)

    fails = replay(events, AllocatorConfig(), capacity=31 * MiB)
    assert fails.out_of_memory is not None and fails.events_replayed == 3
    assert (fails.out_of_memory.allocation, fails.out_of_memory.reserved) == (30 * MiB, 2 * MiB)


def test_an_empty_cache_event_releases_the_cached_segments() -> None:
    """9 MiB (20 MiB segment), 100 KiB (2 MiB segment), free 9 MiB: 22 MiB reserved. Emptying the
    cache releases the unused 20 MiB segment (the 2 MiB one holds a live block), so a 30 MiB request
    then takes its own segment next to 2 MiB: 32 MiB at the peak, not the 52 MiB of a kept cache."""
    events = [
        Event.alloc("w", 9 * MiB),
        Event.alloc("x", 100 * 1024),
        Event.free("w"),
        Event.empty_cache(),
        Event.alloc("y", 30 * MiB),
    ]
    result = replay(events, AllocatorConfig())
    assert (result.max_reserved, result.segment_count_at_peak) == (32 * MiB, 2)
    with pytest.raises(ValueError, match="has size"):
        Event("empty_cache", None, size=1)


def test_replay_of_a_recorded_training_step(step_events: list[Event]) -> None:
    """Invariants on a real CPU-recorded stream.

    - allocated counts whole blocks: with expandable segments (every rest >= 512 B is split off)
      exactly the 512-rounded live peak; by default more, as the large pool keeps rests <= 1 MiB in
      the block (here the 0.3 MiB rests of the 12 MiB segments), but at most 1 MiB per large block.
    - reserved is a sum of segments, each a multiple of 2 MiB, and at least the allocated peak.
    - just below the peak reserved, the first failing segment request releases the cache and
      retries; the replay then either fits under the capacity or stops at a request that cannot fit
      even with nothing cached.
    """
    events = step_events
    assert sum(event.kind == "alloc" for event in events) > 20
    live_peak = _rounded_live_peak(events)

    result = replay(events, AllocatorConfig())
    assert result.out_of_memory is None and result.events_replayed == len(events)
    large_allocs = sum(event.kind == "alloc" and event.size > MiB for event in events)
    assert live_peak < result.max_allocated <= live_peak + large_allocs * MiB
    assert result.max_reserved >= result.max_allocated
    assert sum(segment.size for segment in result.segments_at_peak) == result.max_reserved
    assert all(segment.size % (2 * MiB) == 0 for segment in result.segments_at_peak)
    assert {segment.pool for segment in result.segments_at_peak} == {"small", "large"}

    expandable = replay(events, AllocatorConfig(expandable_segments=True))
    assert expandable.max_allocated == live_peak
    assert expandable.max_reserved >= live_peak

    roomy = replay(events, AllocatorConfig(), capacity=result.max_reserved)
    assert (roomy.out_of_memory, roomy.num_alloc_retries) == (None, 0)
    assert roomy.max_reserved == result.max_reserved

    capacity = result.max_reserved - 1
    tight = replay(events, AllocatorConfig(), capacity=capacity)
    assert tight.num_alloc_retries >= 1
    if tight.out_of_memory is None:
        assert tight.max_reserved <= capacity < result.max_reserved
        assert tight.max_allocated == result.max_allocated
    else:
        error = tight.out_of_memory
        assert error.reserved + error.allocation > capacity
        assert error.allocated <= error.reserved
