"""The host CPU as a pseudo-card named ``cpu``: where tiny sweeps and CPU profiles run.

Its memory is the machine's RAM (available, not total, as with a local GPU); it has no datasheet
throughput, so its step times come only from measured profiles.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from planner.schema import MIB, Card

HOST_CARD_NAME = "cpu"


def _available_ram_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo where there is one, else the total physical memory."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_card() -> Card:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Card(
        name=HOST_CARD_NAME,
        kind="cpu",
        display_name=f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)",
        vram_gb=total / 1e9,
        memory_total_mib=total // MIB,
        compute_capability="0.0",
        tflops={"bf16": None, "fp16": None, "fp32": None},
        bandwidth_gbs=None,
        source="this machine: RAM from the OS; no datasheet throughput (step times come from profiles)",
        free_bytes=_available_ram_bytes(),
    )
