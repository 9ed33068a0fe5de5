"""This machine's host-side speeds: what a trial spends outside the model's forward and backward.

Measured once per machine (and library versions) with the code a trial runs, on stand-ins small
enough that their own compute is negligible, and cached as JSON beside the measured profiles
(``<profiles>/host/<machine>.json``). Each measurement records the machine's load: a figure taken
on a busy shared machine is slower than on a quiet one, and the plan says so when the loads differ.

The cheap part (torch dispatch, memory and init throughput, disk and storage, the collator: well
under a second) is always measured; the Trainer part (set-up, per-step bookkeeping, evaluation,
checkpoint saves: a few seconds, most of it importing ``transformers.Trainer``) only when asked,
i.e. when planning on the host card, where those costs are a large share of a step.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import itertools
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from planner.errors import ProfileError
from planner.profiler._runner import percentile
from planner.profiler._store import library_versions, measured_dir
from planner.schema import HostProfile, MachineLoad

logger = logging.getLogger(__name__)

# Sizes of the stand-ins: large enough to time above the clock's and the scheduler's noise on a
# shared machine, small enough that the whole cheap part stays well under a second.
_DISPATCH_OPS = 200
_BLOCK_ELEMENTS = 4 * 1024 * 1024  # 16 MiB of fp32
_FILE_BYTES = 16 * 1024 * 1024
_REPEATS = 5
# The timed Trainer run: optimizer steps, evaluation and save cadence, eval batches per pass.
_STEPS = 24
_EVERY = 6
_EVAL_BATCHES = 8
# Trials of the timed Optuna study (its per-trial commits).
_STUDY_TRIALS = 4


# What `planner run` imports after planning, before its first trial: Trainer (``run_sweep``) and
# the study's storage (``open_storage``: Optuna's RDB models and alembic).
RUN_IMPORTS = (
    "transformers.trainer",
    "optuna.storages",
    "alembic.command",
    "alembic.migration",
    "alembic.script",
    "optuna.storages._rdb.models",
)


def import_run_modules() -> float:
    """Import what a run imports after planning (``RUN_IMPORTS``); returns the seconds it took.

    A plan calls it after planning, so its start-up counts these imports where the run pays them:
    after counting and planning imported their share (tokenizers, the model classes, peft), only
    the rest (~0.1 s for ``transformers.trainer`` on a 2-core VM, ~1.7 s in a fresh process).
    """
    start = time.perf_counter()
    for module in RUN_IMPORTS:
        importlib.import_module(module)
    return time.perf_counter() - start


# What a trial across ranks starts before its first step: ``torchrun`` (its launcher, importing
# torch.distributed), then its ranks side by side, each a fresh interpreter running the executor's
# rank entry and the Trainer recipe (planner.executor's group launch).
_LAUNCHER_IMPORTS = "import torch.distributed.run"
_RANK_IMPORTS = "import planner.executor, transformers.trainer, datasets, peft"


@functools.cache
def rank_launch_seconds() -> float:
    """Seconds a multi-process trial spends starting: the launcher's fresh interpreter, then its ranks'.

    Measured here, once per process and only for plans with trials across ranks (two interpreters
    started in turn, a few seconds): unlike Trainer's import in a running worker (``RUN_IMPORTS``,
    paid once), every launch of a rank group pays the full imports again, in new processes. The
    ranks start in parallel, so one rank's start stands for all of them.
    """
    import subprocess
    import sys

    total = 0.0
    for code in (_LAUNCHER_IMPORTS, _RANK_IMPORTS):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            # A rank could not start either: say so now, not after the plan.
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProfileError(
                "base.parallelism",
                f"a rank's fresh interpreter cannot `{code}` ({last})",
                "install what is missing in this environment (pip install -e .)",
            )
        total += time.perf_counter() - start
    logger.info("a rank group's launch measured at %.1f s", total)
    return total


def machine_load() -> MachineLoad:
    """The CPUs this process may use and the 1-minute load average now."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return MachineLoad(cpu_count=cpus, load_average=round(load, 2))


def process_started() -> float | None:
    """When this process started, as a ``time.time()``; None where Linux's ``/proc`` cannot tell.

    A budget is the wall time the user measures: the interpreter's start, imports and planning
    count as much as the trials do.
    """
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime: clock ticks after boot (field 22 of proc(5))
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - age


def _best(action: Callable[[], object], repeats: int = _REPEATS) -> float:
    """Fastest of ``repeats`` runs: the machine's speed, with other processes' interference least."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return max(min(times), 1e-9)


def _dispatch_seconds() -> float:
    one = torch.zeros(1)

    def ops() -> None:
        for _ in range(_DISPATCH_OPS):
            torch.add(one, one)

    return _best(ops) / _DISPATCH_OPS


def _memory_and_init_speeds() -> tuple[float, float]:
    """(copy bytes moved per second, read + write; fp32 ``normal_`` bytes per second)."""
    source = torch.ones(_BLOCK_ELEMENTS)
    target = torch.empty(_BLOCK_ELEMENTS)
    size = source.numel() * source.element_size()
    copy = _best(lambda: target.copy_(source))
    init = _best(lambda: target.normal_())
    return 2 * size / copy, size / init


def _disk_speeds(directory: Path) -> tuple[float, float]:
    """(write + fsync bytes per second, read bytes per second after dropping the page cache)."""
    block = bytes(range(256)) * (_FILE_BYTES // 256)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".speed-", delete=False) as handle:
        path = Path(handle.name)
    try:
        start = time.perf_counter()
        with path.open("wb") as out:
            out.write(block)
            out.flush()
            os.fsync(out.fileno())
        write = len(block) / max(time.perf_counter() - start, 1e-9)
        with path.open("rb") as file:
            if hasattr(os, "posix_fadvise"):
                # Written and synced pages are clean: the kernel may drop them, so the read that
                # follows comes from the device, as loading weights on a fresh machine would.
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            while file.read(1 << 20):
                pass
            read = len(block) / max(time.perf_counter() - start, 1e-9)
    finally:
        path.unlink(missing_ok=True)
    return write, read


def _stand_in_tokenizer() -> Any:
    """A word-level fast tokenizer built in memory: ``pad`` runs the same code as any other's."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "a": 3}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def _collate_costs() -> tuple[float, float, float]:
    """(fixed, per row, per padded token) seconds of the executor's collator for one micro-batch.

    Three batches: 1 row and 8 rows of 16 tokens, 8 rows padded to 256 (rows of mixed lengths, as
    dynamic padding sees them); the line through them is the collator's cost at any shape.
    """
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(_stand_in_tokenizer(), mlm=False)

    def batch(rows: int, longest: int) -> list[dict[str, list[int]]]:
        return [{"input_ids": [3] * max(1, longest - (i * longest) // (2 * rows))} for i in range(rows)]

    shapes = [(1, 16), (8, 16), (8, 256)]
    batches = [batch(rows, longest) for rows, longest in shapes]
    seconds = [_best(functools.partial(collator, b)) for b in batches]
    per_token = max(0.0, (seconds[2] - seconds[1]) / (8 * (256 - 16)))
    per_row = max(0.0, (seconds[1] - seconds[0] - per_token * 7 * 16) / 7)
    fixed = max(0.0, seconds[0] - per_row - per_token * 16)
    return fixed, per_row, per_token


class _OneTensorModel(torch.nn.Module):
    """A model whose forward is two ops: what is left of a Trainer step is Trainer's own work."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4))

    def forward(self, input_ids: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        return {"loss": (self.weight.sum() + input_ids.float().mean()) ** 2}


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The garbage collector as a sweep's trials see it: what exists now frozen, out of its scans.

    ``planner.executor.run_sweep`` freezes the heap (torch's and transformers' modules, about a
    million objects) before its first trial, so the collections in a trial's path (accelerate's
    ``free_memory`` at the start of ``train()``, the executor's own after each trial) scan only
    what the trial made. Unfrozen, each would rescan the whole heap (~0.3-0.8 s on a 2-core VM):
    a cost no trial pays. A heap frozen already (a plan made inside a running sweep) stays so.
    """
    frozen_before = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def _trainer_costs(scratch: Path) -> dict[str, float | None]:
    """Trainer's set-up, per-step, per-micro-step, per-save and eval costs, from one timed real run.

    The run uses the executor's arguments (loss logged every step, no progress printing, one
    checkpoint kept) on a one-tensor model with pre-tokenised 4-token rows, with accumulation,
    evaluation and saves, so its wall-clock is Trainer's own. A callback stamps the time at each
    hook; medians of the intervals between hooks give each cost (robust to a busy machine's spikes).
    Trainer calls, per optimizer step: ``on_step_begin``, ``on_substep_end`` after each micro-batch
    but the last, ``on_step_end`` after the optimizer step, then logging, ``on_evaluate`` after an
    evaluation (``on_prediction_step`` per eval batch) and ``on_save`` after a checkpoint.
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    rows = [{"input_ids": [3, 3, 3, 1]}] * 256
    stamps: list[tuple[str, int, float]] = []

    class Stamps(TrainerCallback):
        def __getattribute__(self, name: str) -> Any:
            if name.startswith("on_"):
                return lambda _args, state, *_rest, **_kw: stamps.append(
                    (name, state.global_step, time.perf_counter())
                )
            return super().__getattribute__(name)

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([row["input_ids"] for row in batch])}

    def run(name: str, steps: int, **arguments: Any) -> tuple[float, float, float]:
        """(seconds of the constructor, of ``train()``, from its start to its first step's begin)."""
        stamps.clear()
        start = time.perf_counter()
        args = TrainingArguments(
            output_dir=str(scratch / name),
            per_device_train_batch_size=1,
            per_device_eval_batch_size=1,
            max_steps=steps,
            logging_steps=1,
            logging_nan_inf_filter=False,
            disable_tqdm=True,
            report_to="none",
            remove_unused_columns=False,
            use_cpu=True,
            save_total_limit=1,
            **arguments,
        )
        trainer = Trainer(
            model=_OneTensorModel(),
            args=args,
            train_dataset=rows,
            eval_dataset=rows[:_EVAL_BATCHES],
            data_collator=collate,
            callbacks=[Stamps()],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        built = time.perf_counter()
        trainer.train()
        end = time.perf_counter()
        first = next(t for hook, _, t in stamps if hook == "on_step_begin")
        last = [t for hook, _, t in stamps if hook == "on_step_end"][-1]
        return built - start, end - built, (first - built) + (end - last)

    with _frozen_heap():
        run("warm-up", 1)  # first-call costs (lazy imports, accelerate's state) are once per process
        constructor, _, around = run(
            "measured",
            _STEPS,
            gradient_accumulation_steps=2,
            eval_strategy="steps",
            eval_steps=_EVERY,
            save_strategy="steps",
            save_steps=_EVERY,
        )

    def intervals(first: str, second: str, *, skip_special: bool = True) -> list[float]:
        """Seconds from each ``first`` hook to the next ``second`` one at the same step."""
        found = []
        for index, (hook, step, at) in enumerate(stamps):
            if hook != first or step <= 1 or (skip_special and step % _EVERY == 0):
                continue
            after = next(((h, s, t) for h, s, t in stamps[index + 1 :] if h == second), None)
            if after is not None:
                found.append(after[2] - at)
        return found

    begins = [(s, t) for h, s, t in stamps if h == "on_step_begin"]
    ends = {s: t for h, s, t in stamps if h == "on_step_end"}
    # Step n's interval: from its begin to the next begin, when it neither evaluated nor saved.
    ordinary = [
        after - at
        for (step, at), (_, after) in itertools.pairwise(begins)
        if step >= 1 and (step + 1) % _EVERY
    ]
    first_micro = statistics.median(intervals("on_step_begin", "on_substep_end"))
    middle = statistics.median(ordinary)
    step = max(0.0, middle - 2 * first_micro)
    evaluations = [t for h, _, t in stamps if h == "on_evaluate"]
    saves = [t for h, _, t in stamps if h == "on_save"]
    eval_seconds = statistics.median(e - ends[s] for (h, s, e) in stamps if h == "on_evaluate" and s in ends)
    predictions = [t for h, _, t in stamps if h == "on_prediction_step"]
    gaps = [b - a for a, b in itertools.pairwise(predictions) if 0 < b - a < eval_seconds]
    eval_batch = statistics.median(gaps) if gaps else 0.0
    return {
        "trainer_setup_seconds": constructor + around,
        "trainer_step_seconds": step,
        "trainer_micro_step_seconds": first_micro,
        "save_fixed_seconds": statistics.median(s - e for e, s in zip(evaluations, saves, strict=False)),
        "eval_fixed_seconds": max(0.0, eval_seconds - _EVAL_BATCHES * eval_batch),
        "eval_batch_seconds": eval_batch,
        # How much the same Trainer step took from one repeat to the next while measured (p10 and
        # p90 over the median of the ordinary steps): this host's noise on host-side work.
        "repeat_spread_low": percentile(ordinary, 0.1) / middle,
        "repeat_spread_high": percentile(ordinary, 0.9) / middle,
    }


def _storage_costs(scratch: Path) -> tuple[float, float]:
    """(opening, per trial) seconds of a sweep's Optuna study in SQLite, as ``planner run`` keeps it.

    Opening: the executor's ``open_storage`` (Optuna's tables created in a new file) and the study
    created. Per trial, the commits the executor makes (``planner.executor``'s ``open_study``,
    ``claim`` and its trial loop): enqueued with its planned attrs, claimed (state, worker,
    heartbeat), started (status, predicted seconds), its objective reported once, then recorded
    (result, status, reason) and told, each a transaction (on SQLite, a sync to disk) outside the
    trial's own clock. Medians over ``_STUDY_TRIALS`` trials.
    """
    import optuna
    from optuna.trial import TrialState

    from planner.executor import open_storage

    url = f"sqlite:///{scratch / 'study.db'}"
    start = time.perf_counter()
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="host-speeds")
    opening = time.perf_counter() - start
    # A planned trial's attrs are a few kB of JSON (its config, hyperparameters, time parts).
    planned = {"planned": {"config": "x" * 2000}, "order": 0, "output_dir": str(scratch)}
    # Claimed (worker, heartbeat), started (status, predicted seconds); recorded when it ends.
    started: list[tuple[str, Any]] = [
        ("worker", {"host": "h"}),
        ("heartbeat", 0.0),
        ("status", "running"),
        ("predicted_seconds", 1.0),
    ]
    recorded: list[tuple[str, Any]] = [("result", {"seconds": 1.0}), ("status", "complete"), ("reason", None)]
    per_trial = []
    for number in range(_STUDY_TRIALS):
        start = time.perf_counter()
        study.enqueue_trial({"learning_rate": 1e-3 * (number + 1)}, user_attrs=planned)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
        storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING)
        trial = optuna.Trial(study, waiting._trial_id)
        for name, value in started:
            trial.set_user_attr(name, value)
        trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        trial.report(1.0, 1)
        for name, value in recorded:
            trial.set_user_attr(name, value)
        study.tell(trial, 1.0, state=TrialState.COMPLETE)
        per_trial.append(time.perf_counter() - start)
    return opening, statistics.median(per_trial)


def _existing(directory: Path) -> Path:
    """``directory`` or its nearest existing ancestor: measuring creates no directory of its own."""
    directory = directory.absolute()
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    return directory


def measure_host(directory: Path, *, with_trainer: bool) -> HostProfile:
    """Measure this machine's host-side speeds (see :class:`HostProfile`); writes only scratch files,
    in ``directory`` (or its nearest existing ancestor: the same disk, most likely), removed after."""
    start = time.perf_counter()
    directory = _existing(directory)
    load = machine_load()
    memory, init = _memory_and_init_speeds()
    write, read = _disk_speeds(directory)
    trainer: dict[str, float | None] = {}
    imports = 0.0
    if with_trainer:
        # Imports a run makes anyway: not a cost of measuring (the plan's start-up counts them).
        imports = import_run_modules()
        names = ("collate_fixed_seconds", "collate_row_seconds", "collate_token_seconds")
        trainer.update(zip(names, _collate_costs(), strict=True))
        with tempfile.TemporaryDirectory(dir=directory, prefix=".trainer-") as scratch:
            trainer.update(_trainer_costs(Path(scratch)))
            opening, per_trial = _storage_costs(Path(scratch))
            trainer.update(study_open_seconds=opening, study_trial_seconds=per_trial)
    profile = HostProfile(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=library_versions(),
        machine_load=load,
        dispatch_seconds=_dispatch_seconds(),
        memory_bytes_per_second=memory,
        init_bytes_per_second=init,
        disk_write_bytes_per_second=write,
        storage_read_bytes_per_second=read,
        seconds=time.perf_counter() - start - imports,
        **trainer,
    )
    logger.info("measured this host's speeds in %.1f s (load %.2f)", profile.seconds, load.load_average)
    return profile


def host_profile_path(directory: Path | None = None) -> Path:
    machine = platform.node() or "host"
    return (directory if directory is not None else measured_dir()) / "host" / f"{machine}.json"


def cached_host_profile(directory: Path | None = None, *, with_trainer: bool = True) -> HostProfile | None:
    """The cached :class:`HostProfile` of this machine when it holds (same library versions and CPU
    count, Trainer part present if asked), else None; reads only."""
    from planner._files import read_model

    path = host_profile_path(directory)
    if not path.is_file():
        return None
    try:
        cached = read_model(
            path, HostProfile, field="host profile", expect="a host profile", error=ProfileError
        )
    except ProfileError:
        return None  # half-written or from another version: measure again
    if (
        cached.versions == library_versions()
        and cached.machine_load.cpu_count == machine_load().cpu_count
        and (cached.has_trainer or not with_trainer)
    ):
        return cached
    return None


def host_profile(directory: Path | None = None, *, with_trainer: bool = True) -> HostProfile:
    """This machine's :class:`HostProfile`: the cached one when it holds, else measured now and cached."""
    cached = cached_host_profile(directory, with_trainer=with_trainer)
    if cached is not None:
        return cached
    path = host_profile_path(directory)
    profile = measure_host(path.parent, with_trainer=with_trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.model_dump_json(indent=2))
    return profile
