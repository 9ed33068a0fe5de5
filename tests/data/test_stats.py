"""Reading local datasets and counting their tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from planner.data import LengthProfile, count_data, read_examples
from planner.errors import ConfigError
from planner.schema import SweepSpec

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_jsonl_text_and_prompt_response_and_plain_text(tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        json.dumps({"text": "a b"}) + "\n\n" + json.dumps({"prompt": "q", "response": "r"}) + "\n"
    )
    assert read_examples(jsonl) == ["a b", "q\nr"]
    text = tmp_path / "d.txt"
    text.write_text("one\n\ntwo\n")
    assert read_examples(text) == ["one", "two"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not valid JSON"), (json.dumps({"other": 1}), "none of text"), ("", "no examples")],
)
def test_bad_data_names_the_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        read_examples(path)


def test_padded_length_is_the_expected_maximum() -> None:
    lengths = tuple(sorted(random.Random(0).randint(5, 60) for _ in range(200)))
    profile = LengthProfile(lengths, seq_len=64, packing=False)
    rng = random.Random(1)
    sampled = sum(max(rng.choices(lengths, k=4)) for _ in range(20000)) / 20000
    assert profile.padded_length(4) == pytest.approx(sampled, rel=0.01)
    assert profile.padded_length(1) == pytest.approx(sum(lengths) / len(lengths))
    packed = LengthProfile(lengths, seq_len=64, packing=True)
    assert packed.padded_length(4) == 64 and packed.sequences == -(-sum(lengths) // 64)


def test_tiny_example_counts_with_its_own_tokenizer() -> None:
    from planner.sweep import load_spec

    stats, lengths = count_data(load_spec(EXAMPLES / "tiny-sweep" / "spec.yaml"))
    assert stats.train_examples == 768 and stats.eval_examples == 64
    assert stats.counted_with.startswith("tokenizer")
    assert 10 < stats.mean_tokens < 64 and lengths.sequences == 768


def test_without_a_tokenizer_a_byte_proxy_is_used_and_said(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("x" * 400 + "\n")
    spec = SweepSpec.model_validate(
        {"base": {"model": "meta-llama/Llama-3.1-8B"}, "data": {"train": "t.txt"}, "spec_dir": tmp_path}
    )
    stats, _ = count_data(spec)
    assert stats.mean_tokens == 100 and "byte proxy" in stats.counted_with
