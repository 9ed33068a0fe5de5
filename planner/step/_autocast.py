"""CUDA's autocast policy on a trace that runs under the CPU's autocast.

The trace stands for a CUDA step but runs ``torch.autocast("cpu")``, and the two devices' policies
differ: CUDA's autocast runs a list of precision-sensitive ops in fp32 (softmax, log_softmax,
layer_norm, sum, pow, exp, the losses, ...), casting fp16/bf16 inputs up and returning fp32, while
the CPU's leaves most of them in the half dtype. So under mixed precision a CUDA step holds fp32
softmax probabilities (saved for backward), fp32 layer-norm outputs and fp32 loss inputs where the
CPU's holds half ones. The ops and their policy are PyTorch's (``AT_FORALL_FP32`` and
``AT_FORALL_FP32_SET_OPT_DTYPE`` in ``aten/src/ATen/autocast_mode.h``, registered for CUDA in
``autocast_mode.cpp``; the "CUDA Ops that can autocast to float32" table of the torch.amp docs).

The policy is applied above autograd, as autocast is: a function mode casts the half floating
tensors among the arguments of those ops to fp32 (an autograd ``to``) before the op runs, while
autocast is on (``torch.is_autocast_enabled("cpu")``, so regions that turn it off stay off).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# aten names of AT_FORALL_FP32 and AT_FORALL_FP32_SET_OPT_DTYPE, plus the Python-level names that
# reach them first (a function mode sees the outermost call: F.cross_entropy runs log_softmax and
# nll_loss, Tensor.__pow__ is pow, F.normalize and torch.norm run norm).
FP32_OPS = frozenset(
    {
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
        "reciprocal", "rsqrt", "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus",
        "layer_norm", "rms_norm", "group_norm", "cosine_similarity", "poisson_nll_loss",
        "cosine_embedding_loss", "nll_loss", "cross_entropy", "hinge_embedding_loss", "kl_div",
        "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
        "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
        "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
        "prod", "softmax", "log_softmax", "softmin", "cumprod", "cumsum", "sum", "norm",
        "normalize", "vector_norm", "matrix_norm",
    }
)  # fmt: skip
HALF = (torch.float16, torch.bfloat16)


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in HALF:
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(item) for item in value)
    return value


class CudaAutocastPolicy(TorchFunctionMode):
    """While entered (and autocast is on), CUDA autocast's fp32 ops run on fp32 inputs."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        # An explicit dtype (softmax(x, dim, dtype=...)) is kept, as the SET_OPT_DTYPE policy keeps it.
        if name in FP32_OPS and kwargs.get("dtype") is None and torch.is_autocast_enabled("cpu"):
            args = _to_fp32(args)
            kwargs = {key: _to_fp32(value) for key, value in kwargs.items()}
        return func(*args, **kwargs)
