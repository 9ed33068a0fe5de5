"""``planner profile``: real training steps of a config on this machine's device, saved as a profile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from planner._files import check_output_dir
from planner.cli._common import emit_json, parse_sizes, user_errors_exit_2
from planner.cli._fit import training_config, training_options
from planner.errors import ConfigError
from planner.schema import GIB, MIB, Card, MeasuredProfile, TrainingConfig


@click.command("profile")
@click.argument("model")
@training_options
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    help="Where to run the steps (default: CUDA when present, else the CPU).",
)
@click.option(
    "--micro-batch", "micro_batches", help="Sizes to measure, e.g. 1,4,8 (default: the estimator's)."
)
@click.option("--find-max", is_flag=True, help="Find the true max micro-batch first (a few probe steps).")
@click.option(
    "--steps", type=click.IntRange(min=1), default=5, show_default=True, help="Timed steps per micro-batch."
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps before them."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Profile directory (default: $VRAM_PLANNER_MEASURED, else ./profiles/measured).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@user_errors_exit_2
def profile_command(
    model: str,
    device: str | None,
    micro_batches: str | None,
    find_max: bool,
    steps: int,
    warmup: int,
    out: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Measure MODEL's training steps on this machine: step times, memory, max micro-batch.

    The profile is saved, and `planner fit` then uses it: calibrated CUDA overheads, and measured
    figures beside the predicted ones.

    \b
    Examples:
      planner profile Qwen/Qwen2.5-0.5B --method lora --seq-len 1024 --find-max
      planner profile examples/tiny-llama --device cpu --micro-batch 1,4 --json
    """
    from planner.profiler import MEASURED_ENV, ProfileStore, device_card, local_device, profile_config

    store = ProfileStore(out)
    # Checked before minutes of measuring, not when saving after them.
    where = "--out" if out is not None else (MEASURED_ENV if os.environ.get(MEASURED_ENV) else "profiles")
    check_output_dir(store.directory, field=where)
    sizes = parse_sizes(micro_batches, "micro-batch")
    config = training_config(model, options)
    target = local_device(device)
    card = device_card(target)
    if target.type == "cpu" and sizes:
        _check_host_memory(config, card, max(sizes))
    console = Console(stderr=True)
    with console.status("starting") as status:
        profile = profile_config(
            config,
            card,
            sizes,
            device=target,
            progress=lambda message: status.update(f"[bold]profile[/] {message}"),
            steps=steps,
            warmup=warmup,
            find_max=find_max,
        )
    path = store.save(profile)
    if as_json:
        emit_json({"path": str(path), "profile": profile.model_dump(mode="json")})
    else:
        print_profile(profile, path)


def _check_host_memory(config: TrainingConfig, card: Card, micro_batch: int) -> None:
    """Refuse a CPU micro-batch beyond half the host's available memory, before building anything.

    A failed CPU allocation kills the process (and can take the host's other work with it) instead
    of raising: the profiler's own finder keeps to the same half for that reason.
    """
    from planner.estimator import Estimator

    need = Estimator(config, card).estimate(micro_batch, trace=False).peak_bytes
    half = card.available_bytes // 2
    if need > half:
        raise ConfigError(
            "micro-batch",
            f"{micro_batch} needs ~{need / GIB:.1f} GiB on this host; half its available memory is "
            f"{half / GIB:.1f} GiB (a failed CPU allocation kills the process)",
            "ask for smaller sizes, or pass --find-max to find the largest that fits",
        )


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.3f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_profile(profile: MeasuredProfile, path: Path) -> None:
    console = Console()
    key = profile.key
    console.print(
        f"[bold]{key.model}[/] {key.method.value} {key.precision.value} {key.optimizer.value}, seq "
        f"{key.seq_len}, checkpointing {'on' if key.gradient_checkpointing else 'off'} "
        f"on [bold]{profile.device_name}[/] ({profile.device})"
    )
    cuda = profile.device == "cuda"
    # The host has no datasheet peak (no MFU) and no allocator: its memory is live tensor bytes.
    extra = ("TFLOP/s", "MFU", "alloc GiB", "reserved GiB", "NVML GiB") if cuda else ("live MiB",)
    table = Table("micro-batch", "fwd+bwd ms", "p10-p90", "opt ms", "eval ms", "tokens/s", *extra)
    for m in profile.measurements:
        figures = (
            (
                "-" if m.achieved_tflops is None else f"{m.achieved_tflops:.3g}",
                "-" if m.mfu is None else f"{m.mfu:.1%}",
                _gib(m.peak_allocated_bytes),
                _gib(m.peak_reserved_bytes),
                _gib(m.nvml_used_bytes),
            )
            if cuda
            else (f"{(m.live_peak_bytes or 0) / MIB:.1f}",)
        )
        table.add_row(
            str(m.micro_batch),
            _ms(m.forward_backward_seconds),
            f"{_ms(m.forward_backward_p10_seconds)}-{_ms(m.forward_backward_p90_seconds)}",
            _ms(m.optimizer_seconds),
            _ms(m.eval_forward_seconds),
            f"{m.tokens_per_second:,.0f}",
            *figures,
        )
    console.print(table)
    if profile.out_of_memory:
        console.print(f"[red]Out of memory at micro-batch {', '.join(map(str, profile.out_of_memory))}.[/]")
    if profile.search is not None:
        search = profile.search
        console.print(
            f"[bold green]Max micro-batch on this device: {search.max_micro_batch}[/] "
            f"(estimator said {search.predicted}; {search.probe_count} probes, {search.seconds:.1f} s)"
        )
    if profile.context_bytes is not None:
        console.print(f"CUDA context: {_gib(profile.context_bytes)} GiB.")
    seconds = f" in {profile.seconds:.1f} s" if profile.seconds is not None else ""
    console.print(f"Profile saved{seconds}: {path}")
