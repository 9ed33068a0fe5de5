"""Shipped architecture configs resolve offline; unknown ids fail with close matches."""

from __future__ import annotations

import pytest

from planner.errors import UnknownModelError
from planner.models import load_model_config, shipped_models

REQUIRED = {
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B",
    "mistralai/Mistral-7B-v0.3",
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-7B",
    "google/gemma-2-2b",
    "google/gemma-2-9b",
    "microsoft/Phi-3.5-mini-instruct",
    "openai-community/gpt2",
    "openai-community/gpt2-xl",
    "google-bert/bert-base-uncased",
    "google-bert/bert-large-uncased",
    "mistralai/Mistral-7B-v0.1",
    "bigcode/gpt_bigcode-santacoder",
    "bigscience/bloomz-7b1",
}


def test_required_models_ship():
    assert set(shipped_models()) >= REQUIRED


@pytest.mark.parametrize("model_id", sorted(REQUIRED))
def test_shipped_config_loads_offline(model_id: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_model_config(model_id).num_hidden_layers > 0


def test_unknown_model_suggests_shipped_ids(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match=r"Llama-3\.1-8B"):
        load_model_config("meta-llama/Llama-3.1-8")
