"""The exception tree: every error a user can cause names the field at fault and a fix.

The CLI turns any :class:`PlannerError` into one line on stderr and exit code 2; library
callers catch the subclasses they care about.
"""

from __future__ import annotations


class PlannerError(Exception):
    """Base of every error caused by the user's input (bad config, unknown name, missing file)."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")


class ConfigError(PlannerError):
    """A value is malformed, out of range, or inconsistent with another value."""


class UnknownCardError(PlannerError):
    """A card name matches nothing in ``profiles/cards`` (nor the local GPU)."""


class UnknownModelError(PlannerError):
    """A model reference is neither a shipped profile, a local directory, nor reachable on the hub."""


class DeviceError(PlannerError):
    """The requested device is not available on this machine (e.g. ``--device cuda`` without CUDA)."""


class ProfileError(PlannerError):
    """A measured profile is missing, unreadable, or was taken on another card/config."""


class InfrastructureError(PlannerError):
    """The machine failed the run, not a trial: its output directory or storage could not be written.

    A read-only or full disk, a permission lost, the database gone. ``planner run`` stops (every
    later trial would fail the same way, in no time) with the running trial resumable; the user
    fixes the machine and runs again, which is why the CLI treats it like the other user-fixable
    errors: one line, exit code 2.
    """


def from_validation_error(exc: object, *, prefix: str = "") -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a :class:`ConfigError` about its first problem.

    Pydantic already words enum and range errors with the allowed values ("Input should be
    'full', 'lora' or 'qlora'"), so its message is the problem and the fix names the field.
    """
    errors = exc.errors()  # type: ignore[attr-defined]
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    field = f"{prefix}{location}" if location else (prefix.rstrip(".") or "config")
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return ConfigError(field, message, f"set '{field}' to a valid value")
