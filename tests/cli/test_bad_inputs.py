"""Bad input, command by command: what a careful user would try, and the promise kept for each.

Every case exits with code 2 and writes exactly one line on stderr (nothing on stdout) that names
the field or file at fault and a fix, with no traceback; and nothing under the test's directory is
created, changed or lost: the whole tree is hashed before and after, an existing study's database
and checkpoint directory included.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli
from tests.cli.fake_nvml import no_gpu
from tests.conftest import TINY_CONFIGS, write_model

DROP = object()
"""In a spec's changes: remove this key from the base spec."""
DIR = object()
"""As a file's content: make a directory."""

BASE_SPEC: dict[str, Any] = {
    "base": {"model": "../../models/llama", "precision": "bf16", "seq_len": 64},
    "data": {"counts": {"train_examples": 64, "mean_tokens": 40, "eval_examples": 8}},
    "search": {"learning_rate": [1e-4, 1e-3]},
}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if value is DROP:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def spec(**changes: Any) -> dict[str, Any]:
    """The base spec (a tiny Llama, counted data, a two-value grid) with ``changes`` merged in."""
    return _merge(BASE_SPEC, changes)


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``command`` (placeholders in braces), what its line must name, its files."""

    id: str
    command: str
    names: str
    files: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


FIT = "fit {llama} --card rtx-4090 --seq-len 64"
PROFILE = "profile {llama} --precision fp32 --seq-len 16 --device cpu"
PLAN = "plan {case}/spec.yaml --card rtx-4090"
STUDY_RUN = "run {study} --card cpu"


def _plan_case(id: str, changes: dict[str, Any] | str | bytes, names: str) -> Case:
    """``planner plan`` of a spec written from ``changes`` (a dict merged into the base spec, or raw)."""
    content = spec(**changes) if isinstance(changes, dict) else changes
    return Case(id, PLAN, names, {"spec.yaml": content})


CASES: list[Case] = [
    # --- fit: the model ---
    Case("fit-unknown-model", "fit no-such/model --card rtx-4090", "model: unknown model 'no-such/model'"),
    Case("fit-model-typo", "fit meta-llama/Llama-3.2-1b --card rtx-4090", "meta-llama/Llama-3.2-1B"),
    Case("fit-model-is-a-file", "fit {somefile} --card rtx-4090", "model: {somefile} is a file"),
    Case("fit-model-dir-no-config", "fit {case}/m --card rtx-4090", "config.json", {"m": DIR}),
    Case("fit-config-empty", "fit {case}/m --card rtx-4090", "is empty", {"m/config.json": ""}),
    Case(
        "fit-config-binary",
        "fit {case}/m --card rtx-4090",
        "not UTF-8",
        {"m/config.json": b"\x89PNG\xff\x00"},
    ),
    Case("fit-config-nul", "fit {case}/m --card rtx-4090", "NUL", {"m/config.json": b"{\x00}"}),
    Case("fit-config-bad-json", "fit {case}/m --card rtx-4090", "line 2", {"m/config.json": '{\n "a": }'}),
    Case("fit-config-json-list", "fit {case}/m --card rtx-4090", "config.json", {"m/config.json": "[1, 2]"}),
    Case("fit-config-no-type", "fit {case}/m --card rtx-4090", "model_type", {"m/config.json": "{}"}),
    Case(
        "fit-config-type-typo",
        "fit {case}/m --card rtx-4090",
        "did you mean 'llama'",
        {"m/config.json": '{"model_type": "lama"}'},
    ),
    Case("fit-config-is-a-dir", "fit {case}/m --card rtx-4090", "config.json", {"m/config.json": DIR}),
    # --- fit: the card ---
    Case("fit-unknown-card", "fit {llama} --card rtx-9090 --seq-len 64", "card: unknown card 'rtx-9090'"),
    Case("fit-card-close", "fit {llama} --card rtx4080 --seq-len 64", "did you mean"),
    Case("fit-card-empty", "fit {llama} --card '' --seq-len 64", "card: unknown card ''"),
    Case("fit-local-without-gpu", "fit {llama} --card local --seq-len 64", "card: no NVIDIA GPU"),
    Case("fit-t4-bf16", "fit {llama} --card t4 --seq-len 64", "precision"),
    # --- fit: numbers and choices ---
    Case("fit-seq-zero", "fit {llama} --card rtx-4090 --seq-len 0", "seq_len"),
    Case("fit-seq-negative", "fit {llama} --card rtx-4090 --seq-len -5", "seq_len"),
    Case("fit-seq-beyond-model", "fit {llama} --card rtx-4090 --seq-len 100000", "seq_len: 100000 tokens"),
    Case("fit-seq-huge", "fit {llama} --card rtx-4090 --seq-len 10000000000000000000000", "seq_len"),
    Case("fit-seq-default-beyond", "fit {llama} --card rtx-4090", "max_position_embeddings"),
    Case("fit-seq-gpt2", "fit {gpt2} --card rtx-4090 --seq-len 300", "n_positions in its config"),
    Case("fit-seq-text", "fit {llama} --card rtx-4090 --seq-len long", "--seq-len"),
    Case("fit-micro-zero", f"{FIT} --micro-batch 0,2", "micro-batch"),
    Case("fit-micro-word", f"{FIT} --micro-batch two", "micro-batch"),
    Case("fit-micro-empty", f"{FIT} --micro-batch ''", "micro-batch"),
    Case("fit-micro-float", f"{FIT} --micro-batch 1.5", "micro-batch"),
    Case("fit-micro-negative", f"{FIT} --micro-batch -1", "micro-batch"),
    Case("fit-micro-commas", f"{FIT} --micro-batch ,,", "micro-batch"),
    Case("fit-method", f"{FIT} --method foo", "--method"),
    Case("fit-precision", f"{FIT} --precision fp8", "--precision"),
    Case("fit-optimizer", f"{FIT} --optimizer lion", "--optimizer"),
    Case("fit-grad-accum-zero", f"{FIT} --grad-accum 0", "gradient_accumulation"),
    Case("fit-grad-accum-text", f"{FIT} --grad-accum x", "--grad-accum"),
    Case("fit-lora-r-zero", f"{FIT} --method lora --lora-r 0", "lora.r"),
    Case("fit-lora-alpha-negative", f"{FIT} --method lora --lora-alpha -1", "lora.alpha"),
    Case("fit-lora-dropout-high", f"{FIT} --lora-dropout 1.5", "lora.dropout"),
    Case("fit-lora-dropout-nan", f"{FIT} --lora-dropout nan", "lora.dropout"),
    Case("fit-lora-target-unknown", f"{FIT} --method lora --lora-target nope", "lora.target_modules"),
    Case(
        "fit-lora-target-gpt2",
        "fit {gpt2} --card rtx-4090 --seq-len 64 --method lora --lora-target q_proj",
        "lora.target_modules",
    ),
    Case(
        "fit-lora-target-gpt2-suggests-conv1d",
        "fit {gpt2} --card rtx-4090 --seq-len 64 --method lora --lora-target q_proj",
        "some of c_attn, c_fc, c_proj",
    ),
    Case(
        "fit-lora-target-a-layer-index",
        f"{FIT} --method lora --lora-target 0",
        "lora.target_modules",
    ),
    Case("fit-lora-target-empty", f"{FIT} --method lora --lora-target ''", "lora.target_modules"),
    Case("fit-lora-target-commas", f"{FIT} --method lora --lora-target q_proj,,", "lora.target_modules"),
    Case("fit-qlora-pure-bf16", f"{FIT} --method qlora --precision pure-bf16", "precision"),
    # --- fit: files given and written ---
    Case("fit-plot-no-dir", f"{FIT} --plot {{root}}/nodir/x.png", "--plot"),
    Case("fit-plot-under-file", f"{FIT} --plot {{somefile}}/x.png", "--plot"),
    Case("fit-plot-is-dir", f"{FIT} --plot {{adir}}", "--plot"),
    Case("fit-plot-suffix", f"{FIT} --plot {{case}}/x.txt", "--plot"),
    Case("fit-plot-no-suffix", f"{FIT} --plot {{case}}/x", "--plot"),
    Case("fit-profile-missing", f"{FIT} --profile {{case}}/none.json", "profile"),
    Case("fit-profile-binary", f"{FIT} --profile {{binary}}", "profile"),
    Case("fit-profile-empty", f"{FIT} --profile {{empty}}", "profile"),
    Case("fit-profile-bad-json", f"{FIT} --profile {{case}}/p.json", "line 1", {"p.json": "{oops"}),
    Case("fit-profile-not-profile", f"{FIT} --profile {{case}}/p.json", "is not a profile", {"p.json": "{}"}),
    Case("fit-profile-under-file", f"{FIT} --profile {{somefile}}/p.json", "{somefile} is a file"),
    Case("fit-profile-is-dir", f"{FIT} --profile {{adir}}", "--profile"),
    # --- fit: the command line itself ---
    Case("fit-unknown-option", f"{FIT} --bogus", "--bogus"),
    Case("fit-no-model", "fit --card rtx-4090", "model"),
    Case("fit-no-card", "fit {llama}", "--card"),
    Case("fit-extra-argument", "fit {llama} extra --card rtx-4090", "extra"),
    # --- profile ---
    Case("profile-warmup-negative", f"{PROFILE} --warmup -1", "--warmup"),
    Case("profile-steps-zero", f"{PROFILE} --steps 0", "--steps"),
    Case("profile-steps-negative", f"{PROFILE} --steps -3", "--steps"),
    Case("profile-steps-text", f"{PROFILE} --steps x", "--steps"),
    Case("profile-device-unknown", "profile {llama} --device tpu", "--device"),
    Case("profile-device-cuda-absent", "profile {llama} --seq-len 16 --device cuda", "device"),
    Case("profile-seq-beyond-model", "profile {llama} --seq-len 1000 --device cpu", "seq_len"),
    Case("profile-out-under-file", f"{PROFILE} --out {{somefile}}/sub", "--out"),
    Case("profile-out-is-file", f"{PROFILE} --out {{somefile}}", "--out"),
    Case(
        "profile-store-under-file",
        PROFILE,
        "VRAM_PLANNER_MEASURED",
        env={"VRAM_PLANNER_MEASURED": "{somefile}/measured"},
    ),
    Case("profile-micro-zero", f"{PROFILE} --micro-batch 0", "micro-batch"),
    Case("profile-micro-beyond-host", f"{PROFILE} --micro-batch 1,100000000", "micro-batch: 100000000 needs"),
    Case("profile-unknown-model", "profile no-such/model --device cpu", "model"),
    Case("profile-method", f"{PROFILE} --method foo", "--method"),
    Case("profile-lora-r-zero", f"{PROFILE} --method lora --lora-r 0", "lora.r"),
    Case("profile-no-model", "profile", "MODEL"),
    # --- plan: the spec file ---
    Case("plan-spec-missing", "plan {case}/none.yaml --card rtx-4090", "does not exist"),
    Case("plan-spec-under-file", "plan {somefile}/spec.yaml --card rtx-4090", "{somefile} is a file"),
    Case("plan-spec-is-dir", "plan {adir} --card rtx-4090", "is a directory"),
    Case("plan-spec-empty", "plan {empty} --card rtx-4090", "is empty"),
    Case("plan-spec-binary", "plan {binary} --card rtx-4090", "not UTF-8"),
    _plan_case("plan-spec-latin1", "name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    _plan_case("plan-spec-bad-yaml", "base: [unclosed\ndata: {}\n", "line 2"),
    _plan_case("plan-spec-tab-yaml", "base:\n\tmodel: x\n", "not valid YAML"),
    _plan_case("plan-spec-list", "- base\n- data\n", "not a mapping"),
    _plan_case("plan-spec-scalar", "hello\n", "not a mapping"),
    _plan_case("plan-spec-null", "~\n", "not a mapping"),
    # --- plan: unknown keys ---
    _plan_case("plan-key-base-modle", {"base": {"modle": "x", "model": DROP}}, "did you mean 'model'"),
    _plan_case("plan-key-top-serach", {"serach": {"seed": [1]}}, "did you mean 'search'"),
    _plan_case("plan-key-data-trian", {"data": {"trian": "x.jsonl"}}, "did you mean 'train'"),
    _plan_case("plan-key-training", {"training": {"learning_rat": 1e-4}}, "did you mean 'learning_rate'"),
    _plan_case("plan-key-lora", {"base": {"lora": {"rank": 8}}}, "base.lora.rank"),
    _plan_case(
        "plan-key-counts", {"data": {"counts": {"train_exampels": 5}}}, "did you mean 'train_examples'"
    ),
    _plan_case("plan-key-eval", {"eval": {"strategi": "steps"}}, "did you mean 'strategy'"),
    _plan_case("plan-key-objective", {"objective": {"metrik": "eval_loss"}}, "did you mean 'metric'"),
    _plan_case("plan-key-budgett", {"budgett": "1h"}, "did you mean 'budget'"),
    _plan_case(
        "plan-key-range",
        {"strategy": "random", "n_trials": 2, "search": {"learning_rate": {"low": 1e-5, "hihg": 1e-3}}},
        "did you mean 'high'",
    ),
    # --- plan: wrong values and types ---
    _plan_case("plan-micro-zero", {"micro_batch": 0}, "micro_batch: Input should be greater than 0"),
    _plan_case("plan-micro-text", {"micro_batch": "big"}, "micro_batch:"),
    _plan_case("plan-seq-text", {"base": {"seq_len": "long"}}, "base.seq_len"),
    _plan_case("plan-method", {"base": {"method": "foo"}}, "base.method"),
    _plan_case("plan-precision", {"base": {"precision": "fp8"}}, "base.precision"),
    _plan_case("plan-lr-negative", {"training": {"learning_rate": -1}}, "training.learning_rate"),
    _plan_case("plan-batch-zero", {"training": {"effective_batch": 0}}, "training.effective_batch"),
    _plan_case("plan-warmup-high", {"training": {"warmup_ratio": 1.5}}, "training.warmup_ratio"),
    _plan_case("plan-scheduler", {"training": {"scheduler": "exponential"}}, "training.scheduler"),
    _plan_case("plan-strategy", {"strategy": "bayes"}, "strategy"),
    _plan_case("plan-random-no-n", {"strategy": "random"}, "n_trials"),
    _plan_case("plan-n-trials-zero", {"strategy": "random", "n_trials": 0}, "n_trials"),
    _plan_case("plan-search-unknown", {"search": {"colour": [1]}}, "search"),
    _plan_case("plan-search-empty", {"search": {"learning_rate": []}}, "search"),
    _plan_case("plan-search-grid-range", {"search": {"learning_rate": {"low": 1e-5, "high": 1e-3}}}, "grid"),
    _plan_case(
        "plan-search-range-order",
        {"strategy": "random", "n_trials": 2, "search": {"learning_rate": {"low": 1, "high": 0}}},
        "search.learning_rate: low (1.0) must be below high (0.0)",
    ),
    _plan_case(
        "plan-search-log-zero",
        {
            "strategy": "random",
            "n_trials": 2,
            "search": {"learning_rate": {"low": 0, "high": 1, "log": True}},
        },
        "search.learning_rate",
    ),
    _plan_case(
        "plan-search-log-step",
        {
            "strategy": "random",
            "n_trials": 2,
            "search": {"lora_r": {"low": 4, "high": 64, "log": True, "step": 4}},
        },
        "search.lora_r: a log range takes no step",
    ),
    _plan_case(
        "plan-search-range-below-one",
        {"strategy": "random", "n_trials": 2, "search": {"effective_batch": {"low": 0.1, "high": 0.9}}},
        "search: 'effective_batch' value 0.1",
    ),
    _plan_case(
        "plan-search-range-fraction",
        {"strategy": "random", "n_trials": 2, "search": {"seq_len": {"low": 16.5, "high": 64}}},
        "search: 'seq_len' value 16.5",
    ),
    _plan_case(
        "plan-search-method-range",
        {"strategy": "random", "n_trials": 2, "search": {"method": {"low": 1, "high": 2}}},
        "search: 'method' takes a list",
    ),
    _plan_case("plan-n-trials-huge", {"strategy": "random", "n_trials": 10**9}, "n_trials"),
    _plan_case("plan-workers-huge", {"workers": 10**9}, "workers"),
    _plan_case(
        "plan-search-batch-zero", {"search": {"effective_batch": [0]}}, "search: 'effective_batch' value 0"
    ),
    _plan_case(
        "plan-search-lr-text", {"search": {"learning_rate": ["fast"]}}, "'learning_rate' value 'fast'"
    ),
    _plan_case("plan-search-method", {"search": {"method": ["full", "lorra"]}}, "'method' value 'lorra'"),
    _plan_case("plan-search-lora-r", {"search": {"lora_r": [8, 0]}}, "search: 'lora_r' value 0"),
    _plan_case("plan-search-seq-zero", {"search": {"seq_len": [0]}}, "search: 'seq_len' value 0"),
    _plan_case("plan-search-not-list", {"search": {"learning_rate": 0.1}}, "search.learning_rate"),
    _plan_case("plan-search-seq-beyond", {"search": {"seq_len": [64, 100000]}}, "search.seq_len: 100000"),
    _plan_case(
        "plan-search-seq-range-beyond",
        {"strategy": "tpe", "n_trials": 2, "search": {"seq_len": {"low": 16, "high": 1000}}},
        "search.seq_len: 1000 tokens",
    ),
    _plan_case("plan-seq-beyond", {"base": {"seq_len": 100000}}, "base.seq_len: 100000"),
    _plan_case("plan-budget-5x", {"budget": "5x"}, "budget"),
    _plan_case("plan-budget-negative", {"budget": "-1h"}, "budget"),
    _plan_case("plan-budget-yes", "budget: yes\n" + yaml.safe_dump(spec()), "budget: True is not a duration"),
    _plan_case("plan-budget-list", {"budget": ["1h"]}, "budget"),
    _plan_case("plan-budget-zero", {"budget": 0}, "budget"),
    _plan_case("plan-name", {"name": "bad name!"}, "name"),
    _plan_case("plan-workers-zero", {"workers": 0}, "workers"),
    _plan_case("plan-pruner", {"pruner": "foo"}, "pruner"),
    _plan_case("plan-direction", {"objective": {"direction": "up"}}, "objective.direction"),
    _plan_case("plan-seed-negative", {"strategy": "random", "n_trials": 2, "seed": -1}, "seed"),
    _plan_case("plan-lora-r-huge", {"base": {"lora": {"r": 10**30}}}, "base.lora.r"),
    _plan_case(
        "plan-examples-huge", {"data": {"counts": {"train_examples": 10**30}}}, "data.counts.train_examples"
    ),
    _plan_case("plan-seed-text", {"seed": "x"}, "seed"),
    _plan_case("plan-checkpoint-zero", {"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
    _plan_case("plan-eval-steps", {"eval": {"strategy": "steps"}}, "eval"),
    _plan_case(
        "plan-eval-every-negative", {"eval": {"strategy": "steps", "every_steps": -1}}, "eval.every_steps"
    ),
    _plan_case("plan-base-string", {"base": "llama"}, "base"),
    _plan_case("plan-base-missing", {"base": DROP}, "base"),
    _plan_case("plan-model-unknown", {"base": {"model": "no/such-model"}}, "base.model"),
    _plan_case("plan-model-no-config", {"base": {"model": "."}}, "base.model"),
    _plan_case("plan-lora-target-string", {"base": {"lora": {"target_modules": "q_proj"}}}, "target_modules"),
    # --- plan: the data ---
    Case(
        "plan-data-missing",
        PLAN,
        "data.train",
        {"spec.yaml": spec(data={"counts": DROP, "train": "no.jsonl"})},
    ),
    Case(
        "plan-data-binary",
        PLAN,
        "data.train",
        {"spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl"}), "d.jsonl": b"\xff\xfe\x00x"},
    ),
    Case(
        "plan-data-empty",
        PLAN,
        "data.train",
        {"spec.yaml": spec(data={"counts": DROP, "train": "d.txt"}), "d.txt": "\n\n"},
    ),
    Case(
        "plan-data-bad-line",
        PLAN,
        "line 2",
        {"spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl"}), "d.jsonl": '{"text": "a"}\n{oops\n'},
    ),
    Case(
        "plan-data-no-text",
        PLAN,
        "data.train",
        {"spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl"}), "d.jsonl": '{"body": "a"}\n'},
    ),
    Case(
        "plan-data-dir",
        PLAN,
        "data.train",
        {"spec.yaml": spec(data={"counts": DROP, "train": "d"}), "d": DIR},
    ),
    Case(
        "plan-data-tokenizer",
        PLAN,
        "data.tokenizer",
        {"spec.yaml": spec(data={"counts": DROP, "train": "d.txt", "tokenizer": "no-tok"}), "d.txt": "a b\n"},
    ),
    Case(
        "plan-data-eval-binary",
        PLAN,
        "data.eval",
        {
            "spec.yaml": spec(data={"counts": DROP, "train": "t.txt", "eval": "e.txt"}),
            "t.txt": "a b\n",
            "e.txt": b"\x00\x01\xfe",
        },
    ),
    Case(
        "plan-data-missing-parquet",
        PLAN,
        "data.train: cannot read",
        {"spec.yaml": spec(data={"counts": DROP, "train": "no.parquet"})},
    ),
    Case(
        "plan-data-hub-not-cached",
        PLAN,
        "no hub dataset 'someone/nothing'",
        {"spec.yaml": spec(data={"counts": DROP, "train": "someone/nothing"})},
    ),
    Case(
        "plan-data-unknown-column",
        PLAN,
        "data.columns.text: data.train has no column 'body'",
        {
            "spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl", "columns": {"text": "body"}}),
            "d.jsonl": '{"text": "a"}\n',
        },
    ),
    Case(
        "plan-data-format-typo",
        PLAN,
        "data.format",
        {
            "spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl", "format": "chats"}),
            "d.jsonl": '{"text": "a"}\n',
        },
    ),
    Case(
        "plan-data-chat-no-tokenizer",
        PLAN,
        "data.tokenizer: data.train has chat rows",
        {
            "spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl"}),
            "d.jsonl": json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n",
        },
    ),
    Case(
        "plan-data-no-chat-template",
        PLAN,
        "data.chat_template: data.train has chat rows and the tokenizer has no chat template",
        {
            # The study's tiny tokenizer (written by the world fixture) has no chat template.
            "spec.yaml": spec(
                data={"counts": DROP, "train": "d.jsonl", "tokenizer": "../../study/tiny-llama"}
            ),
            "d.jsonl": json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n",
        },
    ),
    Case(
        "plan-data-template-without-generation",
        PLAN,
        "data.completion_only: the chat template marks no assistant tokens",
        {
            "spec.yaml": spec(
                data={
                    "counts": DROP,
                    "train": "d.jsonl",
                    "tokenizer": "../../study/tiny-llama",
                    "chat_template": "t.jinja",
                    "completion_only": True,
                }
            ),
            "d.jsonl": json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n",
            "t.jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        },
    ),
    Case(
        "plan-data-completion-only-text",
        PLAN,
        "data.completion_only",
        {
            "spec.yaml": spec(data={"counts": DROP, "train": "d.jsonl", "completion_only": True}),
            "d.jsonl": '{"text": "a"}\n',
        },
    ),
    _plan_case("plan-data-both", {"data": {"train": "d.txt"}}, "data"),
    _plan_case("plan-data-neither", {"data": {"counts": DROP}}, "data"),
    _plan_case(
        "plan-data-count-zero", {"data": {"counts": {"train_examples": 0}}}, "data.counts.train_examples"
    ),
    _plan_case("plan-data-fraction", {"data": {"fraction": 0}}, "data.fraction"),
    # --- plan: the command line ---
    Case("plan-budget-option", f"{PLAN} --budget 5x", "--budget", {"spec.yaml": spec()}),
    Case("plan-budget-option-negative", f"{PLAN} --budget -1h", "--budget", {"spec.yaml": spec()}),
    Case("plan-budget-option-empty", f"{PLAN} --budget ''", "--budget", {"spec.yaml": spec()}),
    Case("plan-workers-option-zero", f"{PLAN} --workers 0", "--workers", {"spec.yaml": spec()}),
    Case("plan-workers-option-huge", f"{PLAN} --workers 1000000000", "--workers", {"spec.yaml": spec()}),
    Case("plan-workers-option-text", f"{PLAN} --workers two", "--workers", {"spec.yaml": spec()}),
    Case("plan-card-unknown", "plan {case}/spec.yaml --card bogus", "card", {"spec.yaml": spec()}),
    Case("plan-no-card", "plan {case}/spec.yaml", "--card", {"spec.yaml": spec()}),
    Case("plan-plot-under-file", f"{PLAN} --plot {{somefile}}/x.png", "--plot", {"spec.yaml": spec()}),
    Case("plan-plot-suffix", f"{PLAN} --plot {{case}}/t.txt", "--plot", {"spec.yaml": spec()}),
    # --- run ---
    Case("run-spec-missing", "run {case}/none.yaml --card cpu", "does not exist"),
    Case("run-spec-bad-yaml", "run {case}/spec.yaml --card cpu", "not valid YAML", {"spec.yaml": "a: [b"}),
    Case(
        "run-nothing-can-run",
        "run {case}/spec.yaml --card rtx-4090",
        "no trial of 'spec' can run",
        {"spec.yaml": spec(micro_batch=3, training={"effective_batch": 4})},
    ),
    Case(
        "run-seq-beyond",
        "run {case}/spec.yaml --card cpu",
        "base.seq_len",
        {"spec.yaml": spec(base={"seq_len": 999})},
    ),
    Case("run-card-unknown", "run {study} --card bogus", "card"),
    Case("run-budget-5x", f"{STUDY_RUN} --budget 5x", "--budget"),
    Case("run-budget-negative", f"{STUDY_RUN} --budget -1h", "--budget"),
    Case("run-budget-zero", f"{STUDY_RUN} --budget 0s", "--budget"),
    Case("run-storage-scheme", f"{STUDY_RUN} --storage nosuch://x", "storage"),
    Case("run-storage-under-file", f"{STUDY_RUN} --storage sqlite:///{{somefile}}/x.db", "storage"),
    Case("run-storage-no-dir", f"{STUDY_RUN} --storage sqlite:///{{root}}/nodir/x.db", "storage"),
    Case("run-storage-is-dir", f"{STUDY_RUN} --storage sqlite:///{{adir}}", "storage"),
    Case("run-storage-not-db", f"{STUDY_RUN} --storage sqlite:///{{binary}}", "not an SQLite database"),
    Case("run-gpus-word", f"{STUDY_RUN} --gpus 0,one", "--gpus"),
    Case("run-gpus-comma", f"{STUDY_RUN} --gpus ,", "--gpus"),
    Case("run-gpus-negative", f"{STUDY_RUN} --gpus -1", "--gpus"),
    Case("run-plan-missing", f"{STUDY_RUN} --plan {{case}}/none.json", "--plan"),
    Case("run-plan-not-json", f"{STUDY_RUN} --plan {{case}}/p.json", "line 1", {"p.json": "base: [x"}),
    Case("run-plan-empty", f"{STUDY_RUN} --plan {{empty}}", "--plan"),
    Case("run-plan-binary", f"{STUDY_RUN} --plan {{binary}}", "--plan"),
    Case("run-plan-not-plan", f"{STUDY_RUN} --plan {{case}}/p.json", "not a plan", {"p.json": "{}"}),
    Case("run-plan-other-spec", f"{STUDY_RUN} --plan {{other_plan}}", "plans the sweep 'other'"),
    Case("run-plan-is-dir", f"{STUDY_RUN} --plan {{adir}}", "--plan"),
    Case("run-report-to-typo", f"{STUDY_RUN} --report-to wandbb", "--report-to: 'wandbb'"),
    Case("run-report-to-mixed", f"{STUDY_RUN} --report-to none,nope", "--report-to: 'none'"),
    Case("run-unknown-option", f"{STUDY_RUN} --bogus", "--bogus"),
    Case("run-no-spec", "run", "SPEC"),
    # --- results ---
    Case("results-no-spec", "results", "spec: no spec given"),
    Case("results-storage-only", "results --storage sqlite:///{studydb}", "spec"),
    Case("results-unknown-study", "results {study} --study nope", "no study 'nope'"),
    Case("results-export-under-file", "results {study} --export {somefile}/best.yaml", "--export"),
    Case("results-export-suffix", "results {study} --export {case}/best.toml", "--export"),
    Case("results-export-no-dir", "results {study} --export {root}/nodir/best.json", "--export"),
    Case("results-export-is-dir", "results {study} --export {adir}", "--export"),
    Case("results-export-nothing-done", "results {study} --export {case}/best.json", "--export: no trial"),
    Case("results-no-database", "results {case}/spec.yaml", "no study database", {"spec.yaml": spec()}),
    Case(
        "results-storage-not-db", "results --storage sqlite:///{binary} --study x", "not an SQLite database"
    ),
    Case("results-storage-empty", "results --storage sqlite:///{empty} --study x", "is empty"),
    Case("results-storage-dir", "results --storage sqlite:///{adir} --study x", "storage"),
    Case("results-storage-scheme", "results --storage nosuch://x --study x", "storage"),
    Case("results-spec-missing", "results {case}/none.yaml", "does not exist"),
    Case(
        "results-spec-bad-key",
        "results {case}/spec.yaml",
        "did you mean 'name'",
        {"spec.yaml": spec(nmae="x")},
    ),
    # --- report ---
    Case("report-out-under-file", "report {study} --out {somefile}/plots", "--out"),
    Case("report-out-is-file", "report {study} --out {somefile}", "--out"),
    Case("report-spec-missing", "report {case}/none.yaml --out {case}/out", "does not exist"),
    Case("report-no-spec", "report --out {case}/out", "spec: no spec given"),
    Case("report-unknown-study", "report {study} --study nope --out {case}/out", "no study 'nope'"),
    Case(
        "report-no-database",
        "report {case}/spec.yaml --out {case}/out",
        "no study database",
        {"spec.yaml": spec()},
    ),
    Case("report-no-out", "report {study}", "--out"),
    # --- cards, models, the command itself ---
    Case("cards-unknown-option", "cards --bogus", "--bogus"),
    Case("cards-extra-argument", "cards rtx-4090", "rtx-4090"),
    Case("models-unknown-option", "models --jsn", "did you mean '--json'"),
    Case("models-extra-argument", "models llama", "llama"),
    Case("unknown-command", "bogus", "bogus"),
    Case("command-typo", "fti", "did you mean 'fit'"),
]


def _write(path: Path, content: Any) -> None:
    if content is DIR:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump(content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the SHA-256 of its bytes ("dir" for a directory)."""
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cases' files, tiny models, and one study with queued trials and checkpoint files."""
    from planner.executor import open_study
    from planner.sweep import load_spec
    from tests.executor.conftest import hand_plan, tiny_model, write_spec

    root = tmp_path_factory.mktemp("bad-inputs")
    write_model(root / "models" / "llama", TINY_CONFIGS["llama"])
    write_model(root / "models" / "gpt2", TINY_CONFIGS["gpt2"])
    _write(root / "somefile", "a regular file\n")
    _write(root / "binary.bin", bytes(range(256)))
    _write(root / "empty.yaml", "")
    _write(root / "adir", DIR)
    for case in CASES:
        for name, content in case.files.items():
            _write(root / "cases" / case.id / name, content)
        (root / "cases" / case.id).mkdir(parents=True, exist_ok=True)

    # The study: its database with the plan queued, and checkpoints as a run leaves them.
    study_spec = write_spec(root / "study", tiny_model(root / "study" / "tiny-llama"))
    sweep = load_spec(study_spec)
    open_study(sweep, hand_plan(sweep), sweep.storage_url, sweep.name)
    checkpoint = sweep.output_dir / "trial-0" / "checkpoint-2"
    _write(checkpoint / "trainer_state.json", json.dumps({"global_step": 2}))
    _write(checkpoint / "model.safetensors", bytes(range(64)) * 4)
    other = hand_plan(sweep).model_copy(update={"spec_name": "other"})
    _write(root / "other-plan.json", other.model_dump_json())
    return {
        "root": root,
        # The study database and its checkpoint directory, as snapshot names.
        "study_files": (f"study/{sweep.name}.db", f"study/{sweep.output_dir.name}"),
        "values": {
            "root": str(root),
            "llama": str(root / "models" / "llama"),
            "gpt2": str(root / "models" / "gpt2"),
            "somefile": str(root / "somefile"),
            "binary": str(root / "binary.bin"),
            "empty": str(root / "empty.yaml"),
            "adir": str(root / "adir"),
            "study": str(study_spec),
            "studydb": sweep.storage_url.removeprefix("sqlite:///"),
            "other_plan": str(root / "other-plan.json"),
        },
    }


@pytest.fixture(autouse=True)
def _no_gpu_offline(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU and no hub, whatever this machine has; profiles stored under the world (not created)."""
    no_gpu(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VRAM_PLANNER_MEASURED", str(world["root"] / "measured"))
    monkeypatch.chdir(world["root"])


def test_the_corpus_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 100 and len({case.id for case in CASES}) == len(CASES)
    commands = {shlex.split(case.command)[0] if case.command else "" for case in CASES}
    assert {"fit", "profile", "plan", "run", "results", "report", "cards", "models"} <= commands


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[case.id for case in CASES],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world: dict[str, Any], case: Case) -> None:
    root: Path = world["root"]
    values = {**world["values"], "case": str(root / "cases" / case.id)}
    args = [arg.format(**values) for arg in shlex.split(case.command)]
    env = {name: value.format(**values) for name, value in case.env.items()}
    before = snapshot(root)
    result = CliRunner().invoke(cli, args, env=env)

    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    line = lines[0]
    assert line.startswith("error: ") and "Fix: " in line, line
    assert case.names.format(**values) in line, line
    assert "constrained-" not in line and "literal[" not in line, line  # the user's names only
    after = snapshot(root)
    study = [name for name in before if name.startswith(world["study_files"])]
    assert len(study) >= 4 and {n: after.get(n) for n in study} == {n: before[n] for n in study}
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_plan_where_no_trial_fits_says_so_instead_of_a_verdict(world: dict[str, Any]) -> None:
    # `planner plan` is a report: it still shows the table and why, but no "the sweep fits".
    path = world["root"] / "cases" / "run-nothing-can-run" / "spec.yaml"
    result = CliRunner().invoke(cli, ["plan", str(path), "--card", "rtx-4090", "--budget", "1h"])
    assert result.exit_code == 0, result.output
    assert "No trial can run on rtx-4090" in result.output
    assert "the sweep fits" not in result.output and "Total (one worker)" not in result.output
    assert "micro-batch 3 does not divide effective batch 4" in result.output


def test_lora_targets_of_gpt2_are_its_conv1d_projections_not_the_head() -> None:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from planner.step import lora_target_candidates

    config = GPT2Config(**{k: v for k, v in TINY_CONFIGS["gpt2"].items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert lora_target_candidates(model) == ["c_attn", "c_fc", "c_proj"]


def _one_line(result: Any) -> str:
    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_permissions_root_does_not_feel_are_still_answered(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where chmod blocks nothing: the refusals are faked for one path each.
    import os

    values = world["values"]
    real_access = os.access

    def deny(mode: int, target: str) -> None:
        def access(path: Any, wanted: int, **kwargs: Any) -> bool:
            return False if str(path) == target and wanted & mode else real_access(path, wanted, **kwargs)

        monkeypatch.setattr(os, "access", access)

    case = world["root"] / "cases" / "plan-data-bad-line"
    deny(os.R_OK, str(case / "d.jsonl"))
    line = _one_line(CliRunner().invoke(cli, ["plan", str(case / "spec.yaml"), "--card", "rtx-4090"]))
    assert line.startswith("error: data.train: cannot read") and "permission denied" in line
    deny(os.W_OK, values["adir"])
    args = [
        "fit",
        values["llama"],
        "--card",
        "rtx-4090",
        "--seq-len",
        "64",
        "--plot",
        f"{values['adir']}/x.png",
    ]
    line = _one_line(CliRunner().invoke(cli, args))
    assert line.startswith("error: --plot: cannot write in") and "permission denied" in line


def test_a_directory_that_refuses_the_probe_file_is_unwritable(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    out = f"{world['values']['adir']}/plots"
    line = _one_line(CliRunner().invoke(cli, ["report", world["values"]["study"], "--out", out]))
    assert line.startswith("error: --out: cannot write in") and "No space left on device" in line
