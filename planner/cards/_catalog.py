"""The shipped card catalogue: one YAML file per card, validated into :class:`Card`."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from planner.cards._host import HOST_CARD_NAME, host_card
from planner.errors import ConfigError, UnknownCardError, from_validation_error
from planner.schema import Card
from planner.shipped import shipped_dir


def _cards_dir() -> Path:
    return shipped_dir() / "cards"


@lru_cache(maxsize=1)
def shipped_cards() -> tuple[Card, ...]:
    """Every card in ``profiles/cards``, sorted by name."""
    cards = []
    for path in sorted(_cards_dir().glob("*.yaml")):
        try:
            cards.append(Card.model_validate(yaml.safe_load(path.read_text())))
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML ({exc})", "fix the file's syntax") from None
        except ValidationError as exc:
            raise from_validation_error(exc, prefix=f"{path.name}: ") from None
    return tuple(cards)


def card_names() -> list[str]:
    return [card.name for card in shipped_cards()]


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def load_card(name: str) -> Card:
    """The card called ``name`` (case, spaces and dashes ignored; aliases such as NVML names work).

    ``local`` reads the GPU of this machine through NVML; ``cpu`` is the host (its RAM).
    Unknown names raise
    :class:`UnknownCardError` listing the closest shipped names.
    """
    if name == "local":
        from planner.cards._local import local_card

        return local_card()
    if name == HOST_CARD_NAME:
        return host_card()
    wanted = _normalise(name)
    for card in shipped_cards():
        if wanted in {_normalise(n) for n in (card.name, card.display_name, *card.aliases)}:
            return card
    close = difflib.get_close_matches(name.lower(), card_names(), n=3, cutoff=0.3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `planner cards` for the list"
    raise UnknownCardError(
        "card", f"unknown card '{name}'", f"{hint} (or 'local' for this machine's GPU, 'cpu' for the host)"
    )


def this_machine_card() -> str:
    """The card a run on this machine uses by default: ``local`` (its GPU) when NVML sees one,
    else the host CPU."""
    from planner.errors import DeviceError

    try:
        load_card("local")
    except DeviceError:
        return HOST_CARD_NAME
    return "local"
