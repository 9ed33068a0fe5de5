"""Reading a sweep spec from YAML: one-line errors naming the field, paths relative to the spec."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from planner._files import read_yaml
from planner.configs import normalise_spec
from planner.errors import ConfigError, UnknownModelError, from_validation_error
from planner.schema import Range, SweepSpec

_EXPECT = "a sweep spec YAML (see examples/)"


def load_spec(path: Path | str) -> SweepSpec:
    """The validated spec at ``path``; a local model path in it is resolved against the spec's directory."""
    path = Path(path)
    raw = read_yaml(path, field="spec", expect=_EXPECT)
    if not isinstance(raw, dict):
        raise ConfigError(
            "spec",
            f"{path.name} is not a mapping of fields (it holds a {type(raw).__name__})",
            "see examples/ for the layout",
        )
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
        raise from_validation_error(exc, root="spec", model=SweepSpec) from None


def check_model_limits(spec: SweepSpec) -> None:
    """Refuse a sweep whose trials ask for more tokens than the model has positions.

    Each trial's ``seq_len`` is checked: the searched values (a range's upper end), else the
    base's. Without this the planner traces a model that could never run that length.
    """
    from planner.models import check_seq_len

    searched = spec.search.get("seq_len")
    if searched is None:
        lengths, field = [spec.base.seq_len], "base.seq_len"
    elif isinstance(searched, Range):
        lengths, field = [int(searched.high)], "search.seq_len"
    else:
        lengths, field = [v for v in searched if isinstance(v, int)], "search.seq_len"
    try:
        for length in lengths:
            check_seq_len(spec.base.model, length, field=field)
    except UnknownModelError as exc:
        raise UnknownModelError("base.model", exc.problem, exc.fix) from None
