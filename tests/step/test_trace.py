"""The fake-traced peak equals the peak of live tensor bytes of the same step run for real on CPU."""

from __future__ import annotations

import pytest
import torch

from planner.models import load_model_config
from planner.schema import TargetStack, TrainingConfig
from planner.step import (
    CUDA_BLOCK_BYTES,
    WINDOWS,
    CudaTarget,
    StepTracer,
    TrainingSetup,
    optimizer_implementation,
    trace_step,
)

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


@pytest.mark.parametrize("method", ["full", "lora"])
def test_deberta_classifier_with_default_problem_type_matches_a_real_step(
    tiny_models: dict[str, str], method: str
):
    # Without problem_type its loss keeps the labelled rows, (labels >= 0).nonzero(): data-dependent,
    # followed on the labels' known values.
    config = TrainingConfig(model=tiny_models["deberta-v2-classifier"], method=method, seq_len=32)
    assert load_model_config(config.model).problem_type is None
    for cuda in (None, CudaTarget("flash")):
        fake, real = _fake_and_real(config, micro_batch=3, cuda=cuda)
        assert abs(fake - real) <= 0.02 * real, (cuda, fake, real)


def test_an_op_on_unknown_values_is_one_line_naming_it(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    from planner.errors import ConfigError

    # Labels made by a factory (not torch.tensor) have no known values under fake tensors.
    def labels_unknown(self: TrainingSetup, micro_batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.zeros(micro_batch, seq_len, dtype=torch.long),
            "labels": torch.zeros(micro_batch),
        }

    monkeypatch.setattr(TrainingSetup, "make_batch", labels_unknown)
    config = TrainingConfig(model=tiny_models["deberta-v2-classifier"], precision="fp32", seq_len=32)
    with pytest.raises(ConfigError, match=r"nonzero.*problem_type") as raised:
        trace_step(load_model_config(config.model), config, micro_batch=2, cuda=None)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sliding_window_attention_matches_a_real_step(tiny_models: dict[str, str], method: str):
    # A window of 16 over 32 tokens: transformers builds the banded mask and SDPA runs with it.
    config = TrainingConfig(model=tiny_models["mistral-sliding"], method=method, seq_len=32)
    assert load_model_config(config.model).sliding_window < config.seq_len
    for cuda in (None, CudaTarget("flash")):
        fake, real = _fake_and_real(config, micro_batch=3, cuda=cuda)
        assert abs(fake - real) <= 0.02 * real, (cuda, fake, real)


def _collated(task: str, micro_batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A batch from transformers' own collators over rows of ``seq_len`` tokens and shorter."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"t{i}": i for i in range(2, 500)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), pad_token="[PAD]"
    )
    rows = [{"input_ids": list(range(2, 2 + seq_len - row))} for row in range(micro_batch)]
    if task == "sequence-classification":
        return DataCollatorWithPadding(tokenizer)([{**row, "label": 1} for row in rows])
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)(rows)


@pytest.mark.parametrize("arch", ["llama", "bert-classifier"])
def test_the_traced_batch_is_the_collators_and_a_real_step_on_it_matches(
    tiny_models: dict[str, str], arch: str
):
    config = TrainingConfig(model=tiny_models[arch], seq_len=32)
    hf_config = load_model_config(config.model)
    fake = StepTracer(hf_config, config, cuda=None)
    ours = fake.setup.make_batch(3, config.seq_len)
    collated = _collated(fake.setup.task, 3, config.seq_len)
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {
        k: (v.shape, v.dtype) for k, v in collated.items()
    }
    assert (ours["attention_mask"] == 0).any()
    if fake.setup.task == "causal-lm":
        assert (ours["labels"][ours["attention_mask"] == 0] == -100).all()
    real = StepTracer(hf_config, config, cuda=None, fake=False)
    real.setup.make_batch = lambda micro_batch, seq_len: _collated(real.setup.task, micro_batch, seq_len)  # type: ignore[method-assign]
    fake_peak, real_peak = fake.trace(3).peak, real.trace(3).peak
    assert abs(fake_peak - real_peak) <= 0.02 * real_peak, (fake_peak, real_peak)


@pytest.mark.parametrize(
    ("optimizer", "cuda", "foreach", "implementation"),
    [
        ("adamw", None, None, "fused"),
        ("adamw", CudaTarget("flash"), None, "fused"),
        ("adamw_torch", None, None, "for-loop"),
        ("adamw_torch", CudaTarget("flash"), None, "foreach"),
        # A stack that states foreach off (torch 1.x, transformers' own AdamW) loops on CUDA too.
        ("adamw_torch", CudaTarget("flash"), False, "for-loop"),
    ],
)
def test_each_adamw_implementation_traces_as_it_runs(
    tiny_models: dict[str, str],
    optimizer: str,
    cuda: CudaTarget | None,
    foreach: bool | None,
    implementation: str,
):
    config = TrainingConfig(
        model=tiny_models["llama"],
        precision="bf16",
        optimizer=optimizer,
        seq_len=32,
        stack=TargetStack(optimizer_foreach=foreach),
    )
    hf_config = load_model_config(config.model)
    on_cuda = cuda is not None
    assert optimizer_implementation(config.optimizer, on_cuda=on_cuda, foreach=foreach) == implementation
    tracer = StepTracer(hf_config, config, cuda=cuda)
    built = tracer.setup.optimizer.defaults
    assert (bool(built["fused"]), bool(built["foreach"])) == (
        implementation == "fused",
        implementation == "foreach",
    )
    fake, real = _fake_and_real(config, micro_batch=2, cuda=cuda)
    assert abs(fake - real) <= 0.02 * real, (fake, real)


def test_foreach_adamw_keeps_one_parameter_sized_intermediate_more_than_fused(tiny_models: dict[str, str]):
    # torch's _multi_tensor_adamw takes sqrt of all second moments at once before dividing.
    hf_config = load_model_config(tiny_models["llama"])
    fused, foreach = (
        StepTracer(
            hf_config,
            TrainingConfig(model=tiny_models["llama"], optimizer=name, seq_len=32),
            cuda=CudaTarget("flash"),
        )
        for name in ("adamw", "adamw_torch")
    )
    optimizer_peaks = [tracer.trace(1).windows[-1].peak for tracer in (fused, foreach)]
    parameter_blocks = sum(
        -(-p.numel() * p.element_size() // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES
        for p in fused.setup.trainable_parameters()
    )
    assert optimizer_peaks[1] - optimizer_peaks[0] == parameter_blocks
