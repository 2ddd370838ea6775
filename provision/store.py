"""The on-disk certificate store: certificates taken off cards ("On Disk" in the counter workflow).

A certificate that is about to be replaced is written here, with what it was and where it came
from, and fsynced (file and directory) *before* the first write to the card, so that no
certificate can be lost. Files are named by the certificate's SHA-256: archiving the same
certificate twice (a resumed load) finds it already there, and trusts it only once it is proven
(``CertificateStore.prove``); a damaged entry is written again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from provision.errors import LogsError, StoreError
from provision.fsutil import fsync_dir, write_atomically
from provision.i18n import msg
from provision.logsdir import open_read, open_regular, refuse_link

__all__ = ["CertificateStore", "StoredCertificate", "fsync_dir", "write_atomically"]


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
        """Save a certificate taken off a card, durably, and prove it. Returns where it is.

        An entry already in the store (a resumed load, the same certificate on another card) is
        trusted only when ``prove`` accepts it; anything else (empty, truncated, garbage, another
        certificate, a symlink, damaged metadata) is rewritten atomically and then proved. A store
        that cannot be made to prove the certificate raises ``StoreError``: the card is not written."""
        import hashlib

        sha = hashlib.sha256(der).hexdigest()
        refuse_link(self.directory, directory=True)  # never archive through a link planted in logs
        try:
            cert: x509.Certificate | None = x509.load_der_x509_certificate(der)
        except ValueError:  # bytes that are not a certificate are kept too, byte for byte
            cert = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            existing = self.prove(sha)
            if existing is not None:
                return existing
            pem_path, meta_path = self._paths(sha)
            record = StoredCertificate(
                path=pem_path, sha256=sha,
                subject=cert.subject.rfc4514_string() if cert else f"(not a certificate: {len(der)} bytes)",
                not_after=cert.not_valid_after_utc.isoformat().replace("+00:00", "Z") if cert else "",
                card_serial=card_serial,
                slot=slot, slot_name=slot_name, holder=holder, job_id=job_id, batch=batch, run_id=run_id,
                archived_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            )  # fmt: skip
            # os.replace puts a regular file where a symlink or a damaged file was.
            write_atomically(pem_path, cert.public_bytes(Encoding.PEM) if cert else _pem(der))
            write_atomically(meta_path, (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode())
            proved = self.prove(sha)
        except OSError as exc:
            raise StoreError(
                msg('the certificate store {directory} cannot be written ({strerror}); nothing was written to the card', directory=self.directory, strerror=exc.strerror)
            ) from None
        if proved is None:
            raise StoreError(
                msg('the certificate store {directory} does not give back the certificate just archived (SHA-256 {value}…); nothing was written to the card', directory=self.directory, value=sha[:16])
            )
        return proved

    def _paths(self, sha: str) -> tuple[Path, Path]:
        return self.directory / f"{sha}.pem", self.directory / f"{sha}.json"

    def prove(self, sha: str) -> StoredCertificate | None:
        """The store's entry for ``sha`` if it holds that very certificate, durably; otherwise None.

        Proof: both files are regular files (not symlinks), the PEM's first CERTIFICATE block decodes
        to bytes whose SHA-256 is ``sha`` (so it parses exactly when the card's certificate does),
        and the metadata parses and names that hash and that file. Both are
        then fsynced with their directory, so an entry written by an earlier process whose fsync
        never happened becomes durable before the card is changed."""
        import hashlib
        import stat

        pem_path, meta_path = self._paths(sha)
        try:
            for path in (pem_path, meta_path):
                if not stat.S_ISREG(path.lstat().st_mode):
                    return None
            stored = _unpem(_read_small(pem_path))
            if stored is None or hashlib.sha256(stored).hexdigest() != sha:
                return None
            record = self._read(meta_path)
            if record is None or record.sha256 != sha or Path(record.path).name != pem_path.name:
                return None
            for path in (pem_path, meta_path):
                fd = open_regular(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(self.directory)
        except (OSError, ValueError, LogsError):
            return None
        return replace(record, path=pem_path)  # where it is now (the logs may have moved)

    def _read(self, meta_path: Path) -> StoredCertificate | None:
        try:
            data = json.loads(_read_small(meta_path).decode("utf-8"))
            data["path"] = Path(data["path"])
            return StoredCertificate(**data)
        except (OSError, ValueError, TypeError, KeyError, LogsError):
            return None

    def list(self) -> list[StoredCertificate]:
        if not self.directory.is_dir():
            return []
        try:  # glob would call an unreadable store empty
            names = sorted(entry.name for entry in os.scandir(self.directory) if entry.name.endswith(".json"))
        except OSError as exc:
            raise StoreError(msg('the certificate store {directory} cannot be read ({strerror}); make it readable by this user', directory=self.directory, strerror=exc.strerror)) from None  # fmt: skip
        found = [self._read(self.directory / name) for name in names]
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
                msg('the logs directory {parent} cannot be written ({strerror}); free space or fix permissions, then run again', parent=self.directory.parent, strerror=exc.strerror)
            ) from None


# A store file is a certificate or its metadata: a few KiB. Anything bigger was not written by us.
_MAX_STORE_FILE = 1024 * 1024


def _read_small(path: Path) -> bytes:
    """A store file's bytes: a regular file (never a FIFO's endless wait), at most _MAX_STORE_FILE
    bytes (ValueError beyond: a planted giant is not ours, and is never held whole)."""
    with open_read(path) as handle:
        data = handle.read(_MAX_STORE_FILE + 1)
    if len(data) > _MAX_STORE_FILE:
        raise ValueError(f"{path} is larger than any store file")
    return data


_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def _pem(der: bytes) -> bytes:
    """PEM of any bytes (RFC 7468 layout, as cryptography writes a certificate's)."""
    import base64

    text = base64.b64encode(der)
    return b"\n".join([_BEGIN, *(text[i : i + 64] for i in range(0, len(text), 64)), _END]) + b"\n"


def _unpem(data: bytes) -> bytes | None:
    """The bytes of the first CERTIFICATE block, strictly decoded; None if there is none."""
    import base64
    import binascii

    start = data.find(_BEGIN)
    end = data.find(_END, start + 1)
    if start < 0 or end < 0:
        return None
    body = b"".join(data[start + len(_BEGIN) : end].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
