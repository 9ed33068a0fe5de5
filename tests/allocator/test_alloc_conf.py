"""PYTORCH_CUDA_ALLOC_CONF parsing: the values it yields, and that it accepts what torch 2.13 accepts."""

from __future__ import annotations

import pytest
import torch

from planner.allocator import AllocatorConfig
from planner.errors import ConfigError

MiB = 1 << 20


def test_parse_reads_every_modelled_setting() -> None:
    config = AllocatorConfig.parse(
        "max_split_size_mb:128,roundup_power2_divisions:4,garbage_collection_threshold:0.6,expandable_segments:True"
    )
    assert config == AllocatorConfig(
        max_split_size=128 * MiB,
        roundup_power2_divisions=4,
        garbage_collection_threshold=0.6,
        expandable_segments=True,
    )
    assert config.non_split_rounding == 20 * MiB  # defaults to large_segment_size
    assert AllocatorConfig.parse("") == AllocatorConfig()


def test_parse_bracketed_divisions_fill_intervals_like_torch() -> None:
    """Intervals are powers of two of MiB from 1 MiB (index 0) to 32 GiB and up (index 15).

    "256:1" sets index 8 and, being the first entry, indices 0-7 too; "512:2" sets index 9;
    ">:4" sets everything after the last boundary, indices 10-15.
    """
    config = AllocatorConfig.parse("roundup_power2_divisions:[256:1,512:2,>:4]")
    assert config.roundup_power2_divisions == (1,) * 9 + (2,) + (4,) * 6
    assert config.divisions_for(300 * MiB) == 1  # 256-512 MiB
    assert config.divisions_for(600 * MiB) == 2  # 512 MiB-1 GiB
    assert config.divisions_for(5 * 1024 * MiB) == 4
    assert config.divisions_for(1000) == 1  # below 1 MiB counts as the first interval
    # A '>' before any boundary leaves index 0 at its reset value, 0.
    greater_first = AllocatorConfig.parse("roundup_power2_divisions:[>:4]")
    assert greater_first.roundup_power2_divisions == (0,) + (4,) * 15


def test_parse_size_limits_depend_on_large_segment_size() -> None:
    """max_split_size_mb must be >= large_segment_size_mb, which is read first wherever it appears."""
    config = AllocatorConfig.parse(
        "max_split_size_mb:40,large_segment_size_mb:40,max_non_split_rounding_mb:64"
    )
    assert (config.max_split_size, config.large_segment_size) == (40 * MiB, 40 * MiB)
    assert config.non_split_rounding == 64 * MiB
    with pytest.raises(ConfigError, match="max_split_size_mb too small, must be >= 40"):
        AllocatorConfig.parse("max_split_size_mb:30,large_segment_size_mb:40")
    # std::stoull keeps the leading digits and drops whitespace inside words.
    assert AllocatorConfig.parse(" max_split_size_mb : 2 1 ").max_split_size == 21 * MiB


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("max_split_size_mb:10", "too small"),
        ("garbage_collection_threshold:1.0", r"\(0.0, 1.0\)"),
        ("expandable_segments:true", "'True' or 'False'"),
        ("roundup_power2_divisions:3", "power of 2"),
        ("roundup_power2_divisions:[256:1", "ends early"),
        ("max_split_size_mb", "ends early"),
        ("max_split_size_mb:abc", "not a whole number"),
        ("max_split_size_mb:128,,", "unrecognized key ','"),
        ("max_split_sise_mb:128", "unrecognized key"),
        ("backend:cuda", "unknown allocator backend"),
    ],
)
def test_parse_rejects_malformed_settings(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        AllocatorConfig.parse(text)
    assert raised.value.field == "alloc_conf"
    assert raised.value.fix


def test_parse_accepts_exactly_what_torchs_parser_accepts() -> None:
    """torch's CPU build carries the accelerator-wide parser; compare accept/reject on tricky strings.

    The CPU build has no CUDA hook, so only strings with accelerator keys are compared (a CUDA build
    also rejects unknown keys, which the model does). torch keeps large_segment_size between calls,
    so it is reset before each string.
    """
    set_settings = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if set_settings is None:
        pytest.skip("this torch has no _accelerator_setAllocatorSettings")
    cases = [
        "max_split_size_mb:300,",
        "max_split_size_mb:300,,",
        "max_split_size_mb:-5",
        "max_split_size_mb:128abc",
        "max_split_size_mb:99999999999999999999999",
        "garbage_collection_threshold:.5",
        "garbage_collection_threshold:0.5x",
        "garbage_collection_threshold:-0.5",
        "roundup_power2_divisions:[]",
        "roundup_power2_divisions:[256:1,]",
        "roundup_power2_divisions:[256:0]",
        "roundup_power2_divisions:[3:1]",
        "roundup_power2_divisions:[256:1 512:2]",
        "roundup_power2_divisions:0",
        "expandable_segments:True:False",
        "expandable_segments:[True]",
        "large_segment_size_mb:10",
        "large_segment_size_mb:40,max_split_size_mb:30",
        "pinned_use_background_threads:yes",
        "pinned_max_cached_size_mb:x",
        ",",
        "  ",
    ]
    verdicts = []
    try:
        for text in cases:
            set_settings("large_segment_size_mb:20")
            try:
                set_settings(text)
                torch_accepts = True
            except Exception:  # torch raises ValueError, RuntimeError or IndexError
                torch_accepts = False
            try:
                AllocatorConfig.parse(text)
                model_accepts = True
            except ConfigError:
                model_accepts = False
            verdicts.append((text, torch_accepts, model_accepts))
    finally:
        set_settings("")
    assert [v for v in verdicts if v[1] != v[2]] == []


def test_from_env_prefers_the_cuda_variable() -> None:
    """AcceleratorAllocatorConfig::instance(): PYTORCH_CUDA_ALLOC_CONF, PYTORCH_HIP_ALLOC_CONF, then
    PYTORCH_ALLOC_CONF; the first that is set is the only one read."""
    both = {
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64",
        "PYTORCH_ALLOC_CONF": "expandable_segments:True",
    }
    assert AllocatorConfig.from_env(both) == AllocatorConfig(max_split_size=64 * MiB)
    hip = {"PYTORCH_HIP_ALLOC_CONF": "max_split_size_mb:32", "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    assert AllocatorConfig.from_env(hip) == AllocatorConfig(max_split_size=32 * MiB)
    generic = {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    assert AllocatorConfig.from_env(generic) == AllocatorConfig(expandable_segments=True)
    assert AllocatorConfig.from_env({}) == AllocatorConfig()
