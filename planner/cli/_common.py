"""Shared CLI plumbing: one-line user errors with exit code 2, JSON output, size lists.

Every user error (:class:`~planner.errors.PlannerError`, pydantic validation) becomes one line on
stderr and exit code 2; nothing here computes an answer.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from planner.errors import ConfigError, PlannerError, from_validation_error
from planner.schema import parse_duration

F = TypeVar("F", bound=Callable[..., Any])


def user_errors_exit_2(command: F) -> F:
    """Turn user errors into ``error: <field>: <problem>. Fix: <fix>`` and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValidationError as exc:
            error: PlannerError = from_validation_error(exc)
        except PlannerError as exc:
            error = exc
        click.echo(f"error: {error}", err=True)
        sys.exit(2)

    return wrapper  # type: ignore[return-value]


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


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
