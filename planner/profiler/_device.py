"""The device a profile runs on: choosing it, naming its card, reading its memory, surviving OOM.

CUDA reports memory three ways: the caching allocator's peak allocated and reserved bytes
(``torch.cuda.max_memory_*``) and NVML's "used" for the process, which adds the context. A CPU
has none of these; there the step's peak of live tensor bytes is measured instead (see
:mod:`planner.profiler._runner`).
"""

from __future__ import annotations

import gc
import os

import torch

from planner.errors import DeviceError
from planner.schema import Card


def resolve_device(requested: str | torch.device | None, card: Card) -> torch.device:
    """The device to profile ``card`` on: ``requested`` if it exists, else the one the card names.

    The host card runs on the CPU; a GPU card needs CUDA on this machine.
    """
    if requested is None:
        requested = "cpu" if card.kind == "cpu" else "cuda"
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError("device", f"unknown device '{requested}'", "use --device cuda or --device cpu")
    if (device.type == "cpu") != (card.kind == "cpu"):
        raise DeviceError(
            "device",
            f"a {device.type} run cannot measure card '{card.name}' ({card.kind})",
            "profile the host card 'cpu' on the CPU, and GPU cards on CUDA",
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device",
            "CUDA was asked but no CUDA device is visible to torch on this machine",
            "profile on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu",
        )
    return device


def local_device(requested: str | None) -> torch.device:
    """This machine's device for ``planner profile``: CUDA when present (or asked), else the CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device",
            "CUDA was asked but no CUDA device is visible to torch on this machine",
            "profile on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu",
        )
    return torch.device(requested)


def device_card(device: torch.device) -> Card:
    """The card a profile taken on ``device`` describes, named as ``planner fit --card`` names it.

    On CUDA that is the local GPU read through NVML (free memory included), filed under the shipped
    card it matches (e.g. ``h100-sxm``) so that ``planner fit --card h100-sxm`` finds the profile.
    """
    from planner.cards import host_card, local_card

    if device.type == "cpu":
        return host_card()
    local = local_card(device.index or 0)
    return local.model_copy(update={"name": profile_card_name(local)})


def profile_card_name(card: Card) -> str:
    """The name profiles of ``card`` are filed under: the shipped card NVML's name matches, if any."""
    if card.name != "local":
        return card.name
    from planner.cards import load_card
    from planner.errors import UnknownCardError

    try:
        return load_card(card.display_name).name
    except UnknownCardError:
        return card.display_name.lower().replace(" ", "-")


def device_name(device: torch.device, card: Card) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else card.display_name


def release_memory(device: torch.device) -> None:
    """Free what dead references still hold: Python cycles first, then the CUDA allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock reading covers the work it times."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nvml_used_bytes(device: torch.device) -> int | None:
    """NVML's "used" memory of this process on ``device`` (context included), or None if unreadable.

    NVML lists processes by host pid; inside a container the pid differs, so when no pid matches
    and ours is the only process on the GPU, that process is taken to be us.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = _nvml_handle(pynvml, device)
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ours = [p for p in processes if p.pid == os.getpid()] or (processes if len(processes) == 1 else [])
        used = [p.usedGpuMemory for p in ours if p.usedGpuMemory is not None]
        return int(sum(used)) if used else None
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml: object, device: torch.device) -> object:
    """NVML's handle of the torch device: by UUID, since CUDA_VISIBLE_DEVICES renumbers indices."""
    properties = torch.cuda.get_device_properties(device)
    uuid = str(getattr(properties, "uuid", ""))
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(  # type: ignore[attr-defined]
                uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            )
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)  # type: ignore[attr-defined]
