"""``planner cards`` and ``planner models``: what ships in ``profiles/``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from planner.cards import shipped_cards
from planner.cli._common import emit_json, user_errors_exit_2
from planner.models import describe_model, shipped_models


@click.command("cards")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors_exit_2
def cards_command(as_json: bool) -> None:
    """List the GPU cards the planner knows (profiles/cards).

    \b
    Examples:
      planner cards
      planner cards --json
    """
    cards = shipped_cards()
    if as_json:
        emit_json([card.model_dump(mode="json") for card in cards])
        return
    table = Table("card", "name", "memory (MiB)", "bf16 TFLOP/s", "GB/s", "sm")
    for card in cards:
        bf16 = f"{card.tflops.bf16:g}" if card.tflops.bf16 else "-"
        table.add_row(
            card.name,
            card.display_name,
            str(card.memory_total_mib),
            bf16,
            f"{card.bandwidth_gbs:g}" if card.bandwidth_gbs else "-",
            card.compute_capability,
        )
    Console().print(table)
    click.echo("Also: --card local reads this machine's GPU through NVML (free memory only).")


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors_exit_2
def models_command(as_json: bool) -> None:
    """List the model architectures shipped for offline use (profiles/models).

    \b
    Examples:
      planner models
      planner models --json
    """
    models = [describe_model(model_id) for model_id in shipped_models()]
    if as_json:
        emit_json(models)
        return
    table = Table("model", "type", "layers", "hidden", "vocab")
    for model in models:
        table.add_row(*(str(model[key]) for key in ("id", "model_type", "layers", "hidden", "vocab")))
    Console().print(table)
    click.echo("Also: any local directory holding a config.json.")
