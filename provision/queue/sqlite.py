"""The embedded backend: today's SQLite journal, one station, every claim granted.

The logs lock already makes this process the only writer of its journal, so a claim has nobody to
lose against; the runner's own state (in doubt or not) decides whether a load resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provision.journal import Journal
from provision.queue.base import Claim


class SqliteQueue(Journal):
    shared = False

    def __init__(self, path: Path, *, station: str) -> None:
        super().__init__(path)
        self.station = station

    def claim(self, batch: str, job_id: str, run_id: str, *, card_serial: int | None) -> Claim:
        return Claim(batch, job_id, granted=True, station=self.station)

    def release(self, batch: str, job_id: str) -> None:
        pass

    def mirror_audit(self, audit: Any) -> Any:
        return audit
