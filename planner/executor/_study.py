"""The Optuna study behind a sweep: storage, sampler and pruner, the plan's queue, claims and recovery.

Optuna's RDB storage is the distributed engine: every worker (process, GPU, machine) opens the same
study and takes WAITING trials from it. What this module adds on top:

- the plan is enqueued once per study (the worker that *creates* the study does it; creation is
  atomic in every RDB), each trial carrying its planned shape and prediction as user attrs;
- infeasible trials are recorded as the study's ``infeasible`` user attr (params, reason, fix);
- a worker claims one WAITING trial of its choice (the first in plan order that fits the budget)
  with the storage's atomic WAITING -> RUNNING transition; on SQLite a file lock serialises
  claims, as SQLite does not lock the row it reads;
- a trial left RUNNING by a dead worker (its PID gone on this host, or no heartbeat for
  ``STALE_SECONDS`` from another host) is failed and continued by a new trial that resumes from
  its checkpoints, once what is left of its ranks on this host is killed (a trial across GPUs,
  see ``_group``); a trial cut by the budget is continued the same way on the next run. Recovery
  runs under a lock of the study (:func:`study_lock`: the SQLite file's lock, a PostgreSQL
  advisory lock, MySQL's named lock), and a trial counts as continued when a trial with
  ``continues: n`` exists, so each continuation happens exactly once and the storage holds the
  user's study alone: no lock studies or tables of ours (``optuna.get_all_study_names`` lists
  exactly the sweeps).

How trials end, in Optuna's states (what optuna-dashboard and Optuna's samplers read), with the
reason in the trial's ``reason`` user attr and our finer ``status`` beside it:

- cut by the budget (``status: budget``) and never run for the budget (``over budget``):
  ``PRUNED``. The sweep stopped them early by its own rule, as a pruner does; Optuna's state
  says "pruned with TrialPruned" (optuna/trial/_state.py) and is not an error, and what they
  reported before the cut is a real measurement that TPE keeps (it ranks PRUNED trials by their
  last intermediate value: optuna/samplers/_tpe/sampler.py, ``_split_trials``).
- diverged, crashed, interrupted by a dead worker or the machine: ``FAIL``. Optuna itself
  fails a trial whose objective is NaN (optuna/study/_tell.py, ``_check_values_are_feasible``),
  which is what a diverged loss is on its way to; TPE leaves FAIL trials out.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from planner.errors import ConfigError
from planner.executor._group import alive, process_start, reap_group
from planner.executor._monitor import HEARTBEAT_SECONDS
from planner.schema import Plan, PlannedTrial, SweepSpec

STALE_SECONDS = 6 * HEARTBEAT_SECONDS
"""A RUNNING trial of another host with no heartbeat for this long belongs to a dead worker."""
ENQUEUE_WAIT_SECONDS = 120.0
"""How long a worker that did not create the study waits for its creator to enqueue the plan."""
RESUMABLE = ("interrupted", "budget")
"""Statuses of ended trials that recovery continues from their checkpoints."""
ENDED = (TrialState.FAIL, TrialState.PRUNED)


def worker_identity() -> dict[str, Any]:
    """This process as a trial's ``worker`` attr: host, PID, its start time (PIDs get reused), GPUs."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _worker_alive(worker: dict[str, Any], heartbeat: float | None) -> bool:
    if worker.get("host") == socket.gethostname():
        return alive(int(worker.get("pid", -1)), worker.get("started"))
    return heartbeat is not None and time.time() - heartbeat < STALE_SECONDS


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; SQLite waits for its lock instead of failing under several workers.

    Workers started together on an empty database would all create Optuna's tables at once, and
    all but one fail (PostgreSQL: ``UniqueViolation`` on ``pg_type``, ``DuplicateTable``): the
    creation is serialised, by a PostgreSQL advisory lock or the SQLite file's lock (see
    :func:`_schema_lock`).
    """
    engine_kwargs: dict[str, Any] = {}
    given = url
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; use psycopg2 when that is what exists.
        url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    if sqlite_path(url) is not None:
        engine_kwargs["connect_args"] = {"timeout": 120}
    # What RDBStorage imports lazily (~0.5 s) is imported before the lock, not while others wait.
    for module in ("alembic.command", "alembic.migration", "alembic.script", "optuna.storages._rdb.models"):
        importlib.import_module(module)

    try:
        with _schema_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:  # SQLAlchemy raises many kinds; the user's URL is at fault in each
        # The driver's own error (SQLAlchemy wraps it as .orig), first line: errors are one line.
        cause = getattr(exc, "orig", None) or exc
        detail = (str(cause).strip().splitlines() or [""])[0]
        raise ConfigError(
            "storage",
            f"cannot open '{given}' ({type(cause).__name__}: {detail})",
            "give a reachable SQLAlchemy URL, e.g. sqlite:///sweep.db or postgresql://user@host/db",
        ) from None


SCHEMA_LOCK_KEY = 0x706C616E6E6572  # "planner": any constant shared by every worker works
"""The PostgreSQL advisory lock taken while a worker creates or checks Optuna's tables."""
STUDY_LOCK_CLASS = 0x706C6E72  # "plnr": the first half of a study's two-key advisory lock
"""PostgreSQL advisory locks of a study are (this, the study's id): one per study and database."""


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a lock that every worker of this database takes around ``RDBStorage(url)``.

    ``RDBStorage`` runs ``CREATE TABLE`` (and ``CREATE TYPE`` for enums) for whatever is missing,
    which is not safe to run concurrently on PostgreSQL. A session-level advisory lock on a
    connection of its own serialises it (scoped to the database; released when the connection
    closes, even if this process dies). SQLite's file lock does the same for a SQLite file.
    """
    if not url.startswith("postgresql"):
        with claim_lock(url):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with _advisory_lock(engine, SCHEMA_LOCK_KEY):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def _advisory_lock(engine: Any, *key: int) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock on a connection of its own, held while inside.

    Advisory locks live in the server's memory, not in any table (PostgreSQL docs, "Advisory
    Locks"); the server releases one when its connection closes, so a killed worker's lock goes
    with it.
    """
    import sqlalchemy

    arguments = ", ".join(f":k{index}" for index in range(len(key)))
    values = {f"k{index}": value for index, value in enumerate(key)}
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({arguments})"), values)
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({arguments})"), values)
            connection.commit()


@contextlib.contextmanager
def study_lock(study: optuna.Study, storage_url: str) -> Iterator[None]:
    """Serialise one section across every worker of ``study``, leaving nothing in the storage.

    SQLite: the database file's lock file (as claims). PostgreSQL: an advisory lock keyed by the
    study's id, on the storage's own engine. MySQL: its named lock, ``GET_LOCK`` (MySQL manual,
    "Locking Functions": held by the session, released when it ends; tested on MariaDB). Another
    database's recovery is not serialised: two workers starting at the same moment could both
    continue a trial.
    """
    storage = study._storage
    rdb = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if storage_url.startswith("postgresql"):
        assert isinstance(rdb, optuna.storages.RDBStorage)  # every sweep's storage (open_storage)
        with _advisory_lock(rdb.engine, STUDY_LOCK_CLASS, study._study_id):
            yield
    elif storage_url.startswith("mysql"):
        assert isinstance(rdb, optuna.storages.RDBStorage)
        with _mysql_named_lock(rdb.engine, f"vram-planner-study-{study._study_id}"):
            yield
    else:
        with claim_lock(storage_url):
            yield


@contextlib.contextmanager
def _mysql_named_lock(engine: Any, name: str) -> Iterator[None]:
    """MySQL's ``GET_LOCK(name, -1)`` (a negative timeout waits as long as it takes) on a
    connection of its own, released with ``RELEASE_LOCK``."""
    import sqlalchemy

    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, -1)"), {"name": name})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": name})


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///`` URL; None for other databases and in-memory SQLite."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    return None if path in (None, "", ":memory:") else path


@contextlib.contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """Serialise claims on a SQLite file (other databases lock the claimed row themselves)."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sampler_of(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """TPE chooses its own trials; grid and random trials are the plan's, enqueued (sampler unused)."""
    if spec.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def pruner_of(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """Optuna's pruners with their defaults; the resource is the optimizer step of each eval."""
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner()
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _planned_attrs(planned: PlannedTrial, order: int, output_dir: Path) -> dict[str, Any]:
    return {
        "planned": planned.model_dump(mode="json"),
        "order": order,
        "output_dir": str(output_dir.resolve()),
    }


def _create_or_load(
    storage: optuna.storages.RDBStorage, name: str, spec: SweepSpec
) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it (the creator enqueues the plan)."""
    sampler, pruner = sampler_of(spec), pruner_of(spec)
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=spec.objective.direction,
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), False


def open_study(spec: SweepSpec, plan: Plan, storage_url: str, name: str) -> optuna.Study:
    """Create or join the sweep's study; the plan's runnable trials are enqueued exactly once.

    Grid and random strategies enqueue the plan's feasible trials in its order (random's plan
    sampled them with the spec's seed already); TPE enqueues nothing and asks its sampler.
    """
    storage = open_storage(storage_url)
    study, created = _create_or_load(storage, name, spec)
    if not created:
        waited = 0.0
        while "enqueued" not in study.user_attrs and waited < ENQUEUE_WAIT_SECONDS:
            time.sleep(0.05)  # one small read each: workers started together start claiming together
            waited += 0.05
        if "enqueued" in study.user_attrs:
            return study
        # The creator died before finishing: enqueue what is missing (idempotent by params).
    if spec.strategy != "tpe":
        order = 0
        for planned in plan.trials:
            if planned.feasible:
                output_dir = spec.output_dir / f"trial-{planned.number:03d}"
                study.enqueue_trial(
                    planned.params, user_attrs=_planned_attrs(planned, order, output_dir), skip_if_exists=True
                )
                order += 1
    study.set_user_attr(
        "infeasible",
        [
            {"number": t.number, "params": t.params, "reason": t.reason, "fix": t.fix}
            for t in plan.trials
            if not t.feasible
        ],
    )
    study.set_user_attr(
        "plan",
        {
            "card": plan.card,
            "total_seconds": plan.total_seconds,
            "makespan_seconds": plan.makespan_seconds,
            "budget_seconds": plan.budget_seconds,
            "objective": spec.objective.metric,
        },
    )
    study.set_user_attr("enqueued", True)
    return study


def recover(study: optuna.Study, storage_url: str) -> list[FrozenTrial]:
    """Fail trials of dead workers, then continue every interrupted or budget-cut trial once.

    Both happen under :func:`study_lock`; a trial whose number some trial's ``continues`` attr
    holds has been continued already (by this or another worker, in this run or an earlier one).

    Returns the trials it continued (as they ended: interrupted or cut by the budget).
    """
    storage = study._storage
    continued = []
    with study_lock(study, storage_url):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker")
            if worker is None or _worker_alive(worker, trial.user_attrs.get("heartbeat")):
                continue
            if worker.get("host") == socket.gethostname() and "output_dir" in trial.user_attrs:
                # A trial across GPUs: its ranks outlive their worker; none may train beside the
                # continuation (another host's are out of reach: they stop at their next step,
                # finding their worker gone).
                reap_group(Path(trial.user_attrs["output_dir"]))
            # Marked first: a finished trial's attrs can no longer change.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial._trial_id, "status", "interrupted")
                storage.set_trial_user_attr(
                    trial._trial_id, "reason", f"its worker (pid {worker.get('pid')}) died"
                )
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trials = study.get_trials(deepcopy=False)
        done = {t.user_attrs["continues"] for t in trials if "continues" in t.user_attrs}
        for trial in trials:
            attrs = trial.user_attrs
            resumable = trial.state in ENDED and attrs.get("status") in RESUMABLE
            if not resumable or "planned" not in attrs or trial.number in done:
                continue
            params = trial.system_attrs.get("fixed_params", trial.params)
            keep: dict[str, Any] = {k: attrs[k] for k in ("planned", "order", "output_dir") if k in attrs}
            result = attrs.get("result", {})
            if "micro_batch" in result:  # continue with the shape an OOM left it at
                keep.update(
                    micro_batch=result["micro_batch"], gradient_accumulation=result["gradient_accumulation"]
                )
            study.enqueue_trial(params, user_attrs={**keep, "continues": trial.number})
            continued.append(trial)
    return continued


def waiting(study: optuna.Study) -> list[FrozenTrial]:
    """WAITING trials in the order to run them: plan order, continuations where their trial was."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return sorted(trials, key=lambda t: (t.user_attrs.get("order", 1 << 30), t.number))


def claim(study: optuna.Study, frozen: FrozenTrial, storage_url: str) -> optuna.Trial | None:
    """Take ``frozen`` for this worker (WAITING -> RUNNING), or None if another worker got it first.

    Another worker may have taken it since ``frozen`` was read (the storage says so: False), or
    taken and already finished it (the storage raises ``UpdateFinishedTrialError``, as Optuna's
    own ``Study._pop_waiting_trial_id`` expects); either way the caller tries the next one.
    """
    with claim_lock(storage_url):
        try:
            if not study._storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):
                return None
        except optuna.exceptions.UpdateFinishedTrialError:
            return None
    trial = optuna.Trial(study, frozen._trial_id)
    trial.set_user_attr("worker", worker_identity())
    trial.set_user_attr("heartbeat", time.time())
    return trial


def delete_study(storage_url: str, name: str) -> None:
    """Delete a study (tests and a fresh re-run of a sweep); it is all a sweep keeps in the storage."""
    with contextlib.suppress(KeyError):  # none by that name: nothing to delete
        optuna.delete_study(study_name=name, storage=open_storage(storage_url))
