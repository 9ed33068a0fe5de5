"""The ``planner`` command: a thin click layer that parses, calls the library, and formats."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import warnings

import click

from planner.cli._catalog import cards_command, models_command
from planner.cli._common import PlannerGroup
from planner.cli._fit import fit_command
from planner.cli._plan import plan_command
from planner.cli._profile import profile_command
from planner.cli._run import report_command, results_command, run_command


@click.group(cls=PlannerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vram-planner")
def cli() -> None:
    """vram-planner: what fits on your GPU, how long a sweep takes, and running it inside a budget."""
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep stderr for our one-liners: no library chatter that says nothing about the user's input.

    Transformers' deprecation notices raised by peft's calls, bitsandbytes' optional CPU kernel.
    Set for every command (also when the group is invoked in-process, as the tests do).
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


cli.add_command(fit_command)
cli.add_command(plan_command)
cli.add_command(cards_command)
cli.add_command(models_command)
cli.add_command(profile_command)
cli.add_command(run_command)
cli.add_command(results_command)
cli.add_command(report_command)


def main() -> None:
    """Console-script entry point."""
    # Interpreter shutdown collects garbage over the whole heap of torch and transformers (~0.6 s
    # of a cold command); frozen at exit, that heap goes back to the OS with the process.
    atexit.register(gc.freeze)
    cli()
