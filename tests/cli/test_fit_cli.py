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


def test_fit_takes_torch_compile_and_says_memory_is_eagers(tiny_models: dict[str, str]):
    args = ("fit", tiny_models["llama"], "--seq-len", "32", "--card", "rtx-4090", "--micro-batch", "1")
    result = run(*args, "--torch-compile", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["config"]["torch_compile"] is True
    assert any("estimated as eager's" in note for note in report["notes"])
    eager = json.loads(run(*args, "--json").output)
    assert eager["config"]["torch_compile"] is False and "notes" not in eager


CARDS = "rtx-4090,l4,a100-80gb,h100-sxm"


def test_several_cards_in_one_table_ranked_cheapest_first(tiny_models: dict[str, str], tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("rtx-4090: 0.69\nh100-sxm: 2.99\nA100 80GB: 1.79\n")  # names as `planner cards` takes
    common = ["fit", tiny_models["llama"], "--seq-len", "64", "--card", CARDS, "--tokens", "200M"]
    table = CliRunner(env={"COLUMNS": "80"}).invoke(cli, [*common, "--prices", str(prices)])
    assert table.exit_code == 0, table.output
    assert all(len(line) <= 80 for line in table.output.splitlines()), table.output
    assert "…" not in table.output  # nothing truncated
    payload = json.loads(run(*common, "--prices", str(prices), "--json").output)
    options = payload["options"]
    assert {o["card"] for o in options} == set(CARDS.split(","))
    assert payload["ranked_by"] == "price" and payload["tokens"] == 200_000_000
    priced = [o for o in options if o["usd_per_hour"] is not None]
    assert [o["card"] for o in options[: len(priced)]] == [o["card"] for o in priced]  # priced first
    assert [o["usd"] for o in priced] == sorted(o["usd"] for o in priced)
    assert payload["best"] == priced[0]["card"]
    for option in options:
        assert option["max_micro_batch"] > 0 and option["tokens_per_second"] > 0
        assert option["hours"] == pytest.approx(2e8 / option["tokens_per_second"] / 3600)
        line = next(
            line for line in table.output.splitlines() if line.split() and line.split()[0] == option["card"]
        )
        assert str(option["max_micro_batch"]) in line.split()
    assert f"Cheapest that fits: {payload['best']}" in table.output
    # Without prices: fastest first.
    fastest = json.loads(run(*common, "--json").output)
    rates = [o["tokens_per_second"] for o in fastest["options"]]
    assert fastest["ranked_by"] == "tokens/s" and rates == sorted(rates, reverse=True)


def test_require_fit_exits_1_when_nothing_fits(tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    fake_gpu(monkeypatch, "NVIDIA GeForce RTX 4090", total_mib=300, free_mib=300, capability=(8, 9))
    args = ["fit", tiny_models["llama"], "--seq-len", "64", "--card", "local"]
    assert run(*args).exit_code == 0  # an answer, not an error
    refused = run(*args, "--require-fit", "--json")
    assert refused.exit_code == 1 and json.loads(refused.output)["max_micro_batch"] == 0
    assert (
        run("fit", tiny_models["llama"], "--seq-len", "64", "--card", "rtx-4090", "--require-fit").exit_code
        == 0
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--card", "rtx-4090", "--tokens", "1M"], "--tokens"),
        (["--card", CARDS, "--tokens", "lots"], "--tokens"),
        (["--card", CARDS, "--micro-batch", "1,2"], "--micro-batch"),
        (["--card", CARDS, "--prices", "{prices}"], "--prices: rtx-4090"),
    ],
)
def test_bad_comparison_input_is_one_line_exit_2(tiny_models: dict[str, str], tmp_path, args, field):
    prices = tmp_path / "prices.yaml"
    prices.write_text("rtx-4090: cheap\n")
    result = run("fit", tiny_models["llama"], "--seq-len", "64", *(a.format(prices=prices) for a in args))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {field}") and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("sizes", [None, "1,2,3"])
def test_fit_plot_has_integer_ticks_and_marks_the_max_micro_batch(tiny_models: dict[str, str], sizes):
    from matplotlib.figure import Figure

    from planner import TrainingConfig, fit
    from planner.cli._fit import draw_fit

    config = TrainingConfig(model=tiny_models["llama"], seq_len=64)
    report = fit(config, "rtx-4090", [int(s) for s in sizes.split(",")] if sizes else None)
    axes = Figure().subplots()
    draw_fit(report, axes)
    figure = axes.figure
    figure.canvas.draw()
    ticks = [label.get_text() for label in axes.get_xticklabels() if label.get_text()]
    assert ticks and all(tick.isdigit() for tick in ticks), ticks
    labels = axes.get_legend_handles_labels()[1]
    assert f"max micro-batch {report.max_micro_batch}" in labels


@pytest.mark.parametrize(
    "command", ["fit", "plan", "run", "results", "report", "profile", "cards", "models", None]
)
def test_help_has_examples_and_fits_80_columns(command: str | None):
    result = CliRunner(env={"COLUMNS": "80"}).invoke(cli, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    examples = lines[lines.index("  Examples:") + 1 :]
    assert examples and examples[0].strip().startswith("planner ")
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]


def test_fit_shows_paged_optimizer_state_apart(tmp_path):
    from tests.conftest import TINY_CONFIGS, write_model

    # Embedding and head of 32768 x 64 elements: paged by bitsandbytes (>= 1e5 elements each).
    model = str(write_model(tmp_path / "llama", {**TINY_CONFIGS["llama"], "vocab_size": 32768}))
    args = ["fit", model, "--optimizer", "paged_adamw_8bit", "--seq-len", "32", "--card", "rtx-4090"]
    result = run(*args, "--micro-batch", "1")
    assert result.exit_code == 0, result.output
    assert "Paged optimizer state" in result.output and "host RAM" in result.output
    report = json.loads(run(*args, "--micro-batch", "1", "--json").output)
    paged = 2 * 2 * 32768 * 64  # state1 + state2, one byte per element, of both matrices
    assert report["rows"][0]["paged_bytes"] == paged
    assert report["rows"][0]["breakdown"]["paged_on_device"] == paged
