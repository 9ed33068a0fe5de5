"""Where the shipped data lives: the ``profiles/`` tree of card specs and model architecture configs.

(Measured profiles are the profiler's: see :class:`planner.profiler.ProfileStore`.)
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def shipped_dir() -> Path:
    """The shipped data tree: ``$VRAM_PLANNER_PROFILES`` if set, else the one shipped beside the package."""
    override = os.environ.get("VRAM_PLANNER_PROFILES")
    return Path(override) if override else _REPO_PROFILES
