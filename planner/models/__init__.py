"""Model architecture configs: shipped profiles keyed by hub id, local directories, then the hub.

Architecture configs are facts (layer count, widths, vocabulary), so the common fine-tuning targets
ship in ``profiles/models/<org>/<name>/config.json`` and resolve offline. No weights are ever read.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import UnknownModelError
from planner.shipped import shipped_dir

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def models_dir() -> Path:
    return shipped_dir() / "models"


def shipped_models() -> list[str]:
    """Hub ids of every shipped architecture config, sorted."""
    root = models_dir()
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/config.json"))


def describe_model(model_id: str) -> dict[str, object]:
    """Key facts of a shipped config without importing transformers (for ``planner models``)."""
    raw = json.loads((models_dir() / model_id / "config.json").read_text())
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
        if (directory / "config.json").is_file():
            try:
                return AutoConfig.from_pretrained(str(directory))
            except (ValueError, KeyError, OSError) as exc:
                raise UnknownModelError(
                    "model",
                    f"{directory}/config.json is not a valid transformers config ({exc})",
                    "point to a directory holding a model's config.json",
                ) from None
    if local.exists():
        raise UnknownModelError(
            "model", f"{reference} has no config.json", "point to a directory holding a model's config.json"
        )
    try:
        # The hub is only a fallback, tried when it answers at once (no retries while offline).
        if not _hub_reachable():
            raise ConnectionError
        return AutoConfig.from_pretrained(reference)
    except Exception:
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
