"""The on-disk certificate store: certificates taken off cards ("On Disk" in the counter workflow).

A certificate that is about to be replaced is written here, with what it was and where it came
from, and fsynced (file and directory) *before* the first write to the card, so that no
certificate can be lost. Files are named by the certificate's SHA-256: archiving the same
certificate twice (a resumed load) finds it already there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from provision.errors import ProvisionError
from provision.fsutil import fsync_dir, write_atomically
from provision.logsdir import refuse_link

__all__ = ["CertificateStore", "StoreError", "StoredCertificate", "fsync_dir", "write_atomically"]


class StoreError(ProvisionError):
    exit_code = 3  # the logs directory is part of the environment


@dataclass(frozen=True)
class StoredCertificate:
    path: Path
    sha256: str
    subject: str
    not_after: str
    card_serial: int | None
    slot: str
    slot_name: str | None
    holder: str
    job_id: str
    batch: str
    run_id: str
    archived_at: str

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}



class CertificateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def archive(self, der: bytes, *, card_serial: int | None, slot: str, slot_name: str | None, holder: str,
                job_id: str, batch: str, run_id: str) -> StoredCertificate:  # fmt: skip
        """Save a certificate taken off a card, durably. Returns where it is."""
        import hashlib

        cert = x509.load_der_x509_certificate(der)
        sha = hashlib.sha256(der).hexdigest()
        refuse_link(self.directory, directory=True)  # never archive through a link planted in logs
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            pem_path = self.directory / f"{sha}.pem"
            meta_path = self.directory / f"{sha}.json"
            if meta_path.exists():  # archived before (a resumed load): keep the first record
                existing = self._read(meta_path)
                if existing is not None and pem_path.exists():
                    return existing
            record = StoredCertificate(
                path=pem_path, sha256=sha, subject=cert.subject.rfc4514_string(),
                not_after=cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"), card_serial=card_serial,
                slot=slot, slot_name=slot_name, holder=holder, job_id=job_id, batch=batch, run_id=run_id,
                archived_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            )  # fmt: skip
            write_atomically(pem_path, cert.public_bytes(Encoding.PEM))
            write_atomically(meta_path, (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise StoreError(
                f"the certificate store {self.directory} cannot be written ({exc.strerror}); "
                "nothing was written to the card"
            ) from None
        return record

    def _read(self, meta_path: Path) -> StoredCertificate | None:
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8"))
            data["path"] = Path(data["path"])
            return StoredCertificate(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def list(self) -> list[StoredCertificate]:
        if not self.directory.is_dir():
            return []
        found = [self._read(p) for p in sorted(self.directory.glob("*.json"))]
        return sorted((f for f in found if f is not None), key=lambda s: s.archived_at)

    def check_writable(self) -> None:
        """Before any card is touched: the store must take a file (a full or read-only disk is found here)."""
        refuse_link(self.directory, directory=True)  # never archive through a link planted in logs
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            write_atomically(probe, b"probe\n" * 512)
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"the logs directory {self.directory.parent} cannot be written ({exc.strerror}); "
                "free space or fix permissions, then run again"
            ) from None
