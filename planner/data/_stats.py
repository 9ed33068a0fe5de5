"""Counting a dataset: examples, tokens, and what padding to the longest in a micro-batch costs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.data._read import load_tokenizer, read_rows, read_sequences, read_texts
from planner.data._shapes import TokenRow, fit_to_length
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


def _lengths(spec: SweepSpec) -> tuple[list[int], list[TokenRow] | None, str]:
    """Each training example's tokens (untruncated), its tokenized rows when a tokenizer is here,
    and how it was counted. Rows come from the executor's own path (:func:`read_sequences`)."""
    tokenizer = load_tokenizer(spec)
    if tokenizer is None:
        texts = read_texts(spec, "train")
        return (
            [max(1, round(len(t.encode()) / BYTES_PER_TOKEN)) for t in texts],
            None,
            (f"byte proxy (~{BYTES_PER_TOKEN:g} bytes/token; no tokenizer on this machine)"),
        )
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    sequences = read_sequences(spec, tokenizer, "train")
    return [len(s.input_ids) for s in sequences], sequences, f"tokenizer {name}"


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
    lengths, sequences, counted_with = _lengths(spec)
    eval_examples = len(read_rows(spec, "eval")) if data.eval else 0
    rows = fit_to_length(sequences, seq_len, data.packing) if sequences is not None else None
    stats = DataStats(
        train_examples=len(lengths),
        eval_examples=eval_examples,
        mean_tokens=sum(lengths) / len(lengths),
        max_tokens=max(lengths),
        counted_with=counted_with,
        epoch_tokens=sum(len(row.input_ids) for row in rows) if rows is not None else None,
        epoch_trained_tokens=sum(row.trained_tokens for row in rows) if rows is not None else None,
    )
    return stats, LengthProfile(tuple(sorted(min(n, seq_len) for n in lengths)), seq_len, data.packing)
