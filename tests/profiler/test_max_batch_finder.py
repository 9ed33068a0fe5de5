"""The max-micro-batch finder: real OOMs on the CPU, recovery, and the search logic on its own."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cards import host_card
from planner.estimator import Estimator
from planner.profiler import (
    OutOfMemoryAbove,
    Prediction,
    StepRunner,
    find_max_micro_batch,
    search_max_micro_batch,
)
from planner.schema import Card, ProbeResult, TrainingConfig
from planner.step import LiveBytesTracker
from tests.conftest import TINY_CONFIGS, write_model

SEQ_LEN = 96  # no weight dimension equals it: only activations are (batch, 96, ...)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> TrainingConfig:
    # Four layers: deeper than the estimator's shallow probes, so its linear fit is the real one.
    model = write_model(tmp_path_factory.mktemp("finder"), {**TINY_CONFIGS["llama"], "num_hidden_layers": 4})
    return TrainingConfig(model=str(model), precision="fp32", seq_len=SEQ_LEN)


def card_predicting(config: TrainingConfig, micro_batch: int) -> Card:
    """The host card with just enough free memory for the estimator to answer ``micro_batch``."""
    line = Estimator(config, host_card())
    low, high = (line.estimate(m).peak_bytes for m in (micro_batch, micro_batch + 1))
    return host_card().model_copy(update={"free_bytes": (low + high) // 2})


def test_oom_above_a_threshold_gives_threshold_minus_one_releases_memory_and_carries_on(
    config: TrainingConfig,
):
    card = card_predicting(config, 12)
    prediction = Prediction.of(Estimator(config, card))
    assert prediction.max_micro_batch == 12
    runner = StepRunner(config, "cpu")
    runner.train_step(1)
    live = LiveBytesTracker()
    model, optimizer = runner.setup.model, runner.setup.optimizer
    state = [t for per_param in optimizer.state.values() for t in per_param.values()]
    live.track([*model.parameters(), *model.buffers(), *state])
    resident = live.live_bytes
    oom = OutOfMemoryAbove(micro_batch=8, seq_len=SEQ_LEN)
    with live, oom:
        search = find_max_micro_batch(config, card, runner=runner, prediction=prediction)
        gc.collect()
        # Every tensor the probes allocated, the failed ones' included, is gone: only the weights
        # and optimizer state remain.
        assert live.live_bytes == resident
        # The run carries on: the runner still trains, at the answer.
        runner.train_step(search.max_micro_batch)
    assert search.max_micro_batch == 7
    assert oom.raised >= 1
    assert {p.outcome for p in search.probes} == {"fits", "out of memory"}
    assert [p.micro_batch for p in search.probes if not p.fits] == sorted(
        (p.micro_batch for p in search.probes if not p.fits), reverse=True
    )
    runner.close()


def test_a_right_prediction_takes_two_probes(config: TrainingConfig):
    # Without injected errors the CPU's budget is the card's free memory: the live peak at the
    # predicted size fits it and the size above does not.
    card = card_predicting(config, 5)
    search = find_max_micro_batch(config, card, device="cpu")
    assert search.predicted == 5
    assert search.max_micro_batch == 5
    assert [(p.micro_batch, p.outcome) for p in search.probes] == [
        (5, "fits"),
        (6, "over the card's memory"),
    ]


def _line(available: int = 10_000) -> Prediction:
    return Prediction(
        max_micro_batch=(available - 1000) // 100,
        fixed=1000.0,
        slope=100.0,
        available=available,
        context_bytes=0,
    )


def _probe_against(truth_fixed: float, truth_slope: float, available: int, measure: bool):
    def probe(micro_batch: int) -> ProbeResult:
        peak = truth_fixed + truth_slope * micro_batch
        fits = peak <= available
        return ProbeResult(
            micro_batch=micro_batch,
            fits=fits,
            peak_bytes=round(peak) if fits and measure else None,
            outcome="fits" if fits else "out of memory",
            seconds=0.0,
        )

    return probe


@settings(max_examples=200, deadline=None)
@given(
    truth_fixed=st.integers(0, 8000),
    truth_slope=st.integers(20, 400),
    measure=st.booleans(),
)
def test_search_finds_the_true_max_whatever_the_prediction_error(
    truth_fixed: int, truth_slope: int, measure: bool
):
    prediction = _line()
    search = search_max_micro_batch(prediction, _probe_against(truth_fixed, truth_slope, 10_000, measure))
    truth = max(0, (10_000 - truth_fixed) // truth_slope)
    assert search.max_micro_batch == truth
    # It never probes a size twice, and a prediction off by up to 5x costs a bisection's worth.
    sizes = [p.micro_batch for p in search.probes]
    assert len(sizes) == len(set(sizes)) <= 20


@pytest.mark.parametrize(
    ("offset", "sizes"),
    [
        (0, [90, 91]),  # right: verify it, the size above fails
        (-1000, [90, 100, 101]),  # conservative: the measured residual jumps straight to the max
        (100, [90, 89]),  # one too many: the size below fits and closes the bracket
        (250, [90, 89, 87, 88]),  # further over: step down doubling, then the residual
    ],
)
def test_a_constant_error_is_corrected_by_the_measured_residual(offset: int, sizes: list[int]):
    # The prediction is off by a constant (e.g. an uncalibrated CUDA context).
    search = search_max_micro_batch(_line(), _probe_against(1000 + offset, 100, 10_000, measure=True))
    assert search.max_micro_batch == (10_000 - 1000 - offset) // 100
    assert [p.micro_batch for p in search.probes] == sizes
