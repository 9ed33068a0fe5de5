"""FLOPs and bytes of every op of a traced training step, for the roofline.

The step is the estimator's fake-tensor trace (same model, peft, quantisation, checkpointing,
optimizer), so recomputation, dequantisation and the optimizer's element-wise work are all counted
as they would run. FLOPs use PyTorch's own formulas (``torch.utils.flop_counter``); bytes are what
each op reads and writes (no cache reuse: the usual roofline bound).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from planner.step import StepTracer

aten = torch.ops.aten


def _cpu_flash_attention_flops(
    query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kw: Any
) -> int:
    return int(sdpa_flop_count(query.shape, key.shape, value.shape))


def _cpu_flash_attention_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kw: Any
) -> int:
    return int(sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape))


def _gemm_4bit_flops(a: Any, b: Any, shape_b: Any, *args: Any, out_val: Any = None, **kw: Any) -> int:
    n, k = shape_b
    return 2 * (a.numel() // k) * n * k


def _gemm_4bit_extra_bytes(a: Any, b: Any, shape_b: Any, *args: Any, **kw: Any) -> int:
    # On CUDA, bitsandbytes' MatMul4Bit dequantises the whole weight to the compute dtype and then
    # runs a dense matmul: the dequantised weight is written once and read once more.
    n, k = shape_b
    return 2 * n * k * a.element_size()


# The CPU's fused attention (what a fake trace runs when emulating CUDA's flash kernel) has no
# formula in PyTorch's table; it does the same matmuls as the CUDA kernels.
_EXTRA_FORMULAS: dict[Any, Any] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
}


def _formulas(func: Any) -> tuple[Any, Any]:
    """(FLOPs formula, extra-bytes formula) of ``func``, by name for ops of optional libraries."""
    if str(func) == "bitsandbytes.gemm_4bit.default":
        return _gemm_4bit_flops, _gemm_4bit_extra_bytes
    return _EXTRA_FORMULAS.get(func) or flop_registry.get(func.overloadpacket), None


_NO_DATA_MOVED = {
    aten.detach,
    aten.lift_fresh,
    aten._unsafe_view,
    aten.alias,
    aten.empty_like,
    aten.empty,
    aten.empty_strided,
    aten.new_empty,
}


@dataclass
class PhaseCosts:
    """Per-op (FLOPs, bytes) of one phase of the step: forward (incl. loss), backward, optimizer."""

    flops: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)

    @property
    def ops(self) -> int:
        return len(self.flops)


def _nbytes(tensors: list[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        key = id(tensor)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


class OpCostCounter(TorchDispatchMode):
    """Records each op's FLOPs and bytes moved, by the phase the estimator's tracker is in."""

    def __init__(self, tracer: StepTracer) -> None:
        super().__init__()
        self._tracer = tracer
        self.phases: dict[str, PhaseCosts] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        mutates = func._schema.is_mutable
        if func.is_view or func.overloadpacket in _NO_DATA_MOVED or not (outputs or mutates):
            return out  # metadata, views and fresh allocations move no data
        formula, extra_bytes = _formulas(func)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        moved = int(extra_bytes(*args, **kwargs)) if extra_bytes is not None else 0
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func.overloadpacket is aten.embedding:
            inputs = inputs[1:]  # a lookup reads the rows it returns, not the whole table
            moved += _nbytes(outputs)
        if not outputs:
            moved += _nbytes(inputs)  # in place with no return (fused optimizers): read and write back
        phase = "forward" if self._tracer.tracker.phase == "loss" else self._tracer.tracker.phase
        costs = self.phases.setdefault(phase, PhaseCosts())
        costs.flops.append(flops)
        costs.bytes.append(_nbytes(inputs) + _nbytes(outputs) + moved)
        return out


class CostedTracer(StepTracer):
    """The estimator's step tracer, counting op costs of each traced step (not of its set-up)."""

    counter: OpCostCounter | None = None

    def _tracing(self) -> contextlib.ExitStack:
        stack = super()._tracing()
        if self.counter is not None:
            stack.enter_context(self.counter)
        return stack

    def costs(self, micro_batch: int) -> dict[str, PhaseCosts]:
        """Op costs of one steady-state step at ``micro_batch``, by phase."""
        self.counter = OpCostCounter(self)
        try:
            self.trace(micro_batch)
            return self.counter.phases
        finally:
            self.counter = None
