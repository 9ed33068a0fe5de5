"""Loading a dataset's rows through Hugging Face ``datasets``, offline.

What ``data.train`` / ``data.eval`` may name: a json/jsonl/csv/parquet/arrow file, a plain text file
(one example per non-empty line), a directory saved with ``save_to_disk`` or holding data files, or
a hub dataset id already in the local ``datasets`` cache. Nothing is downloaded: the hub is reached
only through ``datasets``' offline mode, which falls back to the cache
(``datasets.load.CachedDatasetModuleFactory``), whatever ``HF_DATASETS_OFFLINE`` says.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from planner._files import check_readable, read_text
from planner.errors import ConfigError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

# File suffixes and the ``datasets`` builder that reads them (datasets' packaged modules).
BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
TEXT_SUFFIXES = frozenset({".json", ".jsonl", ".csv"})
"""Files read as text: checked for UTF-8 before ``datasets`` parses them, for a one-line error."""
KINDS = "a json/jsonl/csv/parquet/arrow or text file, a saved dataset, or a cached hub dataset id"


@contextlib.contextmanager
def _quiet_offline() -> Iterator[None]:
    """``datasets`` offline, without its progress bars and error logs (errors come back as ours).

    Offline mode is read at call time (``datasets.utils.file_utils._raise_if_offline_mode_is_enabled``
    reads ``datasets.config.HF_HUB_OFFLINE``), so setting it here keeps every load off the network.
    """
    import datasets

    offline, bars = datasets.config.HF_HUB_OFFLINE, datasets.is_progress_bar_enabled()
    library_logger = logging.getLogger("datasets")
    level = library_logger.level
    datasets.config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    library_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
        if bars:
            datasets.enable_progress_bars()
        library_logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    cause = error.__cause__ or error
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0]


def load_rows(source: Path | str, *, spec_dir: Path, field: str, split: str) -> datasets.Dataset:
    """The rows ``source`` names (relative to ``spec_dir``); ``split`` picks one of named splits."""
    import datasets

    path = Path(source).expanduser()
    local = path if path.is_absolute() else spec_dir / path
    with _quiet_offline():
        if local.is_dir():
            rows = _load_directory(local, field, split)
        elif local.exists() or not _looks_like_hub_id(str(source)):
            rows = _load_file(local, field)
        else:
            rows = _load_cached_hub(str(source), field, split, local)
    if isinstance(rows, datasets.DatasetDict):
        rows = _pick_split(rows, split, field, str(source))
    if len(rows) == 0:
        raise ConfigError(
            field, f"{source} holds no examples", "add examples, or point it at a dataset that has some"
        )
    return rows


def _looks_like_hub_id(source: str) -> bool:
    # ``datasets`` tries the hub for a relative path with at most one slash (dataset_module_factory).
    return not Path(source).is_absolute() and source.count("/") <= 1 and not Path(source).suffix


def _load_file(path: Path, field: str) -> datasets.Dataset:
    import datasets

    builder = BUILDERS.get(path.suffix.lower())
    if builder is None or path.suffix.lower() in TEXT_SUFFIXES:
        text = read_text(path, field=field, expect=KINDS, allow_empty=True)
        if builder is None:
            lines = [line for line in text.splitlines() if line.strip()]
            if not lines:
                raise ConfigError(field, f"{path} holds no examples", "add examples, one per line")
            return datasets.Dataset.from_dict({"text": lines})
        if not text.strip():
            raise ConfigError(field, f"{path} holds no examples", "add examples, one per line")
    else:
        check_readable(path, field=field, expect=KINDS)
    try:
        loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # pyarrow and the builders raise many kinds on a malformed file
        bad_line = _bad_json_line(path) if builder == "json" else None
        if bad_line is not None:
            number, message = bad_line
            raise ConfigError(
                f"{field} ({path.name} line {number})", f"not valid JSON ({message})", "fix that line"
            ) from None
        raise ConfigError(
            field, f"{path.name} does not load as {builder} ({_first_line(exc)})", "fix the file"
        ) from None
    assert isinstance(loaded, datasets.Dataset)  # one split asked for
    return loaded


def _bad_json_line(path: Path) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that is not JSON, and why (pyarrow's error counts rows
    from 0 and skips blank lines, so it cannot point at the line itself)."""
    if path.suffix.lower() != ".jsonl":
        return None
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return number, exc.msg
    return None


def _load_directory(path: Path, field: str, split: str) -> datasets.Dataset | datasets.DatasetDict:
    import datasets

    if any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        try:
            return datasets.load_from_disk(str(path))
        except Exception as exc:  # a partly written or foreign directory
            raise ConfigError(
                field,
                f"{path} is not a dataset saved with save_to_disk ({_first_line(exc)})",
                "point it at one",
            ) from None
    try:
        return datasets.load_dataset(str(path))
    except Exception as exc:  # no data files in it, or files of mixed kinds
        raise ConfigError(
            field,
            f"{path} is neither a saved dataset nor a folder of data files ({_first_line(exc)})",
            f"give {KINDS}",
        ) from None


def _load_cached_hub(
    name: str, field: str, split: str, local: Path
) -> datasets.Dataset | datasets.DatasetDict:
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # not in the cache (ConnectionError offline), or no such split
        raise ConfigError(
            field,
            f"no file {local}, and no hub dataset '{name}' split '{split}' in the local cache "
            f"({datasets.config.HF_DATASETS_CACHE}; {_first_line(exc)})",
            "give a local file, or load the dataset once with datasets.load_dataset on a machine online",
        ) from None


def _pick_split(rows: datasets.DatasetDict, split: str, field: str, source: str) -> datasets.Dataset:
    if split in rows:
        return rows[split]
    if len(rows) == 1:
        return next(iter(rows.values()))
    split_field = "data.eval_split" if field == "data.eval" else "data.split"
    raise ConfigError(
        split_field, f"{source} has no split '{split}' (it has {', '.join(rows)})", "set it to one of those"
    )
