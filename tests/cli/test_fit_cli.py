"""``planner fit``/``cards``/``models`` from the command line: answers, JSON, and bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from planner.cli import cli
from tests.cli.fake_nvml import fake_gpu, no_gpu


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_fit_prints_max_micro_batch_and_breakdown(tiny_models: dict[str, str]):
    result = run("fit", tiny_models["llama"], "--method", "lora", "--seq-len", "64", "--card", "rtx-4090")
    assert result.exit_code == 0, result.output
    assert "Max micro-batch" in result.output
    assert "Where the peak goes" in result.output
    assert "Expected error" in result.output


def test_fit_json_and_plot(tiny_models: dict[str, str], tmp_path):
    plot = tmp_path / "fit.png"
    result = run(
        "fit",
        tiny_models["gpt2"],
        "--seq-len",
        "32",
        "--card",
        "rtx-4090",
        "--micro-batch",
        "1,2,4",
        "--json",
        "--plot",
        str(plot),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [row["micro_batch"] for row in report["rows"]] == [1, 2, 4]
    assert report["max_micro_batch"] >= 4
    assert plot.stat().st_size > 0


@pytest.mark.parametrize(
    ("card", "optimizer", "implementation", "attention"),
    [
        ("rtx-4090", "adamw_torch", "foreach", "efficient"),
        ("cpu", "adamw_torch", "for-loop", "cpu"),
        ("rtx-4090", "adamw", "fused", "efficient"),
    ],
)
def test_fit_json_states_the_versions_and_optimizer_it_modelled(
    tiny_models: dict[str, str], card: str, optimizer: str, implementation: str, attention: str
):
    import torch
    import transformers

    result = run(
        "fit", tiny_models["llama"], "--seq-len", "32", "--card", card, "--optimizer", optimizer,
        "--micro-batch", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stack = json.loads(result.output)["stack"]
    assert (stack["torch"], stack["transformers"]) == (torch.__version__, transformers.__version__)
    assert (stack["optimizer_implementation"], stack["attention"]) == (implementation, attention)
    assert stack["trainer_optim"] == {"adamw": "adamw_torch_fused"}.get(optimizer, optimizer)
    assert "attention_mask" in stack["batch"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["fit", "no-such/model", "--card", "rtx-4090"], "model"),
        (["fit", "{llama}", "--card", "rtx-9090"], "card"),
        (["fit", "{llama}", "--card", "rtx-4090", "--seq-len", "0"], "seq_len"),
        (["fit", "{llama}", "--card", "rtx-4090", "--seq-len", "-5"], "seq_len"),
        (["fit", "{llama}", "--card", "rtx-4090", "--micro-batch", "0,2"], "micro-batch"),
        (["fit", "{llama}", "--card", "rtx-4090", "--micro-batch", "two"], "micro-batch"),
        (["fit", "{llama}", "--card", "t4", "--precision", "bf16"], "precision"),
        (
            ["fit", "{llama}", "--card", "rtx-4090", "--method", "lora", "--lora-target", "nope"],
            "lora.target_modules",
        ),
        (["fit", "{llama}", "--card", "rtx-4090", "--lora-dropout", "1.5"], "lora.dropout"),
        (["fit", "{llama}", "--card", "local"], "card"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tiny_models: dict[str, str], args: list[str], field: str, monkeypatch: pytest.MonkeyPatch
):
    no_gpu(monkeypatch)  # "--card local" on a machine without a GPU, whatever this one has
    # The tiny models have 256 positions: a length within them unless the case sets its own.
    length = [] if "--seq-len" in args else ["--seq-len", "64"]
    result = run(*(arg.format(**tiny_models) for arg in args), *length)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {field}")
    assert "Fix:" in lines[0]
    assert "Traceback" not in result.output


def test_malformed_model_config_is_one_line_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    result = run("fit", str(tmp_path), "--card", "rtx-4090")
    assert result.exit_code == 2
    assert result.output.startswith("error: model")


def test_local_card_with_a_gpu_answers_for_it(tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    fake_gpu(monkeypatch, "NVIDIA GeForce RTX 4090", total_mib=24_564, free_mib=20_000, capability=(8, 9))
    result = run("fit", tiny_models["llama"], "--seq-len", "64", "--card", "local", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["card"] == "local" and report["max_micro_batch"] > 0


def test_unknown_card_suggests_close_names(tiny_models: dict[str, str]):
    result = run("fit", tiny_models["llama"], "--card", "rtx4080")
    assert "rtx-4090" in result.output


def test_cards_and_models_list(tmp_path):
    cards = json.loads(run("cards", "--json").output)
    assert {"rtx-4090", "h100-sxm", "t4"} <= {card["name"] for card in cards}
    result = run("models", "--json")
    assert result.exit_code == 0
    shipped = {model["id"] if isinstance(model, dict) else model for model in json.loads(result.output)}
    assert {"meta-llama/Llama-3.1-8B", "openai-community/gpt2"} <= shipped
