"""Where the data lives: the ``profiles/`` tree of cards, model configs and measured profiles."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def profiles_dir() -> Path:
    """The profiles tree: ``$VRAM_PLANNER_PROFILES`` if set, else the one shipped beside the package."""
    override = os.environ.get("VRAM_PLANNER_PROFILES")
    return Path(override) if override else _REPO_PROFILES
