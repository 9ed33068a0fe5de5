"""Profiles on disk, and what they feed back: calibrated CUDA overheads and measured rows in fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cards import host_card
from planner.errors import ProfileError
from planner.estimator import Estimator, default_overhead, overhead_for
from planner.profiler import (
    MEASURED_ENV,
    ProfileStore,
    calibrated_overhead,
    fit_with_profiles,
    library_versions,
    load_profile,
    measured_dir,
)
from planner.schema import GIB, MIB, MeasuredProfile, ProfileKey, StepMeasurement, TrainingConfig
from tests.conftest import make_card


def _profile(
    config: TrainingConfig,
    card: str,
    *,
    device: str = "cuda",
    context: int | None = 400 * MIB,
    memory: tuple[int, int] = (10 * GIB, 11 * GIB),
    versions: dict[str, str] | None = None,
) -> MeasuredProfile:
    allocated, reserved = memory
    cuda = device == "cuda"
    return MeasuredProfile(
        key=ProfileKey.of(config, card),
        device=device,  # type: ignore[arg-type]
        device_name="NVIDIA Test" if cuda else "CPU",
        versions=versions if versions is not None else library_versions(),
        measurements=[
            StepMeasurement(
                micro_batch=m,
                forward_backward_seconds=0.1 * m,
                forward_backward_p10_seconds=0.09 * m,
                forward_backward_p90_seconds=0.11 * m,
                optimizer_seconds=0.05,
                eval_forward_seconds=0.03 * m,
                tokens_per_second=1000.0,
                peak_allocated_bytes=allocated * m if cuda else None,
                peak_reserved_bytes=reserved * m if cuda else None,
                nvml_used_bytes=reserved * m + (context or 0) if cuda else None,
                live_peak_bytes=None if cuda else allocated * m,
            )
            for m in (1, 2)
        ],
        context_bytes=context if cuda else None,
        created="2025-01-01T00:00:00+00:00",
    )


@pytest.fixture
def config(tiny_models: dict[str, str]) -> TrainingConfig:
    return TrainingConfig(model=tiny_models["llama"], method="lora", seq_len=32)


def test_save_then_find_by_config_card_and_versions(tmp_path: Path, config: TrainingConfig):
    store = ProfileStore(tmp_path)
    profile = _profile(config, "rtx-4090")
    path = store.save(profile)
    assert path.parent == tmp_path / "rtx-4090" and path.suffix == ".json"
    assert store.find(config, "rtx-4090") == profile
    assert store.find(config, "a100-80gb") is None
    assert store.find(config.with_changes(seq_len=64), "rtx-4090") is None
    assert store.find(config.with_changes(lora={"r": 8}), "rtx-4090") is None
    assert store.find(config.with_changes(lora={"target_modules": ["q_proj"]}), "rtx-4090") is None
    # Taken with other library versions: not this installation's profile, but still the card's.
    other = _profile(config.with_changes(seq_len=64), "rtx-4090", versions={"torch": "0.1"})
    store.save(other)
    assert store.find(config.with_changes(seq_len=64), "rtx-4090") is None
    assert len(store.for_card("rtx-4090")) == 2


def test_default_directory_is_under_the_working_directory_unless_the_env_var_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MEASURED_ENV, raising=False)
    assert measured_dir() == tmp_path / "profiles" / "measured"
    monkeypatch.setenv(MEASURED_ENV, str(tmp_path / "shared"))
    assert ProfileStore().directory == tmp_path / "shared"


def test_a_file_from_another_card_or_config_or_not_a_profile_is_refused(
    tmp_path: Path, config: TrainingConfig
):
    path = ProfileStore(tmp_path).save(_profile(config, "rtx-4090"))
    assert load_profile(path, card_name="rtx-4090", config=config).key.card == "rtx-4090"
    with pytest.raises(ProfileError, match="measured on card 'rtx-4090', not 'a100-80gb'"):
        load_profile(path, card_name="a100-80gb", config=config)
    with pytest.raises(ProfileError, match="another config"):
        load_profile(path, card_name="rtx-4090", config=config.with_changes(seq_len=128))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ProfileError, match="is not a profile"):
        load_profile(tmp_path / "junk.json")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_cuda_profiles_calibrate_context_and_fragmentation(tmp_path: Path, config: TrainingConfig):
    card = make_card(24_000)
    store = ProfileStore(tmp_path)
    assert calibrated_overhead(card, store) is None
    store.save(_profile(config, card.name, context=300 * MIB, memory=(10 * GIB, 11 * GIB)))
    store.save(_profile(config.with_changes(seq_len=64), card.name, context=500 * MIB, memory=(8, 9)))
    store.save(_profile(config.with_changes(seq_len=128), card.name, context=450 * MIB))
    overhead = calibrated_overhead(card, store)
    assert overhead is not None
    assert overhead.context_bytes == 450 * MIB  # the median
    assert overhead.fragmentation == pytest.approx(9 / 8 - 1)  # the largest seen
    assert overhead.workspace_bytes == default_overhead(card).workspace_bytes
    assert "3 measured profile(s)" in overhead.source
    # The estimator takes them: a smaller context than the 500 MiB default lowers the prediction.
    calibrated = Estimator(config, card, overhead).estimate(1, trace=False)
    default = Estimator(config, card).estimate(1, trace=False)
    assert calibrated.breakdown.cuda_context < default.breakdown.cuda_context
    assert "calibrated" in calibrated.expected_error


def test_without_nvml_only_fragmentation_is_calibrated(tmp_path: Path, config: TrainingConfig):
    card = make_card(24_000)
    store = ProfileStore(tmp_path)
    store.save(_profile(config, card.name, context=None, memory=(10 * GIB, 11 * GIB)))
    overhead = calibrated_overhead(card, store)
    assert overhead is not None and "fragmentation only" in overhead.source
    assert overhead.context_bytes == default_overhead(card).context_bytes
    assert overhead.fragmentation == pytest.approx(0.1)


def test_the_host_has_no_cuda_terms_to_calibrate(tmp_path: Path, config: TrainingConfig):
    store = ProfileStore(tmp_path)
    store.save(_profile(config, "cpu", device="cpu"))
    assert calibrated_overhead(host_card(), store) is None
    assert overhead_for(host_card(), store.for_card("cpu")).context_bytes == 0


def test_fit_shows_the_measured_rows_beside_the_prediction(tmp_path: Path, config: TrainingConfig):
    card = make_card(24_000)
    store = ProfileStore(tmp_path)
    path = store.save(_profile(config, card.name))
    report = fit_with_profiles(config, card, [4], store=store)
    assert [row.micro_batch for row in report.rows] == [1, 2, 4]  # measured sizes are added
    assert report.profile == str(path)
    assert "measured profile" in report.calibration
    first = report.measured[0]
    assert first.micro_batch == 1
    assert first.predicted_peak_bytes == report.rows[0].peak_bytes
    assert first.measured_peak_bytes == 11 * GIB + 400 * MIB
    assert first.error == pytest.approx(
        (first.predicted_peak_bytes - first.measured_peak_bytes) / first.measured_peak_bytes
    )
    # Without a profile of this config, nothing measured is shown (the card's still calibrates).
    other = fit_with_profiles(config.with_changes(seq_len=64), card, [1], store=store)
    assert other.measured == [] and other.profile is None
    assert "measured profile" in other.calibration
