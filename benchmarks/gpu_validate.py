"""The estimator against a real CUDA GPU (issue 2, acceptance d): predicted vs measured peak memory
and predicted vs real max micro-batch, for 14 configs.

Three model sizes (Qwen2.5 0.5B, Llama 3.2 3B, Llama 3.1 8B), full / LoRA / QLoRA, bf16 and
fp32, checkpointing on and off, sequence lengths 512 and 1024, several micro-batches. Models are
built from their shipped configs with random init directly on the GPU: no weights are read or
downloaded. Per micro-batch, the step sequence that reaches a run's peak (two training steps, an
eval pass, a training step; see ``planner.profiler.StepRunner.probe``) is measured with
``torch.cuda.max_memory_allocated``/``max_memory_reserved`` and NVML, against the estimator's
``peak_allocated_bytes``/``peak_reserved_bytes``/``peak_bytes`` (default, uncalibrated overheads).
The real max micro-batch comes from the profiler's finder (a size that fits and the size above
that does not, both run). Targets: median error <= 3%, worst <= 6% (NVML), max micro-batch exact
in >= 90% of configs.

Multi-GPU configs (issue 13 e: DDP and FSDP per rank) run on every lent machine: with as many
GPUs as the job has, as real NCCL ranks (spawned processes, one per GPU), each rank's peaks
measured; with fewer, as one real rank on GPU 0 in torch's fake process group of the job's size
(``planner.distributed.fake_mesh``): FSDP's shards, all-gathered layer parameters and
reduce-scattered gradients, and DDP's buckets are allocated for real with the sharding of N, so
a single card still checks the per-rank prediction. The rows say which.

Writes benchmarks/results/gpu_validate-<card>.json and .md. Stops starting configs after
``--budget-seconds`` (default 420) so that it fits one 9-minute call; what ran is written.

    python benchmarks/gpu_validate.py                 # on a CUDA machine
    python benchmarks/gpu_validate.py --smoke         # a tiny config on this CPU: the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "examples" / "tiny-llama"

# (name, model, method, precision, gradient checkpointing, seq_len, micro-batches), sizes
# interleaved so that a run cut by the time budget still covers all three.
CONFIGS: list[tuple[str, str, str, str, bool, int, list[int]]] = [
    ("0.5b-full-bf16", "Qwen/Qwen2.5-0.5B", "full", "bf16", False, 512, [1, 4, 8]),
    ("3b-lora-bf16", "meta-llama/Llama-3.2-3B", "lora", "bf16", False, 512, [1, 4]),
    ("8b-qlora-bf16-ckpt", "meta-llama/Llama-3.1-8B", "qlora", "bf16", True, 1024, [1, 2]),
    ("0.5b-full-fp32-ckpt", "Qwen/Qwen2.5-0.5B", "full", "fp32", True, 1024, [1, 2, 4]),
    ("3b-qlora-bf16-ckpt", "meta-llama/Llama-3.2-3B", "qlora", "bf16", True, 1024, [1, 4]),
    ("8b-lora-bf16-ckpt", "meta-llama/Llama-3.1-8B", "lora", "bf16", True, 512, [1, 4]),
    ("0.5b-lora-bf16", "Qwen/Qwen2.5-0.5B", "lora", "bf16", False, 1024, [1, 4]),
    ("3b-full-bf16-ckpt", "meta-llama/Llama-3.2-3B", "full", "bf16", True, 512, [1, 2]),
    ("8b-qlora-fp32", "meta-llama/Llama-3.1-8B", "qlora", "fp32", False, 512, [1]),
    ("0.5b-qlora-bf16-ckpt", "Qwen/Qwen2.5-0.5B", "qlora", "bf16", True, 512, [1, 8]),
    ("3b-lora-fp32-ckpt", "meta-llama/Llama-3.2-3B", "lora", "fp32", True, 1024, [1, 2]),
    ("8b-lora-bf16", "meta-llama/Llama-3.1-8B", "lora", "bf16", False, 1024, [1]),
    ("0.5b-lora-fp32", "Qwen/Qwen2.5-0.5B", "lora", "fp32", False, 512, [1, 4]),
    ("8b-qlora-bf16-ckpt-512", "meta-llama/Llama-3.1-8B", "qlora", "bf16", True, 512, [4, 8]),
]
SMOKE = [("tiny-full-fp32", str(TINY_MODEL), "full", "fp32", False, 64, [1, 2])]

# Multi-GPU: (name, model, method, precision, checkpointing, seq_len, micro-batches, strategy, GPUs).
# FSDP steps with fused AdamW, the optimizer the sharded trace follows.
RANK_CONFIGS: list[tuple[str, str, str, str, bool, int, list[int], str, int]] = [
    ("8b-full-bf16-ckpt-fsdp8", "meta-llama/Llama-3.1-8B", "full", "bf16", True, 2048, [1, 2], "fsdp", 8),
    ("3b-lora-bf16-ddp2", "meta-llama/Llama-3.2-3B", "lora", "bf16", False, 512, [1, 4], "ddp", 2),
    ("3b-full-bf16-ckpt-fsdp4", "meta-llama/Llama-3.2-3B", "full", "bf16", True, 1024, [1, 4], "fsdp", 4),
    ("0.5b-full-bf16-ddp4", "Qwen/Qwen2.5-0.5B", "full", "bf16", False, 512, [1, 4], "ddp", 4),
    ("8b-lora-bf16-ckpt-fsdp2", "meta-llama/Llama-3.1-8B", "lora", "bf16", True, 1024, [1, 4], "fsdp", 2),
]
RANK_SMOKE = [
    ("tiny-full-fp32-fsdp2", str(TINY_MODEL), "full", "fp32", False, 64, [1, 2], "fsdp", 2),
    ("tiny-full-fp32-ddp2", str(TINY_MODEL), "full", "fp32", False, 64, [1, 2], "ddp", 2),
]
NCCL_TIMEOUT_SECONDS = 600


def _error(predicted: int, measured: int | None) -> float | None:
    return None if not measured else (predicted - measured) / measured


def validate(spec: tuple[str, str, str, str, bool, int, list[int]], card: Any, device: Any) -> dict[str, Any]:
    """One config: each micro-batch's predicted vs measured memory, and the max micro-batch."""
    from planner.estimator import Estimator
    from planner.profiler import Prediction, StepRunner, runner_probe, search_max_micro_batch
    from planner.schema import TrainingConfig

    name, model, method, precision, checkpointing, seq_len, sizes = spec
    config = TrainingConfig(
        model=model, method=method, precision=precision, gradient_checkpointing=checkpointing, seq_len=seq_len
    )
    start = time.perf_counter()
    estimator = Estimator(config, card)
    prediction = Prediction.of(estimator)
    estimate_seconds = time.perf_counter() - start
    runner = StepRunner(config, device)
    rows = []
    try:
        for size in sizes:
            # Traced at full depth, so on CUDA the allocator replay predicts reserved and segments.
            memory = runner.attempt(runner.probe, size)
            rows.append(_memory_row(size, estimator.estimate(size), memory, prediction.context_bytes))
        search = search_max_micro_batch(prediction, runner_probe(runner, prediction))
    finally:
        runner.close()
    return {
        "name": name,
        "config": config.model_dump(mode="json"),
        "rows": rows,
        "predicted_max": prediction.max_micro_batch,
        "real_max": search.max_micro_batch,
        "max_exact": prediction.max_micro_batch == search.max_micro_batch,
        "probes": [p.model_dump(mode="json") for p in search.probes],
        "estimate_seconds": round(estimate_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _rank_config(spec: tuple[str, str, str, str, bool, int, list[int], str, int]) -> Any:
    from planner.schema import TrainingConfig

    _, model, method, precision, checkpointing, seq_len, _, strategy, gpus = spec
    return TrainingConfig(
        model=model,
        method=method,
        precision=precision,
        optimizer="adamw",
        gradient_checkpointing=checkpointing,
        seq_len=seq_len,
        parallelism={"gpus_per_node": gpus, "strategy": strategy},
    )


def _memory_row(size: int, predicted: Any, memory: Any, context: int) -> dict[str, Any]:
    measured_device = None if memory is None else memory.device_bytes(context)
    return {
        "micro_batch": size,
        "predicted_fits": predicted.fits,
        "out_of_memory": memory is None,
        "predicted_allocated": predicted.peak_allocated_bytes,
        "predicted_reserved": predicted.peak_reserved_bytes,
        "predicted_device": predicted.peak_bytes,
        "measured_allocated": None if memory is None else memory.allocated,
        "measured_reserved": None if memory is None else memory.reserved,
        "measured_nvml": None if memory is None else memory.nvml_used,
        "measured_live": None if memory is None else memory.live,
        "measured_device": measured_device,
        "error_allocated": _error(predicted.peak_allocated_bytes, memory and memory.allocated),
        "error_reserved": _error(predicted.peak_reserved_bytes, memory and memory.reserved),
        "error_device": _error(predicted.peak_bytes, measured_device),
        "predicted_segments": predicted.segments,
        "measured_segments": None if memory is None else memory.segments,
    }


def _nccl_rank(rank: int, port: int, config_json: str, sizes: list[int], results: Any) -> None:
    """One real rank of the job on GPU ``rank`` (a spawned process): its probe at each size."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from planner.distributed import rank_preparer
    from planner.profiler import StepRunner
    from planner.schema import TrainingConfig

    config = TrainingConfig.model_validate_json(config_json)
    world = config.parallelism.world_size
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, device_id=device
    )
    try:
        mesh = init_device_mesh("cuda", (world,))
        runner = StepRunner(config, device, prepare=rank_preparer(config, mesh=mesh, real=True))
        for size in sizes:
            memory = runner.attempt(runner.probe, size)
            results.put((rank, size, None if memory is None else memory.__dict__))
        runner.close()
    finally:
        dist.destroy_process_group()


def _nccl_probes(config: Any, sizes: list[int]) -> dict[int, Any]:
    """Micro-batch -> the worst rank's probe (by reserved) of a real NCCL job on this host's GPUs."""
    import multiprocessing

    from planner.distributed import free_port
    from planner.profiler import ProbeMemory

    port = free_port()
    context = multiprocessing.get_context("spawn")  # CUDA is initialised in this process
    results = context.Queue()
    world = config.parallelism.world_size
    processes = [
        context.Process(target=_nccl_rank, args=(rank, port, config.model_dump_json(), sizes, results))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    worst: dict[int, Any] = {}
    try:
        for _ in range(world * len(sizes)):
            _, size, fields = results.get(timeout=NCCL_TIMEOUT_SECONDS)
            memory = None if fields is None else ProbeMemory(**fields)
            known = worst.get(size, ...)
            if memory is None or known is None:
                worst[size] = None  # one rank out of memory: the job is
            elif known is ... or (memory.reserved or 0) > (known.reserved or 0):
                worst[size] = memory
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return worst


def _in_fake_world(prepare: Any) -> Any:
    """``prepare``, with DDP's all-reduce replaced by torch's no-op comm hook.

    The fake process group completes an all-reduce without a tensor result, which DDP's default
    hook needs; ``noop_hook`` returns the bucket as it is. Memory is the same: NCCL's all-reduce
    runs in place on the bucket DDP's Reducer allocated, and that bucket is still there.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.debugging_hooks import noop_hook
    from torch.nn.parallel import DistributedDataParallel

    def prepared(model: Any) -> Any:
        model = prepare(model)
        if isinstance(model, DistributedDataParallel):
            model.register_comm_hook(None, noop_hook)
        return model

    return prepared


def validate_ranks(
    spec: tuple[str, str, str, str, bool, int, list[int], str, int], card: Any, device: Any
) -> dict[str, Any]:
    """One multi-GPU config: the per-rank prediction vs real ranks or one rank of a fake world."""
    import torch

    from planner.distributed import fake_mesh, rank_preparer
    from planner.estimator import Estimator
    from planner.profiler import Prediction, StepRunner

    name, sizes, gpus = spec[0], spec[6], spec[8]
    config = _rank_config(spec)
    start = time.perf_counter()
    estimator = Estimator(config, card)
    context = Prediction.of(estimator).context_bytes
    predicted = {size: estimator.estimate(size) for size in sizes}
    real_ranks = device.type == "cuda" and torch.cuda.device_count() >= gpus
    if real_ranks:
        measured = _nccl_probes(config, sizes)
    else:
        mesh = fake_mesh(config.parallelism, device.type)
        prepare = _in_fake_world(rank_preparer(config, mesh=mesh, real=True))
        runner = StepRunner(config, device, prepare=prepare)
        try:
            measured = {size: runner.attempt(runner.probe, size) for size in sizes}
        finally:
            runner.close()
    return {
        "name": name,
        "config": config.model_dump(mode="json"),
        "measured_as": f"{gpus} real NCCL ranks" if real_ranks else f"rank 0 of a fake world of {gpus}",
        "rows": [_memory_row(size, predicted[size], measured[size], context) for size in sizes],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Errors over every measured row; the single-GPU and the per-rank (multi-GPU) configs apart."""
    single = [c for c in results if "max_exact" in c]
    per_rank = [c for c in results if "measured_as" in c]
    return {**_errors(single), "max_micro_batch_exact": _share_exact(single), "per_rank": _errors(per_rank)}


def _share_exact(results: list[dict[str, Any]]) -> float | None:
    return sum(c["max_exact"] for c in results) / len(results) if results else None


def _errors(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(r["error_device"]) for c in results for r in c["rows"] if r["error_device"] is not None]
    allocated = [
        abs(r["error_allocated"]) for c in results for r in c["rows"] if r["error_allocated"] is not None
    ]
    reserved = [
        abs(r["error_reserved"]) for c in results for r in c["rows"] if r["error_reserved"] is not None
    ]
    segments = [
        (r["predicted_segments"], r["measured_segments"])
        for c in results
        for r in c["rows"]
        if r.get("predicted_segments") is not None and r.get("measured_segments")
    ]
    return {
        "configs": len(results),
        "measured_points": len(errors),
        "median_abs_error_device": statistics.median(errors) if errors else None,
        "worst_abs_error_device": max(errors) if errors else None,
        "median_abs_error_allocated": statistics.median(allocated) if allocated else None,
        # Issue 10 d targets: reserved median <= 2%, worst <= 5%; max micro-batch exact >= 90%.
        "median_abs_error_reserved": statistics.median(reserved) if reserved else None,
        "worst_abs_error_reserved": max(reserved) if reserved else None,
        "median_abs_error_segments": (
            statistics.median(abs(p - m) / m for p, m in segments) if segments else None
        ),
    }


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def markdown(card: Any, results: list[dict[str, Any]], totals: dict[str, Any], device_name: str) -> str:
    lines = [
        f"# Estimator vs {device_name} ({card.name})",
        "",
        "Predicted (default context; reserved and segments by the allocator replay) vs measured per "
        "micro-batch; device = NVML used "
        "(reserved + context) on CUDA, live tensor bytes on the CPU smoke run. GiB.",
        "",
        "| config | micro-batch | pred alloc | alloc | err | pred reserved | reserved | err "
        "| pred device | device | err | pred segments | segments |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        label = c["name"] + (f" ({c['measured_as']})" if "measured_as" in c else "")
        for r in c["rows"]:
            lines.append(
                f"| {label} | {r['micro_batch']} | {_gib(r['predicted_allocated'])} | "
                f"{_gib(r['measured_allocated'])} | {_pct(r['error_allocated'])} | "
                f"{_gib(r['predicted_reserved'])} | {_gib(r['measured_reserved'])} | "
                f"{_pct(r['error_reserved'])} | {_gib(r['predicted_device'])} | "
                f"{_gib(r['measured_device'])} | {_pct(r['error_device'])} | "
                f"{r.get('predicted_segments') or '-'} | {r.get('measured_segments') or '-'} |"
                + (" OOM" if r["out_of_memory"] else "")
            )
    lines += [
        "",
        "| config | predicted max | real max | exact | probes | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for c in results:
        if "max_exact" not in c:
            continue
        lines.append(
            f"| {c['name']} | {c['predicted_max']} | {c['real_max']} | {'yes' if c['max_exact'] else 'no'} | "
            f"{len(c['probes'])} | {c['seconds']} |"
        )
    lines += ["", "```", json.dumps(totals, indent=2), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="Run one tiny config on this CPU.")
    parser.add_argument("--only", help="Comma-separated config names to run.")
    parser.add_argument("--budget-seconds", type=float, default=420.0)
    parser.add_argument(
        "--out", type=Path, help="Results folder (default: benchmarks/results; smoke: a temp dir)."
    )
    args = parser.parse_args()

    import torch

    from planner.cards import host_card
    from planner.estimator import Estimator
    from planner.profiler import device_card

    if args.smoke:
        device = torch.device("cpu")
        # The host card with room for a few micro-batches, so the finder has a real answer.
        config_card = host_card()
        from planner.schema import TrainingConfig

        line = Estimator(TrainingConfig(model=str(TINY_MODEL), precision="fp32", seq_len=64), config_card)
        card = config_card.model_copy(update={"free_bytes": line.estimate(6).peak_bytes + 1})
        specs, rank_specs = SMOKE, RANK_SMOKE
        device_name = card.display_name
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_validate.py needs a CUDA GPU (run with --smoke to check it on this CPU)")
        device = torch.device("cuda")
        card = device_card(device)  # free memory read before this process allocates anything
        specs, rank_specs = CONFIGS, RANK_CONFIGS
        device_name = torch.cuda.get_device_name(device)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for s in specs if s[0] in wanted]
        rank_specs = [s for s in rank_specs if s[0] in wanted]
    out = args.out or (Path(tempfile.mkdtemp()) if args.smoke else ROOT / "benchmarks" / "results")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    jobs = [(spec[0], validate, spec) for spec in specs]
    jobs += [(spec[0], validate_ranks, spec) for spec in rank_specs]
    for name, check, spec in jobs:
        if time.perf_counter() - started > args.budget_seconds:
            skipped.append(name)
            continue
        print(f"[{time.perf_counter() - started:6.0f} s] {name}", flush=True)
        try:
            results.append(check(spec, card, device))  # type: ignore[operator]
        except Exception as exc:  # one config failing must not lose the others' results
            print(f"  failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
            results.append({"name": name, "error": f"{type(exc).__name__}: {exc}", "rows": []})
        done = results[-1]
        for r in done["rows"]:
            print(
                f"  m={r['micro_batch']:<4} device pred {_gib(r['predicted_device'])} meas "
                f"{_gib(r['measured_device'])} ({_pct(r['error_device'])})",
                flush=True,
            )
        if "real_max" in done:
            print(
                f"  max micro-batch: predicted {done['predicted_max']}, real {done['real_max']}", flush=True
            )
    ran = [r for r in results if "error" not in r]
    totals = {**summary(ran), "failed": [r["name"] for r in results if "error" in r], "skipped": skipped}
    stem = f"gpu_validate-{'smoke' if args.smoke else card.name}"
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "card": card.model_dump(mode="json"),
        "device": device_name,
        "summary": totals,
        "configs": results,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(markdown(card, ran, totals, device_name))
    print(json.dumps(totals, indent=2))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
