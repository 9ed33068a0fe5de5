"""DistributedDataParallel's gradient buckets: the memory DDP adds to a single-GPU step.

``DistributedDataParallel`` (``bucket_cap_mb`` default 25, first bucket 1 MiB:
``dist._DEFAULT_FIRST_BUCKET_BYTES``) groups the trainable parameters into buckets with
``dist._compute_bucket_assignment_by_size`` and its C++ ``Reducer`` allocates one flat tensor per
bucket at construction (``Reducer::initialize_buckets``), kept for the model's life. With the
default ``gradient_as_bucket_view=False`` each gradient is copied into its bucket, the bucket is
all-reduced in place and copied back: the buckets are a second copy of the gradients, resident
from the start. A trace cannot run the real ``Reducer`` (it reads parameter data to check shapes
across ranks), so the buckets are allocated as the ``Reducer`` would and the step traced around
them; the real gloo test of ``tests/distributed`` checks the two agree.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

BUCKET_CAP_BYTES = 25 * 1024 * 1024
"""``DistributedDataParallel(bucket_cap_mb=None)`` resolves to 25 MiB."""
FIRST_BUCKET_BYTES = 1024 * 1024
"""``dist._DEFAULT_FIRST_BUCKET_BYTES``: the first bucket is capped at 1 MiB."""

GRADIENT_BUCKETS = "gradient_buckets"
"""The attribute of a traced model that holds its buckets (``StepTracer`` counts them as gradients)."""


def gradient_buckets(parameters: list[nn.Parameter]) -> list[tuple[int, torch.dtype]]:
    """(elements, dtype) of each bucket DDP builds for the trainable ``parameters``."""
    # In the order gradients become ready (the last layers' first), which is the order DDP
    # rebuilds its buckets in after the first step.
    trainable: list[torch.Tensor] = [p for p in reversed(parameters) if p.requires_grad]
    if not trainable:
        return []
    indices, _ = dist._compute_bucket_assignment_by_size(
        trainable, [FIRST_BUCKET_BYTES, BUCKET_CAP_BYTES], [False] * len(trainable)
    )
    return [(sum(trainable[i].numel() for i in bucket), trainable[bucket[0]].dtype) for bucket in indices]


def add_gradient_buckets(model: nn.Module) -> nn.Module:
    """Give ``model`` the flat bucket tensors DDP's ``Reducer`` would allocate for it."""
    buckets = [
        torch.empty(numel, dtype=dtype, device="cpu")
        for numel, dtype in gradient_buckets(list(model.parameters()))
    ]
    setattr(model, GRADIENT_BUCKETS, buckets)
    return model
