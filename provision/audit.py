"""The tamper-evident audit log: one hash-chained JSON event per line (CA/B Forum BR §5.4).

Each line of ``logs/audit.jsonl`` is one event. Its ``hash`` is SHA-256 over the canonical form of
the record without ``hash`` (sorted keys, compact separators, UTF-8); with a key from the job file's
``audit.key`` it is HMAC-SHA256 instead, and the record says so with ``"mac": "hmac-sha256"``, so
someone who can edit the file cannot recompute the chain. ``prev`` is the hash of the record before
(64 zeros for the first record ever), and ``seq`` counts records across rotated files, which is how
``verify`` tells a deleted line from an inserted or reordered one.

The line is the canonical form with ``hash`` appended as its last member, so a verifier can hash the
bytes as written without parsing and re-serialising them: ``body = line[:-75] + b"}"``. An
independent verifier may equally parse the line, drop ``hash`` and re-serialise it canonically.

Writing: every append happens under a thread lock and an OS file lock, re-reads the tail (another
process may have appended), refuses to continue a chain whose last record does not verify unless an
operator accepts it (and that decision is itself an event), and is flushed and fsynced before it
returns: the action it reports counts as done only after. Nothing here ever writes a Secret.

A key means every record is keyed: ``verify`` given a key fails on any record without a valid MAC,
and a keyed chain is never continued without its key (nor a plain one with a key). Seals (after
every job with ``seal_each_job``, and when asked) can also be appended to an anchor, a witness file
on other storage; ``verify(anchor=…)`` then catches a log cut, emptied or rolled back together with
its journal, and ``verify(held=…)`` does the same for seals an auditor kept. Every record names the
``operator`` (the person) beside the ``os_user`` and ``host``.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import re
import socket
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path, PurePath
from typing import Any

from provision import __version__
from provision.errors import (
    AuditError,
    EnvironmentProblem,
    ProvisionError,
    RecordsError,
    SecretInAuditError,
    UsageError,
)
from provision.fsutil import fsync_dir
from provision.logsdir import open_nofollow, refuse_link
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

_HASH_KEY = b',"hash":"'
_SUFFIX = len(_HASH_KEY) + 64 + 2  # ,"hash":"<64 hex>"}
_PREV_KEY = b'"prev":"'
_SEQ_RE = re.compile(rb'"seq":(0|[1-9][0-9]{0,17})[,}]')
_MAC_KEY = b'"mac":"'
_MAC_MARK = b'"mac":"hmac-sha256"'
_ROLLED_RE = re.compile(r"^(?P<stem>.+)-(?P<ts>\d{8}T\d{12}Z)(?P<suffix>\.jsonl)$")
_TAIL_WINDOW = 1 << 20  # how far back accept_damaged_tail looks for the last good record
_ACCEPT_LOOKAHEAD = 10_000  # lines after a damaged region in which verify looks for its acceptance

Out = Callable[[str], None]


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


def _clean(value: Any, where: str) -> Any:
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
            _check_name(k, f"{where}.{k}", nested=True)
            out[k] = _clean(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_clean(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise ValueError(f"audit field {where} has a type the audit log does not write: {type(value).__name__}")


def _check_name(name: str, where: str, *, nested: bool) -> None:
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
        raise UsageError("the operator's name is empty; give --operator NAME (or $PROVISION_OPERATOR)")
    if len(name) > 200:
        raise UsageError("the operator's name is longer than 200 characters; give a shorter --operator NAME")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise UsageError(
            "the operator's name contains control characters (newline, escape, direction marks); "
            "give it as plain text with --operator NAME"
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


def _host() -> str:
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------------------------
# one line, inspected without any chain state


@dataclass
class _Line:
    raw: bytes
    complete: bool  # ends with a newline
    status: str  # "ok", "bad-hash", "key-required", "unknown-mac", "not-record"
    keyed: bool = False
    seq: int | None = None
    prev: str | None = None
    hash: str | None = None
    record: dict[str, Any] | None = None


class _Hasher:
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


def _inspect(raw: bytes, hasher: _Hasher) -> _Line:
    complete = raw.endswith(b"\n")
    line = raw[:-1] if complete else raw
    if line.endswith(b"\r"):
        line = line[:-1]
    result = _Line(raw=raw, complete=complete, status="not-record")
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
    as_written = body[:-1] + _HASH_KEY + digest.encode("ascii", "replace") + b'"}'
    result.status = "ok" if (hmac.compare_digest(expected, digest) and as_written == line) else "bad-hash"
    return result


# ----------------------------------------------------------------------------------------------
# files of a chain


def rolled_name(current: Path, moment: datetime) -> Path:
    return current.with_name(f"{current.stem}-{moment.astimezone(UTC):%Y%m%dT%H%M%S%f}Z{current.suffix}")


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


def _resolve(path_or_dir: Path | str, *, allow_missing: bool = False) -> tuple[list[Path], bool]:
    """(files, single_file). A directory means its whole chain; a file means just that file."""
    path = Path(path_or_dir)
    if path.is_dir():
        files = chain_files(path / LOG_NAME)
        if not files and not allow_missing:
            raise UsageError(f"there is no audit log in {path} ({LOG_NAME} is missing); check --logs")
        return files, False
    if path.is_file():
        return [path], True
    if allow_missing:
        return [], False
    raise UsageError(f"{path} does not exist; check --logs")


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


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def read_anchor(path: Path | str) -> list[AnchorEntry]:
    """The seals of an anchor file, in file order. A line that is not a seal is an AuditError (exit 4)."""
    anchor = Path(path)
    try:
        data = anchor.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"the audit anchor {anchor} does not exist; check --anchor") from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read the audit anchor {anchor} ({exc.strerror or exc})") from None
    entries = []
    for n, raw in enumerate(data.splitlines(), start=1):
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
            and _HEX64.match(item["hash"])
        ):
            raise AuditError(f"the audit anchor {anchor} line {n} is not a seal (it was changed)")
        stamp, run = item.get("time"), item.get("run_id")
        entries.append(AnchorEntry(item["seq"], item["hash"], n, stamp if isinstance(stamp, str) else None,
                                   run if isinstance(run, str) else None))  # fmt: skip
    return entries


def held_seal(text: str) -> str:
    """A seal an auditor gives (``--seal HASH``): 64 hex digits."""
    seal = text.strip().lower()
    if not _HEX64.match(seal):
        raise UsageError(f"'{text[:80]}' is not a seal: a seal is the 64 hex digits printed as 'Audit seal:'")
    return seal


# ----------------------------------------------------------------------------------------------
# verify


@dataclass
class VerifyResult:
    ok: bool
    records: int
    last_hash: str | None
    first_bad_line: int | None = None
    problem: str | None = None
    message: str = ""
    file: str | None = None
    files: list[str] = field(default_factory=list)
    keyed: bool = False
    seals_checked: int = 0
    accepted_damage: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "last_hash": self.last_hash,
            "first_bad_line": self.first_bad_line,
            "file": self.file,
            "problem": self.problem,
            "message": self.message,
            "files": self.files,
            "keyed": self.keyed,
            "seals_checked": self.seals_checked,
            "accepted_damage": self.accepted_damage,
        }


class _Failure(Exception):
    def __init__(self, kind: str, path: Path, line: int, message: str) -> None:
        super().__init__(message)
        self.kind, self.path, self.line, self.message = kind, path, line, message


def _lines_from(files: list[Path], fi: int, lineno: int) -> Iterator[tuple[int, int, bytes]]:
    """(file index, line number, raw line) from line ``lineno`` of file ``fi`` to the chain's end."""
    for index in range(fi, len(files)):
        with open(files[index], "rb") as handle:
            for n, raw in enumerate(handle, start=1):
                if index == fi and n < lineno:
                    continue
                yield index, n, raw


class _Verifier:
    def __init__(
        self,
        files: list[Path],
        key: Secret | None,
        seals: Iterable[str],
        single_file: bool,
        held: Iterable[str] = (),
        anchor: list[AnchorEntry] | None = None,
        anchor_path: Path | None = None,
    ) -> None:
        self.files = files
        self.hasher = _Hasher(key)
        self.has_key = key is not None
        # where each seal comes from, for the sentence that names a missing one
        self.seals = {s.strip().lower(): "from the journal" for s in seals if s and s.strip()}
        self.seals.update({s: "you hold (--seal)" for s in held})
        self.found: set[str] = set()
        self.anchor = anchor or []
        self.anchor_path = anchor_path
        self.anchored = {(e.seq, e.hash) for e in self.anchor}
        self.anchor_found: set[tuple[int, str]] = set()
        self.anchored_seals_in_log: list[tuple[int, str]] = []  # (seq, hash) of seals that say they were anchored
        self.excused: set[str] = set()  # seals of a deleted log, listed by an operator's acceptance
        self.single_file = single_file
        self.prev = GENESIS.encode("ascii")
        self.seq = 0
        self.records = 0
        self.keyed_seen = False
        self.keyed_verified = 0
        self.accepted: list[str] = []

    # The fast path: bytes only, no JSON parsing. Anything unusual goes to _explain.
    def _advance(self, raw: bytes) -> bool:
        if raw[-1:] != b"\n":
            return False
        line = raw[:-1]
        if line[-_SUFFIX : -_SUFFIX + 9] != _HASH_KEY or line[-2:] != b'"}':
            return False
        body = line[:-_SUFFIX] + b"}"
        i = body.find(_PREV_KEY)
        if i < 0 or body[i + 8 : i + 72] != self.prev or body[i + 72 : i + 73] != b'"':
            return False
        j = body.find(b'"seq":')
        m = _SEQ_RE.match(body, j) if j >= 0 else None
        if m is None or int(m.group(1)) != self.seq + 1:
            return False
        if _MAC_KEY in body:
            if self.hasher._mac is None or _MAC_MARK not in body:
                return False
            mac = self.hasher._mac.copy()
            mac.update(body)
            digest = mac.hexdigest()
            keyed = True
        else:
            if self.keyed_seen or self.has_key:
                return False  # with a key, every record must carry a valid MAC
            digest = hashlib.sha256(body).hexdigest()
            keyed = False
        claimed = line[-_SUFFIX + 9 : -2]
        if digest.encode("ascii") != claimed:
            return False
        self._accept(claimed, self.seq + 1, keyed)
        if (
            self.anchor_path is not None
            and b'"anchored":true' in body
            and _top_level(body, "event") == EVENT_SEAL
        ):
            self.anchored_seals_in_log.append((self.seq, claimed.decode("ascii")))
        if b'"lost_seals":' in body:
            self._note_lost(json.loads(body))
        return True

    def _note_lost(self, record: Mapping[str, Any]) -> None:
        """An operator accepted a lost or damaged log: the seals it names are excused, and said so."""
        lost = record.get("lost_seals")
        if record.get("event") != EVENT_TAIL_ACCEPTED or not isinstance(lost, list):
            return
        self.excused.update(s for s in lost if isinstance(s, str))
        self.accepted.append(
            f"{len(lost)} seal(s) of a deleted, emptied or damaged log accepted as lost at seq {record.get('seq')} "
            f"by {record.get('operator')} ({record.get('reason', '')})"
        )

    def _accept(self, digest: bytes, seq: int, keyed: bool) -> None:
        self.prev = digest
        self.seq = seq
        self.records += 1
        if keyed:
            self.keyed_seen = True
            self.keyed_verified += 1
        if self.seals or self.anchored:
            text = digest.decode("ascii")
            if text in self.seals:
                self.found.add(text)
            if (seq, text) in self.anchored:
                self.anchor_found.add((seq, text))

    def run(self) -> VerifyResult:
        last_path, last_line = self.files[-1], 0
        for fi, path in enumerate(self.files):
            skip_to = lineno = 0
            with open(path, "rb") as handle:
                for lineno, raw in enumerate(handle, start=1):
                    if lineno <= skip_to or self._advance(raw):
                        continue
                    skip_to = self._explain(fi, lineno)
            last_path, last_line = path, lineno
        self._check_anchor(last_path, last_line)
        missing = sorted(s for s in self.seals if s not in self.found and s not in self.excused)
        if missing:
            origin = self.seals[missing[0]]
            where = (
                f"the audit log is empty (or was emptied) but seal {missing[0][:16]}… {origin} is not in it: "
                "the log was emptied or replaced"
                if self.records == 0
                else f"the chain ends at line {last_line} of {last_path} (seq {self.seq}) but seal "
                f"{missing[0][:16]}… {origin} is not in it: the log was cut after the seal, rolled back or replaced"
            )
            raise _Failure(SEAL_MISMATCH if self.records else TRUNCATED, last_path, last_line + 1, where)
        return VerifyResult(
            ok=True,
            records=self.records,
            last_hash=self.prev.decode("ascii") if self.records else None,
            message=f"{self.records} record(s) in {len(self.files)} file(s) intact"
            + (f", {len(self.seals)} seal(s) found" if self.seals else "")
            + (f", {len(self.anchor)} anchored seal(s) in place" if self.anchor_path else "")
            + (f"; {len(self.accepted)} damaged region(s) accepted by an operator" if self.accepted else ""),
            files=[str(p) for p in self.files],
            keyed=self.keyed_seen,
            seals_checked=len(self.seals) + len(self.anchor),
            accepted_damage=self.accepted,
        )

    def _check_anchor(self, last_path: Path, last_line: int) -> None:
        if self.anchor_path is None:
            return
        name = self.anchor_path
        previous: AnchorEntry | None = None
        for entry in self.anchor:
            if entry.hash in self.excused:
                continue
            if previous is not None and entry.seq <= previous.seq:
                raise _Failure(
                    REORDERED,
                    name,
                    entry.line,
                    f"the anchor {name} line {entry.line} holds seq {entry.seq} after seq {previous.seq}: "
                    "its seals are out of order (the anchor was reordered or spliced)",
                )
            previous = entry
            if (entry.seq, entry.hash) in self.anchor_found:
                continue
            if entry.seq > self.seq:
                raise _Failure(
                    TRUNCATED,
                    last_path,
                    last_line + 1,
                    f"the log ends at seq {self.seq} (line {last_line} of {last_path}) but the anchor {name} "
                    f"line {entry.line} holds a seal at seq {entry.seq}: the log was cut, emptied or rolled back",
                )
            raise _Failure(
                ANCHOR_MISMATCH,
                name,
                entry.line,
                f"the anchor {name} line {entry.line} holds seal {entry.hash[:16]}… at seq {entry.seq}, which is "
                "not that record of the chain: the log was rolled back and rewritten, or replaced",
            )
        for seq, digest in self.anchored_seals_in_log:
            if (seq, digest) not in self.anchored:
                path, lineno = self._locate(seq)
                raise _Failure(
                    ANCHOR_MISMATCH,
                    path,
                    lineno,
                    f"{path} line {lineno}: seal seq {seq} was anchored when written but the anchor {name} does not "
                    "hold it: a seal was removed from the anchor (or the anchor is not this log's)",
                )

    # The slow path: only at the first line the fast path refused. Returns the line (in the same
    # file) up to which the chain has been consumed, or raises _Failure with the kind of damage.
    def _explain(self, fi: int, lineno: int) -> int:
        path = self.files[fi]
        ahead = _lines_from(self.files, fi, lineno)
        _, _, raw = next(ahead)
        bad = _inspect(raw, self.hasher)
        where = f"{path} line {lineno}"
        expected_seq = self.seq + 1
        prev_text = self.prev.decode("ascii")

        if not bad.complete:
            raise _Failure(
                TRUNCATED,
                path,
                lineno,
                f"{where}: the last line is incomplete (no newline): the log was truncated or a write was cut",
            )
        if bad.status == "key-required":
            raise _Failure(
                KEY_REQUIRED,
                path,
                lineno,
                f"{where}: the log is HMAC-chained; give the audit key (audit.key of the job file) to verify it",
            )

        accepted = self._acceptance(fi, lineno)
        if accepted is not None:
            return accepted

        if (
            self.records == 0
            and bad.status == "ok"
            and bad.record is not None
            and "rotated_from" in bad.record
        ):
            if (
                self.single_file
                and bad.seq is not None
                and bad.hash is not None
                and (bad.keyed or not self.hasher.has_key)
            ):
                self._accept(bad.hash.encode("ascii"), bad.seq, bad.keyed)
                return lineno
            raise _Failure(
                DELETED,
                path,
                lineno,
                f"{where}: the chain starts at seq {bad.seq}, continuing from {bad.record['rotated_from']}, which is not present: earlier files were removed",
            )

        nxt = self._next_two(ahead)
        first, second = nxt
        if (
            first is not None
            and first.status == "ok"
            and first.prev == prev_text
            and first.seq == expected_seq
        ):
            if bad.status == "ok" and bad.prev == first.hash and (second is None or second.hash != bad.hash):
                raise _Failure(
                    REORDERED,
                    path,
                    lineno,
                    f"{where}: records are out of order (seq {bad.seq} comes before seq {first.seq})",
                )
            raise _Failure(
                INSERTED,
                path,
                lineno,
                f"{where}: this line was inserted: it is not part of the chain, the next line continues from line {lineno - 1}",
            )

        if bad.status == "not-record":
            if lineno == 1 and self.records == 0 and not self._has_any_record(path):
                raise _Failure(
                    NOT_AN_AUDIT_LOG,
                    path,
                    lineno,
                    f"{path} is not a provision audit log (no line is a hash-chained audit record)",
                )
            raise _Failure(
                MODIFIED, path, lineno, f"{where}: the line is not a valid audit record (it was changed)"
            )
        if bad.status in ("bad-hash", "unknown-mac"):
            if (
                bad.keyed
                and self.keyed_verified == 0
                and first is not None
                and first.keyed
                and first.status == "bad-hash"
            ):
                raise _Failure(
                    KEY_REQUIRED,
                    path,
                    lineno,
                    f"{where}: the audit key given is not the key this log was written with (its HMAC does not match)",
                )
            raise _Failure(
                MODIFIED,
                path,
                lineno,
                f"{where}: the record was modified (its hash does not match its content)",
            )
        if self.keyed_seen and not bad.keyed:
            raise _Failure(
                MODIFIED,
                path,
                lineno,
                f"{where}: a record without HMAC follows HMAC-chained records: it was forged or replaced",
            )
        if self.hasher.has_key and not bad.keyed:
            raise _Failure(
                MAC_MISSING,
                path,
                lineno,
                f"{where}: the record has no MAC, but an audit key was given and with a key every record must carry "
                "a valid HMAC: the MACs were stripped and the chain recomputed, or the log was never keyed",
            )

        assert bad.seq is not None
        if bad.seq == expected_seq:
            raise _Failure(
                MODIFIED,
                path,
                lineno,
                f"{where}: the record does not follow the one before it (prev does not match): a record was changed and its hash recomputed, or replaced",
            )
        if bad.seq < expected_seq:
            raise _Failure(
                INSERTED,
                path,
                lineno,
                f"{where}: seq {bad.seq} repeats an earlier record: a line was inserted",
            )
        if self._seq_later(fi, lineno, expected_seq):
            raise _Failure(
                REORDERED,
                path,
                lineno,
                f"{where}: records are out of order (seq {bad.seq} where seq {expected_seq} was expected, which comes later)",
            )
        missing = bad.seq - expected_seq
        raise _Failure(
            DELETED,
            path,
            lineno,
            f"{where}: {missing} record(s) before this line were deleted (seq {expected_seq}"
            + (f"–{bad.seq - 1}" if missing > 1 else "")
            + " missing)",
        )

    def _next_two(self, ahead: Iterator[tuple[int, int, bytes]]) -> tuple[_Line | None, _Line | None]:
        got: list[_Line | None] = []
        for _, _, raw in ahead:
            got.append(_inspect(raw, self.hasher))
            if len(got) == 2:
                break
        got += [None] * (2 - len(got))
        return got[0], got[1]

    def _acceptance(self, fi: int, lineno: int) -> int | None:
        """If an operator accepted the damaged lines from ``lineno`` on, consume them and the acceptance."""
        path = self.files[fi]
        region: list[bytes] = []
        with open(path, "rb") as handle:
            for n, raw in enumerate(handle, start=1):
                if n < lineno:
                    continue
                if n > lineno + _ACCEPT_LOOKAHEAD:
                    return None
                if b'"audit_tail_accepted"' in raw:
                    line = _inspect(raw, self.hasher)
                    rec = line.record
                    if (
                        line.status == "ok"
                        and rec is not None
                        and rec.get("event") == EVENT_TAIL_ACCEPTED
                        and line.prev == self.prev.decode("ascii")
                        and line.seq == self.seq + 1
                        and rec.get("damaged_from_line") == lineno
                        and rec.get("damaged_to_line") == n - 1
                        and rec.get("file") == path.name
                        and rec.get("damaged_sha256") == _region_digest(region)
                        and line.hash is not None
                    ):
                        if (self.keyed_seen or self.hasher.has_key) and not line.keyed:
                            return None
                        self._accept(line.hash.encode("ascii"), line.seq, line.keyed)
                        if "lost_seals" in rec:
                            self._note_lost(rec)
                        self.accepted.append(
                            f"{path} lines {lineno}–{n - 1}: accepted at line {n} ({rec.get('reason', '')})"
                        )
                        return n
                region.append(raw)
        return None

    def _has_any_record(self, path: Path) -> bool:
        with open(path, "rb") as handle:
            for n, raw in enumerate(handle):
                if n > 1000:
                    break
                if _inspect(raw, self.hasher).status != "not-record":
                    return True
        return False

    def _locate(self, seq: int) -> tuple[Path, int]:
        """(file, line) of the record with ``seq`` (only to name it in a failure)."""
        pattern = re.compile(rb'"seq":' + str(seq).encode("ascii") + rb"[,}]")
        for fi, n, raw in _lines_from(self.files, 0, 1):
            if pattern.search(raw):
                return self.files[fi], n
        return self.files[-1], 0

    def _seq_later(self, fi: int, lineno: int, seq: int) -> bool:
        pattern = re.compile(rb'"seq":' + str(seq).encode("ascii") + rb"[,}]")
        return any(pattern.search(raw) for _, _, raw in _lines_from(self.files, fi, lineno + 1))


def _top_level(body: bytes, name: str) -> Any:
    """A top-level member of a record (only for the rare lines whose bytes suggest it matters)."""
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return record.get(name) if isinstance(record, dict) else None


def _region_digest(lines: list[bytes]) -> str:
    data = b"".join(lines)
    if data.endswith(b"\n"):
        data = data[:-1]
    return hashlib.sha256(data).hexdigest()


def _check_timestamps(logs: Path, trusted: list[bytes]) -> tuple[list[str], str] | VerifyResult:
    """(the seals with a valid RFC 3161 token, a sentence), or the failed VerifyResult."""
    from provision.timestamp import check_stamp

    path = (logs if logs.is_dir() else logs.parent) / TIMESTAMPS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"there are no time-stamps in {path.parent} ({TIMESTAMPS_NAME} is missing)") from None
    except OSError as exc:
        raise AuditError(f"cannot read {path} ({exc.strerror})") from None
    seals: list[str] = []
    last = ""
    for n, raw in enumerate(data.splitlines(), start=1):
        try:
            entry = json.loads(raw)
            seal, token = entry["hash"], base64.b64decode(entry["token"], validate=True)
            if not (isinstance(seal, str) and _HEX64.match(seal)):
                raise ValueError(seal)
            stamp = check_stamp(token, seal, trusted)
        except AuditError as exc:
            why = exc.message
        except (ValueError, KeyError, TypeError):
            why = "the line is not a time-stamp entry (it was changed)"
        else:
            seals.append(seal)
            last = f"the last at {rfc3339(stamp.gen_time)} by {stamp.tsa}"
            continue
        return VerifyResult(
            ok=False, records=0, last_hash=None, first_bad_line=n, problem=TIMESTAMP_INVALID,
            message=f"{path} line {n}: {why}", file=str(path),
        )  # fmt: skip
    trust = "a TSA you trust (--tsa-cert)" if trusted else "a TSA not checked against any certificate (give --tsa-cert)"
    return seals, f"{len(seals)} seal(s) time-stamped by {trust}" + (f", {last}" if last else "")


def verify(
    path_or_dir: Path | str,
    *,
    key: Secret | None = None,
    seals: Iterable[str] = (),
    held: Iterable[str] = (),
    anchor: Path | str | None = None,
    timestamps: bool = False,
    tsa_certs: Iterable[bytes] = (),
) -> VerifyResult:
    """Check the chain of a logs directory (all rolled files and audit.jsonl) or of one file.

    ``seals`` are the journal's, ``held`` those an auditor holds (``--seal``): each must be in the
    chain. ``anchor`` is a witness file of seals: each must be in the chain at its seq, in order,
    and every seal the log says it anchored must be in it. With ``key``, every record needs a MAC.

    Raises UsageError when there is nothing to verify and nothing says there should be; damage of
    any kind (a missing log whose seals are known included) is a VerifyResult with ``ok=False``,
    the kind of problem, the file and the first bad line.
    """
    held = [held_seal(s) for s in held]
    seals = list(seals)
    stamped: list[str] = []
    if timestamps:
        stamped_or_failure = _check_timestamps(Path(path_or_dir), list(tsa_certs))
        if isinstance(stamped_or_failure, VerifyResult):
            return stamped_or_failure
        stamped, stamp_note = stamped_or_failure
    entries = read_anchor(anchor) if anchor is not None else None
    files, single = _resolve(path_or_dir, allow_missing=bool(seals or held or entries or stamped))
    if not files:
        known = len(set(seals) | set(held) | set(stamped) | {e.hash for e in entries or []})
        return VerifyResult(
            ok=False,
            records=0,
            last_hash=None,
            first_bad_line=1,
            problem=DELETED,
            message=f"there is no audit log in {path_or_dir} ({LOG_NAME} is missing), but "
            + " and ".join(
                w
                for w, has in (
                    ("the journal", seals),
                    ("the seals you hold", held),
                    ("the time-stamps", stamped),
                    (f"the anchor {anchor}", entries),
                )
                if has
            )
            + f" know(s) {known} seal(s) of it: the log was deleted",
            file=str(Path(path_or_dir) / LOG_NAME),
            seals_checked=known,
        )
    verifier = _Verifier(
        files, key, seals, single, held=held, anchor=entries, anchor_path=Path(anchor) if anchor else None
    )
    verifier.seals.update({s: "time-stamped by a TSA" for s in stamped if s not in verifier.seals})
    try:
        result = verifier.run()
        if timestamps:
            result.message += f"; {stamp_note}"
        return result
    except _Failure as failure:
        return VerifyResult(
            ok=False,
            records=verifier.records,
            last_hash=verifier.prev.decode("ascii") if verifier.records else None,
            first_bad_line=failure.line,
            problem=failure.kind,
            message=failure.message,
            file=str(failure.path),
            files=[str(p) for p in files],
            keyed=verifier.keyed_seen,
            seals_checked=len(verifier.seals) + len(verifier.anchor),
            accepted_damage=verifier.accepted,
        )
    except OSError as exc:
        raise AuditError(
            f"cannot read the audit log ({exc.strerror or type(exc).__name__}: {exc.filename})"
        ) from None


# ----------------------------------------------------------------------------------------------
# locks


_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(path: Path) -> threading.Lock:
    name = os.path.realpath(path)
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(name, threading.Lock())


class _FileLock:
    """An exclusive lock shared by threads (threading.Lock) and processes (flock / msvcrt.locking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = _process_lock(path)
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
        self._thread_lock.acquire()
        try:
            self._fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._os_lock(self._fd)
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                self._os_unlock(self._fd)
                os.close(self._fd)
        finally:
            self._fd = None
            self._thread_lock.release()

    if sys.platform == "win32":

        @staticmethod
        def _os_lock(fd: int) -> None:
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises
                    return
                except OSError:
                    continue

        @staticmethod
        def _os_unlock(fd: int) -> None:
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    else:

        @staticmethod
        def _os_lock(fd: int) -> None:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)

        @staticmethod
        def _os_unlock(fd: int) -> None:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ----------------------------------------------------------------------------------------------
# syslog


@dataclass(frozen=True)
class SyslogTarget:
    """Where seals (and, with ``all_events``, every event) are forwarded, RFC 5424 over syslog.

    ``address`` is a unix socket path (``/dev/log``) or ``(host, port)`` for UDP.
    """

    address: str | tuple[str, int]
    all_events: bool = False
    facility: int = logging.handlers.SysLogHandler.LOG_AUTHPRIV
    app_name: str = "provision"


def syslog_target(address: str, *, all_events: bool = False) -> SyslogTarget:
    """``/dev/log`` (a unix socket path: journald's) or ``host:port`` (UDP) → SyslogTarget."""
    if address.startswith("/"):
        return SyslogTarget(address, all_events=all_events)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"'{address}' is not a syslog address; write a socket path such as /dev/log or host:port")
    return SyslogTarget((host, int(port)), all_events=all_events)


SYSLOG_PROBE_SECONDS = 0.25


def check_reachable(target: SyslogTarget) -> None:
    """Raise EnvironmentProblem (exit 3) unless ``target`` can take messages now.

    Python's SysLogHandler swallows a failed connection to a unix socket (as openlog(3) does) and
    never connects UDP, so an address that leads nowhere would be accepted and every seal lost
    silently. A unix socket must accept a connection; a UDP address must resolve, and an empty
    datagram sent to it must not be refused (the ICMP "port unreachable" of a host with no
    collector). A remote host that drops datagrams silently cannot be told from one that keeps them."""
    try:
        if isinstance(target.address, str):
            _connect_unix(target.address)
            return
        host, port = target.address
        family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.settimeout(SYSLOG_PROBE_SECONDS)
            probe.connect(address)
            probe.send(b"")
            try:
                probe.recv(1)
            except TimeoutError:
                pass  # no answer is what a listening collector gives
    except OSError as exc:
        shown = target.address if isinstance(target.address, str) else f"{target.address[0]}:{target.address[1]}"
        raise EnvironmentProblem(
            f"cannot reach syslog at {shown} ({exc.strerror or type(exc).__name__}); start the syslog service "
            "or correct --syslog / audit.syslog"
        ) from None


def _connect_unix(path: str) -> None:
    last: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # journald's /dev/log is a datagram socket
        with socket.socket(socket.AF_UNIX, kind) as probe:
            probe.settimeout(SYSLOG_PROBE_SECONDS)
            try:
                probe.connect(path)
                return
            except OSError as exc:
                last = exc
    assert last is not None
    raise last


def _sd_escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class _Rfc5424Formatter(logging.Formatter):
    """``1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG``; SysLogHandler puts ``<PRI>`` in front."""

    def __init__(self, app_name: str, host: str) -> None:
        super().__init__()
        self.app_name = app_name[:48] or "-"
        self.host = host[:255] or "-"

    def format(self, record: logging.LogRecord) -> str:
        stamp = rfc3339(datetime.fromtimestamp(record.created, UTC))
        msgid = str(getattr(record, "msgid", "-"))[:32] or "-"
        params: Mapping[str, object] = getattr(record, "sd", {})
        sd = "-"
        if params:
            sd = "[audit@32473 " + " ".join(f'{k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
        return f"1 {stamp} {self.host} {self.app_name} {os.getpid()} {msgid} {sd} {record.getMessage()}"


class _SyslogHandler(logging.handlers.SysLogHandler):
    failures = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failures += 1  # forwarding is a second copy; the file is the record. Never crash a run.


# ----------------------------------------------------------------------------------------------
# the writer


@dataclass(frozen=True)
class TailStatus:
    """What ``check_tail`` found at the end of the chain."""

    ok: bool
    problem: str | None = None
    line: int | None = None
    message: str = ""


@dataclass
class _Tail:
    prev: str
    seq: int
    time: str | None
    keyed: bool
    rotated_from: str | None  # the current file is missing or empty: continue from this rolled file
    damage: TailStatus | None = None


class AuditLog:
    """Appends hash-chained events to ``path`` (normally ``logs/audit.jsonl``).

    Safe for several threads and several processes at once. Each ``append`` returns only after the
    line is on disk.
    """

    def __init__(
        self,
        path: Path,
        *,
        key: Secret | None = None,
        syslog: SyslogTarget | None = None,
        rotate_bytes: int | None = None,
        rotate_daily: bool = False,
        run_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        operator: str | None = None,
        anchor: Path | str | None = None,
        seal_each_job: bool = False,
        timestamp: str | None = None,
    ) -> None:
        if syslog is not None:
            check_reachable(syslog)  # before anything is created: an unreachable address is exit 3
        self.path = Path(path)
        self.timestamp_url = timestamp
        self.timestamp_failures = 0
        self.run_id = run_id
        self.rotate_bytes = rotate_bytes
        self.rotate_daily = rotate_daily
        self._hasher = _Hasher(key)
        self._keyed = key is not None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._os_user = os_user()
        self.operator = operator_name(operator) if operator is not None else self._os_user
        self.anchor = Path(anchor) if anchor is not None else None
        self.seal_each_job = seal_each_job
        self._host = _host()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _FileLock(self.path.with_name(f".{self.path.name}.lock"))
        self._syslog: _SyslogHandler | None = None
        self._syslog_all = False
        if syslog is not None:
            self._open_syslog(syslog)

    def _open_syslog(self, target: SyslogTarget) -> None:
        try:
            handler = _SyslogHandler(address=target.address, facility=target.facility)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot reach syslog at {target.address} ({exc.strerror or exc}); check the audit syslog address"
            ) from None
        handler.append_nul = False
        handler.ident = ""
        handler.setFormatter(_Rfc5424Formatter(target.app_name, self._host))
        self._syslog = handler
        self._syslog_all = target.all_events

    @property
    def syslog_failures(self) -> int:
        return self._syslog.failures if self._syslog is not None else 0

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------

    def append(self, event: str, **fields: Any) -> AuditRecord:
        """Write one event; returns after it is fsynced. Raises AuditError if the tail is damaged."""
        clean = self._fields(event, fields)
        sealed: AuditRecord | None = None
        with self._lock:
            tail = self._tail()
            if tail.damage is not None:
                raise AuditError(tail.damage.message)
            if event == EVENT_SEAL:
                written = self._write_seal(clean, tail)
            else:
                written = self._write(event, clean, tail)
            if self.seal_each_job and event.startswith("job_"):
                # A job ended: seal it now, so a killed run leaves at most one job's records unsealed.
                after = _Tail(written.hash, written.seq, written.time, self._keyed, None)
                seal_fields = self._fields(EVENT_SEAL, {"run_id": clean.get("run_id"), "job_id": clean.get("job_id")})
                sealed = self._write_seal(seal_fields, after)
        self._forward(written)
        if sealed is not None:
            self._forward(sealed)
        if self.timestamp_url is not None:  # after the lock: a TSA's round trip never holds up other writers
            for record in (written, sealed):
                if record is not None and record.event == EVENT_SEAL:
                    self._stamp(record)
        return written

    def seal(self, **fields: Any) -> str:
        """Append a ``seal`` event and return its hash, the chain's new last hash.

        The runner stores it in its journal and prints it in the report (and it is forwarded to
        syslog when configured); ``verify(seals=…)`` then proves that the log still reaches at least
        this record, which catches a cut tail that the chain alone cannot.
        """
        return self.append(EVENT_SEAL, **fields).hash

    def check_anchor(self) -> None:
        """Before a run: the anchor file can be appended to (it is created if missing)."""
        if self.anchor is None:
            return
        try:
            fd = os.open(self.anchor, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640)
            os.close(fd)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot append to the audit anchor {self.anchor} ({exc.strerror or exc}); nothing was run. "
                "Check that its storage is mounted and writable, or fix audit.anchor / --anchor"
            ) from None

    def check_tail(self, known_seals: Iterable[str] = ()) -> TailStatus:
        """Whether the chain's end verifies (an append would be allowed).

        ``known_seals`` (the journal's) and the anchor's seals tell a log that never existed from a
        log that was deleted or emptied: over the latter, a new chain would hide the loss."""
        with self._lock:
            tail = self._tail()
        if tail.damage is not None:
            return tail.damage
        if tail.seq == 0:
            lost, where = self._lost_seals(known_seals)
            if lost:
                return TailStatus(
                    ok=False,
                    problem=DELETED,
                    message=f"the audit log {self.path} is missing or empty, but {where} hold(s) {len(lost)} "
                    "seal(s) of it: it was deleted or emptied; no new chain is started over it until an operator "
                    "runs 'provision audit verify' and accepts the loss explicitly",
                )
        return TailStatus(ok=True, message=f"{self.path}: the last record verifies")

    def _anchor_entries(self) -> list[AnchorEntry]:
        return read_anchor(self.anchor) if self.anchor is not None and self.anchor.is_file() else []

    def _lost_seals(self, known_seals: Iterable[str]) -> tuple[list[str], str]:
        lost = {s for s in known_seals if s}
        where = ["the journal"] if lost else []
        anchored = {entry.hash for entry in self._anchor_entries()}
        if anchored:
            where.append(f"the anchor {self.anchor}")
        return sorted(lost | anchored), " and ".join(where)

    def accept_damaged_tail(self, reason: str, known_seals: Iterable[str] = ()) -> AuditRecord | None:
        """An operator's decision to continue after a damaged tail, recorded as an event.

        The damaged bytes stay in the file as evidence; the new ``audit_tail_accepted`` record
        continues the chain from the last record that verifies and names the damaged lines and their
        SHA-256, so ``verify`` accepts exactly those bytes and nothing else. A log that was deleted
        or emptied while the journal (``known_seals``) or the anchor still knew its seals is accepted
        by a first record that lists those seals (``lost_seals``). Returns None when there is
        nothing to accept.
        """
        if not reason.strip():
            raise UsageError("accepting a damaged audit log needs a reason in words")
        clean = self._fields(EVENT_TAIL_ACCEPTED, {"reason": reason})
        with self._lock:
            tail = self._tail()
            if tail.damage is None:
                lost, _ = self._lost_seals(known_seals) if tail.seq == 0 else ([], "")
                if not lost:
                    return None
                # The log was deleted or emptied: the new chain starts by naming the seals it lost.
                clean.update(problem=DELETED, file=self.path.name, lost_seals=lost)
                written = self._write(EVENT_TAIL_ACCEPTED, clean, tail, allow_rotation=False)
                self._forward(written)
                return written
            start, good = self._last_good()
            data_len = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                first_line = _count_newlines(handle, start) + 1
                handle.seek(start)
                region = handle.read()
            last_line = first_line + region.count(b"\n") - (1 if region.endswith(b"\n") else 0)
            if good is None and _MAC_MARK in region and region.count(b"\n") > 1:
                # Not one keyed record verifies: far likelier the wrong key than a log damaged throughout.
                raise UsageError(
                    f"no record of {self.path} verifies with this audit key: it is probably not the key the log "
                    "was written with; nothing was accepted. Give the log's key (audit.key)"
                )
            if good is None:
                prior = self._previous_file_tail()
                prev, seq, keyed, rotated = prior.prev, prior.seq, prior.keyed, prior.rotated_from
            else:
                prev, seq, keyed, rotated = good.hash or GENESIS, good.seq or 0, good.keyed, None
            if keyed != self._keyed and seq > 0:
                self._check_keying(_Line(raw=b"", complete=True, status="ok", keyed=keyed), self.path)
            if not region.endswith(b"\n"):
                fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND)
                try:
                    _write_all(fd, b"\n")
                finally:
                    os.close(fd)
            lost = [e.hash for e in self._anchor_entries() if e.seq > seq]  # anchored seals in the damage
            if lost:
                clean["lost_seals"] = lost
            clean.update(
                problem=tail.damage.problem,
                file=self.path.name,
                damaged_from_line=first_line,
                damaged_to_line=last_line,
                damaged_bytes=data_len - start,
                damaged_sha256=_region_digest([region]),
            )
            written = self._write(
                EVENT_TAIL_ACCEPTED,
                clean,
                _Tail(prev=prev, seq=seq, time=None, keyed=keyed, rotated_from=rotated),
                allow_rotation=False,
            )
        self._forward(written)
        return written

    # -- internals -----------------------------------------------------------------------------

    def _fields(self, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(event, str) or not event:
            raise ValueError("an audit event needs a name")
        clean: dict[str, Any] = {}
        for name, value in fields.items():
            if name in RESERVED_FIELDS:
                raise ValueError(f"audit field {name} is set by the audit log itself")
            _check_name(name, name, nested=False)
            clean[name] = _clean(value, name)
        clean.setdefault("run_id", self.run_id)
        return clean

    def _write(
        self, event: str, fields: dict[str, Any], tail: _Tail, *, allow_rotation: bool = True
    ) -> AuditRecord:
        now = self._clock()
        rotated_from = tail.rotated_from
        if allow_rotation and self._should_rotate(tail, now):
            rotated_from = self._rotate(now).name
        record: dict[str, Any] = dict(fields)
        record.update(
            seq=tail.seq + 1,
            time=rfc3339(now),
            event=event,
            operator=self.operator,
            os_user=self._os_user,
            host=self._host,
            tool_version=__version__,
            prev=tail.prev,
        )
        if rotated_from:
            record["rotated_from"] = rotated_from
        if self._keyed:
            record["mac"] = MAC_NAME
        line, digest = _encode_line(record, self._hasher)
        created = not self.path.exists()
        fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640)
        try:
            before = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                # Whole or not at all: a line cut by a full disk is taken back before anyone reads it.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)
                    os.fsync(fd)
                raise RecordsError(f"the audit log {self.path} cannot take another record ({exc.strerror}); "
                                   "free space, then 'provision resume' finishes the run") from None  # fmt: skip
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        record["hash"] = digest
        return AuditRecord(
            seq=record["seq"],
            time=record["time"],
            event=event,
            hash=digest,
            prev=tail.prev,
            record=record,
            file=self.path,
        )

    def _write_seal(self, clean: dict[str, Any], tail: _Tail) -> AuditRecord:
        """A ``seal`` record (under the lock), then the same seal appended to the anchor, fsynced."""
        if self.anchor is not None:
            clean["anchored"] = True  # under the hash: verify --anchor then misses no anchored seal
        written = self._write(EVENT_SEAL, clean, tail, allow_rotation=False)
        if self.anchor is not None:
            self._anchor_write(written)
        return written

    def _anchor_write(self, written: AuditRecord) -> None:
        assert self.anchor is not None
        entry = {"seq": written.seq, "hash": written.hash, "time": written.time,
                 "run_id": written.record.get("run_id")}  # fmt: skip
        created = not self.anchor.exists()
        try:
            fd = os.open(self.anchor, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640)
            try:
                _write_all(fd, canonical(entry) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.anchor.parent)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot append seal seq {written.seq} to the audit anchor {self.anchor} ({exc.strerror or exc}); "
                "the seal is in the log but not anchored: check the anchor's storage"
            ) from None

    def _stamp(self, seal: AuditRecord) -> None:
        """An RFC 3161 time-stamp of ``seal``, kept in audit-timestamps.jsonl. A TSA that fails never
        stops a run: the failure is itself an audit event."""
        from provision.timestamp import request_stamp

        assert self.timestamp_url is not None
        try:
            stamp = request_stamp(self.timestamp_url, seal.hash)
        except ProvisionError as exc:
            self.timestamp_failures += 1
            self.append("timestamp_failed", tsa=self.timestamp_url, seal_seq=seal.seq, error=exc.message,
                        outcome="failed")  # fmt: skip
            return
        entry = {"seq": seal.seq, "hash": seal.hash, "gen_time": rfc3339(stamp.gen_time), "tsa": stamp.tsa,
                 "token": base64.b64encode(stamp.token).decode("ascii")}  # fmt: skip
        target = self.path.with_name(TIMESTAMPS_NAME)
        with self._lock:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640)
            try:
                _write_all(fd, canonical(entry) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _should_rotate(self, tail: _Tail, now: datetime) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size == 0:
            return False
        if self.rotate_bytes is not None and size >= self.rotate_bytes:
            return True
        if self.rotate_daily and tail.time is not None and tail.time[:10] != rfc3339(now)[:10]:
            return True
        return False

    def _rotate(self, now: datetime) -> Path:
        target = rolled_name(self.path, now)
        while target.exists():
            now += timedelta(microseconds=1)
            target = rolled_name(self.path, now)
        os.replace(self.path, target)
        fsync_dir(self.path.parent)
        return target

    def _tail(self) -> _Tail:
        refuse_link(self.path)  # a link planted in the logs directory is neither read nor written
        raw, size = _read_last_line(self.path)
        if size == 0:
            return self._previous_file_tail()
        return self._judge(raw, self.path)

    def _previous_file_tail(self) -> _Tail:
        rolled = [p for p in chain_files(self.path) if p != self.path]
        if not rolled:
            return _Tail(prev=GENESIS, seq=0, time=None, keyed=False, rotated_from=None)
        raw, size = _read_last_line(rolled[-1])
        tail = self._judge(raw, rolled[-1]) if size else _Tail(GENESIS, 0, None, False, None)
        tail.rotated_from = rolled[-1].name
        return tail

    def _judge(self, raw: bytes, path: Path) -> _Tail:
        line = _inspect(raw, self._hasher)
        self._check_keying(line, path)
        if line.status == "ok" and line.complete and line.record is not None:
            assert line.hash is not None and line.seq is not None
            stamp = line.record.get("time")
            return _Tail(line.hash, line.seq, stamp if isinstance(stamp, str) else None, line.keyed, None)
        if not line.complete:
            problem, what = (
                TRUNCATED,
                "its last line is incomplete (a write was cut, or the file was truncated)",
            )
        elif line.status == "bad-hash" and line.keyed:
            problem, what = (
                MODIFIED,
                "its last record does not verify (it was changed, or the audit key is not the one it was written with)",
            )
        elif line.status == "not-record":
            problem, what = MODIFIED, "its last line is not an audit record"
        else:
            problem, what = MODIFIED, "its last record does not verify (it was changed)"
        status = TailStatus(
            ok=False,
            problem=problem,
            message=f"audit log {path}: {what}; nothing more is appended until an operator runs "
            "'provision audit verify' and accepts the damage explicitly",
        )
        return _Tail(GENESIS, 0, None, False, None, damage=status)

    def _check_keying(self, line: _Line, path: Path) -> None:
        """A keyed log is only continued keyed, and a plain one only plain: with a key, every record has a MAC."""
        if line.status == "key-required" or (line.status == "ok" and line.keyed and not self._keyed):
            raise UsageError(
                f"{path} is HMAC-chained (it was started with an audit key); a run without that key would "
                "continue it unkeyed, so nothing was appended: give the key in the job file's audit.key"
            )
        if line.status == "ok" and not line.keyed and self._keyed:
            raise UsageError(
                f"{path} was started without an audit key and a keyed log has a MAC on every record, so a keyed "
                "run cannot continue it; nothing was appended: keep this log and start the keyed one in a new "
                "--logs directory"
            )

    def _last_good(self) -> tuple[int, _Line | None]:
        """(offset where the damaged region starts, the last record that verifies before it)."""
        size = self.path.stat().st_size
        start = max(0, size - _TAIL_WINDOW)
        with open(self.path, "rb") as handle:
            handle.seek(start)
            data = handle.read()
        if start > 0:  # drop the partial first line of the window
            cut = data.find(b"\n")
            if cut < 0:
                raise AuditError(
                    f"the damage at the end of {self.path} is longer than 1 MiB; restore the log from a backup"
                )
            start += cut + 1
            data = data[cut + 1 :]
        offsets = [0]
        for i, byte in enumerate(data):
            if byte == 0x0A and i + 1 < len(data):
                offsets.append(i + 1)
        for index in range(len(offsets) - 1, -1, -1):
            begin = offsets[index]
            end = offsets[index + 1] if index + 1 < len(offsets) else len(data)
            line = _inspect(data[begin:end], self._hasher)
            if line.status == "ok" and line.complete:
                self._check_keying(line, self.path)
                return start + end, line
        if start > 0:
            raise AuditError(
                f"the damage at the end of {self.path} is longer than 1 MiB; restore the log from a backup"
            )
        return 0, None

    def _forward(self, written: AuditRecord) -> None:
        seal = written.event == EVENT_SEAL
        if self._syslog is None or not (seal or self._syslog_all):
            return
        rec = written.record
        params = {"seq": written.seq, "hash": written.hash, "run_id": rec.get("run_id") or "-"}
        if seal:
            message = f"audit seal {written.hash} at seq {written.seq}"
        else:
            message = canonical(rec).decode("utf-8")
        level = logging.WARNING if rec.get("error_class") else logging.INFO
        log_record = logging.makeLogRecord(
            {
                "msg": message,
                "levelno": level,
                "levelname": logging.getLevelName(level),
                "msgid": written.event,
                "sd": params,
            }
        )
        self._syslog.handle(log_record)


def _encode_line(record: Mapping[str, Any], hasher: _Hasher) -> tuple[bytes, str]:
    """(the line as written, its hash): the canonical body with ``hash`` appended as last member."""
    body = canonical(record)
    digest = hasher.keyed(body) if record.get("mac") == MAC_NAME else hasher.plain(body)
    return body[:-1] + _HASH_KEY + digest.encode("ascii") + b'"}\n', digest


def _read_last_line(path: Path) -> tuple[bytes, int]:
    """(the last line with its newline if any, file size); (b"", 0) for a missing or empty file."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return b"", 0
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return b"", 0
        chunk = 4096
        while True:
            start = max(0, size - chunk)
            handle.seek(start)
            data = handle.read(size - start)
            cut = data.rfind(b"\n", 0, len(data) - 1)
            if cut >= 0:
                return data[cut + 1 :], size
            if start == 0:
                return data, size
            chunk *= 4


def _count_newlines(handle: Any, end: int) -> int:
    handle.seek(0)
    count, remaining = 0, end
    while remaining > 0:
        block = handle.read(min(remaining, 1 << 20))
        if not block:
            break
        count += block.count(b"\n")
        remaining -= len(block)
    return count


# ----------------------------------------------------------------------------------------------
# show


def _parse_moment(value: datetime | date | str | None, *, end: bool) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                value = date.fromisoformat(text)
            else:
                value = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise UsageError(f"{value!r} is not a date (YYYY-MM-DD) or an RFC 3339 time") from None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    moment = datetime.combine(value, time.min, tzinfo=UTC)
    return moment + timedelta(days=1) if end else moment  # --until DATE includes that whole day


# Every event this version writes; `audit show --event` accepts these and any name found in the log.
KNOWN_EVENTS = (
    "run_started", "validated", "card_inserted", "card_identified", "card_refused", "card_error",
    "preflight", "operator_confirmed", "operator_declined", "archived", "overwrite_planned",
    "pin_verify", "pin_refused_floor", "management_key_auth", "key_imported", "certificate_written",
    "replaced_object_deleted", "key_history_written", "slot_name_written", "verified", "committed",
    "exported", "skipped", "job_loaded", "job_skipped", "job_failed", "job_refused", "job_in_doubt",
    "job_pending", "run_finished", "timestamp_failed", EVENT_SEAL, EVENT_TAIL_ACCEPTED,
)  # fmt: skip


def _record_problem(line: _Line, has_key: bool, keyed_seen: bool) -> str | None:
    """Why one record, on its own, does not verify (None: its hash or MAC is right)."""
    if not line.complete:
        return "the line is incomplete (the log was truncated or a write was cut)"
    if line.status == "key-required":
        return "HMAC-chained: give the audit key (--key-env or --key-file) to verify it"
    if line.status != "ok":
        return "its hash does not match its content (it was changed, or the key is not this log's)"
    if has_key and not line.keyed:
        return "it has no MAC, though a key was given (the MACs were stripped, or it was forged)"
    if keyed_seen and not line.keyed:
        return "it has no MAC after HMAC-chained records (it was forged)"
    return None


def _verified_records(files: list[Path], key: Secret | None, bad_lines: dict[Path, list[int]]) -> Iterator[dict[str, Any]]:
    """Every record of the chain, oldest first, with ``verified`` and (when false) ``verify_problem``.

    A record verifies when its own hash (or MAC) is right, it follows the record before it (prev,
    seq) and the record after it follows it: so a record changed with its hash recomputed fails too.
    Lines that are not records are listed in ``bad_lines``. Whole-chain checks (a cut tail, seals)
    are ``verify``'s."""
    hasher = _Hasher(key)
    prev_hash, prev_seq = GENESIS, 0  # of the record line before
    good_hash, good_seq = GENESIS, 0  # of the last record that verified on its own
    keyed_seen = False
    pending: tuple[dict[str, Any], str | None, str | None] | None = None
    for path in files:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise AuditError(f"cannot read {path} ({exc.strerror})") from None
        with handle:
            for lineno, raw in enumerate(handle, start=1):
                line = _inspect(raw, hasher)
                if line.record is None:
                    bad_lines.setdefault(path, []).append(lineno)
                    continue
                record = line.record
                problem = _record_problem(line, hasher.has_key, keyed_seen)
                accepted = (
                    record.get("event") == EVENT_TAIL_ACCEPTED and line.prev == good_hash and line.seq == good_seq + 1
                )
                if problem is None and not (line.prev == prev_hash and line.seq == prev_seq + 1) and not accepted:
                    if prev_seq == 0 and "rotated_from" in record:
                        problem = f"the chain's earlier files ({record['rotated_from']}) are missing"
                    else:
                        problem = "it does not follow the record before it (a record was deleted, inserted or reordered)"
                if pending is not None:
                    before, why, digest = pending
                    if why is None and line.prev != digest and not accepted:
                        why = "the record after it does not follow it (it was changed and its hash recomputed, or one after it was deleted)"
                    yield {**before, "verified": why is None, **({"verify_problem": why} if why else {})}
                pending = (record, problem, line.hash)
                prev_hash, prev_seq = line.hash or "", line.seq or 0
                if problem is None:
                    good_hash, good_seq = prev_hash, prev_seq
                    keyed_seen = keyed_seen or line.keyed
    if pending is not None:
        before, why, _ = pending
        yield {**before, "verified": why is None, **({"verify_problem": why} if why else {})}


def show(
    path_or_dir: Path | str,
    *,
    job: str | None = None,
    card: str | None = None,
    since: datetime | date | str | None = None,
    until: datetime | date | str | None = None,
    event: str | None = None,
    damaged: list[str] | None = None,
    key: Secret | None = None,
) -> Iterator[dict[str, Any]]:
    """The events of the chain that match every filter given, oldest first, each verified as it is
    read: ``"verified": true|false`` and, when false, ``verify_problem`` in words.

    Lines that are not audit records are skipped and described in ``damaged`` (when given); a file
    with no audit record at all raises AuditError. ``verify`` checks the whole chain (a cut tail).
    """
    files, _ = _resolve(path_or_dir)
    start = _parse_moment(since, end=False)
    stop = _parse_moment(until, end=True)
    until_is_date = (
        isinstance(until, date)
        and not isinstance(until, datetime)
        or (isinstance(until, str) and len(until.strip()) == 10)
    )
    bad_lines: dict[Path, list[int]] = {}
    for record in _verified_records(files, key, bad_lines):
        if _matches(record, job, card, event, start, stop, until_is_date):
            yield record
    for path in files:
        lines = bad_lines.get(path, [])
        if lines and lines[0] == 1 and len(lines) == sum(1 for _ in open(path, "rb")):
            raise AuditError(f"{path} is not a provision audit log (no line is an audit record)")
        if lines and damaged is not None:
            damaged.append(
                f"{path}: line(s) {', '.join(map(str, lines[:10]))}" + (" …" if len(lines) > 10 else "")
            )


def _matches(
    record: Mapping[str, Any],
    job: str | None,
    card: str | None,
    event: str | None,
    start: datetime | None,
    stop: datetime | None,
    stop_exclusive: bool,
) -> bool:
    if job is not None and record.get("job_id") != job:
        return False
    if card is not None and str(record.get("card_serial")) != str(card):
        return False
    if event is not None and record.get("event") != event:
        return False
    if start is not None or stop is not None:
        try:
            moment = datetime.fromisoformat(str(record.get("time")))
        except ValueError:
            return False
        if start is not None and moment < start:
            return False
        if stop is not None and (moment >= stop if stop_exclusive else moment > stop):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# CLI handlers (wired by cli.py)


def journal_seals(logs_dir: Path) -> list[str]:
    """The run seals the journal of ``logs_dir`` holds (none when there is no journal)."""
    from provision import journal as jn

    path = Path(logs_dir) / "journal.sqlite3"
    if not path.exists():
        return []
    journal = jn.Journal(path, read_only=True)  # an auditor's copy may be on read-only media
    try:
        return journal.seals()
    finally:
        journal.close()


def cmd_audit_verify(
    logs_dir: Path,
    key: Secret | None,
    seals: Iterable[str],
    as_json: bool,
    out: Out,
    err: Out | None = None,
    *,
    held: Iterable[str] = (),
    anchor: Path | None = None,
    timestamps: bool = False,
    tsa_certs: Iterable[bytes] = (),
) -> int:
    """``provision audit verify``: 0 when intact, 4 with the first bad line otherwise (2: nothing to check)."""
    warn = err or out
    try:
        result = verify(logs_dir, key=key, seals=seals, held=held, anchor=anchor, timestamps=timestamps,
                        tsa_certs=tsa_certs)  # fmt: skip
    except ProvisionError as exc:
        if as_json:
            out(
                json.dumps(
                    {"ok": False, "problem": None, "message": exc.message}, indent=2, ensure_ascii=False
                )
            )
        else:
            warn(f"provision: {exc.message}")
        return exc.exit_code
    if as_json:
        out(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    elif result.ok:
        out(f"audit log intact: {result.message}")
        if result.last_hash:
            out(f"last hash: {result.last_hash}")
        for note in result.accepted_damage:
            out(f"note: {note}")
    else:
        out(f"audit log FAILED verification ({result.problem}): {result.message}")
    return 0 if result.ok else AuditError.exit_code


_SHOW_COLUMNS = ("job_id", "card_serial", "slot", "outcome", "error_class")
_SHOW_FINGERPRINTS = ("fingerprint_sha256", "replaced_sha256", "current_sha256")


def _event_names(logs_dir: Path) -> set[str]:
    """The event names this version writes and those found in the log (an older or newer writer's)."""
    names = set(KNOWN_EVENTS)
    with contextlib.suppress(ProvisionError):
        for record in show(logs_dir):
            if isinstance(record.get("event"), str):
                names.add(record["event"])
    return names


def _show_line(rec: Mapping[str, Any]) -> str:
    mark = "ok " if rec.get("verified") else "BAD"
    extra = " ".join(f"{k}={rec[k]}" for k in _SHOW_COLUMNS if rec.get(k) not in (None, ""))
    prints = " ".join(
        f"{k.removesuffix('_sha256')}={rec[k]}" for k in _SHOW_FINGERPRINTS if isinstance(rec.get(k), str)
    )
    who = f"operator={rec.get('operator')!r}"
    if rec.get("os_user") not in (None, rec.get("operator")):
        who += f" os_user={rec.get('os_user')!r}"
    holder = f"holder={rec['holder']!r}" if rec.get("holder") else ""
    fields = " ".join(part for part in (extra, prints, who, holder) if part)
    text = f"{mark} {rec.get('time', '?')}  #{rec.get('seq')}  {rec.get('event')}  {fields}"
    if not rec.get("verified"):
        text += f"\n    NOT VERIFIED: {rec.get('verify_problem')}"
    return _printable(text)


def _printable(text: str) -> str:
    """A record's text on a terminal: control characters shown escaped, never acted on."""
    return "".join(
        ch if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf") else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def cmd_audit_show(
    logs_dir: Path,
    *,
    job: str | None = None,
    card: str | None = None,
    since: str | None = None,
    until: str | None = None,
    event: str | None = None,
    as_json: bool = False,
    out: Out,
    err: Out | None = None,
    key: Secret | None = None,
) -> int:
    """``provision audit show``: the matching events, each verified as it is read, one line each (or
    one JSON document); 4 when any shown record does not verify."""
    warn = err or out
    damaged: list[str] = []
    try:
        if event is not None and event not in KNOWN_EVENTS:
            names = _event_names(logs_dir)
            if event not in names:
                raise UsageError(f"there is no audit event '{event}'; known events: {', '.join(sorted(names))}")
        events = list(
            show(logs_dir, job=job, card=card, since=since, until=until, event=event, damaged=damaged, key=key)
        )
    except ProvisionError as exc:
        warn(f"provision: {exc.message}")
        return exc.exit_code
    failed = [rec for rec in events if not rec.get("verified")]
    if as_json:
        out(json.dumps({"events": events, "damaged": damaged, "verified": not failed}, indent=2, ensure_ascii=False))
    else:
        for rec in events:
            out(_show_line(rec))
        if not events:
            out("no audit event matches")
    for note in damaged:
        warn(f"warning: {note} are not audit records; run 'provision audit verify'")
    if failed:
        warn(
            f"provision: {len(failed)} shown record(s) do not verify (first: seq {failed[0].get('seq')}, "
            f"{failed[0].get('verify_problem')}); run 'provision audit verify'"
        )
        return AuditError.exit_code
    return 0
