"""Model architecture configs: shipped profiles keyed by hub id, local directories, then the hub.

Architecture configs are facts (layer count, widths, vocabulary), so the common fine-tuning targets
ship in ``profiles/models/<org>/<name>/config.json`` and resolve offline. No weights are ever read.
"""

from __future__ import annotations

import difflib
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from planner._files import read_json
from planner.errors import ConfigError, UnknownModelError
from planner.shipped import shipped_dir

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_CONFIG = "a model directory holding a transformers config.json"


def models_dir() -> Path:
    return shipped_dir() / "models"


def shipped_models() -> list[str]:
    """Hub ids of every shipped architecture config, sorted."""
    root = models_dir()
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/config.json"))


def describe_model(model_id: str) -> dict[str, object]:
    """Key facts of a shipped config without importing transformers (for ``planner models``)."""
    raw = read_json(models_dir() / model_id / "config.json", field="model", expect=_CONFIG)
    return {
        "id": model_id,
        "model_type": raw.get("model_type"),
        "layers": raw.get("num_hidden_layers", raw.get("n_layer")),
        "hidden": raw.get("hidden_size", raw.get("n_embd")),
        "vocab": raw.get("vocab_size"),
    }


def _hub_reachable(timeout: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@lru_cache(maxsize=64)
def load_model_config(reference: str) -> PretrainedConfig:
    """The transformers config of ``reference``: shipped id, local directory, or hub id (online).

    Raises :class:`UnknownModelError` naming close shipped ids when nothing resolves.
    """
    from transformers import AutoConfig

    shipped = models_dir() / reference
    local = Path(reference).expanduser()
    for directory in (shipped, local):
        if (directory / "config.json").exists() or (directory is local and local.is_dir()):
            return _config_from(directory / "config.json")
    if local.exists():
        raise UnknownModelError(
            "model",
            f"{reference} is a file, not a directory holding config.json",
            "pass the model's directory (the one holding config.json)",
        )
    try:
        # The hub is only a fallback, tried when it answers at once (no retries while offline).
        if not _hub_reachable():
            raise ConnectionError
        return AutoConfig.from_pretrained(reference)
    except Exception:
        # Whatever failed (offline, no such repo, a malformed remote config), the answer is the same.
        close = difflib.get_close_matches(reference, shipped_models(), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "run `planner models` for the shipped ids"
        raise UnknownModelError(
            "model",
            f"unknown model '{reference}' (not shipped, not a local directory, hub unreachable)",
            hint,
        ) from None


def head_dim(hf_config: PretrainedConfig) -> int:
    """Size of one attention head: the config's ``head_dim`` where it sets one (Gemma, Qwen3),
    else hidden size over heads, as transformers' attention modules compute it."""
    return int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads)


def _config_from(path: Path) -> PretrainedConfig:
    """The transformers config in ``path`` (a ``config.json``), read through the one file reader."""
    from transformers import CONFIG_MAPPING

    raw = read_json(path, field="model", expect=_CONFIG, error=UnknownModelError)
    if not isinstance(raw, dict):
        raise UnknownModelError(
            "model", f"{path} holds a JSON {type(raw).__name__}, not an object", f"give {_CONFIG}"
        )
    model_type = raw.get("model_type")
    if model_type is None:
        raise UnknownModelError(
            "model", f"{path} has no model_type", 'add the architecture, e.g. "model_type": "llama"'
        )
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        known = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
        hint = f"did you mean '{known[0]}'?" if known else "use a model_type transformers knows, e.g. llama"
        raise UnknownModelError("model", f"{path} has unknown model_type '{model_type}'", hint)
    try:
        return CONFIG_MAPPING[model_type].from_pretrained(str(path.parent))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UnknownModelError(
            "model", f"{path} is not a valid {model_type} config ({exc})", f"give {_CONFIG}"
        ) from None


def max_positions(config: PretrainedConfig) -> tuple[str, int] | None:
    """The model's longest sequence and the config key that says so, if the config has one.

    ``max_position_embeddings`` (Llama, BERT, Qwen2, ...) or ``n_positions`` (GPT-2), whichever the
    config itself holds (GPT-2's maps one name onto the other).
    """
    held = vars(config)
    for name in ("max_position_embeddings", "n_positions"):
        value = held.get(name)
        if isinstance(value, int) and value > 0:
            return name, value
    return None


def check_seq_len(model: str, seq_len: int, *, field: str = "seq_len", option: str | None = None) -> None:
    """Refuse ``seq_len`` beyond ``model``'s positions (an index error deep in the model otherwise).

    The fix names ``option`` (a command-line flag) when given, else ``field``.
    """
    limit = max_positions(load_model_config(model))
    if limit is not None and seq_len > limit[1]:
        name, value = limit
        raise ConfigError(
            field,
            f"{seq_len} tokens is beyond the model's limit of {value} ({name} in its config)",
            f"pass {option} {value} or less" if option else f"set {field} to {value} or less",
        )
