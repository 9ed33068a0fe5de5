"""Max micro-batch, the linear fit, and fixes, on tiny models and a tiny card."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.errors import ConfigError
from planner.estimator import Estimator, LinearPeak, TraceCache, cheapest_fix, fit
from planner.schema import MIB, TrainingConfig
from planner.step import WINDOWS, PeakSplit, StepTrace
from tests.conftest import TINY_CONFIGS, make_card, write_model


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six identical layers: deeper than the shallow probes, so the depth extrapolation is exercised."""
    config = {**TINY_CONFIGS["llama"], "num_hidden_layers": 6, "vocab_size": 4096}
    return str(write_model(tmp_path_factory.mktemp("deep") / "llama6", config))


def test_linear_fit_predicts_full_depth_traces(deep_llama: str):
    # Identical layers make bytes linear in depth and, at fixed length, in micro-batch; the peak's
    # moment can shift by a few kilobytes of temporaries, hence 0.1% rather than exact equality.
    estimator = Estimator(TrainingConfig(model=deep_llama, seq_len=64), make_card(1024))
    for micro_batch in (1, 3, 7):
        assert estimator.linear.at(micro_batch) == pytest.approx(
            estimator.full_trace(micro_batch).peak, rel=1e-3
        )


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_the_unconfirmed_answer_agrees_with_full_depth_traces_on_every_architecture(
    tmp_path: Path, arch: str
):
    # Five layers: deeper than both probes, so depth is extrapolated as well as micro-batch.
    depth_key = "n_layer" if "n_layer" in TINY_CONFIGS[arch] else "num_hidden_layers"
    model = str(write_model(tmp_path / arch, {**TINY_CONFIGS[arch], depth_key: 5}))
    lora = {"dropout": 0.0} if arch == "mixtral" else {}  # peft's fused-expert wrapper takes none
    estimator = Estimator(
        TrainingConfig(model=model, seq_len=32, lora=lora), make_card(1024), cache=TraceCache()
    )
    assert max(estimator.traces.depths) < 5
    for micro_batch in (1, 6):
        traced = estimator.full_trace(micro_batch).peak
        assert estimator.linear.at(micro_batch) == pytest.approx(traced, rel=0.005)


def _window(peak: int, activations: int) -> PeakSplit:
    return PeakSplit(
        peak,
        weights=peak - activations,
        gradients=0,
        optimizer_state=0,
        activations=activations,
        temporaries=0,
    )


def _step(depth: int, micro_batch: int) -> StepTrace:
    """Forward/backward grows by 10 a sample and layer, the optimizer step is a flat 300 a layer."""
    activations = 10 * depth * micro_batch
    windows = [_window(100 * depth + activations, activations)] * (len(WINDOWS) - 1) + [
        _window(300 * depth, 0)
    ]
    top = max(windows, key=lambda w: w.peak)
    return StepTrace(**vars(top), windows=tuple(windows))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_estimate_at_one_before_the_fit_is_the_fits(deep_llama: str, method: str):
    # A config that cannot fit says what it needs at micro-batch 1 from the probes at 1 alone.
    config = TrainingConfig(model=deep_llama, seq_len=64, method=method)
    early = Estimator(config, make_card(1024), cache=TraceCache())
    at_one = early.estimate(1, trace=False)
    assert not any(m == 2 for _, m in early.traces.probes)
    fitted = Estimator(config, make_card(1024), cache=TraceCache())
    _ = fitted.linear
    assert at_one == fitted.estimate(1, trace=False)


def test_the_fit_is_the_highest_of_its_windows_lines():
    # At the probes (micro-batch 1 and 2) the optimizer step is the peak and nothing grows with
    # the micro-batch; from micro-batch 20 on (a tie: the earlier window), the forward/backward is.
    linear = LinearPeak.through({(d, m): _step(d, m) for d in (1, 2) for m in (1, 2)}, depth=8)
    for micro_batch in (1, 2, 20, 21, 40):
        assert linear.at(micro_batch) == max(800 + 80 * micro_batch, 2400)
        assert linear.at(micro_batch, "activations") == (80 * micro_batch if micro_batch >= 20 else 0)
    assert linear.max_micro_batch(2399) == 0
    assert linear.max_micro_batch(2400) == 20
    assert linear.max_micro_batch(2400 + 80 * 7) == 27


@pytest.fixture(scope="module")
def small_full_fine_tune(tmp_path_factory: pytest.TempPathFactory) -> TrainingConfig:
    """Small and short: at micro-batches 1 and 2 the end of backward and the optimizer step peak."""
    config = {**TINY_CONFIGS["llama"], "num_hidden_layers": 4, "vocab_size": 512}
    model = str(write_model(tmp_path_factory.mktemp("small") / "llama4", config))
    return TrainingConfig(model=model, precision="fp32", seq_len=16)


def test_a_peak_that_moves_with_the_micro_batch_is_not_extrapolated_flat(
    small_full_fine_tune: TrainingConfig,
):
    # The gradients each layer leaves in backward weigh about what a sample's activations do, so
    # the peak's moment moves inside the backward as the micro-batch grows: the predicted max is
    # at most one past the confirmed one (a flat extrapolation of the step's peak said hundreds).
    estimator = Estimator(small_full_fine_tune, make_card(518))
    limit = estimator.allocated_limit - estimator.overhead.workspace_bytes  # live bytes
    predicted = estimator.linear.max_micro_batch(limit)
    traced = next(m for m in range(predicted + 1, 0, -1) if estimator.full_trace(m).peak <= limit)
    assert 10 <= traced < 100
    assert estimator.full_trace(traced + 1).peak > limit
    assert traced <= predicted <= traced + 1


def test_max_micro_batch_is_the_largest_that_fits(deep_llama: str):
    config = TrainingConfig(model=deep_llama, seq_len=64)
    # A card just big enough for some micro-batches after the 500 MiB default context.
    card = make_card(560)
    report = fit(config, card)
    estimator = Estimator(config, card)
    assert report.max_micro_batch >= 1
    # On a CUDA card the allocator replay of the full-depth step decides.
    assert estimator.estimate(report.max_micro_batch).fits
    assert not estimator.estimate(report.max_micro_batch + 1).fits
    assert report.at_max.traced and report.at_max.fits
    assert report.at_max.segments
    assert report.at_max.breakdown.total == report.at_max.peak_bytes


def test_rows_fit_exactly_up_to_the_max(deep_llama: str):
    report = fit(TrainingConfig(model=deep_llama, seq_len=64), make_card(560))
    for row in report.rows:
        assert row.fits == (row.micro_batch <= report.max_micro_batch)


def test_nothing_fits_lists_fixes_that_fit(deep_llama: str):
    config = TrainingConfig(model=deep_llama, seq_len=64, precision="fp32")
    weights_mib = Estimator(config, make_card(1024)).full_trace(1).weights / MIB
    # Full fine-tuning needs weights + grads + 2 moments; adapters need about the weights alone.
    card = make_card(int(500 + 8 + weights_mib * 3.5))
    report = fit(config, card)
    assert report.max_micro_batch == 0
    assert not report.at_max.fits
    assert report.fixes, "a card this size fits the model with LoRA or QLoRA"
    for fix in report.fixes:
        assert fix.max_micro_batch >= 1
        # Each fix's micro-batch fits by a full-depth trace, not only by the fit it came from
        # (live bytes against the limit the fit uses: fixes are not replayed through the allocator).
        estimator = Estimator(fix.config, card)
        limit = estimator.allocated_limit - estimator.overhead.workspace_bytes
        assert estimator.full_trace(fix.max_micro_batch).peak <= limit
    # A plan shows only the cheapest fix, found without trying the others: the same one.
    assert cheapest_fix(config, card) == report.fixes[0]


def test_fixes_offer_lora_and_qlora_for_a_full_fine_tune(deep_llama: str):
    config = TrainingConfig(model=deep_llama, seq_len=64, precision="fp32")
    estimator = Estimator(config, make_card(1024))
    weights_mib = estimator.full_trace(1).weights / MIB
    # Full fine-tuning needs weights + grads + 2 moments; LoRA needs about the weights alone.
    card = make_card(int(500 + 8 + weights_mib * 3.5))
    report = fit(config, card)
    assert report.max_micro_batch == 0
    methods = {fix.config.method.value for fix in report.fixes}
    assert {"lora", "qlora"} <= methods
    lora = next(f for f in report.fixes if f.config.method.value == "lora")
    qlora = next(f for f in report.fixes if f.config.method.value == "qlora")
    # The 4-bit base leaves more room for activations than LoRA's half base.
    assert qlora.max_micro_batch >= lora.max_micro_batch >= 1


def test_fused_adamw_is_offered_where_foreachs_intermediate_is_what_does_not_fit(tmp_path: Path):
    # Wide and shallow, short rows: the optimizer step is the peak, and foreach AdamW holds one
    # parameter-sized intermediate there that fused AdamW does not.
    wide = {"hidden_size": 1024, "intermediate_size": 2048, "num_attention_heads": 8, "vocab_size": 4096}
    model = str(write_model(tmp_path / "wide", {**TINY_CONFIGS["llama"], **wide}))
    config = TrainingConfig(model=model, seq_len=16, precision="fp32", optimizer="adamw_torch")
    estimators = [
        Estimator(config.with_changes(optimizer=name), make_card(4096), cache=TraceCache())
        for name in ("adamw", "adamw_torch")
    ]
    peaks = [estimator.estimate(1).peak_bytes for estimator in estimators]
    report = fit(config, make_card(sum(peaks) // 2 // MIB))
    assert report.max_micro_batch == 0
    fused = next(fix for fix in report.fixes if fix.change.startswith("fused AdamW"))
    assert fused.config.optimizer.value == "adamw" and fused.max_micro_batch >= 1


def test_bf16_on_a_card_without_bf16_is_refused(deep_llama: str):
    with pytest.raises(ConfigError, match="precision"):
        fit(TrainingConfig(model=deep_llama, precision="bf16"), make_card(16000, compute_capability="7.5"))
