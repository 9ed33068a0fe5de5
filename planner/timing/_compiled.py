"""What ``torch.compile`` (Trainer's ``torch_compile=True``, inductor backend) does to a step's time.

Rules, from PyTorch's inductor design (the TorchInductor design post, "TorchInductor: a PyTorch-
native Compiler with Define-by-Run IR and SymPy", dev-discuss.pytorch.org, 2022; the PyTorch 2
paper, Ansel et al., ASPLOS 2024, sec. 5):

- Matmuls and attention are not generated: inductor calls cuBLAS (``extern_kernels.mm``) and
  SDPA's flash/efficient kernels, so they take the time they take eagerly.
- Pointwise ops and reductions between them are fused: vertically (a consumer into its producer)
  and into reductions, so a run of memory-bound ops between two matmuls becomes a few Triton
  kernels, each reduction starting one. A fused kernel reads its run's inputs from memory once and
  writes only what is used outside the run (by later ops, including the backward pass, which
  reads what the forward saved); intermediates stay in registers.
- The compiled graph is launched from generated Python wrapper code without the dispatcher or
  autograd recording per op: the CPU cost is one launch per kernel (``COMPILED_LAUNCH_SECONDS``).
  Trainer compiles the model only: the optimizer step stays eager.

Assumed, and stated in estimates: the model compiles without graph breaks (Hugging Face Llama-
style models do in recent transformers), and compile time itself is outside the step.

Memory: AOTAutograd's min-cut partitioner chooses what the compiled forward saves for backward,
recomputing cheap pointwise results rather than storing them, so a compiled step usually stores no
more than eager. Deriving exactly what it keeps would need the partitioner's graph, which the
fake-tensor trace does not build: the memory estimate of a compiled config is eager's.
"""

from __future__ import annotations

from planner.timing._counter import OpCost, PhaseCosts
from planner.timing._kernels import COMPILED_LAUNCH_SECONDS, DeviceModel, Kernel, eager_kernels

COMPILED_PHASES = ("forward", "backward")


def _fused(run: list[OpCost], last_read: dict[int, int], end: int) -> tuple[OpCost, int]:
    """One run of memory-bound ops as the fused kernels inductor generates: (cost, kernel count).

    ``last_read`` maps a storage to the last position that reads it; the run ends before ``end``.
    """
    produced = {storage for op in run for storage, _ in op.writes}
    read = {s: b for op in run for s, b in op.reads if s not in produced}
    last = {s for s, _ in run[-1].writes}
    written = {s: b for op in run for s, b in op.writes if last_read.get(s, -1) >= end or s in last}
    kernels = max(1, sum(op.reduction for op in run))
    cost = OpCost(
        kind="memory",
        flops=0,
        bytes=sum(read.values()) + sum(written.values()),
        reads=tuple(read.items()),
        writes=tuple(written.items()),
    )
    return cost, kernels


def compiled_kernels(phases: dict[str, PhaseCosts], device: DeviceModel) -> dict[str, list[Kernel]]:
    """Per phase, the kernels a compiled step runs (optimizer and other phases stay eager)."""
    # The last position reading each storage: a fused run must write out what is read after it.
    order = [op for phase in phases for op in phases[phase].ops]
    last_read = {storage: index for index, op in enumerate(order) for storage, _ in op.reads}
    launch = COMPILED_LAUNCH_SECONDS * device.spreads.dispatch
    result: dict[str, list[Kernel]] = {}
    index = 0
    for phase, costs in phases.items():
        if phase not in COMPILED_PHASES:
            result[phase] = eager_kernels(costs.ops, device)
            index += len(costs.ops)
            continue
        kernels: list[Kernel] = []
        run: list[OpCost] = []
        for op in [*costs.ops, None]:
            if op is not None and op.kind == "memory":
                run.append(op)
            else:
                if run:  # the run ends here: what it wrote is needed from this op on
                    cost, count = _fused(run, last_read, index)
                    kernels.append(Kernel(device.device_seconds(cost, count), count * launch))
                    run = []
                if op is not None:
                    kernels.append(Kernel(device.device_seconds(op), launch))
            index += op is not None
        result[phase] = kernels
    return result
