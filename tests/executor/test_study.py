"""The study under several workers: schema creation on an empty database, claims that lose a race,
recovery messages, reading results of a sweep that never ran, and what the storage shows Optuna."""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from planner.errors import ConfigError
from planner.executor import load_results, open_storage, open_study, run_function, run_sweep
from planner.executor._study import claim, waiting
from planner.sweep import load_spec
from tests.executor.conftest import Notes, hand_plan, write_spec

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
FORK = multiprocessing.get_context("fork")


@contextlib.contextmanager
def empty_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database of its own (other tests and agents share ``test``)."""
    import psycopg2

    name = f"planner_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(POSTGRES_ADMIN)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        gc.collect()  # this process's pooled connections to it, before dropping it
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_workers_starting_together_on_an_empty_database_all_open_it(
    tmp_path: Path, tiny_model_dir: Path, backend: str
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_model_dir, search={"learning_rate": [1e-3, 2e-3, 3e-3]}))
    plan = hand_plan(spec)
    go = FORK.Event()

    def worker(url: str) -> None:
        go.wait()  # all four create the schema at the same instant
        open_study(spec, plan, url, "race")

    with contextlib.ExitStack() as stack:
        databases = {"postgresql": empty_postgres_database, "mysql": empty_mysql_database}
        url = spec.storage_url if backend == "sqlite" else stack.enter_context(databases[backend]())
        gc.collect()  # no connection of this process is shared with the children
        workers = [FORK.Process(target=worker, args=(url,), daemon=True) for _ in range(4)]
        for process in workers:
            process.start()
        go.set()
        for process in workers:
            process.join(120)
        assert [p.exitcode for p in workers] == [0, 0, 0, 0]
        storage = open_storage(url)
        trials = optuna.load_study(study_name="race", storage=storage).get_trials(deepcopy=False)
        assert sorted(t.system_attrs["fixed_params"]["learning_rate"] for t in trials) == [1e-3, 2e-3, 3e-3]
        storage.engine.dispose()  # before the database is dropped


def test_a_claim_that_loses_the_race_to_a_finished_trial_moves_on(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_model_dir, search={"learning_rate": [1e-3, 2e-3]}))
    study = open_study(spec, hand_plan(spec), spec.storage_url, spec.name)
    first, second = waiting(study)
    # Between this worker's read of the queue and its claim, another worker took the first trial
    # and finished it already: the claim must not crash this worker.
    study._storage.set_trial_state_values(first._trial_id, TrialState.RUNNING)
    study._storage.set_trial_state_values(first._trial_id, TrialState.COMPLETE, [1.0])
    assert claim(study, first, spec.storage_url) is None
    taken = claim(study, second, spec.storage_url)
    assert taken is not None and taken.number == second.number


@pytest.mark.parametrize("command", ["results", "report"])
def test_results_of_a_sweep_that_never_ran_create_no_database(
    tmp_path: Path, tiny_model_dir: Path, command: str
) -> None:
    from click.testing import CliRunner

    from planner.cli import cli

    spec_path = write_spec(tmp_path, tiny_model_dir)
    database = Path(load_spec(spec_path).storage_url.removeprefix("sqlite:///"))
    arguments = [command, str(spec_path)] + (
        ["--out", str(tmp_path / "plots")] if command == "report" else []
    )
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "planner run" in result.stderr
    assert not database.exists()
    with pytest.raises(ConfigError):
        load_results(f"sqlite:///{database}", "tiny")
    assert not database.exists()


def test_an_interrupted_trial_without_a_checkpoint_is_said_to_run_again_from_step_0(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_model_dir, train=8, search={"learning_rate": [1e-3]}))
    plan = hand_plan(spec)
    study = open_study(spec, plan, spec.storage_url, spec.name)
    (frozen,) = waiting(study)
    trial = claim(study, frozen, spec.storage_url)
    assert trial is not None
    gone = subprocess.Popen(["true"])
    gone.wait()  # a worker of this host that died before its trial saved any checkpoint
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": gone.pid, "started": None})

    observer = Notes()
    (continued,) = run_sweep(spec, plan, observer=observer).trials
    assert observer.notes[0] == (
        "trial 0 was interrupted before its first complete checkpoint: running it again from step 0"
    )
    assert continued.continues == 0 and continued.resumed_from_step == 0 and continued.status == "complete"


@contextlib.contextmanager
def empty_mysql_database() -> Iterator[str]:
    """A new, empty MySQL (this machine's MariaDB, root without a password) database of its own."""
    import pymysql

    name = f"planner_{uuid.uuid4().hex[:12]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        gc.collect()
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_the_storage_holds_exactly_the_users_study_with_each_trials_state_and_reason(
    tmp_path: Path, tiny_model_dir: Path, backend: str
) -> None:
    """Acceptance 14 d: a sweep with a divergence and a budget cut, then a resume, as Optuna reads it."""
    spec = load_spec(
        write_spec(tmp_path, tiny_model_dir, train=8, search={"learning_rate": [1e-3, 2e-3, 3e-3]})
    )

    def train(trial: Any, reporter: Any) -> float:
        lr = trial.hyper.learning_rate
        for step in range(1, 10_000):
            loss = math.nan if lr == 1e-3 and step == 2 else 1.0  # 1e-3 diverges at step 2
            reporter.report(step, {"loss": loss, "eval_loss": lr})
            if (lr == 2e-3 and step == 3) or (lr == 3e-3 and trial.resume):
                return lr  # 2e-3 completes; 3e-3 completes once continued, else runs into the budget
            time.sleep(0.01)
        raise AssertionError("unreachable: the budget stops it")

    with contextlib.ExitStack() as stack:
        url = spec.storage_url if backend == "sqlite" else stack.enter_context(empty_postgres_database())
        first = run_function(spec, train, hand_plan(spec, seconds=0.1), storage_url=url, budget_seconds=3.0)
        assert [t.status for t in first.trials] == ["diverged", "complete", "budget"]
        resumed = run_function(spec, train, hand_plan(spec, seconds=0.1), storage_url=url)
        assert [(t.status, t.continues) for t in resumed.trials] == [("complete", 2)]

        storage = open_storage(url)
        assert optuna.get_all_study_names(storage) == [spec.name]  # no lock studies of ours
        trials = optuna.load_study(study_name=spec.name, storage=storage).get_trials()
        seen = [(t.state, t.user_attrs["status"], t.params["learning_rate"]) for t in trials]
        assert seen == [
            (TrialState.FAIL, "diverged", 1e-3),
            (TrialState.COMPLETE, "complete", 2e-3),
            (TrialState.PRUNED, "budget", 3e-3),
            (TrialState.COMPLETE, "complete", 3e-3),
        ]
        reasons = [t.user_attrs["reason"] for t in trials]
        assert "loss became nan at step 2" in reasons[0] and "budget" in reasons[2]
        assert reasons[1] is None and reasons[3] is None
        assert trials[3].user_attrs["continues"] == 2
        storage.engine.dispose()  # before the database is dropped
