"""``planner run / results / report`` from the command line: a tiny sweep, its results, the exported
best config and the plots; one worker per GPU; bad input."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from planner.cli import cli
from planner.executor import load_results
from planner.sweep import load_spec
from tests.executor.conftest import one_thread_and_own_measurements, tiny_model, write_spec

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_own_measurements(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with one_thread_and_own_measurements(tmp_path_factory.mktemp("measured")):
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("run-cli") / "tiny-llama")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def payload(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Path, dict[str, Any]]:
    """One `planner run` of a two-trial grid, planned for and run on this CPU; shared by the tests."""
    spec = write_spec(
        tmp_path_factory.mktemp("swept"), model_dir, train=16, search={"learning_rate": [1e-3, 1e-2]}
    )
    return spec, payload(run("run", spec, "--card", "cpu", "--json"))


def test_run_runs_every_planned_trial(swept: tuple[Path, dict[str, Any]]) -> None:
    spec, ran = swept
    assert [t["status"] for t in ran["trials"]] == ["complete", "complete"]
    assert [t["params"]["learning_rate"] for t in ran["trials"]] == [1e-3, 1e-2]
    assert ran["left_waiting"] == 0 and ran["predicted_total_seconds"] > 0
    for trial in ran["trials"]:
        assert trial["predicted_seconds"] > 0 and trial["seconds"] > 0 and trial["steps_done"] == 4
    # Nothing runs twice: a second run (plain output, as in a pipe) finds every trial done.
    again = run("run", spec, "--card", "cpu")
    assert again.exit_code == 0, again.output
    assert "sweep tiny: 0 trials to run" in again.stdout, again.stdout
    assert len(load_results(load_spec(spec).storage_url, "tiny").trials) == 2


def test_results_json_lists_the_trials_and_the_best(swept: tuple[Path, dict[str, Any]]) -> None:
    spec, _ = swept
    results = payload(run("results", spec, "--json"))
    assert results["study"] == "tiny" and results["objective"] == "eval_loss"
    values = {t["number"]: t["value"] for t in results["trials"]}
    assert len(values) == 2 and all(v is not None for v in values.values())
    assert results["best"] == min(values, key=lambda n: values[n])
    table = run("results", spec)
    assert table.exit_code == 0 and f"Best: trial {results['best']}" in table.stdout


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_export_writes_training_arguments(
    swept: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from transformers import TrainingArguments

    spec, _ = swept
    path = tmp_path / f"best{suffix}"
    results = payload(run("results", spec, "--export", path, "--json"))
    exported = yaml.safe_load(path.read_text()) if suffix == ".yaml" else json.loads(path.read_text())
    loaded = exported["training_arguments"]
    best = next(t for t in results["trials"] if t["number"] == results["best"])
    assert loaded["learning_rate"] == best["params"]["learning_rate"]
    assert loaded["per_device_train_batch_size"] * loaded["gradient_accumulation_steps"] == 4
    monkeypatch.chdir(tmp_path)  # TrainingArguments' default output_dir is relative
    arguments = TrainingArguments(**loaded)
    assert arguments.learning_rate == loaded["learning_rate"]


def test_the_export_reads_back_as_the_best_trials_config(
    swept: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Round trip: what ``--export`` writes is read back (``planner fit --config``) as the config
    the best trial trained, model id, method, LoRA and shape included."""
    from planner.configs import read_training_config
    from planner.schema import TrainingConfig

    spec, _ = swept
    path = tmp_path / "best.yaml"
    results = payload(run("results", spec, "--export", path, "--json"))
    best = next(t for t in results["trials"] if t["number"] == results["best"])
    imported = read_training_config(path)
    assert imported.format == "vram-planner"
    assert imported.config == TrainingConfig.model_validate(best["config"])
    assert imported.config.micro_batch == best["micro_batch"]
    assert imported.training is not None
    assert imported.training.learning_rate == best["params"]["learning_rate"]
    fit = run("fit", "--config", path, "--card", "cpu", "--json")
    assert fit.exit_code == 0, fit.output


def test_the_axolotl_export_reads_back_as_the_best_trials_config(
    swept: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """``--format axolotl``: the best trial as an axolotl config, read back by the axolotl reader."""
    from planner.configs import read_training_config
    from planner.schema import TrainingConfig

    spec, _ = swept
    path = tmp_path / "best.yml"
    results = payload(run("results", spec, "--export", path, "--format", "axolotl", "--json"))
    best = next(t for t in results["trials"] if t["number"] == results["best"])
    assert path.read_text().startswith("# best trial")
    imported = read_training_config(path)
    assert imported.format == "axolotl"
    assert imported.config == TrainingConfig.model_validate(best["config"])
    assert imported.training is not None
    assert imported.training.learning_rate == best["params"]["learning_rate"]
    refused = run("results", spec, "--export", tmp_path / "best.json", "--format", "axolotl")
    assert refused.exit_code == 2 and "--export" in refused.output


def test_report_writes_the_plots(swept: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    spec, _ = swept
    written = payload(run("report", spec, "--out", tmp_path / "report", "--json"))["written"]
    assert sorted(Path(p).name for p in written) == [
        "intermediate_values.png",
        "losses.png",
        "memory.png",
        "param_importances.png",
        "time.png",
        "timeline.png",
    ]
    for path in written:
        assert Path(path).read_bytes().startswith(PNG)


def test_gpus_starts_one_worker_per_gpu_and_they_split_the_trials(tmp_path: Path, model_dir: Path) -> None:
    # On this CPU-only machine the workers train on the CPU, but each is its own `planner run`
    # process with CUDA_VISIBLE_DEVICES set to its GPU, recorded on the trials it ran. Trials of
    # 64 steps (~0.5 s) are long against the ~0.1 s between the workers' first claims (the same
    # start-up each, on a study the parent created): one would need to run three before the
    # other took one.
    learning_rates = [1e-3, 2e-3, 3e-3, 4e-3]
    spec = write_spec(tmp_path, model_dir, train=256, search={"learning_rate": learning_rates})
    result = run("run", spec, "--card", "cpu", "--gpus", "0,1", "--json")
    assert result.exit_code == 0, result.output
    trials = load_results(load_spec(spec).storage_url, "tiny").trials
    assert sorted(t.params["learning_rate"] for t in trials) == learning_rates  # each once
    assert all(t.status == "complete" and t.worker is not None for t in trials)
    workers = Counter((t.worker["pid"], t.worker["devices"]) for t in trials if t.worker)
    assert {devices for _, devices in workers} == {"0", "1"}  # both workers took trials
    assert len(workers) == 2 and sum(workers.values()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{dir}/missing.yaml"], "does not exist"),
        (["run", "{dir}/broken.yaml"], "not valid YAML"),
        (["run", "{spec}", "--card", "rtx-9999"], "unknown card"),
        (["run", "{spec}", "--card", "cpu", "--budget", "soon"], "--budget"),
        (["run", "{spec}", "--card", "cpu", "--budget", "-5m"], "--budget"),
        (["run", "{spec}", "--card", "cpu", "--storage", "nosuch://x"], "storage"),
        (["run", "{spec}", "--card", "cpu", "--storage", "postgresql://postgres@127.0.0.1:1/x"], "storage"),
        (["run", "{spec}", "--card", "cpu", "--gpus", "0,one"], "--gpus"),
        (["run", "{spec}", "--card", "cpu", "--gpus", ","], "--gpus"),
        (["run", "{spec}", "--card", "cpu", "--gpus", "0-1", "--gpus-per-trial", "2"], "--gpus-per-trial"),
        (["run", "{spec}", "--card", "cpu", "--gpus-per-trial", "1"], "give --gpus too"),
        (["run", "{spec}", "--card", "cpu", "--gpus", "0-1,1"], "--gpus"),
        (["run", "{ddp}", "--card", "cpu", "--gpus", "0-2"], "3 GPUs do not split into trials of 2"),
        (
            ["run", "{ddp}", "--card", "cpu", "--gpus", "0-3", "--gpus-per-trial", "4"],
            "run on 2 (base.parallelism)",
        ),
        (["run", "{spec}", "--card", "cpu", "--plan", "{dir}/broken.yaml"], "--plan"),
        (["results", "{spec}", "--study", "nope"], "no study database"),  # and none is created
        (["results"], "no spec given"),
        (["report", "{dir}/missing.yaml", "--out", "{dir}/out"], "does not exist"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(
    tmp_path: Path, model_dir: Path, args: list[str], message: str
) -> None:
    spec = write_spec(tmp_path, model_dir)
    base = {"model": str(model_dir), "seq_len": 32, "parallelism": {"gpus": 2, "strategy": "ddp"}}
    ddp = write_spec(tmp_path / "ddp", model_dir, base=base)
    (tmp_path / "broken.yaml").write_text("base: [unclosed")
    result = run(*(a.format(dir=tmp_path, spec=spec, ddp=ddp) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_export_of_an_unknown_format_exits_2(swept: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    spec, _ = swept
    result = run("results", spec, "--export", tmp_path / "best.toml")
    assert result.exit_code == 2 and "is not one of the formats .yaml, .yml, .json" in result.output


def test_results_table_keeps_learning_rates_whole_at_80_columns(tmp_path: Path, model_dir: Path) -> None:
    from planner.executor import run_function
    from tests.executor.conftest import hand_plan

    learning_rates = [3.1623e-05, 0.000125]
    spec = load_spec(write_spec(tmp_path, model_dir, train=8, search={"learning_rate": learning_rates}))
    run_function(spec, lambda trial, reporter: trial.hyper.learning_rate, hand_plan(spec, seconds=0.1))
    result = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["results", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and all(len(line) <= 80 for line in result.output.splitlines())
    for lr in ("lr=3.1623e-05", "lr=0.000125"):
        assert lr in result.output.split()


def test_gpus_are_split_into_groups_of_a_trials_ranks() -> None:
    from planner.cli._run import _gpu_groups, _gpus

    assert _gpus("0-3") == ["0", "1", "2", "3"] and _gpus("0-1,4,5") == ["0", "1", "4", "5"]
    assert _gpu_groups(_gpus("0-3"), 2, 2) == ["0,1", "2,3"]
    assert _gpu_groups(_gpus("0,1,2"), None, 1) == ["0", "1", "2"]


def test_run_plans_with_its_libraries_frozen_as_plan_does(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`planner run` imports its libraries (the model's class and adapters included) without
    collections and freezes them before planning, as `planner plan` does: the plan's start-up
    estimate times planning in that state, and unfrozen, planning's full collections walk the heap."""
    import gc

    import planner.sweep
    from planner.errors import ConfigError

    seen: list[tuple[int, bool]] = []

    def plan_for_card(*_: Any, **__: Any) -> None:
        seen.append((gc.get_freeze_count(), gc.isenabled()))
        raise ConfigError("plan", "stopped by the test", "none")

    gc.unfreeze()  # what earlier tests in this process froze
    monkeypatch.setattr(planner.sweep, "plan_for_card", plan_for_card)
    result = run("run", write_spec(tmp_path, model_dir), "--card", "cpu", "--json")
    assert result.exit_code == 2 and "stopped by the test" in result.output
    assert len(seen) == 1 and seen[0][0] > 0 and seen[0][1]
