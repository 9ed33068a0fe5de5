"""The fake-traced peak equals the peak of live tensor bytes of the same step run for real on CPU."""

from __future__ import annotations

import pytest
import torch

from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import WINDOWS, CudaTarget, trace_step

ARCHITECTURES = ["llama", "gpt2", "bert-classifier", "qwen2"]
METHODS = ["full", "lora", "qlora"]


def _fake_and_real(config: TrainingConfig, micro_batch: int, cuda: CudaTarget | None) -> tuple[int, int]:
    hf_config = load_model_config(config.model)
    torch.manual_seed(0)
    fake = trace_step(hf_config, config, micro_batch=micro_batch, cuda=cuda, fake=True)
    real = trace_step(hf_config, config, micro_batch=micro_batch, cuda=cuda, fake=False)
    return fake.peak, real.peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fake_trace_matches_real_cpu_step(
    tiny_models: dict[str, str], arch: str, method: str, checkpointing: bool
):
    config = TrainingConfig(
        model=tiny_models[arch],
        method=method,
        precision="bf16",
        gradient_checkpointing=checkpointing,
        seq_len=32,
    )
    fake, real = _fake_and_real(config, micro_batch=3, cuda=None)
    assert abs(fake - real) <= 0.02 * real, (fake, real)


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "sgd", "adafactor"])
def test_fake_trace_matches_real_with_other_optimizers(tiny_models: dict[str, str], optimizer: str):
    config = TrainingConfig(model=tiny_models["llama"], precision="fp32", optimizer=optimizer, seq_len=32)
    fake, real = _fake_and_real(config, micro_batch=2, cuda=None)
    assert abs(fake - real) <= 0.02 * real, (fake, real)


@pytest.mark.parametrize("backend", ["flash", "math"])
def test_cuda_emulation_matches_real_cpu_run_of_the_same_emulation(tiny_models: dict[str, str], backend: str):
    # GPT-2 has attention dropout: the fused-kernel emulation must drop its stored mask.
    config = TrainingConfig(model=tiny_models["gpt2"], precision="fp16", seq_len=32, gradient_accumulation=2)
    fake, real = _fake_and_real(config, micro_batch=2, cuda=CudaTarget(sdpa_backend=backend))
    assert abs(fake - real) <= 0.02 * real, (fake, real)


def test_math_attention_stores_more_than_fused(tiny_models: dict[str, str]):
    config = TrainingConfig(model=tiny_models["llama"], seq_len=128)
    hf_config = load_model_config(config.model)
    fused = trace_step(hf_config, config, micro_batch=2, cuda=CudaTarget("flash"))
    math = trace_step(hf_config, config, micro_batch=2, cuda=CudaTarget("math"))
    assert math.activations > fused.activations


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_step_peaks_in_one_of_its_windows(tiny_models: dict[str, str], arch: str):
    # Two layers: the first and last the backward reaches are all of them, so nothing is left out.
    config = TrainingConfig(model=tiny_models[arch], method="lora", seq_len=32, gradient_accumulation=2)
    trace = trace_step(load_model_config(config.model), config, micro_batch=2, cuda=CudaTarget("flash"))
    assert len(trace.windows) == len(WINDOWS)
    assert max(window.peak for window in trace.windows) == trace.peak


def test_breakdown_sums_to_peak_and_names_owners(tiny_models: dict[str, str]):
    config = TrainingConfig(model=tiny_models["llama"], precision="fp32", seq_len=32, gradient_accumulation=4)
    trace = trace_step(load_model_config(config.model), config, micro_batch=2, cuda=None)
    parts = trace.weights + trace.gradients + trace.optimizer_state + trace.activations + trace.temporaries
    assert parts == trace.peak
    # fp32 AdamW keeps two moments per weight; accumulation keeps full gradients alive.
    assert trace.optimizer_state >= 2 * trace.weights * 0.99
    assert trace.gradients > 0


def test_accumulation_peak_includes_the_previous_micro_batches_gradients(tiny_models: dict[str, str]):
    hf_config = load_model_config(tiny_models["llama"])
    single = TrainingConfig(model=tiny_models["llama"], precision="fp32", seq_len=32)
    accumulated = single.with_changes(gradient_accumulation=4)
    assert (
        trace_step(hf_config, accumulated, micro_batch=2, cuda=None).peak
        > trace_step(hf_config, single, micro_batch=2, cuda=None).peak
    )


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mixture_of_experts_traces_and_matches_a_real_step(
    tiny_models: dict[str, str], precision: str, method: str
):
    # transformers' grouped matmul has a CPU kernel for bf16 alone: fp32 and mixed-precision
    # experts used to fail on fake tensors.
    config = TrainingConfig(
        model=tiny_models["mixtral"],
        method=method,
        precision=precision,
        seq_len=32,
        lora={"dropout": 0.0},  # peft's wrapper of fused expert weights takes no dropout
    )
    fake, real = _fake_and_real(config, micro_batch=2, cuda=None)
    assert abs(fake - real) <= 0.02 * real, (fake, real)
    cuda_fake, cuda_real = _fake_and_real(config, micro_batch=2, cuda=CudaTarget("flash"))
    assert abs(cuda_fake - cuda_real) <= 0.02 * cuda_real, (cuda_fake, cuda_real)


def test_a_data_dependent_op_is_one_line_naming_it(tiny_models: dict[str, str]):
    from planner.errors import ConfigError

    # DeBERTa-v2's classifier without problem_type keeps the rows whose label is >= 0: nonzero().
    config = TrainingConfig(model=tiny_models["deberta-v2-classifier"], precision="fp32", seq_len=32)
    with pytest.raises(ConfigError, match=r"nonzero.*problem_type") as raised:
        trace_step(load_model_config(config.model), config, micro_batch=2, cuda=None)
    assert "\n" not in str(raised.value)
