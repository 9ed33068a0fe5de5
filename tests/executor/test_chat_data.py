"""Chat data with completion-only loss through a real trial: the planner counts what Trainer trains on."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import TrainerCallback

from planner.data import IGNORED, count_data
from planner.executor import run_sweep
from planner.sweep import load_spec
from tests.executor.conftest import WORDS, hand_plan, tiny_chat_model


def write_chat_rows(path: Path, count: int, seed: int = 0) -> None:
    """``count`` conversations: a system turn on some, a user turn, an assistant answer, as JSONL."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 9)))

    rows = []
    for number in range(count):
        messages = [{"role": "user", "content": sentence()}, {"role": "assistant", "content": sentence()}]
        if number % 3 == 0:
            messages.insert(0, {"role": "system", "content": sentence()})
        rows.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(rows) + "\n")


class CountFedTokens(TrainerCallback):
    """Counts, in every training micro-batch the Trainer collates, the tokens fed (attention mask)
    and the tokens with a loss target (labels != -100); and keeps Trainer's own count."""

    def __init__(self) -> None:
        self.fed = 0
        self.trained = 0
        self.trainer_count = 0

    def on_epoch_begin(
        self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kw: Any
    ) -> None:
        # accelerate wraps the DataLoader (DataLoaderAdapter), which iterates its base_dataloader.
        loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
        collate = loader.collate_fn
        if getattr(collate, "counted", False):
            return

        def counting(features: Any) -> Any:
            batch = collate(features)
            self.fed += int(batch["attention_mask"].sum())
            self.trained += int((batch["labels"] != IGNORED).sum())
            return batch

        counting.counted = True  # type: ignore[attr-defined]
        loader.collate_fn = counting

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.trainer_count = state.num_input_tokens_seen


@pytest.mark.parametrize("packing", [False, True])
def test_chat_completion_only_trains_on_what_the_planner_counted(tmp_path: Path, packing: bool) -> None:
    model_dir = tiny_chat_model(tmp_path / "tiny-chat")
    (tmp_path / "data").mkdir()
    write_chat_rows(tmp_path / "data" / "train.jsonl", 12)
    write_chat_rows(tmp_path / "data" / "eval.jsonl", 4, seed=1)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "chat",
                "base": {"model": str(model_dir), "method": "full", "precision": "fp32", "seq_len": 24},
                "init": "random",
                "data": {
                    "train": "data/train.jsonl",
                    "eval": "data/eval.jsonl",
                    "format": "chat",
                    "completion_only": True,
                    "packing": packing,
                },
                "training": {"learning_rate": 1e-3, "effective_batch": 4, "epochs": 2},
                "search": {"learning_rate": [1e-3]},
            }
        )
    )
    spec = load_spec(spec_path)
    stats, _ = count_data(spec)
    assert stats.epoch_tokens is not None and stats.epoch_trained_tokens is not None
    # Completion-only: the system and user turns and the assistant turn's header take no loss.
    assert 0 < stats.epoch_trained_tokens < stats.epoch_tokens / 2

    counter = CountFedTokens()
    run = run_sweep(spec, hand_plan(spec, micro_batch=2), callbacks=[counter])
    assert [t.status for t in run.trials] == ["complete"]
    epochs = 2
    assert counter.fed == counter.trainer_count == epochs * stats.epoch_tokens
    assert counter.trained == epochs * stats.epoch_trained_tokens
