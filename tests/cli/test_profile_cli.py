"""``planner profile`` on the CPU writes a profile that ``planner fit`` then uses; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.cards import host_card
from planner.cli import cli
from planner.estimator import Estimator
from planner.schema import TrainingConfig
from tests.cli.fake_nvml import no_gpu
from tests.conftest import TINY_CONFIGS, write_model

TINY = ["--precision", "fp32", "--seq-len", "16"]


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture(scope="module")
def measured(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("measured")
    result = run(
        "profile", tiny_models["llama"], *TINY, "--device", "cpu", "--micro-batch", "1,3",
        "--steps", "2", "--warmup", "0", "--out", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_profile_writes_step_times_and_memory_per_micro_batch(measured: tuple[Path, dict]):
    out, payload = measured
    path = Path(payload["path"])
    assert path.is_file() and path.is_relative_to(out / "cpu")
    profile = json.loads(path.read_text())
    assert profile["device"] == "cpu" and profile["key"]["card"] == "cpu"
    assert [m["micro_batch"] for m in profile["measurements"]] == [1, 3]
    for m in profile["measurements"]:
        assert m["forward_backward_seconds"] > 0 and m["optimizer_seconds"] > 0
        assert m["eval_forward_seconds"] > 0 and m["tokens_per_second"] > 0
        assert m["live_peak_bytes"] > 0
    assert profile["seconds"] > 0
    assert set(profile["versions"]) == {"torch", "transformers", "peft", "bitsandbytes"}


def test_fit_then_uses_the_profile(tiny_models: dict[str, str], measured: tuple[Path, dict]):
    out, payload = measured
    env = {"VRAM_PLANNER_MEASURED": str(out)}
    result = run("fit", tiny_models["llama"], *TINY, "--card", "cpu", "--json", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["profile"] == payload["path"]
    rows = {row["micro_batch"]: row for row in report["measured"]}
    assert set(rows) == {1, 3}
    lives = {m["micro_batch"]: m["live_peak_bytes"] for m in payload["profile"]["measurements"]}
    for size, row in rows.items():
        assert row["measured_peak_bytes"] == lives[size]
        assert row["predicted_peak_bytes"] > 0
    text = run("fit", tiny_models["llama"], *TINY, "--card", "cpu", env=env)
    assert "Measured on cpu" in text.output
    # The same file passed explicitly is used wherever the store is.
    explicit = run(
        "fit", tiny_models["llama"], *TINY, "--card", "cpu", "--profile", payload["path"], "--json",
        env={"VRAM_PLANNER_MEASURED": str(out / "elsewhere")},
    )  # fmt: skip
    assert json.loads(explicit.stdout)["profile"] == payload["path"]


def test_text_output_shows_the_table_and_where_it_saved(tiny_models: dict[str, str], tmp_path: Path):
    result = run(
        "profile", tiny_models["gpt2"], *TINY, "--device", "cpu", "--micro-batch", "2", "--steps", "1",
        "--warmup", "0", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.stdout and "Profile saved" in result.stdout
    assert str(tmp_path) in result.stdout.replace("\n", "")


def test_find_max_on_the_host_then_profiles_up_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Four layers: the estimator's linear fit is exact from there. The host card gets room for
    # four micro-batches within the half of its memory the CPU finder keeps to.
    model = str(write_model(tmp_path / "llama4", {**TINY_CONFIGS["llama"], "num_hidden_layers": 4}))
    line = Estimator(TrainingConfig(model=model, precision="fp32", seq_len=64), host_card())
    budget = line.estimate(4).peak_bytes + line.estimate(5).peak_bytes
    monkeypatch.setattr(
        "planner.profiler.device_card", lambda _device: host_card().model_copy(update={"free_bytes": budget})
    )
    result = run(
        "profile", model, "--precision", "fp32", "--seq-len", "64", "--device", "cpu", "--find-max",
        "--steps", "1", "--warmup", "0", "--out", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)["profile"]
    assert profile["max_micro_batch"] == 4
    assert [p["micro_batch"] for p in profile["search"]["probes"]] == [4, 5]
    assert [m["micro_batch"] for m in profile["measurements"]] == [1, 2, 4]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--micro-batch", "0,2"], "micro-batch"),
        (["--micro-batch", "-1"], "micro-batch"),
        (["--micro-batch", "2,-4"], "micro-batch"),
        (["--steps", "0"], "--steps"),
        (["--warmup", "-1"], "--warmup"),
        (["--device", "cuda"], "device"),
    ],
)
def test_bad_profile_input_is_one_line_exit_2(
    tiny_models: dict[str, str], args: list[str], field: str, monkeypatch: pytest.MonkeyPatch
):
    no_gpu(monkeypatch)  # "--device cuda" refused also on a machine with CUDA
    result = run("profile", tiny_models["llama"], *TINY, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {field}")
    assert "Fix:" in lines[0] and "Traceback" not in result.output


def test_a_profile_from_another_card_is_one_line_exit_2(
    tiny_models: dict[str, str], measured: tuple[Path, dict], tmp_path: Path
):
    _, payload = measured
    result = run("fit", tiny_models["llama"], *TINY, "--card", "rtx-4090", "--profile", payload["path"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: profile")
    assert "measured on card 'cpu', not 'rtx-4090'" in lines[0]
    (tmp_path / "bad.json").write_text("not json")
    bad = run("fit", tiny_models["llama"], *TINY, "--card", "cpu", "--profile", str(tmp_path / "bad.json"))
    assert bad.exit_code == 2 and bad.output.startswith("error: profile")
