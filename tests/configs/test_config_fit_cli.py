"""``planner fit --config FILE``: the file as the base, typed flags over it, notes, bad files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from planner.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_fit_config_matches_the_same_flags(same_config_files: dict[str, Path], tiny_models: dict[str, str]):
    from_file = run("fit", "--config", str(same_config_files["axolotl"]), "--card", "cpu", "--json")
    assert from_file.exit_code == 0, from_file.output
    report = json.loads(from_file.stdout)
    flags = run(
        "fit", tiny_models["llama"], "--method", "lora", "--precision", "bf16", "--gradient-checkpointing",
        "--seq-len", "64", "--grad-accum", "4", "--lora-r", "8", "--lora-alpha", "16",
        "--lora-target", "q_proj,v_proj", "--card", "cpu", "--json",
    )  # fmt: skip
    assert flags.exit_code == 0, flags.output
    expected = json.loads(flags.stdout)
    assert report["max_micro_batch"] == expected["max_micro_batch"]
    (ignored,) = report["notes"]
    assert ignored.startswith("ignored 11 key(s) the estimate does not use: tokenizer_type, datasets,")
    assert "notes" not in expected


def test_typed_flags_override_the_file_and_notes_go_to_stderr(same_config_files: dict[str, Path]):
    result = CliRunner().invoke(
        cli,
        ["fit", "--config", str(same_config_files["llama-factory"]), "--card", "cpu", "--seq-len", "32",
         "--no-gradient-checkpointing", "--lora-r", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "lora bf16 adamw, seq 32, checkpointing off" in " ".join(result.stdout.split())  # rich wraps
    notes = result.stderr.strip().splitlines()
    assert notes and all(line.startswith("note: ") for line in notes)


def test_bad_config_file_is_one_line_exit_2(tmp_path: Path):
    for args in (
        ["fit", "--config", str(tmp_path / "nope.yml"), "--card", "cpu"],
        ["fit", "--card", "cpu"],
    ):
        result = run(*args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], result.output
    bad = tmp_path / "bad.yml"
    bad.write_text("base_model: m\noptimizer: adamw_9bit\n")
    result = run("fit", "--config", str(bad), "--card", "cpu")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: optimizer: 'adamw_9bit' is not an optimizer the planner models (did you mean 'adamw_8bit'?). "
        "Fix: use one of adamw, adamw_torch, adamw_torch_fused, adamw_hf, adamw_8bit, adamw_bnb_8bit, "
        "paged_adamw_8bit, sgd, adafactor"
    ]
