"""A stack whose causal-LM loss differs from the installed transformers' is traced with its loss:
in the logits' dtype (``loss_upcast`` False), or upcast with the logits shifted (``loss_shifts_logits``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers.loss.loss_utils import ForCausalLMLoss

from planner.models import load_model_config
from planner.schema import TargetStack, TrainingConfig
from planner.step import CudaTarget, StepTracer, loss_in_logits_dtype, loss_shifting_upcast_logits


def test_the_logits_dtype_loss_is_the_shared_loss_without_the_upcast() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[:, -1] = -100
    # Same shift and mean over labelled tokens as transformers' ForCausalLMLoss on fp32 logits.
    assert torch.allclose(loss_in_logits_dtype(logits, labels, 11), ForCausalLMLoss(logits, labels, 11))
    assert loss_in_logits_dtype(logits.bfloat16(), labels, 11).dtype == torch.bfloat16


def _loss_peak(model: str, upcast: bool) -> int:
    config = TrainingConfig(
        model=model, precision="pure-bf16", seq_len=32, stack=TargetStack(loss_upcast=upcast)
    )
    tracer = StepTracer(load_model_config(model), config, cuda=CudaTarget("flash"))
    return tracer.trace(2).peak


def test_without_the_upcast_the_loss_holds_no_fp32_logits(tiny_models: dict[str, str]) -> None:
    # The shared loss holds fp32 copies of the (tokens x vocabulary) logits that the logits-dtype
    # loss holds in bf16; with the tiny model's vocabulary they decide its step's peak, which drops by
    # at least one bf16 copy of the logits.
    upcast, in_dtype = _loss_peak(tiny_models["llama"], True), _loss_peak(tiny_models["llama"], False)
    bf16_logits = 2 * 32 * load_model_config(tiny_models["llama"]).vocab_size * 2
    assert upcast - in_dtype >= bf16_logits


def test_a_default_stack_is_left_out_of_dumps_and_keys() -> None:
    plain = TrainingConfig(model="m")
    assert "stack" not in plain.model_dump() and "stack" not in plain.key
    stated = TrainingConfig(model="m", stack=TargetStack(loss_upcast=False))
    assert stated.model_dump()["stack"]["loss_upcast"] is False and stated.key != plain.key
    assert TrainingConfig.model_validate(stated.model_dump()) == stated


def test_foreach_is_refused_for_an_optimizer_that_does_not_take_it() -> None:
    with pytest.raises(ValidationError, match="optimizer_foreach applies to adamw_torch and sgd"):
        TrainingConfig(model="m", optimizer="adamw", stack=TargetStack(optimizer_foreach=False))


def test_the_logits_dtype_loss_traces_as_it_runs(tiny_models: dict[str, str]) -> None:
    config = TrainingConfig(
        model=tiny_models["gpt2"], precision="pure-bf16", seq_len=32, stack=TargetStack(loss_upcast=False)
    )
    hf_config = load_model_config(config.model)
    torch.manual_seed(0)
    fake = StepTracer(hf_config, config, cuda=None, fake=True).trace(2).peak
    real = StepTracer(hf_config, config, cuda=None, fake=False).trace(2).peak
    assert abs(fake - real) <= 0.02 * real, (fake, real)


def test_the_shifting_loss_is_the_shared_loss_in_value() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, dtype=torch.bfloat16)
    labels = torch.randint(0, 11, (2, 7))
    labels[:, -1] = -100
    shared = ForCausalLMLoss(logits, labels, 11)
    assert torch.allclose(loss_shifting_upcast_logits(logits, labels, 11), shared)
    summed = loss_shifting_upcast_logits(logits, labels, 11, num_items_in_batch=9)
    assert torch.allclose(summed, ForCausalLMLoss(logits, labels, 11, num_items_in_batch=9))


def _step(model: str, shifts: bool) -> Any:
    config = TrainingConfig(
        model=model, precision="pure-bf16", seq_len=32, stack=TargetStack(loss_shifts_logits=shifts)
    )
    return StepTracer(load_model_config(model), config, cuda=CudaTarget("flash")).trace(2)


def test_shifting_the_logits_holds_one_more_fp32_copy_at_the_loss(tiny_models: dict[str, str]) -> None:
    # transformers 4.48.1's ForCausalLMLoss: while log-softmax runs, the bf16 logits, their fp32
    # upcast, the shifted fp32 copy and the log-softmax of the shifted rows are live; the installed
    # loss holds no shifted copy and takes the log-softmax of every row. 2 x 32 tokens, 2 x 31 shifted.
    vocab = load_model_config(tiny_models["llama"]).vocab_size
    tokens, shifted = 2 * 32, 2 * 31
    expected = 4 * shifted * vocab - 4 * (tokens - shifted) * vocab
    plain, shifting = _step(tiny_models["llama"], False), _step(tiny_models["llama"], True)
    forward = shifting.windows[0].peak - plain.windows[0].peak
    # Within 1 KiB: the labels' own copies differ (padded or sliced), each rounded to 512 bytes.
    assert abs(forward - expected) <= 1024, (forward, expected)
