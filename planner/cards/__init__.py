"""GPU cards: the datasheet profiles in ``profiles/cards`` and the local GPU read through NVML."""

from planner.cards._catalog import card_names, load_card, shipped_cards
from planner.cards._local import local_card

__all__ = ["card_names", "load_card", "local_card", "shipped_cards"]
