"""Reading a sweep spec from YAML: one-line errors naming the field, paths relative to the spec."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from planner.configs import normalise_spec
from planner.errors import ConfigError, from_validation_error
from planner.schema import SweepSpec


def load_spec(path: Path | str) -> SweepSpec:
    """The validated spec at ``path``; a local model path in it is resolved against the spec's directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            "spec", f"{path} does not exist", "give the path of a sweep spec YAML (see examples/)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError("spec", f"{path.name} is not valid YAML{line}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError("spec", f"{path.name} is not a mapping of fields", "see examples/ for the layout")
    spec_dir = path.parent.resolve()
    raw.setdefault("name", path.stem)
    raw = normalise_spec(raw, spec_dir)  # TrainingArguments names, base: {from: FILE}
    base = raw.get("base")
    if isinstance(base, dict) and isinstance(base.get("model"), str):
        # "../tiny-llama" means next to the spec, wherever the command runs from.
        local = spec_dir / base["model"]
        if local.is_dir():
            raw["base"] = {**base, "model": str(local.resolve())}
    try:
        return SweepSpec.model_validate({**raw, "spec_dir": spec_dir})
    except ValidationError as exc:
        raise from_validation_error(exc) from None
