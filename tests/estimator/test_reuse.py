"""Traces shared between estimators, a reused tracer, and fits split over a helper process."""

from __future__ import annotations

import contextlib
import io
from contextlib import contextmanager
from typing import Any

import pytest

from planner.cards import host_card
from planner.errors import ConfigError
from planner.estimator import Estimator, TraceCache, _fit, _helper, fit, shared_cache
from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import StepTracer
from tests.conftest import TINY_CONFIGS, make_card, write_model


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six identical layers: deep enough that ``fit`` builds the full-depth model in its helper."""
    config = {**TINY_CONFIGS["llama"], "num_hidden_layers": 6, "vocab_size": 4096}
    return str(write_model(tmp_path_factory.mktemp("deep") / "llama6", config))


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_helper.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


@pytest.fixture
def fresh_traces() -> None:
    shared_cache().clear()


def _refuse(field: str) -> None:
    raise ConfigError(field, "refused", "ask again")


def test_a_fit_split_over_a_helper_process_answers_as_one_process_does(
    deep_llama: str, two_cores: None, fresh_traces: None, monkeypatch: pytest.MonkeyPatch
):
    # Nothing fits, some fixes do: the helper traces at full depth and shares the fixes.
    config = TrainingConfig(model=deep_llama, seq_len=64, precision="fp32")
    card = make_card(518)
    forks = []
    original_init = _helper.Helper.__init__

    def counted_init(self: _helper.Helper) -> None:
        forks.append(self)
        original_init(self)

    monkeypatch.setattr(_helper.Helper, "__init__", counted_init)
    split = fit(config, card)
    assert forks, "fit did not use a helper process"

    @contextmanager
    def no_helper(**_: Any) -> Any:
        yield None

    shared_cache().clear()
    monkeypatch.setattr(_helper.Helper, "fork", no_helper)
    alone = fit(config, card)
    assert split == alone
    assert split.max_micro_batch == 0
    assert 0 < len(split.fixes) < len(_fit._fix_candidates(config))


def test_estimators_of_one_step_share_its_traces(deep_llama: str, monkeypatch: pytest.MonkeyPatch):
    config = TrainingConfig(model=deep_llama, seq_len=64, gradient_accumulation=2)
    card = make_card(560)
    cache = TraceCache()
    best = Estimator(config, card, cache=cache).max_micro_batch()

    def no_more_tracing(self: StepTracer, micro_batch: int) -> None:
        raise AssertionError(f"traced again at micro-batch {micro_batch}")

    monkeypatch.setattr(StepTracer, "trace", no_more_tracing)
    # Micro-batch and accumulation past 2 do not change the traced step.
    again = Estimator(config.with_changes(micro_batch=3, gradient_accumulation=8), card, cache=cache)
    assert again.max_micro_batch() == best
    assert again.estimate(best).peak_bytes == Estimator(config, card, cache=cache).estimate(best).peak_bytes
    # Another card with the same kernels shares the traces; the host runs other kernels.
    assert Estimator(config, make_card(2048), cache=cache).traces is again.traces
    assert Estimator(config, host_card(), cache=cache).traces is not again.traces
    # Another cache shares nothing.
    assert Estimator(config, card, cache=TraceCache()).traces is not again.traces


def test_a_reused_tracer_traces_the_same_step_again(tiny_models: dict[str, str]):
    config = TrainingConfig(model=tiny_models["llama"], method="lora", seq_len=32)
    tracer = StepTracer(load_model_config(config.model), config, cuda=None)
    first = tracer.trace(2)
    tracer.trace(1)
    assert tracer.trace(2) == first


def test_the_helper_raises_user_errors_as_they_are(two_cores: None):
    with _helper.Helper.fork(worth_it=True) as helper:
        assert helper is not None
        task = helper.submit(_refuse, "lora.r")
        with pytest.raises(ConfigError, match=r"lora\.r: refused"):
            helper.result(task)


def test_tasks_a_dead_helper_owes_run_here(two_cores: None):
    with _helper.Helper.fork(worth_it=True) as helper:
        assert helper is not None
        helper._process.kill()
        helper._process.join()
        assert helper.result(helper.submit(pow, 2, 10)) == 1024


@pytest.mark.parametrize(("running", "spare"), [("1/150", True), ("2/150", False), ("9/170", False)])
def test_a_core_is_spare_when_no_other_task_is_runnable(
    running: str, spare: bool, two_cores: None, monkeypatch: pytest.MonkeyPatch
):
    # /proc/loadavg's fourth field counts the runnable tasks, the reading process included.
    def loadavg(*_: Any) -> Any:
        return contextlib.nullcontext(io.StringIO(f"0.50 0.40 0.30 {running} 1234"))

    monkeypatch.setattr(_helper, "open", loadavg, raising=False)
    assert _helper.spare_core(samples=2, interval=0) is spare
