"""``TargetStack.zero_grad_set_to_none`` False: gradients zeroed in place stay resident between steps."""

from __future__ import annotations

from planner.models import load_model_config
from planner.schema import TargetStack, TrainingConfig
from planner.step import CudaTarget, StepTracer


def _tracer(model: str, set_to_none: bool) -> StepTracer:
    stack = TargetStack(zero_grad_set_to_none=set_to_none)
    config = TrainingConfig(model=model, precision="fp32", optimizer="adamw_torch", seq_len=32, stack=stack)
    return StepTracer(load_model_config(model), config, cuda=CudaTarget("flash"))


def test_zeroed_gradients_are_resident_like_the_weights(tiny_models: dict[str, str]) -> None:
    # Full fp32 training: one fp32 gradient per weight, each rounded to the 512-byte CUDA block as
    # the weights are, so the resident bytes grow by exactly the trainable bytes so rounded.
    freed, kept = _tracer(tiny_models["llama"], True), _tracer(tiny_models["llama"], False)
    rounded = sum(-(-p.numel() * 4 // 512) * 512 for p in kept.setup.trainable_parameters())
    assert kept.resident_bytes - freed.resident_bytes == rounded


def test_the_forward_peak_holds_every_gradient(tiny_models: dict[str, str]) -> None:
    # With gradients freed, the forward runs without them; kept, all of them are live through it.
    freed, kept = _tracer(tiny_models["llama"], True), _tracer(tiny_models["llama"], False)
    forward = kept.trace(2).windows[0].peak - freed.trace(2).windows[0].peak
    assert forward == kept.resident_bytes - freed.resident_bytes
    assert all(p.grad is not None for p in kept.setup.trainable_parameters())
