"""A simulated memory limit: the real ``torch.OutOfMemoryError`` above a micro-batch, on any device.

OOM handling is what a GPU-less machine cannot otherwise exercise. Under this mode every op that
allocates a ``(batch, seq_len, ...)`` tensor with ``batch`` at or above the limit raises the error
CUDA's allocator raises, with its wording (which accelerate and Lightning match on), so the
finder's recovery, and the other tools' retries, run their real code paths on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class OutOfMemoryAbove(TorchDispatchMode):
    """Raise ``torch.OutOfMemoryError`` from any op allocating a micro-batch of ``micro_batch`` or more.

    The op's output is dropped as the error propagates, as a failed allocation leaves nothing.
    ``raised`` counts the errors, so a caller can tell the limit was actually hit.
    """

    def __init__(self, micro_batch: int, seq_len: int) -> None:
        super().__init__()
        self.micro_batch = micro_batch
        self.seq_len = seq_len
        self.raised = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if (
                isinstance(leaf, torch.Tensor)
                and leaf.dim() >= 2
                and leaf.shape[0] >= self.micro_batch
                and leaf.shape[1] == self.seq_len
            ):
                self.raised += 1
                nbytes = leaf.untyped_storage().nbytes()
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {nbytes} bytes (simulated limit: "
                    f"micro-batch {leaf.shape[0]} >= {self.micro_batch})"
                )
        return out
