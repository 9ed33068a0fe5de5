"""What measured profiles feed back: calibrated CUDA overheads, and measured figures next to predictions."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from planner.estimator import CudaOverhead, Estimator, fit, overhead_for, overhead_from_profiles
from planner.profiler._device import profile_card_name
from planner.profiler._oom_log import OomLog
from planner.profiler._store import ProfileStore, load_profile
from planner.schema import Card, FitReport, MeasuredProfile, MeasuredRow, TrainingConfig


def calibrated_overhead(
    card: Card, store: ProfileStore | None = None, extra: Iterable[MeasuredProfile] = ()
) -> CudaOverhead | None:
    """Context and fragmentation from the CUDA profiles of ``card`` (in ``store`` and ``extra``).

    None when there are none, and always on the host card, where the estimator counts live tensor
    bytes with no CUDA terms.
    """
    store = store if store is not None else ProfileStore()
    return overhead_from_profiles(card, [*store.for_card(profile_card_name(card)), *extra])


def fit_with_profiles(
    config: TrainingConfig,
    card: Card,
    micro_batches: list[int] | None = None,
    *,
    profile: Path | str | None = None,
    store: ProfileStore | None = None,
) -> FitReport:
    """:func:`planner.estimator.fit` calibrated by the card's profiles, with the measured figures.

    The profile of this exact config is ``profile`` (a file, refused if taken on another card or
    config) or the store's; its micro-batches are reported next to the prediction for them.
    """
    store = store if store is not None else ProfileStore()
    card_name = profile_card_name(card)
    measured: MeasuredProfile | None
    if profile is not None:
        measured = load_profile(profile, card_name=card_name, config=config)
        source: str | None = str(profile)
    else:
        measured = store.find(config, card_name)
        source = str(store.path_for(measured.key, measured.versions)) if measured else None
    extra = [measured] if measured is not None else []
    loading = config.stack.cuda_module_loading
    overhead = overhead_for(
        card, [*store.for_card(card_name), *extra], loading.value if loading is not None else None
    )
    if measured is not None and micro_batches is not None:
        micro_batches = sorted({*micro_batches, *(m.micro_batch for m in measured.measurements)})
    report = fit(config, card, micro_batches, overhead=overhead)
    report = _capped_by_recorded_oom(report, card, overhead, OomLog(store.directory).limit(config, card_name))
    if measured is None:
        return report
    return report.model_copy(update={"measured": measured_rows(report, measured), "profile": source})


def _capped_by_recorded_oom(
    report: FitReport, card: Card, overhead: CudaOverhead, limit: int | None
) -> FitReport:
    """The report with its max micro-batch capped at ``limit``, where a real run of the config ran
    out of memory above it (see :class:`OomLog`); the estimate at the max is taken at the cap."""
    if limit is None or limit >= report.max_micro_batch:
        return report
    at_max = Estimator(report.config, card, overhead).estimate(max(limit, 1))
    return report.model_copy(update={"max_micro_batch": limit, "at_max": at_max, "oom_limit": limit})


def measured_rows(report: FitReport, profile: MeasuredProfile) -> list[MeasuredRow]:
    """Each measured micro-batch beside its predicted peak (NVML used on CUDA, live bytes on CPU)."""
    rows = []
    for measurement in profile.measurements:
        predicted = round(_predicted_peak(report, measurement.micro_batch))
        measured = measurement.device_bytes
        rows.append(
            MeasuredRow(
                micro_batch=measurement.micro_batch,
                predicted_peak_bytes=predicted,
                measured_peak_bytes=measured,
                error=(predicted - measured) / measured if measured else None,
                forward_backward_seconds=measurement.forward_backward_seconds,
                tokens_per_second=measurement.tokens_per_second,
            )
        )
    return rows


def _predicted_peak(report: FitReport, micro_batch: int) -> float:
    """The report's prediction at ``micro_batch``: its row, else the line through the nearest rows.

    Predicted memory is affine in micro-batch (the estimator's own linear fit), so two rows give it.
    """
    points = {row.micro_batch: row.peak_bytes for row in report.rows}
    points.setdefault(report.at_max.micro_batch, report.at_max.peak_bytes)
    if micro_batch in points:
        return points[micro_batch]
    ordered = sorted(points)
    if len(ordered) == 1:
        return points[ordered[0]]
    below = [m for m in ordered if m < micro_batch]
    above = [m for m in ordered if m > micro_batch]
    if below and above:
        low, high = below[-1], above[0]
    else:
        low, high = (ordered[-2], ordered[-1]) if below else (ordered[0], ordered[1])
    slope = (points[high] - points[low]) / (high - low)
    return points[low] + slope * (micro_batch - low)
