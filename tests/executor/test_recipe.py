"""The built-in recipe's TrainingArguments carry the trial's config."""

from __future__ import annotations

from pathlib import Path

from planner.executor._recipe import training_arguments
from planner.sweep import load_spec
from tests.executor.conftest import hand_plan, write_spec


def test_torch_compile_in_the_spec_reaches_trainer(tmp_path: Path, tiny_model_dir: Path) -> None:
    base = {"model": str(tiny_model_dir), "method": "full", "precision": "fp32", "seq_len": 32}
    for compiled in (False, True):
        spec = load_spec(write_spec(tmp_path, tiny_model_dir, base={**base, "torch_compile": compiled}))
        trial = hand_plan(spec).trials[0]
        assert trial.config.torch_compile is compiled
        assert training_arguments(spec, trial, None).get("torch_compile", False) is compiled
