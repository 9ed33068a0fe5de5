"""Tiny models built from configs (no weights, nothing downloaded) and a tiny card."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from planner.schema import Card, HostProfile, MachineLoad

# Architectures that cover what the estimator must get right: grouped-query attention (Llama),
# learned positions + dropout + LayerNorm (GPT-2), an encoder classifier (BERT), mixture of experts
# (Mixtral), a relative-position classifier whose loss runs a data-dependent op (DeBERTa-v2),
# attention biases (Qwen2), and sliding-window attention shorter than the traced sequences
# (Mistral: transformers builds a banded 4-D mask rather than running causal SDPA).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
    "gpt2": {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "vocab_size": 512,
        "n_positions": 256,
    },
    "bert-classifier": {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "num_labels": 3,
    },
    "mixtral": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
    "deberta-v2-classifier": {
        "architectures": ["DebertaV2ForSequenceClassification"],
        "model_type": "deberta-v2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "relative_attention": True,
        "position_buckets": 64,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "type_vocab_size": 0,
        "num_labels": 2,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
    },
    "mistral-sliding": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "sliding_window": 16,
        "tie_word_embeddings": False,
    },
}


def write_model(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Name -> local directory holding that tiny architecture's config.json."""
    root = tmp_path_factory.mktemp("models")
    return {name: str(write_model(root / name, config)) for name, config in TINY_CONFIGS.items()}


def make_card(memory_mib: int, compute_capability: str = "8.9") -> Card:
    return Card(
        name=f"test-{memory_mib}mib",
        display_name="Test card",
        vram_gb=memory_mib / 1024,
        memory_total_mib=memory_mib,
        compute_capability=compute_capability,
        tflops={"bf16": 100.0, "fp16": 100.0, "fp32": 50.0},
        bandwidth_gbs=1000.0,
        source="test",
    )


@pytest.fixture(scope="session", autouse=True)
def _own_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``datasets`` caches every local file it loads as Arrow; the tests' files go to a temporary
    cache, not the user's (set in the environment for worker processes, and on ``datasets.config``,
    which reads it once at import)."""
    import sys

    cache = str(tmp_path_factory.mktemp("hf-datasets-cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_CACHE", cache)
        if "datasets" in sys.modules:
            patch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", cache)
        yield


def make_host_profile(load: float = 0.5, cpus: int = 2, **speeds: float) -> HostProfile:
    """A host profile with round made-up speeds (tests of behaviour, not of this machine)."""
    from planner.profiler import library_versions

    figures: dict[str, Any] = {
        "dispatch_seconds": 1e-5,
        "memory_bytes_per_second": 1e10,
        "init_bytes_per_second": 1e9,
        "disk_write_bytes_per_second": 1e9,
        "storage_read_bytes_per_second": 2e9,
        "collate_fixed_seconds": 1e-4,
        "collate_row_seconds": 1e-5,
        "collate_token_seconds": 1e-7,
        "trainer_setup_seconds": 0.5,
        "trainer_step_seconds": 0.003,
        "trainer_micro_step_seconds": 0.001,
        "eval_fixed_seconds": 0.01,
        "eval_batch_seconds": 0.001,
        "save_fixed_seconds": 0.05,
        **speeds,
    }
    return HostProfile(
        created="2026-01-01T00:00:00+00:00",
        versions=library_versions(),
        machine_load=MachineLoad(cpu_count=cpus, load_average=load),
        seconds=1.0,
        **figures,
    )


def place_host_profile(directory: Path, profile: HostProfile | None = None) -> HostProfile:
    """Put a host profile where the planner looks for this machine's, so it is not measured."""
    from planner.profiler import host_profile_path, machine_load

    profile = profile or make_host_profile(cpus=machine_load().cpu_count)
    path = host_profile_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.model_dump_json())
    return profile
