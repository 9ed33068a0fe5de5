"""``--json`` output is one JSON document on stdout, whatever libraries print while a command runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly() -> None:
    # `planner cards --json | true`: the reader is gone before the answer is written.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from planner.cli import main; main()", "cards", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.returncode == 1  # as Python's documentation advises for SIGPIPE
    assert "error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
