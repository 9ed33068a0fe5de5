"""Live tensor bytes over time, seen at the dispatcher: works the same on fake and real tensors.

Every op's outputs are registered by *storage* (views share one), with a finalizer that takes the
bytes off when the storage dies. That is what a caching allocator would have handed out at each
moment, so the running peak is the step's peak of live tensor bytes. A log of (storage, +/-bytes)
events lets the caller replay the live set at the peak afterwards and say who held the bytes.

Two things an allocator sees that the dispatcher alone would hide are followed too: tensor
subclasses that wrap others (a ``DTensor`` parameter of FSDP2 holds its shard in an inner tensor)
count by their inner tensors, and a storage resized in place (FSDP2 frees and regrows the storage
of each all-gathered parameter with ``UntypedStorage.resize_``, which no op reports) counts at its
new size from the moment of the resize.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

_DEVICE_QUERY = torch.ops.prim.device.default
_ACTIVE: list[LiveBytesTracker] = []
"""Trackers entered now, innermost last: the ones a storage resize is reported to."""
_STORAGE_RESIZE = torch.UntypedStorage.resize_


def _resize_seen(storage: torch.UntypedStorage, nbytes: int) -> Any:
    """``UntypedStorage.resize_``, reported to the trackers entered now."""
    out = _STORAGE_RESIZE(storage, nbytes)
    for tracker in _ACTIVE:
        tracker.resized(storage)
    return out


def _inner_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold a tensor's data: itself, or a wrapper subclass's inner tensors."""
    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    inners = [getattr(tensor, name) for name in names]
    return [leaf for inner in inners if isinstance(inner, torch.Tensor) for leaf in _inner_tensors(inner)]


@dataclass
class LivePeak:
    """The peak of one traced region and the storages live at that moment."""

    bytes: int
    live: dict[int, int] = field(default_factory=dict)
    """storage id -> bytes, for every storage live at the peak."""
    phases: dict[int, str] = field(default_factory=dict)
    """storage id -> phase it was allocated in ("setup", "forward", "loss", "backward", "optimizer")."""


class LiveBytesTracker(TorchDispatchMode):
    """Tracks the bytes of live tensor storages as ops run; usable on fake and real tensors.

    ``round_to`` rounds each storage up the way the allocator would (CUDA's caching allocator hands
    out multiples of 512 bytes), so the running total is what the allocator would report.
    """

    def __init__(self, round_to: int = 1, *, record_stream: bool = False) -> None:
        super().__init__()
        self.round_to = round_to
        self.stream: list[tuple[int, int]] | None = [] if record_stream else None
        """With ``record_stream``: every allocation ``(id, +bytes)`` and free ``(id, -bytes)`` in
        order since the tracker was made, what a caching allocator would have been asked for."""
        self.phase = "setup"
        self.live_bytes = 0
        # Python id of each live storage -> our id, and a weak reference whose callback takes the
        # storage's bytes off when it dies (before its Python id can be reused).
        self._ids: dict[int, int] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._next_id = 0
        self._sizes: dict[int, int] = {}
        self._phases: dict[int, str] = {}
        # The live set when the window opened, and the events since: a reused tracer keeps
        # neither a growing log nor the sizes and phases of storages long dead.
        self._window_live: dict[int, int] = {}
        self._window_bytes = 0
        self._events: list[tuple[int, int]] = []
        self._peak_bytes = 0
        self._peak_event = 0

    # -- registration ---------------------------------------------------------------------------
    def _rounded(self, nbytes: int) -> int:
        return -(-nbytes // self.round_to) * self.round_to

    def storage_id(self, tensor: torch.Tensor) -> int | None:
        """Our id of the storage behind ``tensor`` (of its first inner tensor for a wrapper
        subclass), or None if it was never registered."""
        return self._ids.get(id(_inner_tensors(tensor)[0].untyped_storage()))

    def track(self, tensors: Iterable[Any]) -> None:
        """Register tensors that exist already (weights, optimizer state) as live."""
        for leaf in tensors:
            if isinstance(leaf, torch.Tensor):
                self._register(leaf)

    def _register(self, tensor: torch.Tensor) -> None:
        if is_traceable_wrapper_subclass(tensor):
            for inner in _inner_tensors(tensor):
                self._register(inner)
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._ids or tensor.device.type == "meta":
            return
        nbytes = self._rounded(storage.nbytes())
        sid = self._next_id
        self._next_id += 1
        self._ids[key] = sid
        self._refs[sid] = weakref.ref(storage, functools.partial(self._release, key, sid))
        self._sizes[sid] = nbytes
        self._phases[sid] = self.phase
        self._record(sid, nbytes)

    def resized(self, storage: torch.UntypedStorage) -> None:
        """Count ``storage`` at its size now (it was resized in place); one never registered (made
        outside the tracker) stays unseen."""
        sid = self._ids.get(id(storage))
        if sid is None:
            return
        nbytes, old = self._rounded(storage.nbytes()), self._sizes[sid]
        if nbytes == old:
            return
        # An allocator serves a resize with a new block (the old one freed once copied): an
        # allocation of the new size after the old size's free, as far as the event log goes.
        self._sizes[sid] = nbytes
        if old:
            self._record(sid, -old)
        if nbytes:
            self._record(sid, nbytes)

    def _release(self, key: int, sid: int, _: weakref.ref[Any]) -> None:
        del self._ids[key], self._refs[sid]
        self._record(sid, -self._sizes.pop(sid))

    def _record(self, sid: int, delta: int) -> None:
        self.live_bytes += delta
        self._events.append((sid, delta))
        if self.stream is not None:
            self.stream.append((sid, delta))
        if delta > 0 and self.live_bytes > self._peak_bytes:
            self._peak_bytes = self.live_bytes
            self._peak_event = len(self._events)

    # -- peak windows ---------------------------------------------------------------------------
    def reset_peak(self) -> None:
        """Start a new peak window at the current live bytes (like ``reset_peak_memory_stats``)."""
        self._window_live = self._replay(len(self._events))
        # Storages not live now may still regrow (resized in place from 0): keep every registered one's.
        self._phases = {sid: phase for sid, phase in self._phases.items() if sid in self._sizes}
        self._events = []
        self._window_bytes = self._peak_bytes = self.live_bytes
        self._peak_event = 0

    def _replay(self, events: int) -> dict[int, int]:
        live = dict(self._window_live)
        for sid, delta in self._events[:events]:
            _apply(live, sid, delta)
        return live

    def peak(self) -> LivePeak:
        """The window's peak and, replayed from the event log, which storages were live then."""
        return self._live_peak(self._peak_bytes, self._replay(self._peak_event))

    def mark(self) -> int:
        """Where the window's event log is now: a bound for :meth:`peaks`."""
        return len(self._events)

    def peaks(self, spans: Sequence[tuple[int, int]]) -> list[LivePeak]:
        """The peak of each span ``(start, end)`` of :meth:`mark` positions within the window.

        A span's peak is its highest live total, from the one at ``start`` to the one at ``end``,
        the first one reached on a tie (as :meth:`peak` keeps it). Spans may overlap.
        """
        totals = list(itertools.accumulate((delta for _, delta in self._events), initial=self._window_bytes))
        at = [max(range(start, max(start, end) + 1), key=totals.__getitem__) for start, end in spans]
        # One replay through the peaks in log order, copying the live set at each.
        live, done, lives = dict(self._window_live), 0, {}
        for event in sorted(set(at)):
            for sid, delta in self._events[done:event]:
                _apply(live, sid, delta)
            done, lives[event] = event, dict(live)
        return [self._live_peak(totals[event], lives[event]) for event in at]

    def _live_peak(self, nbytes: int, live: dict[int, int]) -> LivePeak:
        return LivePeak(bytes=nbytes, live=live, phases={sid: self._phases[sid] for sid in live})

    def __enter__(self) -> LiveBytesTracker:
        if not _ACTIVE:
            torch.UntypedStorage.resize_ = _resize_seen  # type: ignore[method-assign,assignment]
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _ACTIVE.remove(self)
        if not _ACTIVE:
            torch.UntypedStorage.resize_ = _STORAGE_RESIZE  # type: ignore[method-assign]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is _DEVICE_QUERY:
            # Autograd asks each fake tensor's device through the dispatcher: two thirds of all
            # calls in a checkpointed step. It allocates nothing; the tensor's own ``device``
            # answers it as the fake mode's handler would, without two more Python layers.
            return args[0].device
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self._register(out)
        else:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self._register(leaf)
        return out


def _apply(live: dict[int, int], sid: int, delta: int) -> None:
    """One logged event on a live set (storage id -> bytes): an allocation, a free, a resize."""
    nbytes = live.get(sid, 0) + delta
    if nbytes > 0:
        live[sid] = nbytes
    else:
        live.pop(sid, None)
