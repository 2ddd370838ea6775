"""The writer of the hash-chained audit log: ``AuditLog`` appends under a thread and a file lock,
checks the tail, rotates, seals, anchors and time-stamps seals, and forwards to syslog."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from provision import __version__
from provision.audit.forward import Rfc5424Formatter, SyslogHandler, SyslogTarget, check_reachable
from provision.audit.records import (
    DELETED,
    EVENT_SEAL,
    EVENT_TAIL_ACCEPTED,
    EVENT_TIMESTAMP_FAILED,
    GENESIS,
    MAC_MARK,
    MAC_NAME,
    MAX_RECORD_BYTES,
    MODIFIED,
    RESERVED_FIELDS,
    TIMESTAMPS_NAME,
    TRUNCATED,
    AnchorEntry,
    AuditRecord,
    Hasher,
    InspectedLine,
    bounded_lines,
    canonical,
    chain_files,
    check_field_name,
    clean_value,
    encode_line,
    host_name,
    inspect_line,
    kept_stamps_in,
    operator_name,
    os_user,
    read_anchor,
    region_digest,
    rfc3339,
    rolled_name,
)
from provision.errors import AuditError, EnvironmentProblem, ProvisionError, RecordsError, UsageError
from provision.fsutil import fsync_dir
from provision.i18n import Msg, msg
from provision.logsdir import open_nofollow, open_read, open_regular, refuse_link
from provision.secrets import Secret

_TAIL_WINDOW = 1 << 20  # how far back accept_damaged_tail looks for the last good record


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
            try:
                self._fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:  # no permission: the environment's, said in a sentence
                raise RecordsError(_cannot_use(self.path, exc)) from None
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
        self._hasher = Hasher(key)
        self._keyed = key is not None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._os_user = os_user()
        self.operator = operator_name(operator) if operator is not None else self._os_user
        self.anchor = Path(anchor) if anchor is not None else None
        self.seal_each_job = seal_each_job
        self._host = host_name()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _FileLock(self.path.with_name(f".{self.path.name}.lock"))
        self._syslog: SyslogHandler | None = None
        self._syslog_all = False
        self._seal_listeners: list[Callable[[AuditRecord], None]] = []
        if syslog is not None:
            self._open_syslog(syslog)

    def _open_syslog(self, target: SyslogTarget) -> None:
        try:
            handler = SyslogHandler(address=target.address, facility=target.facility)
        except OSError as exc:
            raise EnvironmentProblem(
                msg('cannot reach syslog at {address} ({reason}); check the audit syslog address', address=target.address, reason=exc.strerror or exc)
            ) from None
        handler.append_nul = False
        handler.ident = ""
        handler.setFormatter(Rfc5424Formatter(target.app_name, self._host))
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
        seals = [r for r in (written, sealed) if r is not None and r.event == EVENT_SEAL]
        try:
            for record in seals:
                for listener in self._seal_listeners:
                    listener(record)
        finally:
            # Also when a listener failed (the journal): the seal says a token was asked for.
            if self.timestamp_url is not None:  # after the lock: a TSA's round trip never holds up other writers
                for record in seals:
                    self._stamp(record)
        return written

    def add_seal_listener(self, listener: Callable[[AuditRecord], None]) -> None:
        """Call ``listener`` with every seal written from now on (after the lock: the runner keeps
        each one in its journal)."""
        self._seal_listeners.append(listener)

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
            fd = open_regular(self.anchor, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640, follow=True)
            os.close(fd)
        except OSError as exc:
            raise EnvironmentProblem(
                msg('cannot append to the audit anchor {anchor} ({reason}); nothing was run. Check that its storage is mounted and writable, or fix audit.anchor / --anchor', anchor=self.anchor, reason=exc.strerror or exc)
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
                    message=msg("the audit log {path} is missing or empty, but {where} hold(s) {n} seal(s) of it: it was deleted or emptied; no new chain is started over it until an operator runs 'provision audit verify' and accepts the loss explicitly", path=self.path, where=where, n=len(lost)),
                )
        return TailStatus(ok=True, message=msg('{path}: the last record verifies', path=self.path))

    def _anchor_entries(self) -> list[AnchorEntry]:
        return read_anchor(self.anchor) if self.anchor is not None and self.anchor.is_file() else []

    def _lost_seals(self, known_seals: Iterable[str]) -> tuple[list[str], str]:
        lost = {s for s in known_seals if s}
        where: list[Msg] = [msg("the journal")] if lost else []
        anchored = {entry.hash for entry in self._anchor_entries()}
        if anchored:
            where.append(msg("the anchor {anchor}", anchor=self.anchor))
        return sorted(lost | anchored), functools.reduce(lambda a, b: msg("{a} and {b}", a=a, b=b), where) if where else ""

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
            raise UsageError(msg('accepting a damaged audit log needs a reason in words'))
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
            with open_read(self.path) as handle:
                first_line = _count_newlines(handle, start) + 1
                handle.seek(start)
                region = handle.read()
            last_line = first_line + region.count(b"\n") - (1 if region.endswith(b"\n") else 0)
            if good is None and MAC_MARK in region and region.count(b"\n") > 1:
                # Not one keyed record verifies: far likelier the wrong key than a log damaged throughout.
                raise UsageError(
                    msg("no record of {path} verifies with this audit key: it is probably not the key the log was written with; nothing was accepted. Give the log's key (audit.key)", path=self.path)
                )
            if good is None:
                prior = self._previous_file_tail()
                prev, seq, keyed, rotated = prior.prev, prior.seq, prior.keyed, prior.rotated_from
            else:
                prev, seq, keyed, rotated = good.hash or GENESIS, good.seq or 0, good.keyed, None
            if keyed != self._keyed and seq > 0:
                self._check_keying(InspectedLine(raw=b"", complete=True, status="ok", keyed=keyed), self.path)
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
                damaged_sha256=region_digest([region]),
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
            check_field_name(name, name, nested=False)
            clean[name] = clean_value(value, name)
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
        line, digest = encode_line(record, self._hasher)
        created = not self.path.exists()
        try:
            fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640)
        except OSError as exc:
            raise RecordsError(_cannot_use(self.path, exc)) from None
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
                raise RecordsError(msg("the audit log {path} cannot take another record ({strerror}); free space, then 'provision resume' finishes the run", path=self.path, strerror=exc.strerror)) from None  # fmt: skip
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
        if self.timestamp_url is not None:
            # Under the hash too: verify then knows a token (or a timestamp_failed record) must
            # exist for this seal, so deleting audit-timestamps.jsonl does not go unseen.
            clean["timestamp_requested"] = True
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
            fd = open_regular(self.anchor, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640, follow=True)
            try:
                _write_all(fd, canonical(entry) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.anchor.parent)
        except OSError as exc:
            raise EnvironmentProblem(
                msg("cannot append seal seq {seq} to the audit anchor {anchor} ({reason}); the seal is in the log but not anchored: check the anchor's storage", seq=written.seq, anchor=self.anchor, reason=exc.strerror or exc)
            ) from None

    def _stamp(self, seal: AuditRecord) -> None:
        """An RFC 3161 time-stamp of ``seal``, kept in audit-timestamps.jsonl. A TSA that fails never
        stops a run: the failure is itself an audit event."""
        from provision.timestamp import request_stamp

        assert self.timestamp_url is not None
        try:
            stamp = request_stamp(self.timestamp_url, seal.hash)
            entry = {"seq": seal.seq, "hash": seal.hash, "gen_time": rfc3339(stamp.gen_time), "tsa": stamp.tsa,
                     "token": base64.b64encode(stamp.token).decode("ascii")}  # fmt: skip
            self._keep_stamp(entry)
        except ProvisionError as exc:
            # The seal says a token was asked for: the log itself now says why there is none.
            self.timestamp_failures += 1
            self.append(EVENT_TIMESTAMP_FAILED, tsa=self.timestamp_url, seal_seq=seal.seq, error=exc.message,
                        outcome="failed")  # fmt: skip
        except KeyboardInterrupt:  # a person stopped the run while the TSA was being asked
            self.timestamp_failures += 1
            self.append(EVENT_TIMESTAMP_FAILED, tsa=self.timestamp_url, seal_seq=seal.seq, outcome="failed",
                        error="the run was interrupted before the time-stamp authority answered")  # fmt: skip
            raise

    def settle_stamps(self, run_ids: Iterable[str]) -> int:
        """For runs killed outright (``run_ids``, from the journal): the seals at the end of each run
        that were sent to a TSA and have neither a token nor a ``timestamp_failed`` record (the
        process died while waiting) get that record now, so ``verify`` does not fail on a token
        that never came. Only the run's trailing seals: a seal before one whose token was kept is
        not excused. Returns how many were recorded."""
        wanted = {r for r in run_ids if r}
        if not wanted:
            return 0
        kept = _kept_stamp_hashes(self.path.with_name(TIMESTAMPS_NAME))
        trailing: dict[str, list[int]] = {r: [] for r in wanted}
        failed: set[int] = set()
        marks = [r.encode("utf-8") for r in wanted]
        for path in chain_files(self.path):
            try:  # a planted link is refused (LogsError), an unreadable file is said, never exit 70
                handle = os.fdopen(open_nofollow(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), "rb")
            except OSError as exc:
                raise RecordsError(msg("the audit log file {path} cannot be read ({strerror}); make it readable by "
                                       "this user, then run again", path=path, strerror=exc.strerror)) from None  # fmt: skip
            with handle:
                for raw in bounded_lines(handle):
                    if not any(mark in raw for mark in marks) and b'"timestamp_failed"' not in raw:
                        continue
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue
                    if record.get("event") == EVENT_TIMESTAMP_FAILED and isinstance(record.get("seal_seq"), int):
                        failed.add(record["seal_seq"])
                    elif record.get("event") == EVENT_SEAL and record.get("run_id") in wanted:
                        seals = trailing[record["run_id"]]
                        if record.get("hash") in kept:
                            seals.clear()  # a token came after the earlier ones: those are not excused
                        elif record.get("timestamp_requested") is True and isinstance(record.get("seq"), int):
                            seals.append(record["seq"])
        count = 0
        for run_id in sorted(wanted):
            for seq in trailing[run_id]:
                if seq in failed:
                    continue
                self.append(EVENT_TIMESTAMP_FAILED, run_id=run_id, tsa=self.timestamp_url, seal_seq=seq, outcome="failed",
                            error="no token was kept: the run was killed before the time-stamp authority answered")  # fmt: skip
                count += 1
        return count

    def _keep_stamp(self, entry: dict[str, Any]) -> None:
        """Append one token to audit-timestamps.jsonl, fsynced, never through a planted link."""
        target = self.path.with_name(TIMESTAMPS_NAME)
        with self._lock:
            try:
                created = not target.exists()
                fd = open_nofollow(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640)
                try:
                    before = os.fstat(fd).st_size
                    try:
                        _write_all(fd, canonical(entry) + b"\n")
                        os.fsync(fd)
                    except OSError:
                        with contextlib.suppress(OSError):  # whole lines only, as in the log
                            os.ftruncate(fd, before)
                        raise
                finally:
                    os.close(fd)
                if created:
                    fsync_dir(target.parent)
            except OSError as exc:
                raise RecordsError(
                    msg("the time-stamp token of seal seq {seq} cannot be kept in {path} ({reason})", seq=entry["seq"], path=target, reason=exc.strerror or exc)
                ) from None

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
        line = inspect_line(raw, self._hasher)
        self._check_keying(line, path)
        if line.status == "ok" and line.complete and line.record is not None:
            assert line.hash is not None and line.seq is not None
            stamp = line.record.get("time")
            return _Tail(line.hash, line.seq, stamp if isinstance(stamp, str) else None, line.keyed, None)
        if not line.complete:
            problem, what = (
                TRUNCATED,
                msg("its last line is incomplete (a write was cut, or the file was truncated)"),
            )
        elif line.status == "bad-hash" and line.keyed:
            problem, what = (
                MODIFIED,
                msg("its last record does not verify (it was changed, or the audit key is not the one it was written with)"),
            )
        elif line.status == "not-record":
            problem, what = MODIFIED, msg("its last line is not an audit record")
        else:
            problem, what = MODIFIED, msg("its last record does not verify (it was changed)")
        status = TailStatus(
            ok=False,
            problem=problem,
            message=msg("audit log {path}: {what}; nothing more is appended until an operator runs 'provision audit verify' and accepts the damage explicitly", path=path, what=what),
        )
        return _Tail(GENESIS, 0, None, False, None, damage=status)

    def _check_keying(self, line: InspectedLine, path: Path) -> None:
        """A keyed log is only continued keyed, and a plain one only plain: with a key, every record has a MAC."""
        if line.status == "key-required" or (line.status == "ok" and line.keyed and not self._keyed):
            raise UsageError(
                msg("{path} is HMAC-chained (it was started with an audit key); a run without that key would continue it unkeyed, so nothing was appended: give the key in the job file's audit.key", path=path)
            )
        if line.status == "ok" and not line.keyed and self._keyed:
            raise UsageError(
                msg('{path} was started without an audit key and a keyed log has a MAC on every record, so a keyed run cannot continue it; nothing was appended: keep this log and start the keyed one in a new --logs directory', path=path)
            )

    def _last_good(self) -> tuple[int, InspectedLine | None]:
        """(offset where the damaged region starts, the last record that verifies before it)."""
        size = self.path.stat().st_size
        start = max(0, size - _TAIL_WINDOW)
        with open_read(self.path) as handle:
            handle.seek(start)
            data = handle.read()
        if start > 0:  # drop the partial first line of the window
            cut = data.find(b"\n")
            if cut < 0:
                raise AuditError(
                    msg('the damage at the end of {path} is longer than 1 MiB; restore the log from a backup', path=self.path)
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
            line = inspect_line(data[begin:end], self._hasher)
            if line.status == "ok" and line.complete:
                self._check_keying(line, self.path)
                return start + end, line
        if start > 0:
            raise AuditError(
                msg('the damage at the end of {path} is longer than 1 MiB; restore the log from a backup', path=self.path)
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


def _kept_stamp_hashes(path: Path) -> set[str]:
    """The seal hashes audit-timestamps.jsonl holds a token for (none when it cannot be read)."""
    try:
        return kept_stamps_in(path)
    except ProvisionError:
        return set()


def _cannot_use(path: Path, exc: OSError) -> Msg:
    return msg("the audit log {path} cannot be opened ({strerror}); make it a file this user can read and write, then run again (nothing more was recorded)", path=path, strerror=exc.strerror or exc)


def _read_last_line(path: Path) -> tuple[bytes, int]:
    """(the last line with its newline if any, file size); (b"", 0) for a missing or empty file."""
    try:
        handle = open_read(path)
    except FileNotFoundError:
        return b"", 0
    except OSError as exc:  # no permission, an I/O error: the environment's, said in a sentence
        raise RecordsError(_cannot_use(path, exc)) from None
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
            if chunk > MAX_RECORD_BYTES:
                # Longer than any record: never read whole (a planted endless line). Its end, without
                # the newline, is an incomplete line, which never verifies: the tail is damaged.
                return data[-MAX_RECORD_BYTES:].rstrip(b"\n"), size
            chunk = min(chunk * 4, MAX_RECORD_BYTES + 2)


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
