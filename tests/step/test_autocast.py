"""CUDA's autocast policy on the CPU trace: the fp32 ops run in fp32, the rest as the CPU runs them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from planner.step import CudaAutocastPolicy


def test_cuda_fp32_ops_return_fp32_under_half_autocast() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    with CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.float16):
        h = x @ w
        # matmul stays half (CUDA's lower-precision list, the CPU's too) ...
        assert h.dtype == torch.float16
        # ... softmax, layer_norm, sum, pow and the losses are in CUDA's fp32 list.
        fp32 = [h.softmax(-1), F.layer_norm(h, (8,)), h.sum(), h**2, F.cross_entropy(h, labels)]
        assert all(t.dtype == torch.float32 for t in fp32)
        # Neither list: the CPU's own choice stands; an explicit dtype is kept.
        assert F.gelu(h).dtype == torch.float16
        assert h.softmax(-1, dtype=torch.float16).dtype == torch.float16
        with torch.autocast("cpu", enabled=False):
            assert h.softmax(-1).dtype == torch.float16
    fp32[0].sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_without_autocast_nothing_is_cast() -> None:
    h = torch.randn(4, 8, dtype=torch.bfloat16)
    with CudaAutocastPolicy():
        assert h.softmax(-1).dtype == torch.bfloat16
