"""GPU cards: the datasheet profiles in ``profiles/cards`` and the local GPU read through NVML."""

from planner.cards._catalog import card_names, load_card, shipped_cards, this_machine_card
from planner.cards._host import HOST_CARD_NAME, host_card
from planner.cards._local import local_card

__all__ = [
    "HOST_CARD_NAME",
    "card_names",
    "host_card",
    "load_card",
    "local_card",
    "shipped_cards",
    "this_machine_card",
]
