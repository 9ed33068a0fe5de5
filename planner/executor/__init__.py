"""Running a planned sweep: Optuna study, Trainer trials, OOM/divergence/budget handling, results.

``run_sweep`` runs the built-in causal-LM recipe, ``run_function`` a user's training function;
``planner run`` / ``results`` / ``report`` are the CLI over these.
"""

from planner.executor._display import LiveObserver, PlainObserver, SweepObserver
from planner.executor._monitor import Deadline, Reporter, TrialLog, TrialStopped
from planner.executor._report import write_report
from planner.executor._results import (
    SweepResults,
    TrialResult,
    export_best,
    load_results,
    load_sweep_study,
    oom_records,
    sweep_results,
)
from planner.executor._study import delete_study, open_storage, open_study
from planner.executor._sweep import (
    DIVERGENCE_FACTOR,
    SweepRun,
    TrainFunction,
    TrialConfig,
    learned_ratio,
    run_function,
    run_sweep,
)
from planner.executor._workers import WorkerOrder, run_workers, worker_main
from planner.profiler import process_started

__all__ = [
    "DIVERGENCE_FACTOR",
    "Deadline",
    "LiveObserver",
    "PlainObserver",
    "Reporter",
    "SweepObserver",
    "SweepResults",
    "SweepRun",
    "TrainFunction",
    "TrialConfig",
    "TrialLog",
    "TrialResult",
    "TrialStopped",
    "WorkerOrder",
    "delete_study",
    "export_best",
    "learned_ratio",
    "load_results",
    "load_sweep_study",
    "oom_records",
    "open_storage",
    "open_study",
    "process_started",
    "run_function",
    "run_sweep",
    "run_workers",
    "sweep_results",
    "worker_main",
    "write_report",
]
