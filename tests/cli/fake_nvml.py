"""Make a test's view of NVML explicit: no GPU at all, or one fake GPU, whatever this machine has."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest
import torch

from planner.schema import MIB


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML finds no driver and torch no CUDA, as on a CPU-only machine."""

    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_gpu(
    monkeypatch: pytest.MonkeyPatch, name: str, total_mib: int, free_mib: int, capability: tuple[int, int]
) -> None:
    """NVML reports one GPU called ``name`` with this memory and compute capability."""
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: index)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda handle: name)
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetMemoryInfo",
        lambda handle: SimpleNamespace(total=total_mib * MIB, free=free_mib * MIB),
    )
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCudaComputeCapability", lambda handle: capability)
