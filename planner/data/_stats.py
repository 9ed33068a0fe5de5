"""Counting a dataset: examples, tokens, and what padding to the longest in a micro-batch costs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.data._read import load_tokenizer, read_examples
from planner.schema import DataStats, SweepSpec

# English text through a modern BPE tokenizer: ~4 bytes per token (OpenAI's and Llama's tokenizers
# both land between 3.5 and 4.5 on web text). Used only when no tokenizer is on this machine.
BYTES_PER_TOKEN = 4.0


@dataclass(frozen=True)
class LengthProfile:
    """Token lengths of the training sequences as the trainer sees them (truncated at seq_len).

    Without packing, a micro-batch is padded to its longest row (dynamic padding), so a step costs
    what ``micro_batch`` rows of the expected *maximum* length cost; with packing every row is full.
    """

    lengths: tuple[int, ...]
    """Sorted ascending."""
    seq_len: int
    packing: bool

    @property
    def sequences(self) -> int:
        """Rows per epoch: examples, or with packing the number of full seq_len blocks."""
        if self.packing:
            return max(1, math.ceil(sum(self.lengths) / self.seq_len))
        return len(self.lengths)

    def padded_length(self, micro_batch: int) -> float:
        """Expected longest row in a random micro-batch: E[max of m draws] from the lengths.

        With n sorted lengths x_i, P(max <= x_i) = (i/n)^m, so E[max] = sum x_i ((i/n)^m - ((i-1)/n)^m).
        """
        if self.packing:
            return float(self.seq_len)
        n = len(self.lengths)
        return sum(
            x * ((i / n) ** micro_batch - ((i - 1) / n) ** micro_batch) for i, x in enumerate(self.lengths, 1)
        )


def _lengths(texts: list[str], spec: SweepSpec) -> tuple[list[int], str]:
    tokenizer = load_tokenizer(spec)
    if tokenizer is None:
        return [max(1, round(len(t.encode()) / BYTES_PER_TOKEN)) for t in texts], (
            f"byte proxy (~{BYTES_PER_TOKEN:g} bytes/token; no tokenizer on this machine)"
        )
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    # The executor appends EOS to every example; count it too.
    extra = 1 if tokenizer.eos_token_id is not None else 0
    return [len(ids) + extra for ids in tokenizer(texts)["input_ids"]], f"tokenizer {name}"


def count_data(spec: SweepSpec) -> tuple[DataStats, LengthProfile]:
    """Examples and tokens of the spec's training data, scaled by ``data.fraction``."""
    data = spec.data
    seq_len = spec.base.seq_len
    if data.counts is not None:
        counts = data.counts
        examples = max(1, round(counts.train_examples * data.fraction))
        length = min(seq_len, round(counts.mean_tokens))
        stats = DataStats(
            train_examples=examples,
            eval_examples=counts.eval_examples,
            mean_tokens=counts.mean_tokens,
            max_tokens=counts.max_tokens or round(counts.mean_tokens),
            counted_with="given counts (lengths taken as the mean: dynamic padding not modelled)",
        )
        return stats, LengthProfile((length,) * examples, seq_len, data.packing)
    assert data.train is not None  # the spec validator guarantees train or counts
    texts = read_examples(spec.resolve(data.train), field="data.train")
    texts = texts[: max(1, round(len(texts) * data.fraction))]
    lengths, counted_with = _lengths(texts, spec)
    eval_examples = len(read_examples(spec.resolve(data.eval), field="data.eval")) if data.eval else 0
    stats = DataStats(
        train_examples=len(texts),
        eval_examples=eval_examples,
        mean_tokens=sum(lengths) / len(lengths),
        max_tokens=max(lengths),
        counted_with=counted_with,
    )
    return stats, LengthProfile(tuple(sorted(min(n, seq_len) for n in lengths)), seq_len, data.packing)
