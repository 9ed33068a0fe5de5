"""Tiny sweeps for the executor: a 2-layer Llama from its config, a word-level tokenizer, a few examples."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from planner.executor import SweepObserver
from planner.schema import Hyperparameters, Plan, PlannedTrial, SweepSpec, TimeEstimate, TrainingConfig
from tests.conftest import TINY_CONFIGS, place_host_profile, write_model

WORDS = ["alpha", "beta", "gamma", "delta", "red", "blue", "green", "one", "two", "three", "is", "the", "and"]


@contextlib.contextmanager
def one_thread_and_own_measurements(measured: Path) -> Iterator[None]:
    """One intra-op thread, and measurements (OOM records, profiles) written under ``measured``,
    with made-up host speeds there (measuring the host is tested in tests/profiler/test_host.py).

    On a shared 2-core machine a second thread waits for a busy core at every parallel region:
    the tiny models' steps then take ~10x longer, and vary with the neighbours' load.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("VRAM_PLANNER_MEASURED", str(measured))
            place_host_profile(measured)
            patch.setenv("OMP_NUM_THREADS", "1")  # for worker processes started from the tests
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_own_measurements(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with one_thread_and_own_measurements(tmp_path_factory.mktemp("measured")):
        yield


class Notes(SweepObserver):
    """Keeps the sweep's notes (what the display shows between trials: recovered trials, leftovers)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def tiny_model(directory: Path) -> Path:
    """The tiny Llama's config and a word-level tokenizer in ``directory``."""
    write_model(directory, TINY_CONFIGS["llama"])
    write_tokenizer(directory)
    return directory


# A chat template in the shape real ones have (turn markers, end-of-turn token), with
# ``{% generation %}`` around the assistant's content so apply_chat_template can mask the rest.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s> ' + message['role'] + ' ' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + ' </s>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + ' </s> ' }}{% endif %}"
    "{% endfor %}"
)


def tiny_chat_model(directory: Path) -> Path:
    """The tiny Llama and its word-level tokenizer, with :data:`CHAT_TEMPLATE` saved beside it."""
    from transformers import AutoTokenizer

    tiny_model(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))
    return directory


def write_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over ``WORDS`` with <s>, </s>, <pad>, <unk>, saved as a fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 12)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("executor") / "tiny-llama")


def write_spec(
    directory: Path, model_dir: Path, *, train: int = 32, eval_examples: int = 8, **fields: Any
) -> Path:
    """A spec over ``train`` random word sentences; ``fields`` override the spec's (e.g. search)."""
    rng = random.Random(0)
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("eval", eval_examples)):
        rows = [json.dumps({"text": _sentence(rng)}) for _ in range(count)]
        (data / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    spec: dict[str, Any] = {
        "name": "tiny",
        "base": {"model": str(model_dir), "method": "full", "precision": "fp32", "seq_len": 32},
        "init": "random",
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl"},
        "training": {"learning_rate": 1e-3, "effective_batch": 4, "epochs": 1},
        "search": {"learning_rate": [1e-3, 3e-3]},
        "strategy": "grid",
        **fields,
    }
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def hand_plan(spec: SweepSpec, *, seconds: float = 5.0, micro_batch: int | None = None) -> Plan:
    """A plan of the spec's grid with fixed predicted times (independent of the planner's time model).

    Micro-batch: ``micro_batch`` where it divides the effective batch, else the effective batch.
    """
    from planner.sweep import expand_trials

    trials = []
    for number, params in enumerate(expand_trials(spec)):
        config, hyper = spec.trial(params)
        effective = hyper.effective_batch
        micro = micro_batch if micro_batch is not None and effective % micro_batch == 0 else effective
        trials.append(planned_trial(number, params, config, hyper, micro, seconds))
    total = seconds * len(trials)
    return Plan(
        spec_name=spec.name,
        card="cpu",
        workers=1,
        data={
            "train_examples": 0,
            "eval_examples": 0,
            "mean_tokens": 0,
            "max_tokens": 0,
            "counted_with": "test",
        },
        trials=trials,
        total_seconds=total,
        total_low_seconds=total,
        total_high_seconds=total,
        makespan_seconds=total,
        budget_seconds=None,
        fits_budget=None,
        order_rule="test",
        includes=[],
    )


def planned_trial(
    number: int,
    params: dict[str, Any],
    config: TrainingConfig,
    hyper: Hyperparameters,
    micro: int,
    seconds: float,
) -> PlannedTrial:
    """A feasible trial at micro-batch ``micro`` predicted to take ``seconds`` (8 optimizer steps)."""
    time = TimeEstimate(
        seconds=seconds,
        low_seconds=seconds,
        high_seconds=seconds,
        source="default",
        micro_step_seconds=0.01,
        optimizer_step_seconds=0.001,
        parts={"startup": 0.5, "train": seconds - 1.0, "eval": 0.3, "checkpoints": 0.2},
        note="test",
    )
    return PlannedTrial(
        number=number,
        params=params,
        config=config.with_changes(micro_batch=micro, gradient_accumulation=hyper.effective_batch // micro),
        hyper=hyper,
        feasible=True,
        optimizer_steps=8,
        eval_passes=1,
        checkpoint_saves=1,
        time=time,
    )
