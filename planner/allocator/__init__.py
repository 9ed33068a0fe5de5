"""A model of PyTorch's CUDA caching allocator: what a traced stream of allocations reserves.

The estimator knows which tensors are live at each moment; the GPU also holds the allocator's
cached-but-free memory and the rounding of blocks and segments, which is what ``memory_reserved``
and out-of-memory errors are about. This package replays a stream of ``alloc``/``free`` events
through the caching allocator's rules and reports ``max_memory_allocated``, ``max_memory_reserved``
and the segment layout at the peak, with no GPU and no torch import.

What it reproduces (``DeviceCachingAllocator`` in ``c10/cuda/CUDACachingAllocator.cpp``, read at
pytorch commit 001074d25084fdb87a799823e395a50f5ec044d3, checked against a newer device-generic copy in
``c10/core/CachingDeviceAllocator.h`` and the torch 2.13.0 headers ``c10/core/AllocatorConfig.h`` and
``c10/cuda/CUDAAllocatorConfig.h``, git cf30153c, whose CPU build also ships the settings parser):

- 512-byte block rounding and ``roundup_power2_divisions``; small (<= 1 MiB, 2 MiB segments) and
  large pools; 20 MiB segments for 1-10 MiB requests (``large_segment_size``), 2 MiB rounding above;
- best-fit search per pool and stream, splitting and merging of blocks;
- ``max_split_size`` (oversize blocks are not split and only serve oversize requests within
  ``max_non_split_rounding``), ``garbage_collection_threshold`` (age-based freeing of cached
  segments against a memory fraction), ``expandable_segments`` (one growing segment per pool and
  stream, mapped in pages, unmapped only when the cache is released);
- the out-of-memory path: free cached oversize segments, then the whole cache, retry, then fail;
- ``PYTORCH_CUDA_ALLOC_CONF`` (then ``PYTORCH_HIP_ALLOC_CONF``, ``PYTORCH_ALLOC_CONF``) parsing with
  torch 2.13's acceptance rules.

What it leaves out: cross-stream use (``record_stream`` and its CUDA events, which delay a block's
return to the cache), CUDA graphs and private memory pools, free-memory callbacks, IPC, the
``cudaMallocAsync`` backend, toggling settings at run time, and memory outside the allocator (CUDA
context, cuBLAS workspaces): a capacity here is what the allocator may reserve. Addresses are a
counter (each new segment after the last), not real device addresses, so ties between equally
sized free blocks resolve to the older segment.
"""

from planner.allocator._config import AllocatorConfig
from planner.allocator._model import AllocatorOutOfMemory, BlockInfo, CachingAllocator, SegmentInfo
from planner.allocator._replay import Event, ReplayResult, replay

__all__ = [
    "AllocatorConfig",
    "AllocatorOutOfMemory",
    "BlockInfo",
    "CachingAllocator",
    "Event",
    "ReplayResult",
    "SegmentInfo",
    "replay",
]
