"""Verifying an audit chain: ``verify`` (the whole chain, seals, anchors, time-stamps) and ``show``
(each record verified as it is read). Returns typed results, raises typed errors; never prints."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from provision.audit.records import (
    ANCHOR_MISMATCH,
    DELETED,
    EVENT_SEAL,
    EVENT_TAIL_ACCEPTED,
    EVENT_TIMESTAMP_FAILED,
    GENESIS,
    HASH_KEY,
    HEX64,
    INSERTED,
    KEY_REQUIRED,
    LOG_NAME,
    MAC_MARK,
    MAC_MISSING,
    MODIFIED,
    NOT_AN_AUDIT_LOG,
    REORDERED,
    SEAL_MISMATCH,
    TIMESTAMP_INVALID,
    TIMESTAMP_MISSING,
    TIMESTAMPS_NAME,
    TRUNCATED,
    AnchorEntry,
    Hasher,
    InspectedLine,
    bounded_lines,
    chain_files,
    held_seal,
    inspect_line,
    kept_stamps_in,
    read_anchor,
    read_stamps,
    region_digest,
    rfc3339,
)
from provision.errors import AuditError, UsageError
from provision.i18n import msg
from provision.logsdir import open_read
from provision.secrets import Secret

_SUFFIX = len(HASH_KEY) + 64 + 2  # ,"hash":"<64 hex>"}
_PREV_KEY = b'"prev":"'
_SEQ_RE = re.compile(rb'"seq":(0|[1-9][0-9]{0,17})[,}]')
_MAC_KEY = b'"mac":"'
_HELD = "you hold (--seal)"  # where a seal comes from, in the sentence that names it missing
_ACCEPT_LOOKAHEAD = 10_000  # lines after a damaged region in which verify looks for its acceptance


# ----------------------------------------------------------------------------------------------
# which files


def _resolve(path_or_dir: Path | str, *, allow_missing: bool = False) -> tuple[list[Path], bool]:
    """(files, single_file). A directory means its whole chain; a file means just that file."""
    path = Path(path_or_dir)
    if path.is_dir():
        files = chain_files(path / LOG_NAME)
        if not files and not allow_missing:
            raise UsageError(msg('there is no audit log in {path} ({name} is missing); check --logs', path=path, name=LOG_NAME))
        return files, False
    if path.is_file():
        return [path], True
    if allow_missing:
        return [], False
    raise UsageError(msg('{path} does not exist; check --logs', path=path))


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


def _count_lines(path: Path) -> int:
    with open_read(path, follow=True) as handle:
        return sum(1 for _ in bounded_lines(handle))


def _lines_from(files: list[Path], fi: int, lineno: int) -> Iterator[tuple[int, int, bytes]]:
    """(file index, line number, raw line) from line ``lineno`` of file ``fi`` to the chain's end."""
    for index in range(fi, len(files)):
        with open_read(files[index], follow=True) as handle:
            for n, raw in enumerate(bounded_lines(handle), start=1):
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
        self.hasher = Hasher(key)
        self.has_key = key is not None
        # where each seal comes from, for the sentence that names a missing one
        self.seals = {s.strip().lower(): "from the journal" for s in seals if s and s.strip()}
        self.seals.update({s: _HELD for s in held})
        self.found: set[str] = set()
        self.anchor = anchor or []
        self.anchor_path = anchor_path
        self.anchored = {(e.seq, e.hash) for e in self.anchor}
        self.anchor_found: set[tuple[int, str]] = set()
        self.anchored_seals_in_log: list[tuple[int, str]] = []  # (seq, hash) of seals that say they were anchored
        self.stamp_requested: list[tuple[int, str]] = []  # (seq, hash) of seals sent to a time-stamp authority
        self.stamp_failed: set[int] = set()  # seqs of seals whose timestamp_failed record says why no token
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
        if line[-_SUFFIX : -_SUFFIX + 9] != HASH_KEY or line[-2:] != b'"}':
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
            if self.hasher._mac is None or MAC_MARK not in body:
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
        if b'"timestamp_requested":true' in body or b'"event":"timestamp_failed"' in body:
            self._note_stamp(body, claimed.decode("ascii"))
        if b'"lost_seals":' in body:
            self._note_lost(json.loads(body))
        return True

    def _note_stamp(self, body: bytes, digest: str) -> None:
        """A seal sent to a time-stamp authority, or a record saying that request failed."""
        try:
            record = json.loads(body)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        if record.get("event") == EVENT_SEAL and record.get("timestamp_requested") is True:
            self.stamp_requested.append((self.seq, digest))
        elif record.get("event") == EVENT_TIMESTAMP_FAILED and isinstance(record.get("seal_seq"), int):
            self.stamp_failed.add(record["seal_seq"])

    def check_stamps_kept(self, kept: set[str], stamps_path: Path) -> None:
        """Every seal the log sent to a TSA has its token in ``kept`` (the hashes in
        audit-timestamps.jsonl), unless the log records that the request failed."""
        missing = [(seq, digest) for seq, digest in self.stamp_requested
                   if digest not in kept and seq not in self.stamp_failed and digest not in self.excused]  # fmt: skip
        if not missing:
            return
        seq = missing[0][0]
        path, lineno = self._locate(seq)
        raise _Failure(
            TIMESTAMP_MISSING,
            stamps_path,
            lineno,
            msg("{n} of the {total} seal(s) that the log says were sent to a time-stamp authority have no token in {name} and no record of a failed request (the first: seal seq {seq}, {path} line {lineno}): the time-stamps were deleted, emptied, truncated or rolled back",
                n=len(missing), total=len(self.stamp_requested), name=stamps_path, seq=seq, path=path, lineno=lineno),
        )  # fmt: skip

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
            with open_read(path, follow=True) as handle:
                for lineno, raw in enumerate(bounded_lines(handle), start=1):
                    if lineno <= skip_to or self._advance(raw):
                        continue
                    skip_to = self._explain(fi, lineno)
            last_path, last_line = path, lineno
        self._check_anchor(last_path, last_line)
        # A seal the auditor holds is named first: it is the one asked about (the journal may lack more).
        missing = sorted((s for s in self.seals if s not in self.found and s not in self.excused),
                         key=lambda s: (self.seals[s] != _HELD, s))  # fmt: skip
        if missing:
            origin = self.seals[missing[0]]
            where = (
                msg("the audit log is empty (or was emptied) but seal {seal}… {origin} is not in it: the log was "
                    "emptied or replaced", seal=missing[0][:16], origin=origin)
                if self.records == 0
                else msg("the chain ends at line {line} of {path} (seq {seq}) but seal {seal}… {origin} is not in it: "
                         "the log was cut after the seal, rolled back or replaced", line=last_line, path=last_path,
                         seq=self.seq, seal=missing[0][:16], origin=origin)
            )  # fmt: skip
            raise _Failure(SEAL_MISMATCH if self.records else TRUNCATED, last_path, last_line + 1, where)
        return VerifyResult(
            ok=True,
            records=self.records,
            last_hash=self.prev.decode("ascii") if self.records else None,
            message=msg("{records} record(s) in {files} file(s) intact{seals}{anchored}{accepted}",
                        records=self.records, files=len(self.files),
                        seals=msg(", {n} seal(s) found", n=len(self.seals)) if self.seals else "",
                        anchored=msg(", {n} anchored seal(s) in place", n=len(self.anchor)) if self.anchor_path else "",
                        accepted=msg("; {n} damaged region(s) accepted by an operator", n=len(self.accepted))
                        if self.accepted else ""),  # fmt: skip
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
                    msg('the anchor {name} line {line} holds seq {seq} after seq {seq2}: its seals are out of order (the anchor was reordered or spliced)', name=name, line=entry.line, seq=entry.seq, seq2=previous.seq),
                )
            previous = entry
            if (entry.seq, entry.hash) in self.anchor_found:
                continue
            if entry.seq > self.seq:
                raise _Failure(
                    TRUNCATED,
                    last_path,
                    last_line + 1,
                    msg('the log ends at seq {seq} (line {last_line} of {last_path}) but the anchor {name} line {line} holds a seal at seq {seq2}: the log was cut, emptied or rolled back', seq=self.seq, last_line=last_line, last_path=last_path, name=name, line=entry.line, seq2=entry.seq),
                )
            raise _Failure(
                ANCHOR_MISMATCH,
                name,
                entry.line,
                msg('the anchor {name} line {line} holds seal {hash}… at seq {seq}, which is not that record of the chain: the log was rolled back and rewritten, or replaced', name=name, line=entry.line, hash=entry.hash[:16], seq=entry.seq),
            )
        for seq, digest in self.anchored_seals_in_log:
            if (seq, digest) not in self.anchored:
                path, lineno = self._locate(seq)
                raise _Failure(
                    ANCHOR_MISMATCH,
                    path,
                    lineno,
                    msg("{path} line {lineno}: seal seq {seq} was anchored when written but the anchor {name} does not hold it: a seal was removed from the anchor (or the anchor is not this log's)", path=path, lineno=lineno, seq=seq, name=name),
                )

    # The slow path: only at the first line the fast path refused. Returns the line (in the same
    # file) up to which the chain has been consumed, or raises _Failure with the kind of damage.
    def _explain(self, fi: int, lineno: int) -> int:
        path = self.files[fi]
        ahead = _lines_from(self.files, fi, lineno)
        _, _, raw = next(ahead)
        bad = inspect_line(raw, self.hasher)
        where = msg("{path} line {line}", path=path, line=lineno)
        expected_seq = self.seq + 1
        prev_text = self.prev.decode("ascii")

        if not bad.complete:
            raise _Failure(
                TRUNCATED,
                path,
                lineno,
                msg('{where}: the last line is incomplete (no newline): the log was truncated or a write was cut', where=where),
            )
        if bad.status == "key-required":
            raise _Failure(
                KEY_REQUIRED,
                path,
                lineno,
                msg('{where}: the log is HMAC-chained; give the audit key (audit.key of the job file) to verify it', where=where),
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
                msg('{where}: the chain starts at seq {seq}, continuing from {record}, which is not present: earlier files were removed', where=where, seq=bad.seq, record=bad.record['rotated_from']),
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
                    msg('{where}: records are out of order (seq {seq} comes before seq {seq2})', where=where, seq=bad.seq, seq2=first.seq),
                )
            raise _Failure(
                INSERTED,
                path,
                lineno,
                msg('{where}: this line was inserted: it is not part of the chain, the next line continues from line {previous}', where=where, previous=lineno - 1),
            )

        if bad.status == "not-record":
            if lineno == 1 and self.records == 0 and not self._has_any_record(path):
                raise _Failure(
                    NOT_AN_AUDIT_LOG,
                    path,
                    lineno,
                    msg('{path} is not a provision audit log (no line is a hash-chained audit record)', path=path),
                )
            raise _Failure(
                MODIFIED, path, lineno, msg('{where}: the line is not a valid audit record (it was changed)', where=where)
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
                    msg('{where}: the audit key given is not the key this log was written with (its HMAC does not match)', where=where),
                )
            raise _Failure(
                MODIFIED,
                path,
                lineno,
                msg('{where}: the record was modified (its hash does not match its content)', where=where),
            )
        if self.keyed_seen and not bad.keyed:
            raise _Failure(
                MODIFIED,
                path,
                lineno,
                msg('{where}: a record without HMAC follows HMAC-chained records: it was forged or replaced', where=where),
            )
        if self.hasher.has_key and not bad.keyed:
            raise _Failure(
                MAC_MISSING,
                path,
                lineno,
                msg('{where}: the record has no MAC, but an audit key was given and with a key every record must carry a valid HMAC: the MACs were stripped and the chain recomputed, or the log was never keyed', where=where),
            )

        assert bad.seq is not None
        if bad.seq == expected_seq:
            raise _Failure(
                MODIFIED,
                path,
                lineno,
                msg('{where}: the record does not follow the one before it (prev does not match): a record was changed and its hash recomputed, or replaced', where=where),
            )
        if bad.seq < expected_seq:
            raise _Failure(
                INSERTED,
                path,
                lineno,
                msg('{where}: seq {seq} repeats an earlier record: a line was inserted', where=where, seq=bad.seq),
            )
        if self._seq_later(fi, lineno, expected_seq):
            raise _Failure(
                REORDERED,
                path,
                lineno,
                msg('{where}: records are out of order (seq {seq} where seq {expected_seq} was expected, which comes later)', where=where, seq=bad.seq, expected_seq=expected_seq),
            )
        missing = bad.seq - expected_seq
        raise _Failure(
            DELETED,
            path,
            lineno,
            msg("{where}: {missing} record(s) before this line were deleted (seq {seqs} missing)", where=where,
                missing=missing, seqs=str(expected_seq) + "–" + str(bad.seq - 1) if missing > 1 else expected_seq),  # fmt: skip
        )

    def _next_two(self, ahead: Iterator[tuple[int, int, bytes]]) -> tuple[InspectedLine | None, InspectedLine | None]:
        got: list[InspectedLine | None] = []
        for _, _, raw in ahead:
            got.append(inspect_line(raw, self.hasher))
            if len(got) == 2:
                break
        got += [None] * (2 - len(got))
        return got[0], got[1]

    def _acceptance(self, fi: int, lineno: int) -> int | None:
        """If an operator accepted the damaged lines from ``lineno`` on, consume them and the acceptance."""
        path = self.files[fi]
        region: list[bytes] = []
        with open_read(path, follow=True) as handle:
            for n, raw in enumerate(bounded_lines(handle), start=1):
                if n < lineno:
                    continue
                if n > lineno + _ACCEPT_LOOKAHEAD:
                    return None
                if b'"audit_tail_accepted"' in raw:
                    line = inspect_line(raw, self.hasher)
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
                        and rec.get("damaged_sha256") == region_digest(region)
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
        with open_read(path, follow=True) as handle:
            for n, raw in enumerate(bounded_lines(handle)):
                if n > 1000:
                    break
                if inspect_line(raw, self.hasher).status != "not-record":
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


def _stamps_path(logs: Path) -> Path:
    return (logs if logs.is_dir() else logs.parent) / TIMESTAMPS_NAME


def _kept_stamps(logs: Path) -> set[str]:
    return kept_stamps_in(_stamps_path(logs))


def _check_timestamps(logs: Path, trusted: list[bytes]) -> tuple[list[str], str] | VerifyResult:
    """(the seals with a valid RFC 3161 token, a sentence), or the failed VerifyResult."""
    from provision.timestamp import check_stamp

    path = _stamps_path(logs)
    lines = read_stamps(path)
    if lines is None:
        return [], ""
    seals: list[str] = []
    last = ""
    for n, raw in enumerate(lines, start=1):
        try:
            entry = json.loads(raw)
            seal, token = entry["hash"], base64.b64decode(entry["token"], validate=True)
            if not (isinstance(seal, str) and HEX64.match(seal)):
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
            message=msg('{path} line {n}: {why}', path=path, n=n, why=why), file=str(path),
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
    stamp_note = ""
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
            message=msg("there is no audit log in {path} ({name} is missing), but {witnesses} know(s) {known} seal(s) "
                        "of it: the log was deleted", path=path_or_dir, name=LOG_NAME, known=known,
                        witnesses=functools.reduce(lambda a, b: msg("{a} and {b}", a=a, b=b), [w for w, has in (
                            (msg("the journal"), seals), (msg("the seals you hold"), held),
                            (msg("the time-stamps"), stamped), (msg("the anchor {anchor}", anchor=anchor), entries),
                        ) if has])),  # fmt: skip
            file=str(Path(path_or_dir) / LOG_NAME),
            seals_checked=known,
        )
    verifier = _Verifier(
        files, key, seals, single, held=held, anchor=entries, anchor_path=Path(anchor) if anchor else None
    )
    verifier.seals.update({s: "time-stamped by a TSA" for s in stamped if s not in verifier.seals})
    try:
        result = verifier.run()
        stamps_path = _stamps_path(Path(path_or_dir))
        if verifier.stamp_requested:
            verifier.check_stamps_kept(set(stamped) if timestamps else _kept_stamps(Path(path_or_dir)), stamps_path)
        if timestamps:
            if not stamp_note:  # no file, and no seal of the log says there should be one
                raise UsageError(msg('there are no time-stamps in {parent} ({name} is missing)', parent=stamps_path.parent, name=TIMESTAMPS_NAME))
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
            msg('cannot read the audit log ({reason}: {filename})', reason=exc.strerror or type(exc).__name__, filename=exc.filename)
        ) from None


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
            raise UsageError(msg('{value!r} is not a date (YYYY-MM-DD) or an RFC 3339 time', value=value)) from None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    moment = datetime.combine(value, time.min, tzinfo=UTC)
    return moment + timedelta(days=1) if end else moment  # --until DATE includes that whole day


def _record_problem(line: InspectedLine, has_key: bool, keyed_seen: bool) -> str | None:
    """Why one record, on its own, does not verify (None: its hash or MAC is right)."""
    if not line.complete:
        return msg('the line is incomplete (the log was truncated or a write was cut)')
    if line.status == "key-required":
        return msg('HMAC-chained: give the audit key (--key-env or --key-file) to verify it')
    if line.status != "ok":
        return msg("its hash does not match its content (it was changed, or the key is not this log's)")
    if has_key and not line.keyed:
        return msg('it has no MAC, though a key was given (the MACs were stripped, or it was forged)')
    if keyed_seen and not line.keyed:
        return msg('it has no MAC after HMAC-chained records (it was forged)')
    return None


def _verified_records(files: list[Path], key: Secret | None, bad_lines: dict[Path, list[int]]) -> Iterator[dict[str, Any]]:
    """Every record of the chain, oldest first, with ``verified`` and (when false) ``verify_problem``.

    A record verifies when its own hash (or MAC) is right, it follows the record before it (prev,
    seq) and the record after it follows it: so a record changed with its hash recomputed fails too.
    Lines that are not records are listed in ``bad_lines``. Whole-chain checks (a cut tail, seals)
    are ``verify``'s."""
    hasher = Hasher(key)
    prev_hash, prev_seq = GENESIS, 0  # of the record line before
    good_hash, good_seq = GENESIS, 0  # of the last record that verified on its own
    keyed_seen = False
    pending: tuple[dict[str, Any], str | None, str | None] | None = None
    for path in files:
        try:
            handle = open_read(path, follow=True)
        except OSError as exc:
            raise AuditError(msg('cannot read {path} ({strerror})', path=path, strerror=exc.strerror)) from None
        with handle:
            for lineno, raw in enumerate(bounded_lines(handle), start=1):
                line = inspect_line(raw, hasher)
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
        if lines and lines[0] == 1 and len(lines) == _count_lines(path):
            raise AuditError(msg('{path} is not a provision audit log (no line is an audit record)', path=path))
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

# ----------------------------------------------------------------------------------------------
# the seals a journal holds


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
