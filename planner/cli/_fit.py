"""``planner fit``: does a config fit on a card, what is the max micro-batch, and what would fix it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich import box
from rich.console import Console
from rich.table import Table

from planner._files import check_output_file
from planner.cli._common import PLOT_SUFFIXES, emit_json, parse_sizes, user_errors_exit_2
from planner.cli._fit_ranks import (
    answered_by_model_states,
    gpu_count_configs,
    per_rank_json,
    print_gpu_counts,
    print_rank_split,
    print_zero_states,
    rank_answers,
    with_parallelism,
)
from planner.errors import ConfigError
from planner.formatting import format_duration, format_gib
from planner.schema import (
    GIB,
    Attention,
    CardComparison,
    FitReport,
    Method,
    Offload,
    OptimizerName,
    Precision,
    Strategy,
    TrainingConfig,
)


def training_options(command: Any) -> Any:
    """The options that make a :class:`~planner.schema.TrainingConfig` (shared with later commands)."""
    options = [
        click.option(
            "--method", type=click.Choice([m.value for m in Method]), default="full", show_default=True
        ),
        click.option(
            "--precision",
            type=click.Choice([p.value for p in Precision]),
            default="bf16",
            show_default=True,
            help="fp16/bf16 are Trainer's mixed precision; pure-bf16 has no fp32 master weights.",
        ),
        click.option(
            "--optimizer",
            type=click.Choice([o.value for o in OptimizerName]),
            default="adamw",
            show_default=True,
        ),
        click.option(
            "--attention",
            type=click.Choice([a.value for a in Attention]),
            default="sdpa",
            show_default=True,
            help="The model's attn_implementation; eager stores the attention probabilities.",
        ),
        click.option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            default=None,
            help="Default: on for QLoRA (peft's recipe), off otherwise.",
        ),
        click.option(
            "--torch-compile/--no-torch-compile",
            default=False,
            show_default=True,
            help="Trainer's torch_compile: changes the predicted step time (memory stays eager's).",
        ),
        click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per sequence."),
        click.option(
            "--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps."
        ),
        click.option("--lora-r", type=int, default=16, show_default=True),
        click.option("--lora-alpha", type=int, default=32, show_default=True),
        click.option("--lora-dropout", type=float, default=0.05, show_default=True),
        click.option(
            "--lora-target",
            default="all-linear",
            show_default=True,
            help="Comma-separated module names, or all-linear.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def parallel_options(command: Any) -> Any:
    """``--gpus``, ``--nodes``, ``--strategy``, ``--offload``: one rank of a data-parallel job."""
    options = [
        click.option(
            "--gpus", help="GPUs per node (default 1); a list (1,2,4,8) answers per count in one table."
        ),
        click.option("--nodes", type=int, default=1, show_default=True, help="Nodes of --gpus GPUs each."),
        click.option(
            "--strategy",
            type=click.Choice([s.value for s in Strategy]),
            help="Data-parallel engine (default with several GPUs: ddp).",
        ),
        click.option(
            "--offload", type=click.Choice([o.value for o in Offload]), default="none", show_default=True
        ),
        click.option(
            "--interconnect",
            type=click.FloatRange(min=0, min_open=True),
            help="GB/s per direction between the GPUs (default: the card's link, see `planner cards`).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def training_fields(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """The TrainingConfig fields from parsed CLI options (validated by the caller)."""
    target = options["lora_target"]
    return {
        "model": model,
        "method": options["method"],
        "precision": options["precision"],
        "optimizer": options["optimizer"],
        "attention": options["attention"],
        "gradient_checkpointing": options["gradient_checkpointing"],
        "torch_compile": options["torch_compile"],
        "seq_len": options["seq_len"],
        "gradient_accumulation": options["grad_accum"],
        "lora": {
            "r": options["lora_r"],
            "alpha": options["lora_alpha"],
            "dropout": options["lora_dropout"],
            "target_modules": target if target == "all-linear" else [t.strip() for t in target.split(",")],
        },
    }


def training_config(model: str, options: dict[str, Any]) -> TrainingConfig:
    """The validated config of the CLI options, refused when its ``seq_len`` exceeds the model's."""
    from planner.models import check_seq_len

    config = TrainingConfig.model_validate(training_fields(model, options))
    check_seq_len(config.model, config.seq_len, option="--seq-len")
    return config


@click.command("fit")
@click.argument("model", required=False)
@training_options
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="An axolotl/LLaMA-Factory YAML, TrainingArguments/SFTConfig JSON, peft adapter_config.json or "
    "spec to start from; MODEL and the flags given override it.",
)
@click.option(
    "--card",
    required=True,
    help="Card name (see `planner cards`) or 'local'; several, comma-separated, compare them in one table.",
)
@click.option(
    "--tokens",
    help="With several cards: the training token count to time and price, e.g. 200M or 1.5B.",
)
@click.option(
    "--prices",
    "prices_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With several cards: a YAML file of `card: usd_per_hour` to rank the cheapest that fits.",
)
@click.option("--require-fit", is_flag=True, help="Exit 1 when nothing fits (for scripts).")
@click.option("--micro-batch", "micro_batches", help="Micro-batch sizes to report, e.g. 1,2,4.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@parallel_options
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG of memory vs micro-batch."
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A `planner profile` file of this config on this card (default: the stored one, if any).",
)
@user_errors_exit_2
def fit_command(
    model: str | None,
    card: str,
    tokens: str | None,
    prices_path: Path | None,
    require_fit: bool,
    config_path: Path | None,
    micro_batches: str | None,
    as_json: bool,
    plot: Path | None,
    profile_path: Path | None,
    gpus: str | None,
    nodes: int,
    strategy: str | None,
    offload: str,
    interconnect: float | None,
    **options: Any,
) -> None:
    """Does MODEL (or the setup in --config FILE) fit on --card, and what is the largest
    micro-batch? No GPU needed.

    Profiles from `planner profile` calibrate the CUDA overheads, and their measured figures are
    shown beside the predicted ones.

    \b
    Examples:
      planner fit Qwen/Qwen2.5-7B --method qlora --seq-len 2048 --card rtx-4090
      planner fit --config axolotl.yaml --card a100-80gb --plot fit.png
      planner fit Qwen/Qwen2.5-1.5B --method lora --card rtx-4090,l4,h100-sxm \\
          --tokens 500M --prices prices.yaml   # prices.yaml: `h100-sxm: 2.99`
      planner fit Qwen/Qwen2.5-7B --card l4 --require-fit --json > fit.json
    """
    from planner import compare_cards, read_prices
    from planner.cards import load_card
    from planner.models import check_seq_len
    from planner.profiler import fit_with_profiles

    if plot is not None:
        check_output_file(plot, field="--plot", suffixes=PLOT_SUFFIXES)
    sizes = parse_sizes(micro_batches, "micro-batch")
    notes: list[str] = []
    cards = [name.strip() for name in card.split(",") if name.strip()] or [card]  # '' : unknown card
    if len(cards) > 1:
        for given, option in (
            (micro_batches, "--micro-batch"),
            (plot, "--plot"),
            (profile_path, "--profile"),
        ):
            if given is not None:
                raise ConfigError(
                    option, "applies to one card, not a comparison", f"give one --card with {option}"
                )
    elif tokens is not None or prices_path is not None:
        option = "--tokens" if tokens is not None else "--prices"
        raise ConfigError(option, "compares several cards", "give several, e.g. --card rtx-4090,l4,h100-sxm")
    targets = [load_card(name) for name in cards]
    count = parse_tokens(tokens)
    prices = read_prices(prices_path) if prices_path is not None else None
    if config_path is not None:
        config, notes = imported_with_flags(config_path, model, options)
        check_seq_len(config.model, config.seq_len, option="--seq-len")
    elif model is None:
        raise ConfigError("model", "no model given", "give MODEL, or --config FILE")
    else:
        config = training_config(model, options)
    if config.torch_compile and not any(note.startswith("torch_compile") for note in notes):
        notes.append("torch_compile: memory is estimated as eager's (what inductor saves is not traced)")
    gpu_counts = parse_sizes(gpus, "gpus") or [1]
    if len(targets) > 1:
        if gpus is not None or strategy is not None:
            option = "--gpus" if gpus is not None else "--strategy"
            raise ConfigError(
                option, "applies to one card, not a comparison", f"give one --card with {option}"
            )
        comparison = compare_cards(config, targets, tokens=count, prices=prices)
        if as_json:
            emit_json({**comparison.model_dump(mode="json"), **({"notes": notes} if notes else {})})
        else:
            for note in notes:
                click.echo(f"note: {note}", err=True)
            print_comparison(comparison)
        fits = comparison.best is not None
    elif len(gpu_counts) > 1:
        from planner.timing import how_many_cards

        configs = gpu_count_configs(config, gpu_counts, nodes, strategy, offload)
        rows = how_many_cards(configs, targets[0], interconnect_gbs=interconnect)
        if as_json:
            emit_json([row.model_dump(mode="json") for row in rows])
        else:
            print_gpu_counts(rows, targets[0].name)
        fits = any(row.max_micro_batch > 0 for row in rows)
    else:
        config = with_parallelism(config, gpu_counts[0], nodes, strategy, offload)
        if answered_by_model_states(config):
            print_zero_states(config, as_json)
            return
        target = targets[0]
        report = fit_with_profiles(config, target, sizes, profile=profile_path)
        if plot is not None:
            plot_fit(report, plot)
        per_rank = None if config.parallelism.single_gpu else rank_answers(report, target, interconnect)
        if as_json:
            emit_json(
                {
                    **report.model_dump(mode="json"),
                    **({"notes": notes} if config_path or notes else {}),
                    **({"per_rank": per_rank_json(report, *per_rank)} if per_rank else {}),
                }
            )
        else:
            for note in notes:
                click.echo(f"note: {note}", err=True)
            print_fit(report)
            if per_rank:
                print_rank_split(report, *per_rank)
        fits = report.max_micro_batch > 0
    if require_fit and not fits:
        sys.exit(1)


_TOKEN_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_tokens(value: str | None) -> int | None:
    """A token count such as 500M, 1.5B or 200000, or a ConfigError naming ``--tokens``."""
    if value is None:
        return None
    text = value.strip().lower().replace("_", "").replace(",", "")
    number, suffix = (text[:-1], text[-1]) if text[-1:] in _TOKEN_SUFFIXES else (text, "")
    try:
        count = round(float(number) * _TOKEN_SUFFIXES[suffix])
    except ValueError:
        count = 0
    if count <= 0:
        raise ConfigError("--tokens", f"'{value}' is not a token count", "e.g. --tokens 500M, 1.5B or 200000")
    return count


def _rate(value: float | None) -> str:
    """Tokens per second in three significant digits: ``49.9k``, ``1.2M``, ``812``."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def print_comparison(comparison: CardComparison) -> None:
    """One row per card, ranked: max micro-batch, tokens/s (low-high), time and price of the tokens."""
    console = Console()
    config = comparison.config
    console.print(
        f"[bold]{config.model}[/] {config.method.value} {config.precision.value}, seq {config.seq_len}, "
        f"accumulation {config.gradient_accumulation}"
    )
    tokens = comparison.tokens
    priced = any(o.usd_per_hour is not None for o in comparison.options)
    amount = _count(tokens) if tokens else "1M"
    columns = ["card", "max mb", "GiB/usable", "tok/s", "low-high", "time"]
    if priced:
        columns += ["$/h", "$"]
    # Short headers, compact values and a light box: the table stays whole at 80 columns.
    table = Table(
        *columns,
        box=box.SIMPLE_HEAD,
        caption=f"time and $ for {amount} tokens; tok/s low-high: the step model's interval",
    )
    for option in comparison.options:
        rate = option.tokens_per_second
        hours = option.hours if tokens else (1_000_000 / rate / 3600 if rate else None)
        row = [
            f"[bold]{option.card}[/]" if option.card == comparison.best else option.card,
            str(option.max_micro_batch) if option.fits else "[red]none[/]",
            f"{option.peak_bytes / GIB:.1f}/{option.available_bytes / GIB:.1f}",
            _rate(rate),
            f"{_rate(option.tokens_per_second_low)}-{_rate(option.tokens_per_second_high)}" if rate else "-",
            format_duration(hours * 3600 if hours is not None else None),
        ]
        if priced:
            row += [
                "-" if option.usd_per_hour is None else f"{option.usd_per_hour:.2f}",
                "-" if option.usd is None else f"{option.usd:,.2f}",
            ]
        table.add_row(*row)
    console.print(table)
    if comparison.best is None:
        console.print("[bold red]Fits on none of these cards, not even at micro-batch 1.[/]")
    else:
        by = "Cheapest" if comparison.ranked_by == "price" else "Fastest"
        console.print(f"[bold green]{by} that fits: {comparison.best}[/] (ranked by {comparison.ranked_by})")
    for option in comparison.options:
        if option.fits and option.tokens_per_second is None:
            console.print(f"{option.card}: no time: {option.note}")
    console.print(f"Includes: {'; '.join(comparison.includes)}.")
    console.print(f"Expected error: {comparison.expected_error}.")


def _count(tokens: int | None) -> str:
    """``500M``: a token count, short."""
    if tokens is None:
        return ""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if tokens >= scale:
            return f"{tokens / scale:g}{suffix}"
    return str(tokens)


# CLI option -> TrainingConfig field ("lora.r": inside ``lora``).
_OPTION_FIELDS = {
    "method": "method",
    "precision": "precision",
    "optimizer": "optimizer",
    "attention": "attention",
    "gradient_checkpointing": "gradient_checkpointing",
    "torch_compile": "torch_compile",
    "seq_len": "seq_len",
    "grad_accum": "gradient_accumulation",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target": "lora.target_modules",
}


def imported_with_flags(
    path: Path, model: str | None, options: dict[str, Any]
) -> tuple[TrainingConfig, list[str]]:
    """The config read from ``path`` with the flags the user actually typed laid over it (an
    option left at its default must not undo the file), and the reader's notes."""
    from planner.configs import read_training_config

    imported = read_training_config(path, model=model)
    context = click.get_current_context()
    given = training_fields(imported.config.model, options)
    fields = imported.config.model_dump()
    for option, field in _OPTION_FIELDS.items():
        if context.get_parameter_source(option) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            section, _, name = field.rpartition(".")
            if section:
                fields[section][name] = given[section][name]
            else:
                fields[name] = given[name]
    return TrainingConfig.model_validate(fields), imported.notes


def print_fit(report: FitReport) -> None:
    console = Console()
    config = report.config
    # transformers' default (sdpa) goes unsaid; another implementation changes memory, so it shows.
    attention = "" if config.attention is Attention.SDPA else f"{config.attention.value} attention, "
    console.print(
        f"[bold]{config.model}[/] {config.method.value} {config.precision.value} {config.optimizer.value}, "
        f"{attention}seq {config.seq_len}, "
        f"checkpointing {'on' if config.gradient_checkpointing else 'off'} "
        f"on [bold]{report.card}[/] ({format_gib(report.at_max.available_bytes)} GiB usable)"
    )
    table = Table("micro-batch", "allocated", "reserved", "device GiB", "headroom", "fits", "source")
    for row in report.rows:
        table.add_row(
            str(row.micro_batch),
            format_gib(row.peak_allocated_bytes),
            format_gib(row.peak_reserved_bytes),
            format_gib(row.peak_bytes),
            format_gib(row.headroom_bytes),
            "[green]yes[/]" if row.fits else "[red]no[/]",
            ("traced + allocator replay" if row.segments else "traced") if row.traced else "linear fit",
        )
    console.print(table)
    console.print(
        "allocated ~ torch.cuda.max_memory_allocated, reserved ~ max_memory_reserved, "
        "device ~ NVML used (reserved + CUDA context, and NCCL's buffers on a rank of a multi-GPU job): "
        "what decides fit."
    )
    if report.max_micro_batch:
        console.print(
            f"[bold green]Max micro-batch: {report.max_micro_batch}[/] (confirmed by a full-depth trace)"
        )
    else:
        console.print("[bold red]Does not fit, not even at micro-batch 1.[/]")
    breakdown = report.at_max.breakdown
    label = f"micro-batch {report.at_max.micro_batch}"
    parts = Table("at " + label, "GiB", title="Where the peak goes")
    for name, value in breakdown.model_dump().items():
        parts.add_row(name.replace("_", " "), format_gib(value))
    parts.add_row("[bold]total (predicted NVML used)[/]", f"[bold]{format_gib(report.at_max.peak_bytes)}[/]")
    console.print(parts)
    if breakdown.collective_buffers:
        console.print(
            f"NCCL buffers: {format_gib(breakdown.collective_buffers)} GiB per rank "
            f"({report.at_max.collective_buffers_basis}); NCCL allocates them outside the caching "
            "allocator, so they count in device-used but not in allocated or reserved "
            "(NCCL_BUFFSIZE, NCCL_MIN_NCHANNELS and NCCL_MAX_NCHANNELS in the environment change them)."
        )
    paged = report.at_max.paged_bytes
    if paged:
        on_host = paged - breakdown.paged_on_device
        console.print(
            f"Paged optimizer state: {format_gib(paged)} GiB in CUDA managed memory, outside the caching "
            "allocator: not in allocated or reserved, and not what decides fit. "
            + (
                f"{format_gib(on_host)} GiB of it does not fit beside the allocator's memory: the driver "
                "pages it to host RAM, and as the optimizer sweeps its state in the same order every "
                "step, all of it migrates in and out each step (the step time counts it)."
                if on_host
                else "It stays on the device while there is room; under memory pressure the driver "
                "pages it to host RAM, at a speed cost."
            )
        )
    if not report.max_micro_batch:
        if report.fixes:
            fixes = Table("change", "max micro-batch", title="What would make it fit")
            for fix in report.fixes:
                fixes.add_row(fix.change, str(fix.max_micro_batch))
            console.print(fixes)
        else:
            console.print("No single change tried makes it fit: a bigger card or several GPUs are needed.")
    if report.measured:
        print_measured(console, report)
    console.print(f"Includes: {'; '.join(report.at_max.includes)}.")
    if report.stack is not None:
        stack = report.stack
        console.print(
            f"Modelled: torch {stack.torch}, transformers {stack.transformers}, optim {stack.trainer_optim} "
            f"({stack.optimizer_implementation}), SDPA {stack.attention}, {stack.batch}."
        )
    console.print(f"Expected error: {report.at_max.expected_error}.")
    linear = next((row for row in report.rows if not row.traced), None)
    if linear is not None and linear.expected_error != report.at_max.expected_error:
        console.print(f"Expected error of linear-fit rows: {linear.expected_error}.")


def print_measured(console: Console, report: FitReport) -> None:
    """The profile's measured micro-batches beside the prediction for them."""
    table = Table(
        "micro-batch",
        "predicted GiB",
        "measured GiB",
        "error",
        "fwd+bwd s",
        "tokens/s",
        title=f"Measured on {report.card} ({report.profile})",
    )
    for row in report.measured:
        measured = row.measured_peak_bytes
        table.add_row(
            str(row.micro_batch),
            format_gib(row.predicted_peak_bytes),
            "-" if measured is None else format_gib(measured),
            "-" if row.error is None else f"{row.error:+.1%}",
            f"{row.forward_backward_seconds:.4f}",
            f"{row.tokens_per_second:,.0f}",
        )
    console.print(table)


def plot_fit(report: FitReport, path: Path) -> None:
    """Write :func:`draw_fit` of ``report`` to ``path``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    draw_fit(report, figure.subplots())
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def draw_fit(report: FitReport, axes: Any) -> None:
    """Predicted memory against micro-batch on integer ticks, the card's usable memory as a line,
    and the max micro-batch marked (the largest that fits, confirmed by a full-depth trace)."""
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter

    sizes = [row.micro_batch for row in report.rows]
    axes.plot(sizes, [row.peak_bytes / GIB for row in report.rows], marker="o", label="predicted peak (NVML)")
    axes.axhline(
        report.at_max.available_bytes / GIB, color="red", linestyle="--", label=f"{report.card} usable"
    )
    best = report.max_micro_batch
    if best:
        axes.axvline(best, color="green", linestyle=":", label=f"max micro-batch {best}")
        axes.plot([best], [report.at_max.peak_bytes / GIB], marker="*", markersize=14, color="green")
    ticks = sorted({*sizes, *([best] if best else [])})
    if ticks[-1] >= 16 * ticks[0]:  # powers of two across decades: a log axis, ticks at the sizes
        axes.set_xscale("log", base=2)
        # Sizes closer than 1.3x would print on top of each other (4096 next to 4097): the max
        # micro-batch keeps its tick, its near neighbours give theirs up.
        spaced: list[int] = []
        for tick in ticks:
            crowded = bool(spaced) and tick < 1.3 * spaced[-1]
            near_best = bool(best) and best / 1.3 < tick < best * 1.3
            if tick == best or (not crowded and not near_best):
                spaced.append(tick)
        axes.xaxis.set_major_locator(FixedLocator(spaced))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.xaxis.set_major_formatter(ScalarFormatter())
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # micro-batches are whole rows
    axes.set_xlabel("micro-batch")
    axes.set_ylabel("GiB")
    axes.set_title(f"{report.config.model} ({report.config.method.value}, seq {report.config.seq_len})")
    axes.legend()


# -- several GPUs -------------------------------------------------------------------------------
