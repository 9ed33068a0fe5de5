"""Measured profiles on disk: one JSON file per (card, config key, library versions).

Default location ``profiles/measured/`` under the working directory, so a project keeps the
profiles of its cards beside its sweep specs; ``$VRAM_PLANNER_MEASURED`` points elsewhere (a
shared cache, say). Files are grouped by card: ``<dir>/<card>/<model>--<shape>--<hash>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import metadata
from pathlib import Path

from planner._files import read_model
from planner.errors import ProfileError
from planner.schema import MeasuredProfile, ProfileKey, TrainingConfig

MEASURED_ENV = "VRAM_PLANNER_MEASURED"
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")


def measured_dir() -> Path:
    """Where profiles live: ``$VRAM_PLANNER_MEASURED``, else ``profiles/measured`` under the cwd."""
    override = os.environ.get(MEASURED_ENV)
    return Path(override) if override else Path.cwd() / "profiles" / "measured"


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose kernels and layouts a measurement depends on."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


class ProfileStore:
    """Profiles in one directory: save them, and find the one of a config on a card."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else measured_dir()

    def path_for(self, key: ProfileKey, versions: dict[str, str]) -> Path:
        digest = hashlib.sha256(
            json.dumps([key.model_dump(mode="json"), versions], sort_keys=True).encode()
        ).hexdigest()[:12]
        shape = f"{key.method.value}-{key.precision.value}-{key.optimizer.value}-seq{key.seq_len}"
        return self.directory / _slug(key.card) / f"{_slug(key.model)}--{shape}--{digest}.json"

    def save(self, profile: MeasuredProfile) -> Path:
        """Write ``profile`` (replacing one of the same key and versions); returns its path."""
        path = self.path_for(profile.key, profile.versions)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile.model_dump_json(indent=2))
        return path

    def find(self, config: TrainingConfig, card_name: str) -> MeasuredProfile | None:
        """The profile of ``config`` on ``card_name`` taken with the installed library versions."""
        path = self.path_for(ProfileKey.of(config, card_name), library_versions())
        return load_profile(path) if path.is_file() else None

    def for_card(self, card_name: str) -> list[MeasuredProfile]:
        """Every readable profile taken on ``card_name`` (any config, any versions)."""
        folder = self.directory / _slug(card_name)
        profiles = []
        for path in sorted(folder.glob("*.json")):
            try:
                profile = load_profile(path)
            except ProfileError:
                continue  # a foreign or half-written file must not break calibration
            if profile.key.card == card_name:
                profiles.append(profile)
        return profiles


def load_profile(
    path: Path | str, *, card_name: str | None = None, config: TrainingConfig | None = None
) -> MeasuredProfile:
    """Read a profile file; with ``card_name``/``config``, refuse one taken on another card or config."""
    path = Path(path)
    profile = read_model(
        path,
        MeasuredProfile,
        field="profile",
        expect="a profile written by `planner profile`",
        error=ProfileError,
    )
    if card_name is not None and profile.key.card != card_name:
        raise ProfileError(
            "profile",
            f"{path.name} was measured on card '{profile.key.card}', not '{card_name}'",
            f"profile on {card_name} (`planner profile` there) or pass --card {profile.key.card}",
        )
    if config is not None and card_name is not None and profile.key != ProfileKey.of(config, card_name):
        raise ProfileError(
            "profile",
            f"{path.name} was measured for another config ({_describe(profile.key)})",
            "pass the options it was taken with, or profile this config",
        )
    return profile


def _describe(key: ProfileKey) -> str:
    checkpointing = "checkpointing" if key.gradient_checkpointing else "no checkpointing"
    return (
        f"{key.model} {key.method.value} {key.precision.value} {key.optimizer.value}, "
        f"seq {key.seq_len}, {checkpointing}"
    )
