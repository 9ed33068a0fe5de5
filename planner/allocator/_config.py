"""The allocator's settings and a parser for ``PYTORCH_CUDA_ALLOC_CONF`` that accepts what torch accepts.

The parser follows torch 2.13's two parsers run over the same string: the accelerator-wide one
(``c10/core/AllocatorConfig.cpp``, ``AcceleratorAllocatorConfig::parseArgs``) reads the keys the model
uses, and the CUDA one (``c10/cuda/CUDAAllocatorConfig``) owns the CUDA-only keys, which the model does
not use; once the CUDA parser is registered as a hook, a key neither of them knows is an error. The
accelerator keys are checked exactly (compared with torch 2.13's own parser in the tests); of the
CUDA-only keys, whose parser was not available to read, only the key:value shape, the True/False
spelling of the boolean ones and the backend name are checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from planner.errors import ConfigError

MiB = 1 << 20

# c10/core/AllocatorConfig.h (torch 2.13): the size classes of the caching allocator.
K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: every block is a multiple of 512 bytes
K_SMALL_SIZE = 1 * MiB  # kSmallSize: the largest request served from the small pool
K_SMALL_BUFFER = 2 * MiB  # kSmallBuffer: segment (and expandable page) size of the small pool
K_MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc: large requests below this share a large_segment_size segment
K_ROUND_LARGE = 2 * MiB  # kRoundLarge: larger requests get their own segment, rounded to 2 MiB
K_LARGE_BUFFER = 20 * MiB  # kLargeBuffer: the default large_segment_size

# c10/core/AllocatorConfig.cpp: roundup_power2_divisions has one entry per power-of-two interval
# of sizes from 1 MiB (index 0: sizes below 2 MiB) to 64 GiB (index 15: 32 GiB and up).
ROUNDUP_INTERVALS = 16

_SIZE_T_MAX = (1 << 64) - 1
_ENV_NAMES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")

# Keys the accelerator parser reads but the model ignores (host/pinned memory settings).
_IGNORED_BOOL_KEYS = frozenset({"pinned_use_background_threads"})
_IGNORED_SIZE_KEYS = frozenset({"pinned_max_round_threshold_mb", "pinned_max_cached_size_mb"})
# c10/cuda/CUDAAllocatorConfig.h getKeys() (torch 2.13): keys only the CUDA parser reads.
_CUDA_BOOL_KEYS = frozenset(
    {
        "release_lock_on_cudamalloc",
        "release_lock_on_hipmalloc",
        "pinned_use_cuda_host_register",
        "pinned_use_hip_host_register",
        "graph_capture_record_stream_reuse",
        "pinned_free_catch_all",
        "throw_on_cudamalloc_oom",
    }
)
_CUDA_OTHER_KEYS = frozenset(
    {
        "backend",
        "pinned_reserve_segment_size_mb",
        "pinned_num_register_threads",
        "per_process_memory_fraction",
    }
)
_BACKENDS = ("native", "cudaMallocAsync")

_UNSIGNED = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _error(
    problem: str, fix: str = "write the setting as key:value pairs separated by commas"
) -> ConfigError:
    return ConfigError("alloc_conf", problem, fix)


@dataclass(frozen=True)
class AllocatorConfig:
    """The caching allocator's tunables, in bytes; the defaults are torch's.

    ``roundup_power2_divisions`` is either one number for every size (``roundup_power2_divisions:4``)
    or a tuple of 16, one per power-of-two size interval starting at 1 MiB (the bracketed form);
    0 or 1 means "round to 512 bytes only". ``max_non_split_rounding`` (None: ``large_segment_size``)
    is how much larger than a request an oversize cached block may be and still serve it.
    """

    max_split_size: int | None = None
    roundup_power2_divisions: int | tuple[int, ...] = 0
    garbage_collection_threshold: float | None = None
    expandable_segments: bool = False
    large_segment_size: int = K_LARGE_BUFFER
    max_non_split_rounding: int | None = None

    def __post_init__(self) -> None:
        divisions = self.roundup_power2_divisions
        values = (divisions,) if isinstance(divisions, int) else divisions
        if not isinstance(divisions, int) and len(divisions) != ROUNDUP_INTERVALS:
            raise _error(
                f"roundup_power2_divisions has {len(divisions)} intervals, torch has {ROUNDUP_INTERVALS}",
                "give one number, or one per power-of-two interval from 1 MiB to 32 GiB",
            )
        if any(value < 0 or value & (value - 1) for value in values):
            raise _error("roundup_power2_divisions must be powers of 2 (or 0)", "use 1, 2, 4, 8, ...")
        if self.large_segment_size <= K_MIN_LARGE_ALLOC:
            raise _error("large_segment_size must be > 10 MiB", "raise large_segment_size")
        for name in ("max_split_size", "max_non_split_rounding"):
            value = getattr(self, name)
            if value is not None and value < self.large_segment_size:
                raise _error(f"{name} must be >= large_segment_size", f"raise {name} or leave it unset")
        threshold = self.garbage_collection_threshold
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise _error("garbage_collection_threshold must be in (0.0, 1.0)", "use e.g. 0.6")

    @property
    def non_split_rounding(self) -> int:
        """Bytes an oversize cached block may exceed a request by (``max_non_split_rounding_size``)."""
        return self.large_segment_size if self.max_non_split_rounding is None else self.max_non_split_rounding

    def divisions_for(self, size: int) -> int:
        """The number of power-of-two divisions that apply to a request of ``size`` bytes.

        AllocatorConfig.cpp ``roundup_power2_divisions(size)``: the interval index is
        floor(log2(size)) - 20, clamped to [0, 15].
        """
        if isinstance(self.roundup_power2_divisions, int):
            return self.roundup_power2_divisions
        index = min(max(size.bit_length() - 1 - 20, 0), ROUNDUP_INTERVALS - 1)
        return self.roundup_power2_divisions[index]

    @classmethod
    def parse(cls, text: str) -> AllocatorConfig:
        """Parse a ``PYTORCH_CUDA_ALLOC_CONF`` string; raise :class:`ConfigError` where torch raises."""
        return _Parser(text).parse()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AllocatorConfig:
        """The settings torch would read from the environment (defaults when none is set).

        AllocatorConfig.cpp ``AcceleratorAllocatorConfig::instance()``: the first variable that is set
        wins, in the order ``PYTORCH_CUDA_ALLOC_CONF``, ``PYTORCH_HIP_ALLOC_CONF``, ``PYTORCH_ALLOC_CONF``
        (checked on torch 2.13.0+cpu: the HIP name counts on non-ROCm builds too).
        """
        env = os.environ if environ is None else environ
        for name in _ENV_NAMES:
            if name in env:
                return cls.parse(env[name])
        return cls()


class _Parser:
    """One pass of torch's tokenizer and key walk over a settings string."""

    def __init__(self, text: str) -> None:
        # AllocatorConfig.h ConfigTokenizer: ',', ':', '[' and ']' are tokens of their own, whitespace
        # (std::isspace) is dropped everywhere, even inside a word, and the rest accumulates into words.
        words = re.sub(r"[ \t\n\v\f\r]", "", text)
        self.tokens = [token for token in re.split(r"([,:\[\]])", words) if token]

    def token(self, i: int) -> str:
        if i >= len(self.tokens):
            raise _error(
                f"the setting ends early after '{''.join(self.tokens)}'",
                "finish the last key:value pair and close any '[' list",
            )
        return self.tokens[i]

    def expect(self, i: int, token: str) -> None:
        if self.token(i) != token:
            raise _error(f"expected '{token}' but found '{self.tokens[i]}'")

    def unsigned(self, i: int) -> int:
        # std::stoull: a leading (optionally signed) run of digits, the rest of the word ignored; a
        # negative number wraps around modulo 2**64.
        word = self.token(i)
        match = _UNSIGNED.match(word)
        if match is None or int(match.group()) > _SIZE_T_MAX:
            raise _error(f"'{word}' is not a whole number", "write sizes as whole MiB, e.g. 128")
        return int(match.group()) % (1 << 64)

    def number(self, i: int) -> float:
        # std::stod: the leading decimal number of the word.
        word = self.token(i)
        match = _FLOAT.match(word)
        if match is None:
            raise _error(f"'{word}' is not a number", "write a decimal such as 0.6")
        return float(match.group())

    def boolean(self, i: int) -> bool:
        # AllocatorConfig.h ConfigTokenizer::toBool: exactly "True" or "False".
        word = self.token(i)
        if word not in ("True", "False"):
            raise _error(f"expected 'True' or 'False', got '{word}'", "spell booleans True or False")
        return word == "True"

    def skip_key(self, i: int) -> int:
        # ConfigTokenizer::skipKey: the value is one token or a bracketed list.
        self.expect(i + 1, ":")
        i += 2
        if self.token(i) != "[":
            return i
        while i + 1 < len(self.tokens) and self.tokens[i + 1] != "]":
            i += 1
        if i + 1 >= len(self.tokens):
            raise _error("a '[' list is not closed", "close the list with ']'")
        return i + 1

    def megabytes(self, i: int, key: str, minimum: int) -> tuple[int, int]:
        self.expect(i + 1, ":")
        value = self.unsigned(i + 2)
        if value < minimum:
            raise _error(f"{key} too small, must be >= {minimum}", f"set {key} to at least {minimum}")
        return i + 2, min(value, _SIZE_T_MAX // MiB) * MiB

    def parse(self) -> AllocatorConfig:
        tokens = self.tokens
        # AllocatorConfig.cpp parseArgs(): large_segment_size_mb is read in a first pass because the
        # minimum of max_split_size_mb and max_non_split_rounding_mb depends on it.
        large_segment = K_LARGE_BUFFER
        for i, token in enumerate(tokens):
            if token == "large_segment_size_mb":
                self.expect(i + 1, ":")
                value = self.unsigned(i + 2)
                if value <= K_MIN_LARGE_ALLOC // MiB:
                    raise _error("large_segment_size_mb must be > 10", "use e.g. 20 (the default)")
                large_segment = min(value, _SIZE_T_MAX // MiB) * MiB
        floor_mb = large_segment // MiB
        settings: dict[str, Any] = {"large_segment_size": large_segment}
        i = 0
        while i < len(tokens):
            key = tokens[i]
            if key == "large_segment_size_mb":
                i = self.skip_key(i)
            elif key == "max_split_size_mb":
                i, settings["max_split_size"] = self.megabytes(i, key, floor_mb)
            elif key == "max_non_split_rounding_mb":
                i, settings["max_non_split_rounding"] = self.megabytes(i, key, floor_mb)
            elif key == "garbage_collection_threshold":
                self.expect(i + 1, ":")
                i += 2
                threshold = self.number(i)
                if not 0.0 < threshold < 1.0:
                    raise _error("garbage_collection_threshold must be in (0.0, 1.0)", "use e.g. 0.6")
                settings["garbage_collection_threshold"] = threshold
            elif key == "roundup_power2_divisions":
                i, settings["roundup_power2_divisions"] = self.divisions(i)
            elif key == "expandable_segments":
                self.expect(i + 1, ":")
                i += 2
                settings["expandable_segments"] = self.boolean(i)
            elif key in _IGNORED_BOOL_KEYS or key in _CUDA_BOOL_KEYS:
                self.expect(i + 1, ":")
                i += 2
                self.boolean(i)
            elif key in _IGNORED_SIZE_KEYS:
                self.expect(i + 1, ":")
                i += 2
                self.unsigned(i)
            elif key == "backend":
                self.expect(i + 1, ":")
                i += 2
                if self.token(i) not in _BACKENDS:
                    raise _error(f"unknown allocator backend '{tokens[i]}'", "use native or cudaMallocAsync")
            elif key in _CUDA_OTHER_KEYS:
                i = self.skip_key(i)
            else:
                raise _error(f"unrecognized key '{key}'", "remove it or fix its spelling")
            # parseArgs(): after each value, a ',' must follow unless the string ends.
            if i + 1 < len(tokens):
                i += 1
                self.expect(i, ",")
            i += 1
        return AllocatorConfig(**settings)

    def divisions(self, i: int) -> tuple[int, int | tuple[int, ...]]:
        """AllocatorConfig.cpp parseRoundUpPower2Divisions(): one number, or ``[MiB:n, ..., >:n]``."""
        self.expect(i + 1, ":")
        i += 2
        if self.token(i) != "[":
            value = self.unsigned(i)
            if not _power_of_two(value):
                raise _error("roundup_power2_divisions must be a power of 2", "use 1, 2, 4, 8, ...")
            return i, value
        # Every interval starts at 0 (no power-of-two rounding); the first "boundary:n" also sets all
        # intervals below it, ">:n" sets every interval after the previous boundary.
        intervals = [0] * ROUNDUP_INTERVALS
        first, last_index = True, 0
        while i + 1 < len(self.tokens) and self.tokens[i + 1] != "]":
            i += 1
            boundary = self.tokens[i]
            self.expect(i + 1, ":")
            i += 2
            value = self.unsigned(i)
            if value != 0 and not _power_of_two(value):
                raise _error(
                    "roundup_power2_divisions must be powers of 2 or 0", "use 0 (off), 1, 2, 4, 8, ..."
                )
            if boundary == ">":
                intervals[last_index + 1 :] = [value] * (ROUNDUP_INTERVALS - last_index - 1)
            else:
                megabytes = self.unsigned(i - 2)
                if not _power_of_two(megabytes):
                    raise _error(
                        f"interval '{boundary}' is not a power of 2", "write intervals as 64, 128, ..."
                    )
                index = min(megabytes.bit_length() - 1, ROUNDUP_INTERVALS - 1)
                if first:
                    intervals[:index] = [value] * index
                    first = False
                intervals[index] = value
                last_index = index
            if self.token(i + 1) != "]":
                i += 1
                self.expect(i, ",")
        if i + 1 >= len(self.tokens):
            raise _error("a '[' list is not closed", "close the list with ']'")
        return i + 1, tuple(intervals)


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0
