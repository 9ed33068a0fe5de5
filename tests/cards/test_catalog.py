"""Every card in gpu-cards.md ships, loads, and resolves by name or NVML alias."""

from __future__ import annotations

import pytest

from planner.cards import load_card, shipped_cards
from planner.errors import DeviceError, UnknownCardError

EXPECTED = {
    "rtx-3090",
    "rtx-4090",
    "rtx-a6000",
    "a100-40gb",
    "a100-80gb",
    "h100-sxm",
    "h100-pcie",
    "h200-sxm",
    "l4",
    "l40s",
    "t4",
    "a10g",
    "v100-sxm2-16gb",
}


def test_every_reference_card_ships():
    assert {card.name for card in shipped_cards()} == EXPECTED


@pytest.mark.parametrize("name", ["rtx-4090", "RTX 4090", "NVIDIA GeForce RTX 4090", "4090"])
def test_names_and_aliases_resolve(name: str):
    assert load_card(name).name == "rtx-4090"


def test_t4_has_no_bf16_and_hopper_has():
    assert not load_card("t4").supports_bf16
    assert load_card("h100-sxm").supports_bf16


def test_unknown_card_lists_close_matches():
    with pytest.raises(UnknownCardError, match=r"rtx-3090|rtx-4090"):
        load_card("rtx-4080")


def test_local_card_without_a_gpu_says_so():
    with pytest.raises(DeviceError):
        load_card("local")
