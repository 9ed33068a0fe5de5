"""vram-planner: what fits on your GPU, how long a fine-tuning sweep takes, and running it in budget.

    import planner

    report = planner.fit(planner.TrainingConfig(model="meta-llama/Llama-3.1-8B", method="qlora"), "rtx-4090")
    sweep = planner.plan("spec.yaml", "rtx-4090", budget_seconds=5 * 3600)
    planner.run("spec.yaml", "local")
    planner.results("spec.yaml")

The subpackages hold the parts: ``schema`` (the shared vocabulary), ``step`` (the Trainer step),
``estimator``, ``profiler``, ``timing``, ``sweep``, ``executor``, and ``cli`` over them.
"""

from planner._api import compare_cards, fit, plan, profile, read_prices, results, run
from planner.errors import PlannerError
from planner.schema import Card, CardComparison, FitReport, MeasuredProfile, Plan, SweepSpec, TrainingConfig

__all__ = [
    "Card",
    "CardComparison",
    "FitReport",
    "MeasuredProfile",
    "Plan",
    "PlannerError",
    "SweepSpec",
    "TrainingConfig",
    "compare_cards",
    "fit",
    "plan",
    "profile",
    "read_prices",
    "results",
    "run",
]
