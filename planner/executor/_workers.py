"""One ``planner run`` worker process per GPU of this host (``--gpus 0,1,2,3``).

Each child is an ordinary ``planner run`` on the same storage and study with
``CUDA_VISIBLE_DEVICES`` set to its GPU; the study hands each trial to exactly one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence


def run_workers(gpus: Sequence[str], arguments: Sequence[str]) -> int:
    """Start ``planner run ARGUMENTS`` once per GPU and wait for all; returns the worst exit code."""
    children = []
    for gpu in gpus:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        command = [sys.executable, "-c", "from planner.cli import main; main()", "run", *arguments]
        children.append(subprocess.Popen(command, env=env))
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            child.terminate()
        codes = [child.wait() for child in children]
    return max(codes, key=abs)
