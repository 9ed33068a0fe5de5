"""Out-of-memory events seen in real runs, fed back as a cap on later predictions.

The executor appends one line per OOM it recovers from to ``oom.jsonl`` beside the measured
profiles. A prediction can be wrong in one direction that matters: a micro-batch that ran out of
memory on a card will do so again for the same config, so later plans and fits of that config on
that card never go above the largest micro-batch below the smallest one that failed.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.profiler._store import measured_dir
from planner.schema import ProfileKey, TrainingConfig

logger = logging.getLogger(__name__)


class OomLog:
    """The ``oom.jsonl`` of one measured-profiles directory."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.path = Path(directory if directory is not None else measured_dir()) / "oom.jsonl"

    def record(
        self, config: TrainingConfig, card: str, micro_batch: int, predicted_peak_bytes: int | None
    ) -> None:
        """Append an OOM of ``config`` at ``micro_batch`` on ``card`` (accumulating or not, as the
        config's gradient accumulation says: earlier gradients alive make the peak higher)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "key": ProfileKey.of(config, card).model_dump(mode="json"),
            "accumulating": config.gradient_accumulation > 1,
            "micro_batch": micro_batch,
            "predicted_peak_bytes": predicted_peak_bytes,
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self, card: str | None = None) -> list[dict[str, Any]]:
        """Every readable record (optionally only those on ``card``); a damaged line is skipped."""
        if not self.path.exists():
            return []
        records = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record_card = record["key"]["card"]
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s:%d is not an OOM record; skipped", self.path, number)
                continue
            if card is None or record_card == card:
                records.append(record)
        return records

    def limit(self, config: TrainingConfig, card: str) -> int | None:
        """The largest micro-batch ``config`` may use on ``card`` by what ran out of memory before:
        one below the smallest recorded OOM of the same key (and accumulation state); None if none.

        An OOM while accumulating says nothing about a step without accumulation (its peak is
        lower), but one without accumulation caps the accumulating step too.
        """
        key = ProfileKey.of(config, card).model_dump(mode="json")
        accumulating = config.gradient_accumulation > 1
        failed = [
            int(r["micro_batch"])
            for r in self.records(card)
            if r["key"] == key and (accumulating or not r.get("accumulating", True))
        ]
        return min(failed) - 1 if failed else None
