"""Sweeps: reading a spec, expanding its search space, and planning it on a card."""

from planner.sweep._budget import ORDER_RULE, halving_schedule, schedule
from planner.sweep._load import check_model_limits, load_spec
from planner.sweep._plan import import_what_plans, largest_divisor_at_most, plan_sweep
from planner.sweep._profiles import MeasuringProfiles, plan_for_card, plan_sampled
from planner.sweep._space import expand_trials, search_distributions

__all__ = [
    "ORDER_RULE",
    "MeasuringProfiles",
    "check_model_limits",
    "expand_trials",
    "halving_schedule",
    "import_what_plans",
    "largest_divisor_at_most",
    "load_spec",
    "plan_for_card",
    "plan_sampled",
    "plan_sweep",
    "schedule",
    "search_distributions",
]
