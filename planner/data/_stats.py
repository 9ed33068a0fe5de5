"""Counting a dataset: examples, tokens, and what padding to the longest in a micro-batch costs.

Lengths are the data's own: every example measured with the tokenizer when the data is here, or a
distribution rebuilt from the percentiles or histogram the spec gives when it is not.
"""

from __future__ import annotations

import bisect
import importlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from planner.data._read import ROW_READER, Split, load_tokenizer, read_sequences, read_texts
from planner.data._shapes import TokenRow, fit_to_length
from planner.schema import DataCounts, DataStats, SweepSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# English text through a modern BPE tokenizer: ~4 bytes per token (OpenAI's and Llama's tokenizers
# both land between 3.5 and 4.5 on web text). Used only when no tokenizer is on this machine.
BYTES_PER_TOKEN = 4.0
# A distribution given as numbers is represented by this many evenly spaced quantiles: the
# expected maximum of m draws over them is within a fraction of a percent of the continuous one.
QUANTILES = 1000


@dataclass(frozen=True)
class LengthProfile:
    """Token lengths of the training sequences before truncation, and how the trainer shapes them.

    Without packing, rows are cut at ``seq_len`` and a micro-batch is padded to its longest row
    (dynamic padding), so a step costs what ``micro_batch`` rows of the expected *maximum* length
    cost; with packing the whole token stream is cut into full ``seq_len`` rows.
    """

    lengths: tuple[int, ...]
    """Sorted ascending: one per example, or evenly spaced quantiles of a given distribution."""
    seq_len: int
    packing: bool
    examples: int | None = None
    """Examples the lengths stand for (default: one per length)."""
    eval_lengths: tuple[int, ...] = ()
    """The eval examples' lengths in file order (Trainer evaluates them in order, unshuffled)."""
    tokenize_seconds: float = 0.0
    """What tokenising the training and eval texts took here (each trial does it again)."""

    @property
    def count(self) -> int:
        return self.examples if self.examples is not None else len(self.lengths)

    @property
    def sequences(self) -> int:
        """Rows per epoch: examples, or with packing the number of seq_len blocks of the stream."""
        if self.packing:
            mean = sum(self.lengths) / len(self.lengths)
            return max(1, math.ceil(mean * self.count / self.seq_len))
        return self.count

    def padded_length(self, micro_batch: int) -> float:
        """Expected longest row in a random micro-batch: E[max of m draws] from the truncated lengths.

        With n sorted lengths x_i, P(max <= x_i) = (i/n)^m, so E[max] = sum x_i ((i/n)^m - ((i-1)/n)^m)
        (the order statistics of sampling with replacement; Trainer's random sampler draws without,
        which differs by O(m/n)).
        """
        if self.packing:
            return float(self.seq_len)
        n = len(self.lengths)
        return sum(
            min(x, self.seq_len) * ((i / n) ** micro_batch - ((i - 1) / n) ** micro_batch)
            for i, x in enumerate(self.lengths, 1)
        )

    def eval_padded_length(self, micro_batch: int) -> float:
        """Mean padded length of the eval batches: consecutive rows, each batch padded to its longest."""
        if not self.eval_lengths:
            return self.padded_length(micro_batch)
        rows = [min(n, self.seq_len) for n in self.eval_lengths]
        batches = [rows[i : i + micro_batch] for i in range(0, len(rows), micro_batch)]
        return sum(max(batch) * len(batch) for batch in batches) / len(rows)


def _lengths(
    spec: SweepSpec, tokenizer: PreTrainedTokenizerBase | None, split: Split
) -> tuple[list[int], list[TokenRow] | None]:
    """Each example's tokens (untruncated, in file order) of ``split``, and its tokenized rows when
    there is a tokenizer (else a byte proxy). Rows come from the executor's own path
    (:func:`read_sequences`)."""
    if tokenizer is None:
        return [max(1, round(len(t.encode()) / BYTES_PER_TOKEN)) for t in read_texts(spec, split)], None
    sequences = read_sequences(spec, tokenizer, split)
    return [len(s.input_ids) for s in sequences], sequences


def _interpolate(points: list[tuple[float, float]], u: float) -> float:
    """The piecewise-linear function through ``points`` (ascending x) at ``u``, flat outside them."""
    xs = [x for x, _ in points]
    index = bisect.bisect_right(xs, u)
    if index == 0:
        return points[0][1]
    if index == len(points):
        return points[-1][1]
    (x0, y0), (x1, y1) = points[index - 1], points[index]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (u - x0) / (x1 - x0)


def given_lengths(counts: DataCounts) -> tuple[int, ...]:
    """Evenly spaced quantiles of the length distribution the counts describe.

    Percentiles: the quantile function linear between them, from the smallest given (or 1) to
    ``max_tokens`` (or the largest given). Histogram: lengths uniform within each bin, a bin
    starting after the previous one's bound. Only a mean: every example at the mean (no spread
    known, so dynamic padding costs nothing extra; the plan says so).
    """
    grid = [(q + 0.5) / QUANTILES for q in range(QUANTILES)]
    if counts.length_percentiles is not None:
        points = sorted((p / 100, float(v)) for p, v in counts.length_percentiles.items())
        if points[0][0] > 0:
            points.insert(0, (0.0, 1.0 if len(points) > 1 else points[0][1]))
        if points[-1][0] < 1:
            points.append((1.0, float(max(counts.max_tokens or 0, points[-1][1]))))
        values = [_interpolate(points, u) for u in grid]
    elif counts.length_histogram is not None:
        total = sum(count for _, count in counts.length_histogram)
        points, seen, lower = [(0.0, 1.0)], 0, 1.0
        for bound, count in counts.length_histogram:
            if count:
                points.append((seen / total, lower))
                seen += count
                points.append((seen / total, float(bound)))
            lower = float(bound + 1)
        values = [_interpolate(points, u) for u in grid]
    else:
        assert counts.mean_tokens is not None  # the schema requires one of the three
        values = [counts.mean_tokens]
    return tuple(sorted(max(1, round(v)) for v in values))


def count_data(spec: SweepSpec) -> tuple[DataStats, LengthProfile]:
    """Examples and tokens of the spec's training data, scaled by ``data.fraction``."""
    data = spec.data
    seq_len = spec.base.seq_len
    if data.counts is not None:
        counts = data.counts
        examples = max(1, round(counts.train_examples * data.fraction))
        lengths = given_lengths(counts)
        mean = counts.mean_tokens if counts.mean_tokens is not None else sum(lengths) / len(lengths)
        spread = (
            "a given length distribution"
            if counts.length_percentiles or counts.length_histogram
            else "lengths taken as the mean: give length_percentiles for dynamic padding"
        )
        stats = DataStats(
            train_examples=examples,
            eval_examples=counts.eval_examples,
            mean_tokens=mean,
            max_tokens=counts.max_tokens or max(lengths),
            counted_with=f"given counts ({spread})",
        )
        return stats, LengthProfile(lengths, seq_len, data.packing, examples=examples)
    assert data.train is not None  # the spec validator guarantees train or counts
    # Timed as a trial does it: loading the tokenizer, then tokenising both sets. The first load
    # in a process imports the tokenizer's classes (seconds); a trial runs in a worker that has
    # imported them already (its planning counted the data), so it pays a warm load: the first
    # load is not timed (the plan's start-up holds it), a second one is. Likewise the library the
    # rows are read with: importing ``datasets`` (~0.5 s on a 2-core VM, against ~0.03 s for
    # reading and tokenising a few hundred rows) happens once per process, before any trial.
    tokenizer = load_tokenizer(spec)
    importlib.import_module(ROW_READER)
    start = time.perf_counter()
    if tokenizer is not None:
        tokenizer = load_tokenizer(spec)
    train_lengths, sequences = _lengths(spec, tokenizer, "train")
    eval_lengths = _lengths(spec, tokenizer, "eval")[0] if data.eval else []
    tokenize_seconds = time.perf_counter() - start
    if tokenizer is None:
        counted_with = f"byte proxy (~{BYTES_PER_TOKEN:g} bytes/token; no tokenizer on this machine)"
    else:
        counted_with = f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}"
    rows = fit_to_length(sequences, seq_len, data.packing) if sequences is not None else None
    stats = DataStats(
        train_examples=len(train_lengths),
        eval_examples=len(eval_lengths),
        mean_tokens=sum(train_lengths) / len(train_lengths),
        max_tokens=max(train_lengths),
        counted_with=counted_with,
        epoch_tokens=sum(len(row.input_ids) for row in rows) if rows is not None else None,
        epoch_trained_tokens=sum(row.trained_tokens for row in rows) if rows is not None else None,
    )
    profile = LengthProfile(
        tuple(sorted(train_lengths)),
        seq_len,
        data.packing,
        eval_lengths=tuple(eval_lengths),
        tokenize_seconds=tokenize_seconds,
    )
    return stats, profile
