"""The local GPU through NVML: its name, total and *free* memory, and what other processes hold."""

from __future__ import annotations

from planner.errors import DeviceError
from planner.schema import MIB, Card


def local_card(index: int = 0) -> Card:
    """The GPU at ``index`` as a :class:`Card`, with ``free_bytes`` set to what is actually free.

    Datasheet figures (TFLOP/s, bandwidth) come from the matching shipped card when NVML's name is a
    known alias; otherwise they are unknown (None) and only memory questions can be answered.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        raise DeviceError(
            "card", "no NVIDIA GPU visible through NVML on this machine", "name a card, e.g. --card rtx-4090"
        ) from None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    finally:
        pynvml.nvmlShutdown()
    from planner.cards._catalog import shipped_cards

    known = next((c for c in shipped_cards() if name in (c.display_name, *c.aliases)), None)
    fields = (
        known.model_dump()
        if known is not None
        else {
            "aliases": [],
            "vram_gb": memory.total / 1e9,
            "tflops": {"bf16": None, "fp16": None, "fp32": None},
            "bandwidth_gbs": None,
            "source": "NVML (no datasheet figures: unknown card)",
        }
    )
    fields.update(
        name="local",
        display_name=name,
        memory_total_mib=memory.total // MIB,
        compute_capability=f"{major}.{minor}",
        free_bytes=int(memory.free),
    )
    return Card.model_validate(fields)
