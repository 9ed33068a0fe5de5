"""The ``planner`` command: a thin click layer that parses, calls the library, and formats."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import warnings
from typing import NoReturn

import click

from planner.cli._catalog import cards_command, models_command
from planner.cli._common import PlannerGroup
from planner.cli._fit import fit_command
from planner.cli._plan import plan_command
from planner.cli._profile import profile_command
from planner.cli._run import report_command, results_command, run_command


@click.group(cls=PlannerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vram-planner")
@click.option("-v", "--verbose", count=True, help="Log what the planner does (-v) and why (-vv), on stderr.")
def cli(verbose: int) -> None:
    """vram-planner: what fits on your GPU, how long a sweep takes, and running it inside a budget.

    \b
    Examples:
      planner fit Qwen/Qwen2.5-7B --method qlora --card rtx-4090
      planner plan spec.yaml --card rtx-4090 --budget 5h
      planner run spec.yaml --budget 5h
      planner results spec.yaml --export best.yaml

    `planner COMMAND --help` shows each command's options and examples.
    """
    configure_logging(verbose)


def configure_logging(verbose: int) -> None:
    """The application's logging: the library's records through a rich handler on stderr, warnings
    and above by default; the libraries we drive quietened to what concerns the user.

    Only the CLI does this: the library never changes a log level or adds a handler.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("planner")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Library chatter that says nothing about the user's input (transformers' deprecation notices
    # raised by peft's calls, save progress bars, bitsandbytes' optional CPU kernel, Optuna's
    # per-trial lines, which our display shows in its own words): keep stderr for our one-liners.
    # transformers and huggingface_hub read these variables when first imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    quiet = logging.ERROR if verbose < 2 else logging.INFO
    for name in ("bitsandbytes", "transformers"):
        logging.getLogger(name).setLevel(quiet)
    if click.get_current_context().invoked_subcommand in OPTUNA_COMMANDS:
        # Importing Optuna sets its own logger to INFO: import it first, then set its level.
        import optuna

        optuna.logging.set_verbosity(quiet)


OPTUNA_COMMANDS = ("run", "results", "report")
"""The commands that drive Optuna (studies). A plan's random draws quiet Optuna themselves
(:func:`planner.sweep.expand_trials`), and a grid's plan does without it."""


cli.add_command(fit_command)
cli.add_command(plan_command)
cli.add_command(cards_command)
cli.add_command(models_command)
cli.add_command(profile_command)
cli.add_command(run_command)
cli.add_command(results_command)
cli.add_command(report_command)


def main() -> NoReturn:
    """Console-script entry point: the command, then :func:`leave` with its exit status."""
    try:
        cli()
    except SystemExit as done:  # how click ends every command, and report_and_exit an error
        leave(done.code)
    leave(0)


def leave(code: int | str | None) -> NoReturn:
    """Exit as ``sys.exit(code)`` would, without the interpreter's module-by-module teardown.

    With torch and Trainer imported, finalisation (clearing thousands of modules' namespaces and
    freeing what they held, after a last garbage collection over the whole heap) takes ~0.25 s on
    the 2-core VM when quiet and several times that under load: time after the answer, and in
    ``planner run`` time after the last trial that its budget cannot see coming (a budget test
    ran 0.9 s over, most of it this). What exit must do is done first: the exit handlers (CPython's
    ``atexit._run_exitfuncs``, which finalisation itself runs first: logging's flush,
    multiprocessing's and torch's compile workers' shutdown, weakref finalizers such as temporary
    directories' removal), then the standard streams are flushed; memory and open files go back to
    the OS with the process, and the study's storage is committed already (durable, as after a kill).
    """
    if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
    os._exit(0 if code is None else code)
