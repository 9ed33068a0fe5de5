"""What a different machine load does to a time measured on this host: a wider interval, said out loud.

A CPU step measured while other processes were busy is slower than on a quiet machine, and the
other way round; a plan made under another load than its measurements keeps the estimate (the load
of the coming run is unknown) and widens the interval toward the side the load moved.
"""

from __future__ import annotations

from planner.schema import MachineLoad

# Loads whose expected speed differs by less than this are the same for a plan's purposes: the
# 1-minute load average itself moves that much within a minute on a busy shared machine.
SAME_LOAD = 0.15


def _cpu_share(load: MachineLoad) -> float:
    """Share of the CPUs a busy PyTorch process gets: CFS splits CPU time evenly between runnable
    threads, so beside L other runnable processes on C CPUs it gets about C / (L + 1) of them,
    all of them when the machine is not oversubscribed."""
    # The load average counts the measuring (or planning) process itself: take one out.
    others = max(0.0, load.load_average - 1.0)
    return min(1.0, load.cpu_count / (others + 1.0))


def load_ratio(measured: MachineLoad, now: MachineLoad) -> float:
    """Expected seconds now over seconds then (>1: the machine is busier now)."""
    return _cpu_share(measured) / _cpu_share(now)


def load_interval(measured: MachineLoad | None, now: MachineLoad | None) -> tuple[float, float]:
    """Multipliers widening an interval for the load change (1, 1 when unknown or the same)."""
    if measured is None or now is None:
        return 1.0, 1.0
    ratio = load_ratio(measured, now)
    if abs(ratio - 1.0) < SAME_LOAD:
        return 1.0, 1.0
    return min(1.0, ratio), max(1.0, ratio)


def load_note(measured: MachineLoad, now: MachineLoad) -> str:
    """'' when the loads are alike, else what differs and what the plan did about it."""
    low, high = load_interval(measured, now)
    if (low, high) == (1.0, 1.0):
        return ""
    return (
        f"measured at load {measured.load_average:.1f} on {measured.cpu_count} CPU(s), "
        f"planned at load {now.load_average:.1f}: interval widened x{low:.2f}-x{high:.2f}"
    )
