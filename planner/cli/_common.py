"""Shared CLI plumbing: one-line user errors with exit code 2, JSON output, size lists.

Every user error (:class:`~planner.errors.PlannerError`, pydantic validation) becomes one line on
stderr and exit code 2; nothing here computes an answer.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import select
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import click
from pydantic import ValidationError

from planner.errors import ConfigError, PlannerError, from_validation_error
from planner.schema import parse_duration

if TYPE_CHECKING:
    from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """No garbage collection while a command imports its libraries, then their heap frozen.

    Importing torch, transformers and peft builds about a million long-lived objects; each time
    the heap grows by a quarter a full collection walks all of it again (~1 s of a cold command,
    on this 2-core machine). What exists after the imports lives as long as the process, so it
    is frozen out of later collections (as at exit, see :func:`planner.cli.main`).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def one_line(text: str) -> str:
    """``text`` on one line: a user error is one line on stderr, whatever a library put in it."""
    return " ".join(text.split())


def report_and_exit(error: PlannerError) -> NoReturn:
    """``error: <field>: <problem>. Fix: <fix>`` on stderr, then exit code 2."""
    click.echo(one_line(f"error: {error}"), err=True)
    sys.exit(2)


def user_errors_exit_2(command: F) -> F:
    """Turn user errors into ``error: <field>: <problem>. Fix: <fix>`` and exit code 2.

    An ``OSError`` reaching here is the machine refusing a path the checks could not foresee
    (a disk filling up mid-write, a file removed under us): it is reported the same way. Except
    when the reader of standard output has gone (``planner plan ... --json | head``): nothing is
    wrong to report, so the command ends quietly, as Python's documentation advises for SIGPIPE
    (``signal`` module, "Note on SIGPIPE": standard output pointed at devnull, exit status 1).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _stdout_for_json_only(bool(kwargs.get("as_json"))):
                return command(*args, **kwargs)
        except ValidationError as exc:
            error: PlannerError = from_validation_error(exc)
        except PlannerError as exc:
            error = exc
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())  # type: ignore[union-attr]
            sys.exit(1)
        except OSError as exc:
            where = exc.filename if exc.filename is not None else "system"
            problem = exc.strerror or str(exc)
            error = ConfigError(str(where), problem, "check that path and the disk, then retry")
        report_and_exit(error)

    return wrapper  # type: ignore[return-value]


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it: polled, the writing end of
    such a pipe reports ``POLLERR`` (Linux ``pipe(7)``); False where that cannot be asked."""
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), select.POLLOUT)  # type: ignore[union-attr]
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout
        return False


def _usage_error(exc: click.UsageError) -> ConfigError:
    """A click parsing error (wrong option value, missing argument, unknown command) as a ConfigError."""
    ctx = exc.ctx
    command = ctx.command_path if ctx is not None else "planner"
    fix = f"see `{command} --help`"
    message = exc.format_message()
    if "Did you mean" in message:  # click's own suggestion ("fti" -> "fit") is the fix
        message, suggestion = message.split("Did you mean", 1)
        fix = f"did you mean{suggestion.rstrip('.')} (see `{command} --help`)"
    if isinstance(exc, click.NoSuchOption):
        return ConfigError(exc.option_name, message.strip().rstrip("."), fix)
    if isinstance(exc, click.BadParameter) and exc.param is not None:
        hint = exc.param_hint or (exc.param.get_error_hint(ctx) if ctx is not None else exc.param.name)
        field = str(hint).replace("'", "").replace('"', "")
        if isinstance(exc, click.MissingParameter):
            return ConfigError(field, "missing (required)", fix)
        return ConfigError(field, exc.message.rstrip("."), fix)
    return ConfigError(command, message.strip().rstrip("."), fix)


# ``planner`` alone prints the help (click raises it as a usage error): that stays as it is.
_HELP: tuple[type[Exception], ...] = tuple(
    cls for cls in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if cls is not None
)


class PlannerGroup(click.Group):
    """The ``planner`` group: click's own parsing errors are one line and exit code 2 as well.

    Click prints usage, a hint and the error on three lines; a wrong ``--method`` or a missing
    ``--card`` is a user error like any other, so it gets the same one-line form.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _HELP:
            raise
        except click.UsageError as exc:
            report_and_exit(_usage_error(exc))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _HELP:
            raise
        except click.UsageError as exc:
            report_and_exit(_usage_error(exc))


_json_stream: TextIO | None = None
"""Where :func:`emit_json` writes while a ``--json`` command runs: the real standard output."""


@contextlib.contextmanager
def _stdout_for_json_only(as_json: bool) -> Iterator[None]:
    """With ``--json``, standard output carries the JSON document and nothing else.

    Libraries print there while a command works: accelerate imports DeepSpeed when it is installed
    (``extract_model_from_parallel``, on every ``Trainer()``), and DeepSpeed's logger announces its
    accelerator on stdout. A parser of ``planner ... --json`` must not see that, so while the
    command runs, what is printed goes to stderr; :func:`emit_json` writes to the saved stdout.
    """
    global _json_stream
    if not as_json:
        yield
        return
    _json_stream = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream = None


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str), file=_json_stream)


def parse_sizes(value: str | None, field: str) -> list[int] | None:
    """Parse ``N[,M...]`` into positive ints, or raise a ConfigError naming ``field``."""
    if value is None:
        return None
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            field, f"'{value}' is not a comma-separated list of integers", "e.g. 1,2,4"
        ) from None
    if not sizes or any(size <= 0 for size in sizes):
        raise ConfigError(field, f"sizes must be positive integers, got '{value}'", "e.g. 1,2,4")
    return sizes


def parse_budget(value: str | None) -> float | None:
    """Seconds in a ``--budget`` such as 5h, 90m or 1h30m, or a ConfigError naming the option."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError("--budget", str(exc), "e.g. --budget 5h, 90m or 1h30m") from None


# What matplotlib's savefig writes: the file's suffix chooses the format.
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")


def readable_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, whole: Collection[str], **options: Any
) -> Table:
    """A rich table legible in an 80-column terminal: no value is cut to "...".

    Rich fits a table to the terminal by shrinking columns and ending cut values with an
    ellipsis, which turned learning rates such as ``3.1623e-05`` into ``3.1623e-...``. Here the
    ``whole`` columns (the values a reader compares: trial numbers, searched values, shapes) are
    at least as wide as their widest word (and their header), so a value wraps between words but
    no word is cut; every column folds onto more lines rather than cutting.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(**options)
    for index, header in enumerate(headers):
        if header in whole:
            words = [w for row in rows for w in Text.from_markup(row[index]).plain.split()] + [header]
            table.add_column(header, overflow="fold", min_width=max(len(w) for w in words))
        else:
            table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table
