"""What counts as running out of memory, on every device a step runs on."""

from __future__ import annotations

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``torch.OutOfMemoryError``, or the CPU allocator failing.

    The CPU allocator raises a plain RuntimeError whose message says "can't allocate memory"
    (c10/core/impl/alloc_cpu.cpp); a real OOM on the host must be handled like one on the GPU.
    """
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
