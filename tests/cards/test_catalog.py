"""Every card in gpu-cards.md ships, loads, and resolves by name or NVML alias."""

from __future__ import annotations

import pytest

from planner.cards import load_card, shipped_cards
from planner.errors import DeviceError, UnknownCardError
from planner.schema import MIB
from tests.cli.fake_nvml import fake_gpu, no_gpu

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


def test_local_card_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch):
    no_gpu(monkeypatch)  # also on a machine with an NVIDIA GPU
    with pytest.raises(DeviceError):
        load_card("local")


def test_local_card_reads_nvml_and_takes_the_datasheet_of_a_known_name(monkeypatch: pytest.MonkeyPatch):
    fake_gpu(monkeypatch, "NVIDIA GeForce RTX 4090", total_mib=24_564, free_mib=20_000, capability=(8, 9))
    card = load_card("local")
    assert card.name == "local" and card.display_name == "NVIDIA GeForce RTX 4090"
    assert card.memory_total_mib == 24_564 and card.free_bytes == 20_000 * MIB
    assert card.tflops.bf16 == load_card("rtx-4090").tflops.bf16


def test_local_card_of_an_unknown_name_has_memory_but_no_datasheet(monkeypatch: pytest.MonkeyPatch):
    fake_gpu(monkeypatch, "NVIDIA Future GPU", total_mib=96_000, free_mib=90_000, capability=(10, 0))
    card = load_card("local")
    assert card.display_name == "NVIDIA Future GPU" and card.compute_capability == "10.0"
    assert card.tflops.bf16 is None and card.free_bytes == 90_000 * MIB
