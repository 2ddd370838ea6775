"""Each station's audit chain, also in the shared database, and its verification.

A station keeps writing its own hash-chained ``audit.jsonl`` (provision.audit does all the
hashing). ``MirroredAudit`` copies every line it wrote, byte for byte, into ``provision_audit``
(station, seq, line, hash, prev); lines written while the mirror was not there (earlier runs, an
outage) are copied from the files first, so the database holds each station's whole chain.
``verify_stations`` hands each station's lines to ``provision.audit.verify.verify``: the same verifier
as for a file, with the station's seals from the queue's runs.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.audit.records import EVENT_SEAL, LOG_NAME, AuditRecord, bounded_lines, canonical, chain_files
from provision.audit.verify import VerifyResult, verify
from provision.logsdir import open_read
from provision.secrets import Secret


def written_line(record: AuditRecord) -> str:
    """The line as provision.audit wrote it: the canonical body with ``hash`` appended last."""
    body = canonical({k: v for k, v in record.record.items() if k != "hash"})
    return body[:-1].decode("utf-8") + f',"hash":"{record.hash}"}}'


class MirroredAudit:
    """An AuditLog that also writes each record into the queue database under its station's name."""

    def __init__(self, audit: Any, queue: Any) -> None:
        self._audit = audit
        self._queue = queue
        self._synced: int | None = None  # the last seq known to be in the database
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._audit, name)

    def append(self, event: str, **fields: Any) -> AuditRecord:
        record: AuditRecord = self._audit.append(event, **fields)
        self._mirror(record)
        return record

    def seal(self, **fields: Any) -> str:
        return self.append(EVENT_SEAL, **fields).hash

    def close(self) -> None:
        self._audit.close()

    def _mirror(self, record: AuditRecord) -> None:
        with self._lock:
            if self._synced is None:
                self._synced = self._queue.audit_max_seq(self._queue.station)
            if self._synced >= record.seq:
                return
            rows = [(record.seq, written_line(record), record.hash, record.prev)]
            if self._synced < record.seq - 1:  # catch up with what the files hold and the database not
                rows = [r for r in _file_records(Path(self._audit.path)) if self._synced < r[0] < record.seq] + rows
            self._queue.add_audit_records(self._queue.station, rows)
            self._synced = record.seq


def _file_records(path: Path) -> list[tuple[int, str, str, str]]:
    """(seq, line, hash, prev) of every record in a chain's files; unreadable lines are left to verify."""
    found = []
    for file in chain_files(path):
        with open_read(file) as handle:  # a regular file (never a FIFO's wait), in bounded lines
            for raw in bounded_lines(handle):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and type(record.get("seq")) is int:
                    found.append((record["seq"], line, str(record.get("hash")), str(record.get("prev"))))
    return found


@dataclass
class StationResult:
    station: str
    result: VerifyResult

    def to_json(self) -> dict[str, Any]:
        return {"station": self.station, **self.result.to_json()}


def verify_stations(queue: Any, *, key: Secret | None = None, stations: Iterable[str] | None = None) -> list[StationResult]:
    """Every station's chain in the queue, checked by provision.audit.verify.verify with its seals."""
    results = []
    for station in stations if stations is not None else queue.stations():
        with tempfile.TemporaryDirectory(prefix="provision-audit-") as tmp:
            path = Path(tmp) / LOG_NAME
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                for line in queue.audit_lines(station):
                    handle.write(line + "\n")
            if path.stat().st_size == 0:
                continue  # a station that ran nothing yet has no chain
            result = verify(Path(tmp), key=key, seals=queue.seals(station))
            where = f"queue:{station}"
            result.file = where if result.file else None
            result.files = [where]
            result.message = result.message.replace(str(path), where)
            results.append(StationResult(station, result))
    return results

