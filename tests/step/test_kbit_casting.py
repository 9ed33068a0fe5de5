"""TRL's casting of a bf16 QLoRA model (``TargetStack.kbit_bf16_casting``): embeddings and head
back to bf16 after peft's ``prepare_model_for_kbit_training`` upcast them, norms kept fp32."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from planner.models import load_model_config
from planner.schema import TargetStack, TrainingConfig
from planner.step import CudaTarget, StepTracer


def _tracer(model: str, casting: bool) -> StepTracer:
    stack = TargetStack(kbit_bf16_casting=casting)
    config = TrainingConfig(model=model, method="qlora", precision="bf16", seq_len=32, stack=stack)
    return StepTracer(load_model_config(model), config, cuda=CudaTarget("flash"))


def test_the_embeddings_and_head_are_bf16_and_the_norms_fp32(tiny_models: dict[str, str]) -> None:
    model = _tracer(tiny_models["llama"], True).setup.model
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.bfloat16
    assert dtypes["base_model.model.lm_head.weight"] == torch.bfloat16
    norms = [dtype for name, dtype in dtypes.items() if "norm" in name]
    assert norms and all(dtype == torch.float32 for dtype in norms)


def test_the_cast_saves_two_bytes_per_embedding_and_head_parameter(tiny_models: dict[str, str]) -> None:
    # Tiny llama, untied: embeddings and head are 512 x 64 each, fp32 after peft's upcast; bf16
    # halves them: 2 x 32768 parameters x 2 bytes (each a multiple of the 512-byte block).
    upcast = _tracer(tiny_models["llama"], False).resident_bytes
    cast = _tracer(tiny_models["llama"], True).resident_bytes
    assert upcast - cast == 2 * 512 * 64 * 2


@pytest.mark.parametrize(("method", "precision"), [("lora", "bf16"), ("qlora", "fp16")])
def test_the_cast_is_refused_outside_bf16_qlora(method: str, precision: str) -> None:
    with pytest.raises(ValidationError, match="kbit_bf16_casting applies to qlora with precision bf16"):
        stack = TargetStack(kbit_bf16_casting=True)
        TrainingConfig(model="m", method=method, precision=precision, stack=stack)
