"""The one place that reads the user's files and checks where outputs will go.

Every file a user hands the planner (sweep spec YAML, plan and profile JSON, data JSONL or text,
a model's ``config.json``) is read here, so each way a path can be wrong gets the same one-line
answer: missing, a directory, unreadable, binary or not UTF-8, empty, malformed YAML or JSON (with
its line). Output destinations (plots, exports, report and profile directories) are checked here
before any work starts, so a long measurement never ends in "cannot write".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from planner.errors import ConfigError, PlannerError

M = TypeVar("M", bound=BaseModel)


def check_readable(
    path: Path | str, *, field: str, expect: str, error: type[PlannerError] = ConfigError
) -> Path:
    """``path`` as a :class:`Path` when it is an existing regular file this process may read.

    ``expect`` says what the file should be ("a sweep spec YAML"); it makes the fix.
    """
    path = Path(path).expanduser()
    fix = f"give the path of {expect}"
    if not path.exists():
        blocker = _file_above(path)
        if blocker is not None:
            raise error(field, f"cannot read {path}: {blocker} is a file, not a directory", fix)
        raise error(field, f"cannot read {path}: it does not exist", fix)
    if path.is_dir():
        raise error(field, f"cannot read {path}: it is a directory, not a file", fix)
    if not path.is_file():
        raise error(field, f"cannot read {path}: it is not a regular file", fix)
    if not os.access(path, os.R_OK):
        raise error(field, f"cannot read {path}: permission denied", f"make it readable, or {fix}")
    return path


def read_text(
    path: Path | str,
    *,
    field: str,
    expect: str,
    error: type[PlannerError] = ConfigError,
    allow_empty: bool = False,
) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable, binary or empty file raises ``error``.

    ``allow_empty`` leaves an empty file to the caller, which knows what it lacks ("no examples").
    """
    path = check_readable(path, field=field, expect=expect, error=error)
    fix = f"give the path of {expect}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(field, f"cannot read {path}: {exc.strerror or exc}", fix) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            field,
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; a binary file?)",
            fix,
        ) from None
    if "\x00" in text:
        raise error(field, f"{path} holds NUL bytes (a binary file?)", fix)
    if not allow_empty and not text.strip():
        raise error(field, f"{path} is empty", fix)
    return text


def read_yaml(path: Path | str, *, field: str, expect: str, error: type[PlannerError] = ConfigError) -> Any:
    """The parsed YAML of ``path``; a syntax error is reported with its line."""
    import yaml

    text = read_text(path, field=field, expect=expect, error=error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f" ({problem})" if problem else ""
        raise error(
            field, f"{Path(path).name} is not valid YAML{where}{detail}", "fix the YAML syntax there"
        ) from None


def read_json(path: Path | str, *, field: str, expect: str, error: type[PlannerError] = ConfigError) -> Any:
    """The parsed JSON of ``path``; a syntax error is reported with its line and column."""
    return _parse_json(read_text(path, field=field, expect=expect, error=error), path, field, expect, error)


def _parse_json(text: str, path: Path | str, field: str, expect: str, error: type[PlannerError]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            field,
            f"{Path(path).name} is not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})",
            f"give the path of {expect}",
        ) from None


def read_model(
    path: Path | str,
    model: type[M],
    *,
    field: str,
    expect: str,
    error: type[PlannerError] = ConfigError,
) -> M:
    """A JSON file validated as ``model``; a file of another shape names its first wrong field."""
    text = read_text(path, field=field, expect=expect, error=error)
    _parse_json(text, path, field, expect, error)  # syntax errors with their line, as for any JSON
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "top level"
        raise error(
            field,
            f"{Path(path).name} is not {expect} ({location}: {first['msg']})",
            f"give the path of {expect}",
        ) from None


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_database(path: Path | str, *, field: str) -> Path:
    """``path`` when it is an SQLite database file (its header says so); an empty file is refused.

    Checked before SQLAlchemy opens it: opening a text file or an empty one would write to it.
    """
    expect = "an SQLite database, e.g. sqlite:///sweep.db"
    path = check_readable(path, field=field, expect=expect)
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}", f"give {expect}") from None
    if header != SQLITE_HEADER:
        what = "empty" if not header else "not an SQLite database"
        raise ConfigError(field, f"{path} is {what}", f"give {expect}")
    return path


def _file_above(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists as a non-directory (``file.txt/out.png``), if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _probe_writable(directory: Path, field: str, fix: str) -> None:
    """Write and delete a temporary file in ``directory``: ``os.access`` alone lies for root."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(field, f"cannot write in {directory}: permission denied", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".planner-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(field, f"cannot write in {directory}: {exc.strerror or exc}", fix) from None


def check_output_file(path: Path | str, *, field: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` when a file can be written there: its directory exists and is writable.

    ``suffixes`` (lower case, with the dot) are the formats the writer knows; the first is the
    example in the fix. Nothing is created but a probe file, deleted at once.
    """
    path = Path(path).expanduser()
    if suffixes and path.suffix.lower() not in suffixes:
        example = path.with_suffix(suffixes[0]).name if path.name else f"out{suffixes[0]}"
        raise ConfigError(
            field,
            f"'{path.name}' is not one of the formats {', '.join(suffixes)}",
            f"name the file e.g. {example}",
        )
    if path.is_dir():
        raise ConfigError(field, f"{path} is a directory", "give a file name inside it")
    parent = path.parent
    fix = "choose a path in an existing, writable directory"
    if not parent.exists():
        blocker = _file_above(path)
        if blocker is not None:
            raise ConfigError(field, f"cannot write {path}: {blocker} is a file, not a directory", fix)
        raise ConfigError(
            field, f"cannot write {path}: directory {parent} does not exist", f"create it first, or {fix}"
        )
    if not parent.is_dir():
        raise ConfigError(field, f"cannot write {path}: {parent} is not a directory", fix)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(field, f"cannot overwrite {path}: permission denied", fix)
    _probe_writable(parent, field, fix)
    return path


def check_output_dir(path: Path | str, *, field: str) -> Path:
    """``path`` when files can be written in it: an existing writable directory, or one that can be
    made (its nearest existing ancestor is a writable directory). Nothing is created."""
    path = Path(path).expanduser()
    fix = "choose a directory that exists or can be created, and is writable"
    if path.exists() and not path.is_dir():
        raise ConfigError(field, f"{path} is a file, not a directory", fix)
    if not path.exists():
        blocker = _file_above(path)
        if blocker is not None:
            raise ConfigError(field, f"cannot create {path}: {blocker} is a file, not a directory", fix)
    _probe_writable(path if path.exists() else _existing_ancestor(path), field, fix)
    return path
