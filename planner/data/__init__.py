"""Training data: loading it through ``datasets``, its rows as token ids and labels, the tokenizer,
and counting examples and tokens, on one path for the planner and the executor."""

from planner.data._read import load_tokenizer, read_examples, read_rows, read_sequences, read_texts
from planner.data._shapes import IGNORED, TokenRow, fit_to_length
from planner.data._stats import LengthProfile, count_data, given_lengths

__all__ = [
    "IGNORED",
    "LengthProfile",
    "TokenRow",
    "count_data",
    "fit_to_length",
    "given_lengths",
    "load_tokenizer",
    "read_examples",
    "read_rows",
    "read_sequences",
    "read_texts",
]
