"""Planning across GPUs: per-rank estimates, the sharding fix with its card count, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cards import load_card
from planner.cli import cli
from planner.estimator import default_overhead, fit, rank_fit
from planner.schema import MIB, TrainingConfig
from tests.conftest import TINY_CONFIGS, make_card, write_model

# A Llama of ~110M parameters: full fp32 AdamW needs ~1.8 GB resident, over a 2 GiB card's room.
SMALL_LLAMA = {
    **TINY_CONFIGS["llama"],
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_model(tmp_path_factory.mktemp("models") / "small-llama", SMALL_LLAMA))


def _config(model: str, **changes: object) -> TrainingConfig:
    return TrainingConfig(model=model, precision="fp32", seq_len=64, gradient_checkpointing=True, **changes)


def test_sharding_fix_names_the_fewest_cards(small_llama: str) -> None:
    card = make_card(2048)
    report = fit(_config(small_llama), card)
    assert report.max_micro_batch == 0
    sharded = [fix for fix in report.fixes if fix.change.startswith("FSDP over")]
    assert len(sharded) == 1
    fix = sharded[0]
    gpus = fix.config.parallelism.world_size
    assert f"FSDP over {gpus} x {card.name}: max micro-batch {fix.max_micro_batch} per rank" == fix.change
    assert rank_fit(fix.config, card).max_micro_batch == fix.max_micro_batch >= 1
    if gpus > 2:
        fewer = fix.config.with_changes(parallelism={"gpus_per_node": gpus // 2, "strategy": "fsdp"})
        assert rank_fit(fewer, card).max_micro_batch == 0


def test_fsdp_shards_what_a_rank_keeps(small_llama: str) -> None:
    card = make_card(80 * 1024)
    single = rank_fit(_config(small_llama), card)
    ddp = rank_fit(_config(small_llama, parallelism={"gpus_per_node": 4}), card)
    fsdp = rank_fit(_config(small_llama, parallelism={"gpus_per_node": 4, "strategy": "fsdp"}), card)
    # DDP keeps everything and adds a bucketed copy of the gradients; FSDP keeps about a quarter.
    assert ddp.resident_bytes > single.resident_bytes
    assert fsdp.resident_bytes < 0.3 * single.resident_bytes
    assert fsdp.max_micro_batch >= single.max_micro_batch


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_gpu_counts_table(tiny_models: dict[str, str]) -> None:
    result = run(
        "fit", tiny_models["llama"], "--seq-len", "32", "--card", "rtx-4090", "--gpus", "1,2,4", "--json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["gpus"] for row in rows] == [1, 2, 4]
    assert rows[0]["strategy"] == "single GPU" and rows[1]["strategy"] == "fsdp"
    assert rows[2]["resident_bytes"] < rows[1]["resident_bytes"] < rows[0]["resident_bytes"]
    # Step time: one GPU communicates nothing; sharded ranks gather and reduce-scatter over PCIe.
    assert rows[0]["communication_seconds"] == 0
    assert 0 < rows[1]["exposed_communication_seconds"] <= rows[1]["communication_seconds"]
    assert all(row["tokens_per_second_per_gpu"] > 0 for row in rows)


def result_args(tiny_models: dict[str, str]) -> list[str]:
    return [
        "fit",
        tiny_models["gpt2"],
        "--seq-len",
        "32",
        "--card",
        "rtx-4090",
        "--gpus",
        "2",
        "--strategy",
        "fsdp",
    ]


def test_cli_per_rank_breakdown(tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "NCCL_BUFFSIZE",
        "NCCL_MIN_NCHANNELS",
        "NCCL_MAX_NCHANNELS",
        "NCCL_MIN_NRINGS",
        "NCCL_MAX_NRINGS",
    ):
        monkeypatch.delenv(name, raising=False)
    result = run(*result_args(tiny_models))
    assert result.exit_code == 0, result.output
    assert "FSDP over 2 GPUs: one rank" in result.output
    assert "NCCL buffers" in result.output
    assert "sharded 1/2" in result.output
    assert "tokens/s per GPU" in result.output
    as_json = run(*result_args(tiny_models), "--json")
    assert as_json.exit_code == 0, as_json.output
    answer = json.loads(as_json.output)
    per_rank = answer["per_rank"]
    assert per_rank["resident_bytes"] > 0 and per_rank["transient_bytes"] > 0
    # An RTX 4090 pair over PCIe 4.0 x16: 4 ring channels x 12 MiB (tests/distributed/test_nccl.py),
    # in device-used and the breakdown, not in allocated or reserved.
    at_max = answer["at_max"]
    assert per_rank["nccl_bytes"] == at_max["breakdown"]["collective_buffers"] == 4 * 12 * MIB
    context = default_overhead(load_card("rtx-4090")).context_bytes
    allocator_device = at_max["peak_reserved_bytes"] + context + at_max["breakdown"]["paged_on_device"]
    assert at_max["peak_bytes"] == allocator_device + 4 * 12 * MIB
    kinds = [c["kind"] for c in per_rank["step"]["communication"]["collectives"]]
    assert kinds == ["all-gather", "all-gather", "reduce-scatter"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--gpus", "2", "--offload", "optimizer"], "--strategy"),
        (["--gpus", "2", "--strategy", "fsdp", "--method", "qlora"], "method"),
        (["--gpus", "2", "--strategy", "zero2", "--optimizer", "adamw_8bit"], "optimizer"),
    ],
)
def test_cli_refuses_in_one_line(
    tiny_models: dict[str, str], args: list[str], field: str, tmp_path: Path
) -> None:
    result = run("fit", tiny_models["llama"], "--seq-len", "32", "--card", "rtx-4090", *args)
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert "Traceback" not in result.output


def test_cli_offloaded_zero_answers_model_states(tiny_models: dict[str, str]) -> None:
    args = ("--seq-len", "32", "--card", "rtx-4090", "--gpus", "4", "--strategy", "zero3")
    result = run("fit", tiny_models["llama"], *args, "--offload", "optimizer", "--json")
    assert result.exit_code == 0, result.output
    states = json.loads(result.output)["model_states"]
    parameters = sum(
        n
        for n in (
            2 * 512 * 64,  # embedding and untied head
            64,  # final norm
            2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160 + 2 * 64),  # two layers
        )
    )
    assert states["replicated_bytes"] == 0
    assert states["gathered_bytes"] == 4 * 512 * 64
    assert states["partitioned_bytes"] == 2 * parameters // 4  # the 16-bit weights' partition
    assert states["host_bytes"] == 16 * parameters // 4


def test_cli_zero_without_deepspeed_answers_model_states(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.distributed

    monkeypatch.setattr(planner.distributed, "deepspeed_installed", lambda: False)
    args = ("--seq-len", "32", "--card", "rtx-4090", "--gpus", "4", "--strategy", "zero3")
    result = run("fit", tiny_models["llama"], *args)
    assert result.exit_code == 0, result.output
    assert "model states of one rank" in result.output
    assert "pip install deepspeed" in " ".join(result.output.split())


def test_cli_zero_is_traced_per_rank(tiny_models: dict[str, str]) -> None:
    args = ("--seq-len", "32", "--card", "rtx-4090", "--gpus", "4", "--strategy", "zero3")
    result = run("fit", tiny_models["llama"], *args, "--micro-batch", "2", "--json")
    assert result.exit_code == 0, result.output
    # DeepSpeed prints to stderr, which the runner's ``output`` mixes in; the answer is stdout.
    per_rank = json.loads(result.stdout)["per_rank"]
    assert per_rank["resident_bytes"] > 0 and per_rank["transient_bytes"] > 0
    assert per_rank["resident_kind"].endswith("partitioned 1/4")


@pytest.mark.parametrize(
    ("parallelism", "refusal"),
    [
        ({"gpus": 2, "strategy": "fsdp"}, "planner run runs DDP trials only, not fsdp"),
        ({"gpus": 2, "nodes": 2, "strategy": "ddp"}, "a trial's ranks run on one host"),
    ],
)
def test_a_sweep_trial_spans_the_gpus_of_one_host_with_ddp(parallelism: dict[str, Any], refusal: str) -> None:
    from pydantic import ValidationError

    from planner.schema import SweepSpec

    raw = {
        "data": {"counts": {"train_examples": 200, "mean_tokens": 100, "eval_examples": 20}},
        "budget": "1h",
    }
    spec = SweepSpec.model_validate({**raw, "base": {"model": "gpt2", "parallelism": {"gpus": 2}}})
    assert spec.base.parallelism.world_size == 2 and spec.base.parallelism.strategy.value == "ddp"
    with pytest.raises(ValidationError, match=refusal):
        SweepSpec.model_validate({**raw, "base": {"model": "gpt2", "parallelism": parallelism}})
