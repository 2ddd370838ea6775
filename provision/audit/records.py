"""The audit record format: canonical encoding, hashing, one line inspected on its own, the files
of a chain, anchors, and the names of events and problems. Pure; no chain state, no writing."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import socket
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from provision.errors import AuditError, EnvironmentProblem, SecretInAuditError, UsageError
from provision.i18n import msg
from provision.logsdir import open_read
from provision.secrets import Secret

GENESIS = "0" * 64
MAC_NAME = "hmac-sha256"
LOG_NAME = "audit.jsonl"
TIMESTAMPS_NAME = "audit-timestamps.jsonl"  # RFC 3161 tokens of seals, beside the log
EVENT_TAIL_ACCEPTED = "audit_tail_accepted"
EVENT_SEAL = "seal"

# Problem kinds of VerifyResult.problem (and of `audit verify --json`).
MODIFIED = "modified"
DELETED = "deleted"
INSERTED = "inserted"
REORDERED = "reordered"
TRUNCATED = "truncated"
SEAL_MISMATCH = "seal-mismatch"
NOT_AN_AUDIT_LOG = "not-an-audit-log"
KEY_REQUIRED = "key-required"
MAC_MISSING = "mac-missing"
ANCHOR_MISMATCH = "anchor-mismatch"
TIMESTAMP_INVALID = "timestamp-invalid"
TIMESTAMP_MISSING = "timestamp-missing"  # a seal asked a TSA for a token that is not kept, and no failure says why
EVENT_TIMESTAMP_FAILED = "timestamp_failed"
PROBLEMS = (
    MODIFIED,
    DELETED,
    INSERTED,
    REORDERED,
    TRUNCATED,
    SEAL_MISMATCH,
    NOT_AN_AUDIT_LOG,
    KEY_REQUIRED,
    MAC_MISSING,
    ANCHOR_MISMATCH,
    TIMESTAMP_INVALID,
    TIMESTAMP_MISSING,
)

# Set by the log itself; a caller's field of the same name would forge the chain.
RESERVED_FIELDS = frozenset(
    {"seq", "time", "event", "operator", "os_user", "host", "tool_version", "prev", "hash", "mac", "rotated_from"}
)
# Never a key anywhere in a record: a verifier finds these by their bytes.
_CHAIN_KEYS = frozenset({"seq", "prev", "hash", "mac"})
# Field names that can only mean a secret value (pin_tries_left is fine, pin is not).
SECRET_FIELD_NAMES = frozenset(
    {"pin", "puk", "password", "passphrase", "management_key", "secret", "audit_key", "key_value"}
)

HASH_KEY = b',"hash":"'
MAC_MARK = b'"mac":"hmac-sha256"'
_ROLLED_RE = re.compile(r"^(?P<stem>.+)-(?P<ts>\d{8}T\d{12}Z)(?P<suffix>\.jsonl)$")


# ----------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class AuditRecord:
    """One written event, as it is on disk."""

    seq: int
    time: str
    event: str
    hash: str
    prev: str
    record: Mapping[str, Any]
    file: Path


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical form: sorted keys, compact separators, UTF-8, no NaN."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC with a Z and microseconds: 2025-11-25T10:45:12.123456Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def clean_value(value: Any, where: str) -> Any:
    """A JSON-ready copy of a field value; refuses secrets and anything that could hide one."""
    if isinstance(value, Secret):
        raise SecretInAuditError(
            f"audit field {where} is a Secret; secrets are never written to the audit log"
        )
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"audit field {where} is not valid Unicode text") from None
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"audit field {where} is not a finite number")
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        return rfc3339(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        raise SecretInAuditError(
            f"audit field {where} is bytes; write a fingerprint or length, never raw bytes"
        )
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"audit field {where} has a key that is not text: {k!r}")
            check_field_name(k, f"{where}.{k}", nested=True)
            out[k] = clean_value(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [clean_value(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise ValueError(f"audit field {where} has a type the audit log does not write: {type(value).__name__}")


def check_field_name(name: str, where: str, *, nested: bool) -> None:
    if name.lower() in SECRET_FIELD_NAMES:
        raise SecretInAuditError(
            f"audit field {where} names a secret; write e.g. pin_tries_left, never a value"
        )
    if nested and name in _CHAIN_KEYS:
        raise ValueError(f"audit field {where} uses a name reserved for the chain ({name})")


def operator_name(text: str) -> str:
    """The operator's name as given (``--operator``, ``$PROVISION_OPERATOR``, the prompt), checked.

    A name is one line of printable text: control and format characters (newlines, escapes,
    bidirectional overrides) could forge lines in a terminal or a report, so they are refused."""
    name = text.strip()
    if not name:
        raise UsageError(msg("the operator's name is empty; give --operator NAME (or $PROVISION_OPERATOR)"))
    if len(name) > 200:
        raise UsageError(msg("the operator's name is longer than 200 characters; give a shorter --operator NAME"))
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise UsageError(
            msg("the operator's name contains control characters (newline, escape, direction marks); give it as plain text with --operator NAME")
        )
    return name


def os_user() -> str:
    """The OS user. getpass.getuser raises on Windows services and containers without a passwd entry."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - any failure: fall back, the log must still be written
        for name in ("USERNAME", "USER", "LOGNAME"):
            if os.environ.get(name):
                return os.environ[name]
        getuid = getattr(os, "getuid", None)
        return f"uid:{getuid()}" if getuid else "unknown"


def host_name() -> str:
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------------------------
# one line, inspected without any chain state


@dataclass
class InspectedLine:
    raw: bytes
    complete: bool  # ends with a newline
    status: str  # "ok", "bad-hash", "key-required", "unknown-mac", "not-record"
    keyed: bool = False
    seq: int | None = None
    prev: str | None = None
    hash: str | None = None
    record: dict[str, Any] | None = None


class Hasher:
    def __init__(self, key: Secret | None) -> None:
        self._mac = hmac.new(key.reveal(), digestmod="sha256") if key is not None else None

    @property
    def has_key(self) -> bool:
        return self._mac is not None

    def plain(self, body: bytes) -> str:
        return hashlib.sha256(body).hexdigest()

    def keyed(self, body: bytes) -> str:
        assert self._mac is not None
        mac = self._mac.copy()
        mac.update(body)
        return mac.hexdigest()


def inspect_line(raw: bytes, hasher: Hasher) -> InspectedLine:
    complete = raw.endswith(b"\n")
    line = raw[:-1] if complete else raw
    if line.endswith(b"\r"):
        line = line[:-1]
    result = InspectedLine(raw=raw, complete=complete, status="not-record")
    try:
        record = json.loads(line)
    except ValueError:
        return result
    if not isinstance(record, dict):
        return result
    seq, prev, digest = record.get("seq"), record.get("prev"), record.get("hash")
    if not (type(seq) is int and isinstance(prev, str) and isinstance(digest, str) and "event" in record):
        return result
    result.record, result.seq, result.prev, result.hash = record, seq, prev, digest
    mac = record.get("mac")
    if mac is not None and mac != MAC_NAME:
        result.status = "unknown-mac"
        return result
    result.keyed = mac == MAC_NAME
    if result.keyed and not hasher.has_key:
        result.status = "key-required"
        return result
    without = {k: v for k, v in record.items() if k != "hash"}
    body = canonical(without)
    expected = hasher.keyed(body) if result.keyed else hasher.plain(body)
    # The bytes must be exactly what we write, or a re-serialised edit would pass here and fail the
    # fast path; both agree when the line is the canonical body with hash appended.
    as_written = body[:-1] + HASH_KEY + digest.encode("ascii", "replace") + b'"}'
    result.status = "ok" if (hmac.compare_digest(expected, digest) and as_written == line) else "bad-hash"
    return result


# ----------------------------------------------------------------------------------------------
# files of a chain


def rolled_name(current: Path, moment: datetime) -> Path:
    return current.with_name(f"{current.stem}-{moment.astimezone(UTC):%Y%m%dT%H%M%S%f}Z{current.suffix}")


# No record comes near this (the largest, a run's end with its counts, is a few kB): a longer line
# is a damaged or planted file, and reading it stops holding more than this.
MAX_RECORD_BYTES = 1 << 20


def bounded_lines(handle: BinaryIO) -> Iterator[bytes]:
    """The lines of an audit file, as iterating the file gives them, except that a line longer than
    MAX_RECORD_BYTES comes as its first MAX_RECORD_BYTES bytes only (no newline: it cannot verify)
    and the rest of it is skipped, so a file that is one endless line is never held in memory."""
    while True:
        raw = handle.readline(MAX_RECORD_BYTES)
        if not raw:
            return
        if len(raw) == MAX_RECORD_BYTES and not raw.endswith(b"\n"):
            while True:
                more = handle.readline(MAX_RECORD_BYTES)
                if not more or more.endswith(b"\n"):
                    break
        yield raw


def chain_files(current: Path) -> list[Path]:
    """The rolled files of ``current`` (oldest first), then ``current`` itself if it exists."""
    rolled = []
    if current.parent.is_dir():
        for entry in current.parent.iterdir():
            m = _ROLLED_RE.match(entry.name)
            if m and m["stem"] == current.stem and m["suffix"] == current.suffix and entry.is_file():
                rolled.append(entry)
    rolled.sort(key=lambda p: p.name)
    return [*rolled, current] if current.is_file() else rolled


# ----------------------------------------------------------------------------------------------
# anchors: a witness file of seals on other storage


@dataclass(frozen=True)
class AnchorEntry:
    """One line of an anchor file: a seal as it was written, and where it is in the anchor."""

    seq: int
    hash: str
    line: int
    time: str | None = None
    run_id: str | None = None


HEX64 = re.compile(r"^[0-9a-f]{64}$")


def read_stamps(path: Path) -> Iterator[bytes] | None:
    """The lines of audit-timestamps.jsonl, read as the log is (bounded, see bounded_lines), or
    None: there is no such file. A link there is refused; a file that cannot be read, at the start
    or on the way, is an AuditError. The file is never held whole, however big it was made."""
    try:
        handle = open_read(path)  # a link, a FIFO or a directory there is refused (LogsError)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(msg('cannot read {path} ({strerror})', path=path, strerror=exc.strerror)) from None
    return _stamp_lines(handle, path)


def _stamp_lines(handle: BinaryIO, path: Path) -> Iterator[bytes]:
    with handle:
        try:
            yield from bounded_lines(handle)
        except OSError as exc:
            raise AuditError(msg('cannot read {path} ({strerror})', path=path, strerror=exc.strerror)) from None


def kept_stamps_in(path: Path) -> set[str]:
    """The seal hashes the tokens file at ``path`` holds a token for (none without the file)."""
    return kept_stamp_hashes(read_stamps(path) or ())


def kept_stamp_hashes(lines: Iterable[bytes]) -> set[str]:
    """The seal hashes that the lines of audit-timestamps.jsonl hold a token for (read, not
    checked: ``verify --timestamps`` checks the tokens). A line that is not an entry keeps none."""
    kept: set[str] = set()
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("hash"), str) and entry.get("token"):
            kept.add(entry["hash"])
    return kept


def read_anchor(path: Path | str) -> list[AnchorEntry]:
    """The seals of an anchor file, in file order. A line that is not a seal is an AuditError (exit 4)."""
    anchor = Path(path)
    try:
        with open_read(anchor, follow=True) as handle:  # line by line, bounded: a damaged anchor is never held whole
            return _anchor_entries(anchor, bounded_lines(handle))
    except FileNotFoundError:
        raise UsageError(msg('the audit anchor {anchor} does not exist; check --anchor', anchor=anchor)) from None
    except OSError as exc:
        raise EnvironmentProblem(msg('cannot read the audit anchor {anchor} ({reason})', anchor=anchor, reason=exc.strerror or exc)) from None


def _anchor_entries(anchor: Path, lines: Iterable[bytes]) -> list[AnchorEntry]:
    entries = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            item = None
        if not (
            isinstance(item, dict)
            and type(item.get("seq")) is int
            and isinstance(item.get("hash"), str)
            and HEX64.match(item["hash"])
        ):
            raise AuditError(msg('the audit anchor {anchor} line {n} is not a seal (it was changed)', anchor=anchor, n=n))
        stamp, run = item.get("time"), item.get("run_id")
        entries.append(AnchorEntry(item["seq"], item["hash"], n, stamp if isinstance(stamp, str) else None,
                                   run if isinstance(run, str) else None))  # fmt: skip
    return entries


def held_seal(text: str) -> str:
    """A seal an auditor gives (``--seal HASH``): 64 hex digits."""
    seal = text.strip().lower()
    if not HEX64.match(seal):
        raise UsageError(msg("'{given}' is not a seal: a seal is the 64 hex digits printed as 'Audit seal:'", given=text[:80]))
    return seal


# ----------------------------------------------------------------------------------------------
# writing a line, and a damaged region as one digest


def encode_line(record: Mapping[str, Any], hasher: Hasher) -> tuple[bytes, str]:
    """(the line as written, its hash): the canonical body with ``hash`` appended as last member."""
    body = canonical(record)
    digest = hasher.keyed(body) if record.get("mac") == MAC_NAME else hasher.plain(body)
    return body[:-1] + HASH_KEY + digest.encode("ascii") + b'"}\n', digest


def region_digest(lines: list[bytes]) -> str:
    data = b"".join(lines)
    if data.endswith(b"\n"):
        data = data[:-1]
    return hashlib.sha256(data).hexdigest()


# Every event this version writes; `audit show --event` accepts these and any name found in the log.
KNOWN_EVENTS = (
    "run_started", "validated", "card_inserted", "card_identified", "card_refused", "card_error",
    "preflight", "operator_confirmed", "operator_declined", "archived", "overwrite_planned",
    "pin_verify", "pin_refused_floor", "management_key_auth", "management_key_rotated", "key_imported",
    "certificate_written",
    "replaced_object_deleted", "key_history_written", "slot_name_written", "verified", "committed",
    "exported", "skipped", "job_loaded", "job_skipped", "job_failed", "job_refused", "job_in_doubt",
    "job_pending", "run_finished", "timestamp_failed", EVENT_SEAL, EVENT_TAIL_ACCEPTED,
    "pin_unblock", "pin_change", "puk_change",
)  # fmt: skip
