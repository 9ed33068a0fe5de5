"""plan_sweep: shapes, feasibility, totals and the budget, as properties over many specs."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.estimator import _helper, shared_cache
from planner.schema import Plan, SweepSpec
from planner.sweep import _plan, halving_schedule, plan_sweep, schedule
from tests.conftest import TINY_CONFIGS, make_card, write_model

# A card small enough that the tiny Llama's larger micro-batches do not fit at seq 256.
CARD = make_card(520)


def spec_of(model: str, **fields: Any) -> SweepSpec:
    raw: dict[str, Any] = {
        "base": {"model": model, "precision": "fp32", "seq_len": 256},
        "data": {"counts": {"train_examples": 200, "mean_tokens": 100, "eval_examples": 20}},
        "search": {"learning_rate": [1e-4, 1e-3], "effective_batch": [4, 12, 64]},
        **fields,
    }
    return SweepSpec.model_validate(raw)


def check_plan(plan: Plan, card_bytes: int) -> None:
    """The invariants every plan must hold."""
    for trial in plan.trials:
        if trial.feasible:
            assert trial.time is not None and trial.peak_bytes is not None
            assert (
                trial.config.micro_batch * trial.config.gradient_accumulation == trial.hyper.effective_batch
            )
            assert trial.peak_bytes <= card_bytes
            assert trial.time.low_seconds <= trial.time.seconds <= trial.time.high_seconds
        else:
            assert trial.reason and trial.fix and trial.status == "infeasible"
    timed = [t.time for t in plan.trials if t.time is not None]
    assert plan.total_seconds == pytest.approx(sum(t.seconds for t in timed))
    assert plan.total_low_seconds == pytest.approx(sum(t.low_seconds for t in timed))
    assert plan.makespan_seconds <= plan.total_seconds + 1e-9
    assert plan.makespan_seconds >= plan.total_seconds / plan.workers - 1e-9
    if plan.budget_seconds is not None:
        ends = [t.start_seconds + t.time.seconds for t in plan.trials if t.status == "planned" and t.time]  # type: ignore[operator]
        assert all(end <= plan.budget_seconds + 1e-9 for end in ends)
        assert plan.fits_budget == (plan.makespan_seconds <= plan.budget_seconds)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16, 64, 128]), min_size=1, max_size=4, unique=True
    ),
    micro=st.sampled_from(["auto", 1, 2, 4, 32]),
    workers=st.integers(1, 3),
    budget=st.one_of(st.none(), st.floats(1.0, 1e4)),
    epochs=st.floats(0.3, 3.0),
)
def test_plan_invariants(
    tiny_models: dict[str, str],
    batches: list[int],
    micro: Any,
    workers: int,
    budget: float | None,
    epochs: float,
) -> None:
    spec = spec_of(
        tiny_models["llama"],
        search={"effective_batch": batches},
        micro_batch=micro,
        training={"epochs": epochs},
    )
    plan = plan_sweep(spec, CARD, workers=workers, budget_seconds=budget)
    assert len(plan.trials) == len(batches)
    check_plan(plan, CARD.available_bytes)


def test_auto_micro_batch_is_the_largest_that_fits_and_divides(tiny_models: dict[str, str]) -> None:
    """Judged by full-depth traces of the trial's own step: its micro-batch fits, with the
    accumulation it runs with, and no larger divisor of the effective batch does (live bytes
    against the limit the plan uses: plans answer from the fit, not the allocator replay)."""
    from planner.estimator import Estimator

    spec = spec_of(tiny_models["llama"])
    plan = plan_sweep(spec, CARD)
    assert any(t.config.gradient_accumulation > 1 for t in plan.trials), "the card must cut the batch"
    for trial in plan.trials:
        effective, micro = trial.hyper.effective_batch, trial.config.micro_batch
        assert effective % micro == 0
        estimator = Estimator(trial.config, CARD)
        limit = estimator.allocated_limit - estimator.overhead.workspace_bytes
        assert estimator.full_trace(micro).peak <= limit
        for larger in (d for d in range(micro + 1, effective + 1) if effective % d == 0):
            step = trial.config.with_changes(micro_batch=larger, gradient_accumulation=effective // larger)
            assert Estimator(step, CARD).full_trace(larger).peak > limit


def test_fixed_micro_batch_not_dividing_is_infeasible_with_a_fix(
    tiny_models: dict[str, str],
) -> None:
    plan = plan_sweep(spec_of(tiny_models["llama"], micro_batch=8), CARD)
    not_dividing = [t for t in plan.trials if t.hyper.effective_batch == 12]
    assert not_dividing and all(not t.feasible for t in not_dividing)
    assert "does not divide" in (not_dividing[0].reason or "")
    assert "micro_batch" in (not_dividing[0].fix or "")


def test_too_big_for_the_card_is_infeasible_with_a_fix(
    tiny_models: dict[str, str],
) -> None:
    card = make_card(40)  # not even micro-batch 1 of full fine-tuning fits
    plan = plan_sweep(spec_of(tiny_models["llama"], search={"method": ["full", "qlora"]}), card)
    full = next(t for t in plan.trials if t.params["method"] == "full")
    assert not full.feasible and "micro-batch 1" in (full.reason or "")
    assert full.fix


def test_budget_keeps_the_shortest_trials_first(tiny_models: dict[str, str]) -> None:
    # Enough data that training, not start-up, is most of each trial: halving can then save time.
    counts = {"train_examples": 20000, "mean_tokens": 100, "eval_examples": 20}
    spec = spec_of(tiny_models["llama"], data={"counts": counts})
    full = plan_sweep(spec, CARD)
    budget = full.total_seconds * 0.5
    cut = plan_sweep(spec, CARD, budget_seconds=budget)
    planned = [t for t in cut.trials if t.status == "planned"]
    over = [t for t in cut.trials if t.status == "over budget"]
    assert planned and over and cut.fits_budget is False
    assert max(t.time.seconds for t in planned) <= min(t.time.seconds for t in over)  # type: ignore[union-attr]
    # Half the budget holds at least one rung of every trial: successive halving is proposed.
    assert cut.successive_halving is not None
    assert sum(r.seconds for r in cut.successive_halving) <= budget


def test_schedule_puts_each_trial_on_the_earliest_free_worker() -> None:
    slots, makespan = schedule([3.0, 1.0, 1.0, 1.0], workers=2, budget=None)
    assert [(s.start, s.worker) for s in slots if s] == [(0.0, 0), (0.0, 1), (1.0, 1), (2.0, 1)]
    assert makespan == 3.0
    slots, _ = schedule([3.0, 1.0], workers=1, budget=3.5)
    assert slots[1] is None


def test_halving_schedule_fits_or_says_none() -> None:
    rungs = halving_schedule(27, fixed_seconds=1.0, scaled_seconds=100.0, workers=1, budget=1000.0)
    assert rungs is not None and rungs[0].trials == 27 and rungs[0].fraction < 1.0
    assert sum(r.seconds for r in rungs) <= 1000.0
    assert halving_schedule(27, fixed_seconds=100.0, scaled_seconds=100.0, workers=1, budget=10.0) is None


def test_random_strategy_samples_n_trials_reproducibly(tiny_models: dict[str, str]) -> None:
    spec = spec_of(
        tiny_models["llama"],
        strategy="random",
        n_trials=4,
        search={"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "effective_batch": [4, 8]},
    )
    first = plan_sweep(spec, CARD)
    again = plan_sweep(spec, CARD)
    assert len(first.trials) == 4
    assert sorted(str(t.params) for t in first.trials) == sorted(str(t.params) for t in again.trials)


def test_a_plan_split_over_a_helper_process_answers_as_one_process_does(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Six layers, probed as two- and three-layer copies. At seq 64 a batch of 64 accumulates (the
    # helper predicted that step), the two planned micro-batches' costs are traced one on each
    # process; seq 256 does not fit (its cheapest fix is probed here).
    layers = {**TINY_CONFIGS["llama"], "num_hidden_layers": 6, "vocab_size": 4096}
    deep = write_model(tmp_path / "llama6", layers)
    spec = spec_of(str(deep), search={"seq_len": [64, 256], "effective_batch": [4, 64]})
    card = make_card(540)
    monkeypatch.setattr(_helper.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(_plan, "spare_core", lambda: True)  # whatever else this machine runs
    forks: list[_helper.Helper] = []
    original_init = _helper.Helper.__init__

    def counted_init(self: _helper.Helper) -> None:
        forks.append(self)
        original_init(self)

    monkeypatch.setattr(_helper.Helper, "__init__", counted_init)
    shared_cache().clear()
    split = plan_sweep(spec, card)
    assert forks, "the plan did not use a helper process"
    trials = {t.number: t for t in split.trials}
    assert [trials[n].feasible for n in range(4)] == [True, True, False, False]
    assert trials[1].config.gradient_accumulation > 1
    assert trials[0].config.micro_batch != trials[1].config.micro_batch

    @contextmanager
    def no_helper(**_: Any) -> Any:
        yield None

    shared_cache().clear()
    monkeypatch.setattr(_helper.Helper, "fork", no_helper)
    assert plan_sweep(spec, card) == split


def test_a_ddp_trial_is_planned_per_rank_with_its_share_of_the_rows(tiny_models: dict[str, str]) -> None:
    """Two ranks: each takes half of every optimizer step's examples (micro x accumulation x 2 =
    effective) and of the epoch's rows, so the same optimizer steps take half the micro-steps;
    its memory is the estimator's trace of one DDP rank, and each step waits for the all-reduce
    DDP leaves exposed at the card's link."""
    from planner.estimator import Estimator

    card = make_card(2048).model_copy(update={"interconnect_gbs": 32.0, "interconnect": "PCIe 4.0 x16"})
    one = spec_of(tiny_models["llama"], search={"effective_batch": [4, 8, 3]}, micro_batch=2)
    base = {"model": tiny_models["llama"], "precision": "fp32", "seq_len": 256}
    ddp = spec_of(
        tiny_models["llama"],
        base={**base, "parallelism": {"gpus": 2, "strategy": "ddp"}},
        search={"effective_batch": [4, 8, 3]},
        micro_batch=2,
    )
    single, ranks = plan_sweep(one, card), plan_sweep(ddp, card)
    by_batch = {t.hyper.effective_batch: t for t in ranks.trials}
    alone = {t.hyper.effective_batch: t for t in single.trials}
    odd = by_batch[3]
    assert not odd.feasible and "does not split over 2 ranks" in (odd.reason or "")
    for effective in (4, 8):
        trial = by_batch[effective]
        assert trial.feasible and trial.time is not None and trial.optimizer_steps is not None
        assert trial.config.micro_batch * trial.config.gradient_accumulation * 2 == effective
        assert trial.peak_bytes == Estimator(trial.config, card).estimate(2, trace=False).peak_bytes
        assert trial.optimizer_steps == math.ceil(math.ceil(200 / 2) / 2 / trial.config.gradient_accumulation)
        assert trial.optimizer_steps == alone[effective].optimizer_steps
        assert "communication per optimizer step exposed (PCIe 4.0 x16 at 32 GB/s)" in trial.time.note
        assert trial.time.seconds < alone[effective].time.seconds  # type: ignore[union-attr]
