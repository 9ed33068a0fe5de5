"""Trial work follows Trainer's step arithmetic; trial time adds up its parts."""

from __future__ import annotations

import pytest

from planner.schema import EvalSpec, Hyperparameters
from planner.timing import StepTimes, count_work, trial_time


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
    assert capped.eval_passes == 2  # type: ignore[attr-defined]


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
