"""The time model is monotone in what a step and a trial do: tokens, micro-batches, model size.

Each property is checked on traced tiny models (built from configs, seconds each) on two datasheet
cards of different kinds (A100: flash attention, MAMF measured; T4: memory-efficient attention,
no measurement), eager and compiled (which share traces); hypothesis draws the cheap dimensions
over cached traces.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cards import load_card
from planner.schema import EvalSpec, Hyperparameters, TrainingConfig
from planner.timing import StepTimeModel, count_work, trial_time
from tests.conftest import TINY_CONFIGS, write_model

CARDS = ["a100-80gb", "t4"]


@pytest.fixture(scope="module")
def models() -> dict[str, StepTimeModel]:
    return {name: StepTimeModel(load_card(name)) for name in CARDS}


def config(model: str, **changes: object) -> TrainingConfig:
    fields: dict[str, object] = {"model": model, "method": "lora", "precision": "fp16", "seq_len": 32}
    return TrainingConfig.model_validate({**fields, **changes})


@pytest.mark.parametrize("compiled", [False, True])
def test_more_tokens_per_row_never_take_less(
    models: dict[str, StepTimeModel], tiny_models: dict[str, str], compiled: bool
) -> None:
    model = tiny_models["llama"]
    times = [
        models["a100-80gb"].times(config(model, seq_len=length, torch_compile=compiled), 2, length)
        for length in (16, 32, 64)
    ]
    steps = [t.micro_step for t in times]
    assert steps == sorted(steps)
    assert all(t.optimizer == times[0].optimizer for t in times)  # the update does not see tokens


@settings(max_examples=25, deadline=None)
@given(card=st.sampled_from(CARDS), padded=st.floats(1, 64), more=st.floats(0, 64))
def test_longer_padding_never_takes_less(
    models: dict[str, StepTimeModel], tiny_models: dict[str, str], card: str, padded: float, more: float
) -> None:
    base = config(tiny_models["llama"], seq_len=64)
    short = models[card].times(base, 2, padded)
    long = models[card].times(base, 2, min(64.0, padded + more))
    assert long.micro_step >= short.micro_step and long.eval_forward >= short.eval_forward


@pytest.mark.parametrize("compiled", [False, True])
def test_bigger_micro_batches_never_take_less(
    models: dict[str, StepTimeModel], tiny_models: dict[str, str], compiled: bool
) -> None:
    for card in CARDS:
        base = config(tiny_models["llama"], torch_compile=compiled)
        steps = [models[card].times(base, micro_batch, 32).micro_step for micro_batch in (1, 2, 4)]
        assert steps == sorted(steps)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5000),
    micro_batch=st.integers(1, 16),
    accumulation=st.integers(1, 16),
    epochs=st.floats(0.1, 4),
    extra_rows=st.integers(1, 500),
)
def test_more_micro_batches_never_make_a_shorter_trial(
    models: dict[str, StepTimeModel],
    tiny_models: dict[str, str],
    rows: int,
    micro_batch: int,
    accumulation: int,
    epochs: float,
    extra_rows: int,
) -> None:
    step = models["a100-80gb"].times(config(tiny_models["llama"]), 2, 32)

    def seconds(count: int) -> float:
        work = count_work(
            Hyperparameters(epochs=epochs),
            micro_batch=micro_batch,
            accumulation=accumulation,
            rows=count,
            eval_examples=0,
            eval_spec=EvalSpec(),
            checkpoint_every_steps=None,
            checkpoint_bytes=0,
            load_bytes=0,
        )
        return trial_time(work, step).seconds

    assert seconds(rows + extra_rows) >= seconds(rows)


@pytest.fixture(scope="module")
def growing_models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The tiny Llama, then with more layers, then with wider layers."""
    llama = TINY_CONFIGS["llama"]
    shapes = [
        {**llama, "num_hidden_layers": 2},
        {**llama, "num_hidden_layers": 4},
        {**llama, "num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 320},
    ]
    root = tmp_path_factory.mktemp("growing")
    return [str(write_model(root / f"m{i}", shape)) for i, shape in enumerate(shapes)]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_bigger_models_never_take_less(
    models: dict[str, StepTimeModel], growing_models: list[str], method: str, compiled: bool
) -> None:
    paths = growing_models
    for card in CARDS[:1]:
        times = [
            models[card].times(config(path, method=method, torch_compile=compiled), 2, 32) for path in paths
        ]
        for smaller, bigger in itertools.pairwise(times):
            assert bigger.micro_step >= smaller.micro_step
            assert bigger.optimizer >= smaller.optimizer


def test_compiling_never_slows_a_step(models: dict[str, StepTimeModel], tiny_models: dict[str, str]) -> None:
    for card in CARDS:
        for name in ("llama",):
            eager = models[card].times(config(tiny_models[name]), 4, 32)
            compiled = models[card].times(config(tiny_models[name], torch_compile=True), 4, 32)
            assert compiled.micro_step < eager.micro_step
            assert compiled.optimizer == eager.optimizer  # Trainer compiles the model, not the update


def test_the_default_interval_is_an_80_percent_range_around_the_estimate(
    models: dict[str, StepTimeModel], tiny_models: dict[str, str]
) -> None:
    step = models["a100-80gb"].times(config(tiny_models["llama"]), 2, 32)
    low, high = step.relative_interval
    assert step.source == "default"
    assert 0.3 < low < 1.0 < high < 3.0
    assert "80% interval" in step.note


def test_fp16_steps_unscale_their_gradients(
    models: dict[str, StepTimeModel], tiny_models: dict[str, str]
) -> None:
    # Same fp32 adapters and optimizer; fp16 adds GradScaler's unscale pass over the gradients.
    for method in ("lora", "full"):
        bf16 = models["a100-80gb"].times(config(tiny_models["llama"], method=method, precision="bf16"), 2, 32)
        fp16 = models["a100-80gb"].times(config(tiny_models["llama"], method=method, precision="fp16"), 2, 32)
        assert fp16.optimizer > bf16.optimizer


@pytest.mark.parametrize("method", ["full", "lora"])
def test_accumulating_micro_steps_add_their_gradients(
    models: dict[str, StepTimeModel], tiny_models: dict[str, str], method: str
) -> None:
    # Micro-steps after an accumulation's first add into the gradients: more of them, more time.
    steps = [
        models["a100-80gb"].times(
            config(tiny_models["llama"], method=method, gradient_accumulation=ga), 2, 32
        )
        for ga in (1, 2, 4)
    ]
    optimizer = [step.optimizer for step in steps]
    assert optimizer == sorted(optimizer) and optimizer[0] < optimizer[-1]
    assert all(step.micro_step == steps[0].micro_step for step in steps)
