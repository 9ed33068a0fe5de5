"""Real steps on the CPU: timings, the live-bytes peak the estimator predicts, FLOPs, bitsandbytes paths."""

from __future__ import annotations

import pytest
import torch

from planner.cards import host_card
from planner.distributed import fake_mesh, rank_preparer
from planner.errors import DeviceError
from planner.estimator import Estimator
from planner.profiler import StepRunner, profile_config, profiled_micro_batches, training_flops_per_token
from planner.schema import TrainingConfig


def test_measurement_times_and_live_peak_match_the_host_estimate(tiny_models: dict[str, str]):
    config = TrainingConfig(model=tiny_models["llama"], precision="fp32", seq_len=16, gradient_accumulation=2)
    runner = StepRunner(config, "cpu")
    measurement = runner.measure(3, steps=3, warmup=0, card=host_card())
    runner.close()
    assert measurement.micro_batch == 3
    assert (
        measurement.forward_backward_p10_seconds
        <= measurement.forward_backward_seconds
        <= measurement.forward_backward_p90_seconds
    )
    assert measurement.optimizer_seconds > 0 and measurement.eval_forward_seconds > 0
    assert measurement.tokens_per_second > 0 and measurement.achieved_tflops
    # No datasheet figure and no CUDA memory on the host.
    assert measurement.mfu is None and measurement.peak_reserved_bytes is None
    predicted = Estimator(config, host_card()).estimate(3).peak_bytes
    live = measurement.live_peak_bytes
    assert live is not None and measurement.context_bytes is None
    assert abs(predicted - live) <= 0.02 * live, (predicted, live)


def test_a_measured_step_makes_trainers_per_step_calls(tiny_models: dict[str, str]):
    """Trainer puts the model in train mode at each micro-batch and clears every parameter's
    gradient (``model.zero_grad()``, frozen ones included) after the optimizer: a measured step
    pays those walks over the model too."""
    config = TrainingConfig(model=tiny_models["llama"], method="lora", precision="fp32", seq_len=16)
    runner = StepRunner(config, "cpu")
    model = runner.setup.model
    frozen = next(p for p in model.parameters() if not p.requires_grad)
    model.eval()
    frozen.grad = torch.zeros_like(frozen)
    runner.train_step(2)
    assert model.training and frozen.grad is None
    runner.close()


def test_one_real_rank_of_a_fake_fsdp_world_measures_the_per_rank_trace(tiny_models: dict[str, str]):
    # What benchmarks/gpu_validate.py runs on a single lent GPU for a multi-GPU config: rank 0 of
    # the job with real tensors, the other ranks imagined by the fake process group.
    config = TrainingConfig(
        model=tiny_models["llama"],
        precision="fp32",
        seq_len=16,
        optimizer="adamw",
        parallelism={"gpus_per_node": 4, "strategy": "fsdp"},
    )
    mesh = fake_mesh(config.parallelism, "cpu")
    runner = StepRunner(config, "cpu", prepare=rank_preparer(config, mesh=mesh, real=True))
    measured = runner.probe(2).live
    runner.close()
    predicted = Estimator(config, host_card()).estimate(2).peak_bytes
    assert measured is not None
    assert abs(predicted - measured) <= 0.02 * measured, (predicted, measured)


def test_flops_count_weight_gradients_only_for_trained_weights(tiny_models: dict[str, str]):
    full = StepRunner(TrainingConfig(model=tiny_models["gpt2"], precision="fp32", seq_len=16), "cpu")
    lora = StepRunner(
        TrainingConfig(model=tiny_models["gpt2"], method="lora", precision="fp32", seq_len=16), "cpu"
    )
    # GPT-2 tiny: 2 layers of width 64 (Conv1D qkv, proj, 4x MLP) and a 512-token tied head.
    matmul = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64) + 64 * 512
    attention = 4 * 2 * 16 * 64
    assert full.flops_per_token == 6 * matmul + 3 * attention
    # LoRA trains only the adapters: the base's weight gradients (2N) are not computed.
    assert 4 * matmul + 3 * attention < lora.flops_per_token < full.flops_per_token
    assert training_flops_per_token(full.setup.model, full.hf_config, 32) > full.flops_per_token


def test_qlora_with_8bit_optimizer_profiles_on_cpu_including_eval(tiny_models: dict[str, str]):
    # bitsandbytes' 4-bit layers and 8-bit AdamW both run on the CPU; the eval forward must not
    # repack the 4-bit weights under the training steps that follow it.
    config = TrainingConfig(
        model=tiny_models["llama"], method="qlora", precision="bf16", optimizer="adamw_8bit", seq_len=16
    )
    profile = profile_config(config, host_card(), [2], steps=2, warmup=1)
    (measurement,) = profile.measurements
    assert measurement.live_peak_bytes and measurement.eval_forward_seconds > 0
    assert profile.key.method.value == "qlora" and profile.device == "cpu"


def test_a_bitsandbytes_failure_on_the_device_is_a_device_error(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    def no_kernel(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("8-bit optimizer kernels need CUDA\nmore detail")

    monkeypatch.setattr("planner.step._trace.build_training_setup", no_kernel)
    config = TrainingConfig(model=tiny_models["llama"], optimizer="paged_adamw_8bit", seq_len=16)
    with pytest.raises(DeviceError, match="bitsandbytes cannot run full/paged_adamw_8bit on cpu"):
        StepRunner(config, "cpu")


def test_default_sizes_are_one_half_and_max_capped_on_cpu():
    assert profiled_micro_batches(40, torch.device("cuda"), 512) == [1, 20, 40]
    assert profiled_micro_batches(40, torch.device("cpu"), 32) == [1, 4, 8]
    assert profiled_micro_batches(40, torch.device("cpu"), 2048) == [1, 2]
    assert profiled_micro_batches(0, torch.device("cuda"), 512) == [1]


def test_the_device_must_be_the_cards(tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    from planner.cards import load_card

    config = TrainingConfig(model=tiny_models["llama"], seq_len=16)
    with pytest.raises(DeviceError, match="cannot measure card 'rtx-4090'"):
        profile_config(config, load_card("rtx-4090"), [1], device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device"):
        profile_config(config, load_card("rtx-4090"), [1])
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        profile_config(config, host_card(), [1], device="tpu")
