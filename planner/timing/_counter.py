"""Every op of a traced training step with its kind, shape, FLOPs and bytes, for the time model.

The step is the estimator's fake-tensor trace (same model, peft, quantisation, checkpointing,
optimizer), so recomputation, dequantisation and the optimizer's element-wise work are all counted
as they would run. FLOPs use PyTorch's own formulas (``torch.utils.flop_counter``); bytes are what
each op reads and writes (no cache reuse: the usual roofline bound). Matmuls keep their (M, N, K),
fused attention its lengths and head size, so that :mod:`planner.timing._kernels` can time each
kind from its own efficiency curve.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
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


# The CPU's fused attention (what a fake trace runs when emulating CUDA's flash kernel) has no
# formula in PyTorch's table; it does the same matmuls as the CUDA kernels.
_EXTRA_FORMULAS: dict[Any, Any] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
}
_GEMM_4BIT = "bitsandbytes.gemm_4bit.default"


def _flop_formula(func: Any) -> Any:
    """FLOPs formula of ``func`` (None: moves data only), by name for ops of optional libraries."""
    if str(func) == _GEMM_4BIT:
        return _gemm_4bit_flops
    return _EXTRA_FORMULAS.get(func.overloadpacket) or flop_registry.get(func.overloadpacket)


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
_GEMMS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
# Ops that reduce over a dimension: inductor starts a new kernel at each (pointwise work around
# it fuses into it), see :mod:`planner.timing._compiled`.
_REDUCTIONS = {
    aten.sum,
    aten.mean,
    aten.amax,
    aten.var_mean,
    aten._softmax,
    aten._log_softmax,
    aten._log_softmax_backward_data,
    aten._softmax_backward_data,
    aten.nll_loss_forward,
    aten.nll_loss_backward,
    aten.native_layer_norm,
    aten.native_layer_norm_backward,
    aten.embedding_dense_backward,
}


@dataclass(frozen=True)
class GemmShape:
    """A (batched) matmul ``batch x (m x k) @ (k x n)``."""

    batch: int
    m: int
    n: int
    k: int


@dataclass(frozen=True)
class AttentionShape:
    """A fused attention call: ``batch_heads`` query heads of ``q_len`` rows over ``kv_len`` keys."""

    batch_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    backward: bool
    causal: bool


@dataclass(frozen=True)
class OpCost:
    """One op of the traced step: what kind of kernel it is, its work, and the data it touches.

    ``kind`` is ``gemm`` (timed from its shape), ``attention`` (fused SDPA, timed from its lengths)
    or ``memory`` (element-wise, normalisation, copies, the optimizer's update, 4-bit dequantisation:
    timed at bandwidth). ``reads``/``writes`` are (storage id, bytes) pairs, so that a compiled
    step can tell which intermediates a fused kernel never writes out.
    """

    kind: str
    flops: int
    bytes: int
    half: bool = True
    """Inputs in fp16/bf16 (tensor-core peak) rather than fp32."""
    gemm: GemmShape | None = None
    attention: AttentionShape | None = None
    reduction: bool = False
    reads: tuple[tuple[int, int], ...] = ()
    writes: tuple[tuple[int, int], ...] = ()


@dataclass
class PhaseCosts:
    """The ops of one phase of the step, in issue order: forward (incl. loss), backward, optimizer."""

    ops: list[OpCost] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def count(self) -> int:
        return len(self.ops)


StorageId = Callable[[torch.Tensor], int]


def _storages(tensors: list[torch.Tensor], storage_id: StorageId) -> tuple[tuple[int, int], ...]:
    """(storage id, bytes of the tensor) per distinct tensor: views of one storage share the id."""
    seen: set[int] = set()
    pairs = []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            pairs.append((storage_id(tensor), tensor.numel() * tensor.element_size()))
    return tuple(pairs)


def _is_half(tensors: list[torch.Tensor]) -> bool:
    """The op computes in fp16/bf16: its first floating operand is (matmul operands, the query;
    fp32 side inputs such as attention's log-sum-exp do not change the kernel's dtype)."""
    first = next((t for t in tensors if t.is_floating_point()), None)
    return first is not None and first.element_size() <= 2


def _gemm_shape(func: Any, args: Any) -> GemmShape | None:
    packet = func.overloadpacket
    if packet in (aten.addmm, aten.baddbmm):
        args = args[1:]
    if packet in (aten.mm, aten.addmm):
        a, b = args[0], args[1]
        return GemmShape(1, a.shape[0], b.shape[1], a.shape[1])
    if packet in (aten.bmm, aten.baddbmm):
        a, b = args[0], args[1]
        return GemmShape(a.shape[0], a.shape[1], b.shape[2], a.shape[2])
    return None


def _argument(func: Any, args: Any, kwargs: dict[str, Any], name: str) -> Any:
    """The value of argument ``name`` of a call to ``func``, given or defaulted."""
    for position, argument in enumerate(func._schema.arguments):
        if argument.name == name:
            if name in kwargs:
                return kwargs[name]
            return args[position] if position < len(args) else argument.default_value
    return None


def _attention_shape(func: Any, args: Any, kwargs: dict[str, Any], causal_lm: bool) -> AttentionShape | None:
    """The call's shape; causal also for a causal LM's square attention given a mask, since
    transformers passes the mask only because it cannot see on fake tensors that rows are unpadded
    (on data it drops the mask and sets ``is_causal``)."""
    name = str(func)
    if "scaled_dot_product" not in name:
        return None
    query, key = _argument(func, args, kwargs, "query"), _argument(func, args, kwargs, "key")
    *lead, q_len, head = query.shape
    heads = 1
    for size in lead:
        heads *= size
    square = q_len == key.shape[-2]
    causal = bool(_argument(func, args, kwargs, "is_causal")) or (causal_lm and square)
    return AttentionShape(heads, q_len, key.shape[-2], head, "backward" in name, causal)


def _gemm_4bit_ops(args: Any, out: torch.Tensor, storage_id: StorageId) -> list[OpCost]:
    """bitsandbytes' ``MatMul4Bit`` on CUDA (bitsandbytes/autograd/_functions.py): for more than a
    single row it dequantises the whole NF4 weight to the compute dtype (a bandwidth-bound kernel
    reading 4-bit codes, writing 16-bit values) and runs a dense matmul on it."""
    a, packed, shape_b = args[0], args[1], args[2]
    n, k = shape_b
    weight_bytes = n * k * a.element_size()
    dequantise = OpCost(
        kind="memory",
        flops=0,
        bytes=packed.numel() * packed.element_size() + weight_bytes,
    )
    m = a.numel() // k
    reads = _storages([a], storage_id)
    writes = _storages([out], storage_id)
    matmul = OpCost(
        kind="gemm",
        flops=2 * m * n * k,
        bytes=sum(b for _, b in reads) + weight_bytes + sum(b for _, b in writes),
        half=a.element_size() <= 2,
        gemm=GemmShape(1, m, n, k),
        reads=reads,
        writes=writes,
    )
    return [dequantise, matmul]


class OpCostCounter(TorchDispatchMode):
    """Records each op's kind, shape, FLOPs and bytes, by the phase the estimator's tracker is in."""

    def __init__(self, tracer: StepTracer) -> None:
        super().__init__()
        self._tracer = tracer
        self.phases: dict[str, PhaseCosts] = {}
        self._untracked = itertools.count(-1, -1)

    def _storage_id(self, tensor: torch.Tensor) -> int:
        """The tracker's id of the tensor's storage (unique for the whole trace, unlike addresses,
        which freed storages hand on); a fresh id for a storage it never saw."""
        found = self._tracer.tracker.storage_id(tensor)
        return found if found is not None else next(self._untracked)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        mutates = func._schema.is_mutable
        if func.is_view or func.overloadpacket in _NO_DATA_MOVED or not (outputs or mutates):
            return out  # metadata, views and fresh allocations move no data
        phase = "forward" if self._tracer.tracker.phase == "loss" else self._tracer.tracker.phase
        costs = self.phases.setdefault(phase, PhaseCosts())
        if str(func) == _GEMM_4BIT and outputs:
            costs.ops.extend(_gemm_4bit_ops(args, outputs[0], self._storage_id))
            return out
        formula = _flop_formula(func)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        attention = _attention_shape(func, args, kwargs, self._tracer.setup.task == "causal-lm")
        if attention is not None and attention.causal and attention.q_len == attention.kv_len:
            # PyTorch's formula counts the full score matrix; causal flash/efficient kernels skip
            # the blocks above the diagonal, about half (FlashAttention-2 paper, sec. 3.1.1).
            flops //= 2
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        extra: list[torch.Tensor] = []
        if func.overloadpacket is aten.embedding:
            inputs = inputs[1:]  # a lookup reads the rows it returns, not the whole table
            extra = outputs
        if not outputs:
            extra = inputs  # in place with no return (fused optimizers): read and write back
        reads, writes = _storages(inputs, self._storage_id), _storages(outputs, self._storage_id)
        gemm = _gemm_shape(func, args) if func.overloadpacket in _GEMMS else None
        kind = "gemm" if gemm is not None else "attention" if attention is not None else "memory"
        extra_bytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in extra}.values())
        moved = sum(b for _, b in reads) + sum(b for _, b in writes) + extra_bytes
        costs.ops.append(
            OpCost(
                kind=kind,
                flops=flops,
                bytes=moved,
                half=_is_half(inputs),
                gemm=gemm,
                attention=attention,
                reduction=func.overloadpacket in _REDUCTIONS,
                reads=reads,
                writes=writes if outputs else reads,
            )
        )
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
