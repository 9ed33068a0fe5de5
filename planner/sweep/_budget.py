"""Fitting trials into a budget: run order, the per-worker schedule, and a halving alternative."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from planner.schema import HalvingRung

ORDER_RULE = (
    "shortest predicted time first (ties in spec order), so the most trials finish inside the budget; "
    "each worker takes the next trial when it is free, and a trial is kept only if it ends inside the budget"
)
# Successive halving keeps the best 1/ETA of each rung and gives them ETA times the data.
ETA = 3
MAX_RUNGS = 5


@dataclass(frozen=True)
class Slot:
    """Where a trial lands in the schedule, or None when it would end past the budget."""

    start: float
    worker: int


def schedule(durations: list[float], workers: int, budget: float | None) -> tuple[list[Slot | None], float]:
    """Assign trials (already in run order) to the earliest free worker; return slots and makespan."""
    free = [(0.0, worker) for worker in range(workers)]
    heapq.heapify(free)
    slots: list[Slot | None] = []
    makespan = 0.0
    for duration in durations:
        start, worker = free[0]
        if budget is not None and start + duration > budget:
            slots.append(None)
            continue
        heapq.heapreplace(free, (start + duration, worker))
        slots.append(Slot(start=start, worker=worker))
        makespan = max(makespan, start + duration)
    return slots, makespan


def halving_schedule(
    trials: int, fixed_seconds: float, scaled_seconds: float, workers: int, budget: float
) -> list[HalvingRung] | None:
    """The gentlest successive-halving schedule (fewest rungs) whose total fits ``budget``.

    A trial at data fraction f is taken to cost ``fixed + f * scaled`` seconds (start-up and saves
    do not shrink with the data). Rung r runs trials/ETA^r trials at fraction ETA^(r-k).
    """
    for rungs in range(1, MAX_RUNGS + 1):
        plan = []
        for rung in range(rungs + 1):
            count = max(1, trials // ETA**rung)
            fraction = min(1.0, float(ETA ** (rung - rungs)))
            plan.append(
                HalvingRung(
                    trials=count,
                    fraction=fraction,
                    seconds=count * (fixed_seconds + fraction * scaled_seconds),
                )
            )
            if count == 1:
                break
        if sum(r.seconds for r in plan) / workers <= budget:
            return plan
    return None
