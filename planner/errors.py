"""The exception tree: every error a user can cause names the field at fault and a fix.

The CLI turns any :class:`PlannerError` into one line on stderr and exit code 2; library
callers catch the subclasses they care about.
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


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


def from_validation_error(
    exc: object, *, prefix: str = "", root: str = "config", model: type[BaseModel] | None = None
) -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a :class:`ConfigError` about its first problem.

    Locations are the user's field names: pydantic's internal tags for union members
    (``constrained-int``, ``literal['auto']``, ``Range``) are dropped. An unknown key comes first,
    as it usually causes the other errors (``modle:`` also reports ``model`` missing), and is
    answered with the closest allowed key of its level. Pydantic already words enum and range
    errors with the allowed values ("Input should be 'full', 'lora' or 'qlora'"), so its message is
    the problem. ``model`` is the validated class (default: the schema class named by the error);
    ``root`` names a problem of the whole object.
    """
    errors = exc.errors()  # type: ignore[attr-defined]
    schema = model or _schema_class(getattr(exc, "title", ""))
    unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
    first = (unknown or errors)[0]
    parts = _user_location(schema, tuple(first.get("loc", ())), keep_last=bool(unknown))
    location = ".".join(str(part) for part in parts)
    field = f"{prefix}{location}" if location else (prefix.rstrip(".: ") or root)
    if unknown:
        key = str(parts[-1]) if parts else "?"
        allowed = _allowed_keys(schema, parts[:-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            fix = f"did you mean '{close[0]}'?"
        elif allowed:
            fix = f"remove it; allowed keys here: {', '.join(allowed)}"
        else:
            fix = "remove it"
        return ConfigError(field, f"unknown key '{key}'", fix)
    # The members of a union report on the same field ("greater than 0", or "'auto'"): the
    # member whose kind of value matched speaks first ("low must be below high", not "a list").
    alternatives = [
        e for e in errors if _user_location(schema, tuple(e.get("loc", ())), keep_last=False) == parts
    ] or [first]
    alternatives.sort(key=_wrong_kind)
    messages: list[str] = []
    for error in alternatives:
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if message not in messages:
            messages.append(message)
    problem = messages[0] + "".join(f" (or: {m})" for m in messages[1:])
    fix = f"set '{field}' to a valid value" if location else "change the fields the message names"
    return ConfigError(field, problem, fix)


def _wrong_kind(error: Any) -> bool:
    """Whether pydantic says the value is of the wrong kind (a string for a list), not out of range."""
    kind = str(error.get("type", ""))
    return kind.endswith(("_type", "_parsing")) or kind == "literal_error"


# Location parts pydantic adds for the members of a union or constrained type, not the user's keys.
_TAGS = {"constrained-int", "constrained-float", "constrained-str", "int", "float", "str", "bool", "none"}


def _schema_class(title: str) -> type[BaseModel] | None:
    """The planner schema class a ``ValidationError`` is about (its ``title``), if it is one."""
    import planner.schema

    found = getattr(planner.schema, title, None) if title else None
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (``X | None``, ``Annotated[X, ...]``), flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _keys_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's keys as the user writes them (aliases where set) and their annotations."""
    keys = {}
    for name, info in model.model_fields.items():
        if name in _INTERNAL_FIELDS:
            continue
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        keys[alias or name] = info.annotation
    return keys


# Fields set by the loader, not by the user (the spec's directory).
_INTERNAL_FIELDS = {"spec_dir"}


def _step(annotation: Any, part: object) -> tuple[bool, Any]:
    """Whether ``part`` is a user's key, index or dict key at ``annotation``, and what it leads to."""
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            keys = _keys_of(member)
            if isinstance(part, str) and part in keys:
                return True, keys[part]
        origin, args = get_origin(member), get_args(member)
        if origin is dict and isinstance(part, str):
            return True, args[1] if args else Any
        if origin is list and isinstance(part, int):
            return True, args[0] if args else Any
    return False, None


def _is_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in _TAGS or part[:1].isupper())


def _user_location(schema: type[BaseModel] | None, loc: tuple[Any, ...], *, keep_last: bool) -> list[Any]:
    """``loc`` without pydantic's union tags: walked through the schema where known, else by pattern."""
    kept: list[Any] = []
    current: Any = schema
    for index, part in enumerate(loc):
        if keep_last and index == len(loc) - 1:
            kept.append(part)
            break
        if current is not None and current is not Any:
            known, following = _step(current, part)
            if known:
                kept.append(part)
                current = following
            continue
        if not _is_tag(part):
            kept.append(part)
    return kept


def _allowed_keys(schema: type[BaseModel] | None, parts: list[Any]) -> list[str]:
    """The keys allowed at ``parts`` (the user's location) of ``schema``."""
    current: Any = schema
    for part in parts:
        if current is None:
            return []
        _, current = _step(current, part)
    models = [m for m in _members(current) if isinstance(m, type) and issubclass(m, BaseModel)]
    return [key for model in models for key in _keys_of(model)]
