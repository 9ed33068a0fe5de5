"""Local training data: reading examples, the tokenizer, and counting examples and tokens."""

from planner.data._read import load_tokenizer, read_examples
from planner.data._stats import LengthProfile, count_data, given_lengths

__all__ = ["LengthProfile", "count_data", "given_lengths", "load_tokenizer", "read_examples"]
