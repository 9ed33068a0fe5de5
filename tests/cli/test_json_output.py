"""``--json`` output is one JSON document on stdout, whatever libraries print while a command runs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from planner.cli import cli


def test_what_a_library_prints_during_a_json_command_goes_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    # As DeepSpeed's logger does on stdout when accelerate imports it under Trainer().
    import planner.cli._catalog as catalog

    shipped = catalog.shipped_cards

    def chatty() -> list:
        print("[WARNING] [real_accelerator.py] Setting accelerator to CPU.")
        return shipped()

    monkeypatch.setattr(catalog, "shipped_cards", chatty)
    result = CliRunner().invoke(cli, ["cards", "--json"])
    assert result.exit_code == 0, result.output
    cards = json.loads(result.stdout)
    assert any(card["name"] == "rtx-4090" for card in cards)
    assert "Setting accelerator" in result.stderr
