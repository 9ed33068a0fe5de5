"""Trial work follows Trainer's step arithmetic; trial time adds up its parts."""

from __future__ import annotations

import pytest

from planner.schema import EvalSpec, Hyperparameters, MachineLoad
from planner.timing import HOST_MARGIN, StepTimes, count_work, host_parts, host_spread, load_ratio, trial_time
from tests.conftest import make_host_profile


def work(**changes: object) -> object:
    fields: dict[str, object] = {
        "micro_batch": 4,
        "accumulation": 2,
        "rows": 100,
        "eval_examples": 10,
        "eval_spec": EvalSpec(),
        "checkpoint_every_steps": None,
        "checkpoint_bytes": 0,
        "load_bytes": 0,
    }
    hyper = changes.pop("hyper", Hyperparameters(epochs=2))
    fields.update(changes)
    return count_work(hyper, **fields)  # type: ignore[arg-type]


def test_epochs_count_like_trainer() -> None:
    # 100 rows / micro 4 = 25 micro-batches per epoch; ceil(25 / 2) = 13 optimizer steps per epoch.
    counted = work()
    assert counted.optimizer_steps == 26  # type: ignore[attr-defined]
    assert counted.micro_steps == 50  # type: ignore[attr-defined]
    assert counted.eval_passes == 2 and counted.eval_batches == 3  # type: ignore[attr-defined]
    assert counted.checkpoint_saves == 2  # type: ignore[attr-defined]


def test_fractional_epochs_and_max_steps() -> None:
    assert work(hyper=Hyperparameters(epochs=0.5)).optimizer_steps == 7  # type: ignore[attr-defined]
    capped = work(hyper=Hyperparameters(max_steps=5), eval_spec=EvalSpec(strategy="steps", every_steps=2))
    assert capped.optimizer_steps == 5 and capped.micro_steps == 10  # type: ignore[attr-defined]
    # Evaluated at steps 2 and 4 (each with a save), then once more after step 5 (the recipe's final
    # evaluation, no save); a cadence that ends on the last step needs no extra pass.
    assert capped.eval_passes == 3 and capped.checkpoint_saves == 2  # type: ignore[attr-defined]
    aligned = work(hyper=Hyperparameters(max_steps=4), eval_spec=EvalSpec(strategy="steps", every_steps=2))
    assert aligned.eval_passes == 2 and aligned.checkpoint_saves == 2  # type: ignore[attr-defined]


def test_trial_time_grows_with_the_work_it_counts() -> None:
    """Twice the epochs is twice the training and eval time; start-up is paid once; the interval
    brackets the estimate by the step source's own spread."""
    step = StepTimes(0.5, 0.1, 0.2, "measured", (0.9, 1.2), "test")
    one = trial_time(work(hyper=Hyperparameters(epochs=1)), step)  # type: ignore[arg-type]
    two = trial_time(work(hyper=Hyperparameters(epochs=2)), step)  # type: ignore[arg-type]
    assert two.parts["train"] == pytest.approx(2 * one.parts["train"], rel=0.05)
    assert two.parts["eval"] == pytest.approx(2 * one.parts["eval"])
    assert two.parts["startup"] == one.parts["startup"]
    slower = trial_time(work(), StepTimes(1.0, 0.1, 0.2, "measured", (0.9, 1.2), "test"))  # type: ignore[arg-type]
    assert slower.parts["train"] > two.parts["train"] and slower.parts["eval"] == two.parts["eval"]
    assert two.low_seconds == pytest.approx(0.9 * two.seconds, rel=0.1)
    assert two.high_seconds == pytest.approx(1.2 * two.seconds, rel=0.1)


def _step() -> StepTimes:
    return StepTimes(0.01, 0.002, 0.004, "measured", (0.9, 1.2), "test")


def _host_work(**changes: object) -> object:
    fields: dict[str, object] = {
        "checkpoint_bytes": 10**8,
        "build_bytes": 10**7,
        "trainable_bytes": 10**7,
        "padded_length": 64.0,
        "tokenize_seconds": 0.2,
        "device_bytes_per_second": 1e10,
    }
    fields.update(changes)
    return work(**fields)


def test_host_costs_use_this_machines_measured_speeds() -> None:
    fast = trial_time(_host_work(), _step(), make_host_profile())  # type: ignore[arg-type]
    slow_disk = trial_time(_host_work(), _step(), make_host_profile(disk_write_bytes_per_second=1e8))  # type: ignore[arg-type]
    assert slow_disk.parts["checkpoints"] > fast.parts["checkpoints"]
    assert slow_disk.parts["train"] == fast.parts["train"]
    slow_init = trial_time(_host_work(), _step(), make_host_profile(init_bytes_per_second=1e7))  # type: ignore[arg-type]
    assert slow_init.parts["startup"] > fast.parts["startup"]
    busy_trainer = trial_time(_host_work(), _step(), make_host_profile(trainer_step_seconds=0.05))  # type: ignore[arg-type]
    assert busy_trainer.parts["train"] > fast.parts["train"]
    # Loading pretrained weights goes at the storage's read speed.
    loading = _host_work(load_bytes=10**9, build_bytes=0)
    assert (
        trial_time(loading, _step(), make_host_profile(storage_read_bytes_per_second=1e8)).parts[  # type: ignore[arg-type]
            "startup"
        ]
        > trial_time(loading, _step(), make_host_profile()).parts["startup"]
    )  # type: ignore[arg-type]


def test_host_costs_grow_with_padded_length_and_micro_steps() -> None:
    host = make_host_profile()
    short = trial_time(_host_work(padded_length=16.0), _step(), host)  # type: ignore[arg-type]
    long = trial_time(_host_work(padded_length=512.0), _step(), host)  # type: ignore[arg-type]
    assert long.parts["train"] > short.parts["train"]
    one = trial_time(_host_work(hyper=Hyperparameters(epochs=1)), _step(), host)  # type: ignore[arg-type]
    two = trial_time(_host_work(hyper=Hyperparameters(epochs=2)), _step(), host)  # type: ignore[arg-type]
    assert two.parts["train"] > one.parts["train"] and two.seconds > one.seconds


def test_a_plan_under_another_load_says_so_and_widens_its_interval() -> None:
    measured_quiet = make_host_profile(load=0.2, cpus=2)
    same = trial_time(_host_work(), _step(), measured_quiet, MachineLoad(cpu_count=2, load_average=0.3))  # type: ignore[arg-type]
    busy = trial_time(_host_work(), _step(), measured_quiet, MachineLoad(cpu_count=2, load_average=7.0))  # type: ignore[arg-type]
    assert busy.seconds == same.seconds  # the estimate stays: the run's load is unknown
    assert busy.high_seconds > same.high_seconds and busy.low_seconds == same.low_seconds
    assert "load" in busy.note and "load" not in same.note
    quieter = trial_time(
        _host_work(),  # type: ignore[arg-type]
        _step(),
        make_host_profile(load=7.0, cpus=2),
        MachineLoad(cpu_count=2, load_average=0.3),
    )
    assert quieter.low_seconds < same.low_seconds


def test_without_a_host_profile_the_estimate_says_what_it_leaves_out() -> None:
    estimate = trial_time(_host_work(), _step())  # type: ignore[arg-type]
    assert "not measured" in estimate.note
    quiet, busy = MachineLoad(cpu_count=2, load_average=1.0), MachineLoad(cpu_count=2, load_average=5.0)
    assert load_ratio(quiet, busy) > 1 > load_ratio(busy, quiet)


def test_the_host_parts_interval_is_the_spread_measured_with_them() -> None:
    """The host's parts widen by the repeat spread the host measurement found, not by a constant:
    a noisier host gives a wider interval, the estimate itself unchanged."""
    steady = make_host_profile(repeat_spread_low=0.95, repeat_spread_high=1.05)
    noisy = make_host_profile(repeat_spread_low=0.7, repeat_spread_high=1.6)
    assert host_spread(steady) == (0.95, 1.05) and host_spread(noisy) == (0.7, 1.6)
    calm = trial_time(_host_work(), _step(), steady)  # type: ignore[arg-type]
    busy = trial_time(_host_work(), _step(), noisy)  # type: ignore[arg-type]
    assert busy.seconds == calm.seconds
    assert busy.low_seconds < calm.low_seconds <= calm.seconds <= calm.high_seconds < busy.high_seconds
    hosted = sum(host_parts(_host_work(), steady).values())  # type: ignore[arg-type]
    assert busy.high_seconds - calm.high_seconds == pytest.approx((1.6 - 1.05) * hosted)
    assert calm.low_seconds - busy.low_seconds == pytest.approx((0.95 - 0.7) * hosted)
    # A spread that does not bracket 1 (a skewed sample) still brackets the estimate.
    assert host_spread(make_host_profile(repeat_spread_low=1.02, repeat_spread_high=1.3))[0] == 1.0
    # Without a measured spread (a profile of the cheap part only): the stated margin.
    assert host_spread(make_host_profile()) == (1 - HOST_MARGIN, 1 + HOST_MARGIN)
