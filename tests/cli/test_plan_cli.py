"""``planner plan`` from the command line: the table, JSON, the timeline, and bad specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def write_spec(tmp_path: Path, model: str, **fields: Any) -> Path:
    spec = {
        "name": "t",
        "base": {"model": model, "precision": "bf16", "seq_len": 64},
        "data": {"counts": {"train_examples": 64, "mean_tokens": 40, "eval_examples": 8}},
        "search": {"learning_rate": [1e-4, 1e-3], "effective_batch": [2, 4]},
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_plan_table_json_and_timeline(tiny_models: dict[str, str], tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tiny_models["llama"], budget="1h")
    result = run("plan", str(spec), "--card", "rtx-4090")
    assert result.exit_code == 0, result.output
    assert "micro x acc" in result.output and "Budget 1h00m: the sweep fits" in result.output
    plot = tmp_path / "timeline.png"
    result = run("plan", str(spec), "--card", "rtx-4090", "--workers", "2", "--json", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["workers"] == 2 and len(plan["trials"]) == 4
    assert plot.stat().st_size > 0


@pytest.mark.parametrize(
    ("fields", "raw", "message"),
    [
        ({}, "base: [unclosed", "not valid YAML"),
        ({"search": {"colour": [1]}}, None, "cannot search over 'colour'"),
        ({"search": {"learning_rate": {"low": 1e-5, "high": 1e-3}}}, None, "grid search needs lists"),
        ({"strategy": "random"}, None, "needs n_trials"),
        ({"budget": "soon"}, None, "not a duration"),
        ({"data": {"train": "missing.jsonl"}}, None, "does not exist"),
        ({"base": {"model": "no/such-model"}}, None, "no/such-model"),
        ({"search": {"effective_batch": [0]}}, None, "effective_batch"),
    ],
)
def test_bad_specs_get_one_line_and_exit_2(
    tiny_models: dict[str, str], tmp_path: Path, fields: dict[str, Any], raw: str | None, message: str
) -> None:
    spec = write_spec(tmp_path, tiny_models["llama"], **fields)
    if raw is not None:
        spec.write_text(raw)
    result = run("plan", str(spec), "--card", "rtx-4090")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_spec_and_bad_budget_option(tiny_models: dict[str, str], tmp_path: Path) -> None:
    result = run("plan", str(tmp_path / "nope.yaml"), "--card", "rtx-4090")
    assert result.exit_code == 2 and "does not exist" in result.output
    spec = write_spec(tmp_path, tiny_models["llama"])
    result = run("plan", str(spec), "--card", "rtx-4090", "--budget", "-5m")
    assert result.exit_code == 2 and "--budget" in result.output


def test_plan_table_keeps_every_learning_rate_whole_at_80_columns(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    learning_rates = [3.1623e-05, 0.000125, 0.0002]
    search = {"learning_rate": learning_rates, "weight_decay": [0.0, 0.01], "lora_r": [8, 16]}
    spec = write_spec(tmp_path, tiny_models["llama"], search=search, budget="1h")
    result = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["plan", str(spec), "--card", "rtx-4090"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and all(len(line) <= 80 for line in result.output.splitlines())
    # Table rows: a trial number, then its learning rate (prose can wrap onto a line starting with a number).
    rows = [
        words
        for words in (line.split() for line in result.output.splitlines())
        if len(words) > 1 and words[0].isdigit() and words[1] in {str(lr) for lr in learning_rates}
    ]
    assert len(rows) == 12
    for lr in ("3.1623e-05", "0.000125", "0.0002"):
        assert sum(lr in row for row in rows) == 4  # the full value, on each of its trials' rows


def test_timeline_draws_ranges_over_budget_and_infeasible_trials(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    from matplotlib.figure import Figure

    from planner.cli._plan import draw_timeline, plot_timeline
    from planner.schema import Plan

    spec = write_spec(tmp_path, tiny_models["llama"])
    plan = Plan.model_validate(json.loads(run("plan", str(spec), "--card", "rtx-4090", "--json").output))
    first = plan.trials[0]
    assert first.time is not None
    # A budget that holds two trials: the others are over it; and one trial that cannot fit.
    budget = 2 * first.time.seconds + 1e-6
    trials = [
        t if i < 2 else t.model_copy(update={"status": "over budget", "start_seconds": None, "worker": None})
        for i, t in enumerate(plan.trials[:3])
    ]
    trials.append(plan.trials[3].model_copy(update={"feasible": False, "status": "infeasible", "time": None}))
    plan = plan.model_copy(update={"trials": trials, "budget_seconds": budget})
    axes = Figure().subplots()
    draw_timeline(plan, axes)
    assert [label.get_text() for label in axes.get_yticklabels()] == ["worker 0", "over budget", "infeasible"]
    over = [bar for bar in axes.patches if bar.get_y() < 1 < bar.get_y() + bar.get_height()]
    assert len(over) == 1 and over[0].get_x() == pytest.approx(budget)  # starts at the budget line (seconds)
    assert len(axes.containers) >= 2  # each planned trial's low-high whisker
    assert any(f"#{trials[3].number}:" in text.get_text() for text in axes.texts)
    plot_timeline(plan, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 0
