"""Reading local datasets and counting their tokens."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from planner.data import LengthProfile, count_data, given_lengths, read_examples
from planner.errors import ConfigError
from planner.schema import DataCounts, SweepSpec

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


def test_tokenising_is_timed_with_a_warm_tokenizer_load_as_a_trial_pays_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first tokenizer load of a process imports its classes (seconds on a small VM); a trial
    runs in a worker that did so while planning, so the timing leaves that load out and times a
    second, warm one (a clock that jumps 100 s in the first load shows which one is timed)."""
    import types

    import planner.data._stats as stats
    from planner.sweep import load_spec

    clock = [0.0]
    loads: list[int] = []
    real = stats.load_tokenizer

    def load(spec: SweepSpec) -> object:
        loads.append(len(loads))
        clock[0] += 100.0 if len(loads) == 1 else 1.0
        return real(spec)

    monkeypatch.setattr(stats, "load_tokenizer", load)
    monkeypatch.setattr(stats, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    _, lengths = count_data(load_spec(EXAMPLES / "tiny-sweep" / "spec.yaml"))
    assert len(loads) == 2 and lengths.tokenize_seconds == 1.0


def test_tokenising_is_timed_with_the_row_reader_imported_as_a_trial_finds_it() -> None:
    """A trial's worker imported ``datasets`` while planning; the timing must not hold that import.
    In a fresh interpreter, the clock's first reading inside ``count_data`` finds it imported."""
    script = f"""
import sys, types
import planner.data._stats as stats
from planner.sweep import load_spec
seen = []
def clock():
    seen.append("datasets" in sys.modules)
    return 0.0
stats.time = types.SimpleNamespace(perf_counter=clock)
stats.count_data(load_spec({str(EXAMPLES / "tiny-sweep" / "spec.yaml")!r}))
print(seen[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_without_a_tokenizer_a_byte_proxy_is_used_and_said(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("x" * 400 + "\n")
    spec = SweepSpec.model_validate(
        {"base": {"model": "meta-llama/Llama-3.1-8B"}, "data": {"train": "t.txt"}, "spec_dir": tmp_path}
    )
    stats, _ = count_data(spec)
    assert stats.mean_tokens == 100 and "byte proxy" in stats.counted_with


def test_given_percentiles_give_dynamic_padding_and_truncation() -> None:
    percentiles = {50: 100, 90: 400, 99: 2000}
    counts = DataCounts(train_examples=10_000, length_percentiles=percentiles, max_tokens=4000)
    profile = LengthProfile(given_lengths(counts), seq_len=512, packing=False, examples=10_000)
    assert profile.sequences == 10_000
    one, eight = profile.padded_length(1), profile.padded_length(8)
    # The longest of 8 rows is far above the median; a row never pads beyond seq_len.
    assert 100 < one < eight <= 512
    assert profile.padded_length(64) == pytest.approx(512, rel=0.02)
    packed = LengthProfile(given_lengths(counts), seq_len=512, packing=True, examples=10_000)
    # Packing keeps the tokens truncation would cut: more rows than examples x mean truncated length.
    assert packed.sequences > 10_000 * one / 512


def test_a_given_histogram_is_a_length_distribution() -> None:
    counts = DataCounts(train_examples=100, length_histogram=[(64, 90), (1024, 10)])
    lengths = given_lengths(counts)
    assert min(lengths) >= 1 and max(lengths) <= 1024
    assert sum(n <= 64 for n in lengths) == pytest.approx(0.9 * len(lengths), abs=2)
    with pytest.raises(ValueError, match="length_histogram"):
        DataCounts(train_examples=100, length_histogram=[(64, 0), (32, 1)])
    with pytest.raises(ValueError, match="mean_tokens"):
        DataCounts(train_examples=100)


def test_eval_batches_pad_in_file_order() -> None:
    profile = LengthProfile((4, 4), seq_len=64, packing=False, eval_lengths=(10, 2, 30, 30, 100))
    # Batches of 2 in order: [10, 2] -> 10, [30, 30] -> 30, [100] -> 64 (truncated).
    assert profile.eval_padded_length(2) == pytest.approx((10 * 2 + 30 * 2 + 64) / 5)
