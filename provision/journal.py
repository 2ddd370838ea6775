"""The transactional journal: runs, jobs and steps in SQLite (WAL, synchronous FULL).

Every step of a load is recorded *before* it starts and *after* it ends, so that after a pulled
card, a dead reader or a killed process the journal says exactly which writes may have happened
(``begin`` without ``end``: in doubt) and which certainly did. ``resume`` reads it together with the
card's real state; nothing here holds a secret.

A job is identified across runs by ``(batch, job_id)``: re-running a batch continues it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from provision.errors import JournalError
from provision.i18n import msg
from provision.logsdir import refuse_not_regular

__all__ = ["JobRecord", "Journal", "JournalError", "RunRecord"]

SCHEMA_VERSION = 1

# Job states. in-progress becomes in-doubt when its run ends without finishing it.
PENDING, IN_PROGRESS, IN_DOUBT = "pending", "in-progress", "in-doubt"
LOADED, SKIPPED, FAILED, REFUSED = "loaded", "skipped", "failed", "refused"
FINAL_STATES = frozenset({LOADED, SKIPPED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, batch TEXT NOT NULL, jobfile TEXT NOT NULL, mode TEXT NOT NULL,
    started TEXT NOT NULL, finished TEXT, status TEXT NOT NULL, seal TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    batch TEXT NOT NULL, job_id TEXT NOT NULL, run_id TEXT NOT NULL, holder TEXT NOT NULL,
    status TEXT NOT NULL, card_serial INTEGER, slot TEXT, slot_name TEXT,
    fingerprint_sha256 TEXT, replaced_sha256 TEXT, archived_to TEXT, pin_tries_left INTEGER,
    not_after TEXT, apdus INTEGER, seconds REAL, error TEXT, updated TEXT NOT NULL,
    PRIMARY KEY (batch, job_id)
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, batch TEXT NOT NULL,
    job_id TEXT NOT NULL, action TEXT NOT NULL, phase TEXT NOT NULL, detail TEXT, time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_job ON steps (batch, job_id, id);
"""

JOB_COLUMNS = (
    "card_serial", "slot", "slot_name", "fingerprint_sha256", "replaced_sha256", "archived_to",
    "pin_tries_left", "not_after", "apdus", "seconds", "error",
)  # fmt: skip


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobRecord:
    batch: str
    job_id: str
    run_id: str
    holder: str
    status: str
    card_serial: int | None
    slot: str | None
    slot_name: str | None
    fingerprint_sha256: str | None
    replaced_sha256: str | None
    archived_to: str | None
    pin_tries_left: int | None
    not_after: str | None
    apdus: int | None
    seconds: float | None
    error: str | None
    updated: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.job_id, "holder": self.holder, "status": self.status, "card_serial": self.card_serial,
            "slot": self.slot, "slot_name": self.slot_name, "fingerprint_sha256": self.fingerprint_sha256,
            "replaced_sha256": self.replaced_sha256, "archived_to": self.archived_to,
            "pin_tries_left": self.pin_tries_left, "not_after": self.not_after, "apdus": self.apdus,
            "seconds": self.seconds, "error": self.error,
        }  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    batch: str
    jobfile: str
    mode: str
    started: str
    finished: str | None
    status: str
    seal: str | None


MAX_JOURNAL_VALUE_BYTES = 1024 * 1024  # a path, a sentence, a step's detail: a few KiB at most
_OWN_TABLES = frozenset({"meta", "runs", "jobs", "steps", "pin_holds", "seals"})


def _journal_error(path: Path, exc: sqlite3.Error) -> JournalError:
    """What went wrong with the journal, in the operator's terms, with what to do about it."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return JournalError(msg('the journal {path} is held by another process ({text_}); wait for it to finish and run again', path=path, text_=text))
    if "full" in text:
        return JournalError(msg('the disk of the journal {path} is full ({text_}); free space and run again', path=path, text_=text))
    if any(words in text for words in ("unable to open", "readonly", "read-only", "I/O", "permission")):
        return JournalError(msg('the journal {path} cannot be opened ({text_}); make it a file this user can read and write, on a writable disk, and run again', path=path, text_=text))  # fmt: skip
    return JournalError(msg("the journal {path} is damaged ({text_}); move it aside (keep it for investigation), check the audit log with 'provision audit verify', then run the batch again: cards already loaded are found and skipped", path=path, text_=text))  # fmt: skip


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "str | None": (str, type(None)), "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
}  # fmt: skip
_R = TypeVar("_R", "JobRecord", "RunRecord", "PinHold")


def _record(cls: type[_R], row: tuple[Any, ...], path: Path) -> _R:
    """A row as ``cls``, only if it has that record's columns and each value the type provision
    writes there. SQLite keeps whatever was stored (a blob where a time should be, a column added):
    such a row is damage, said as such (exit 3), not a crash further on."""
    fields = dataclasses.fields(cls)
    if len(row) != len(fields):
        raise _journal_error(path, sqlite3.DatabaseError(f"a {cls.__name__} row has {len(row)} columns, not {len(fields)}"))
    for field, value in zip(fields, row, strict=True):
        if not isinstance(value, _TYPES[str(field.type)]) or isinstance(value, bool):
            raise _journal_error(path, sqlite3.DatabaseError(f"{field.name} holds {type(value).__name__}, not {field.type}"))
    return cls(*row)


class Journal:
    """One SQLite journal; safe to share between reader worker threads.

    Every SQLite failure leaves as a JournalError (exit 3) with advice, whether at opening or later."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """``read_only``: for commands that only look (status, audit verify); nothing is created or
        written, and a journal on read-only media (an auditor's copy) can still be read."""
        self.path = path
        self._empty = False
        for own in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            refuse_not_regular(own, writing=not read_only)  # SQLite would wait on a FIFO, write through a hard link
        if not read_only:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(msg('the directory of the journal {path} cannot be created ({strerror}); give a directory on a writable disk', path=path, strerror=exc.strerror)) from None  # fmt: skip
        self._lock = threading.RLock()
        try:
            if read_only and not os.access(path.parent, os.W_OK):
                # WAL needs its -shm file beside the journal; on media nobody can write, reading the
                # journal as immutable is exact.
                self._db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True,
                                           check_same_thread=False, isolation_level=None, timeout=30)  # fmt: skip
            else:
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
                if read_only:  # a normal connection (it tidies WAL files on close, as a run's does), writing nothing
                    self._db.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise _journal_error(path, exc) from None
        try:
            # every value we keep is a short text; a planted giant row fails here instead of being read whole
            self._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_JOURNAL_VALUE_BYTES)
            self._db.execute("PRAGMA trusted_schema = OFF")  # no function with side effects from the file's own schema
            self._empty = not self._check_ours()
            if not read_only:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                self._empty = False
        except sqlite3.Error as exc:
            self._db.close()
            raise _journal_error(path, exc) from None
        except JournalError:
            self._db.close()
            raise

    def _check_ours(self) -> bool:
        """A database with other tables (or ours without ``meta``) is someone else's: never written to.
        Returns whether it has tables at all (a new, empty file has none)."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables = {t for t in tables if not t.startswith("sqlite_")}
        schema = None
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            schema = row[0] if row else None
        foreign = sorted(tables - _OWN_TABLES)
        # provision creates no trigger and no view: a trigger would run its SQL on every write of
        # ours (unmark a failed job, delete the seals as they are kept), a view would stand in for a table
        planted = sorted(f"{kind} {name}" for kind, name in self._db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"))  # fmt: skip
        if planted:
            raise JournalError(msg("{path} holds {what}, which provision never creates and will not run (a trigger runs on every write to the journal); move the journal aside (keep it for investigation), check who can write the logs directory, then run again: cards already loaded are found and skipped", path=self.path, what=", ".join(planted)))  # fmt: skip
        if schema is not None and schema.isdigit() and int(schema) > LATEST_SCHEMA_VERSION:
            raise JournalError(msg('{path} was written by a newer provision (journal schema {schema}); use that version with these logs, or give another --logs', path=self.path, schema=schema))  # fmt: skip
        if foreign or (tables and "meta" not in tables) or schema not in (None, *(str(v) for v in range(SCHEMA_VERSION, LATEST_SCHEMA_VERSION + 1))):
            found = f"it has tables {', '.join(foreign)}" if foreign else f"schema {schema!r}" if schema else "no meta table"
            raise JournalError(msg('{path} is not a provision journal ({found}); give another --logs (or --queue), or move the file aside if it is not needed there', path=self.path, found=found))  # fmt: skip
        return bool(tables)

    def _read(self, query: str, args: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        if self._empty:  # read-only and never written: no tables, nothing recorded
            return []
        with self._lock:
            try:
                return self._db.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                raise _journal_error(self.path, exc) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction. ``durable=False``: committed (another process and a killed one see it)
        but not fsynced; the next durable commit syncs the write-ahead log, and with it this one."""
        with self._lock:
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                finally:
                    if not durable:
                        self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise _journal_error(self.path, exc) from None

    # --- runs ---

    def start_run(self, run_id: str, batch: str, jobfile: str, mode: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', NULL)",
                       (run_id, batch, jobfile, mode, now_rfc3339()))  # fmt: skip

    def finish_run(self, run_id: str, status: str, seal: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET finished = ?, status = ?, seal = ? WHERE run_id = ?",
                       (now_rfc3339(), status, seal, run_id))  # fmt: skip
            # Whatever this run left started is in doubt: the card's state decides on resume.
            db.execute("UPDATE jobs SET status = ?, updated = ? WHERE run_id = ? AND status = ?",
                       (IN_DOUBT, now_rfc3339(), run_id, IN_PROGRESS))  # fmt: skip

    def recover_abandoned_runs(self) -> list[str]:
        """Runs left 'running' by a killed process: their started jobs become in doubt."""
        with self._tx() as db:
            rows = [r[0] for r in db.execute("SELECT run_id FROM runs WHERE status = 'running'")]
            for run_id in rows:
                db.execute("UPDATE runs SET status = 'interrupted', finished = ? WHERE run_id = ?",
                           (now_rfc3339(), run_id))  # fmt: skip
                db.execute("UPDATE jobs SET status = ?, updated = ? WHERE run_id = ? AND status = ?",
                           (IN_DOUBT, now_rfc3339(), run_id, IN_PROGRESS))  # fmt: skip
        return rows

    def runs(self) -> list[RunRecord]:
        rows = self._read("SELECT * FROM runs ORDER BY started")
        return [_record(RunRecord, row, self.path) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return _record(RunRecord, rows[0], self.path) if rows else None

    def last_run(self) -> RunRecord | None:
        runs = self.runs()
        return runs[-1] if runs else None

    def seals(self) -> list[str]:
        """Every seal this journal knows: each run's last one and, from schema 3 on, every seal of
        the log (one after each job), oldest first."""
        runs = [r[0] for r in self._read("SELECT seal FROM runs WHERE seal IS NOT NULL ORDER BY started")]
        with self._lock:
            if not self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seals'"):
                return runs  # a journal from before schema 3: run seals only
            every = [r[0] for r in self._read("SELECT hash FROM seals ORDER BY seq")]
        for seal in every + runs:  # compared with the log's hashes, sorted and printed: text only
            if not isinstance(seal, str):
                raise _journal_error(self.path, sqlite3.DatabaseError(f"a seal holds {type(seal).__name__}, not text"))
        known = set(every)
        return every + [s for s in runs if s not in known]

    def add_seal(self, run_id: str | None, seq: int, digest: str, job_id: str | None) -> None:
        """Keep a seal of the audit log (one after every job, and the run's last).

        A log cut back to an earlier job's seal, while this journal stays, is then caught even when
        the run never ended (killed: no run seal). The table arrives with the first seal: a journal
        of an older provision is migrated in place (its rows kept, ``meta.schema`` becomes 3) and one
        that is only read is left as it was."""
        with self._tx(durable=False) as db:  # the job's next durable commit syncs it
            db.execute(_SEALS_TABLE)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?",
                       (str(SEALS_SCHEMA_VERSION), SEALS_SCHEMA_VERSION))  # fmt: skip
            db.execute("INSERT OR IGNORE INTO seals (seq, hash, run_id, job_id, time) VALUES (?, ?, ?, ?, ?)",
                       (seq, digest, run_id, job_id, now_rfc3339()))  # fmt: skip

    # --- jobs ---

    def job(self, batch: str, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE batch = ? AND job_id = ?", (batch, job_id))
        return _record(JobRecord, rows[0], self.path) if rows else None

    def jobs(self, *, batch: str | None = None, run_id: str | None = None) -> list[JobRecord]:
        query, args = "SELECT * FROM jobs", []
        if batch is not None:
            query, args = query + " WHERE batch = ?", [batch]
        elif run_id is not None:
            query, args = query + " WHERE run_id = ?", [run_id]
        rows = self._read(query + " ORDER BY rowid", args)
        return [_record(JobRecord, row, self.path) for row in rows]

    def add_pending(self, batch: str, run_id: str, jobs: list[tuple[str, str, str]]) -> None:
        """Rows for jobs (id, holder, slot) the journal has never seen, as pending in this run; one
        transaction for the whole batch. Rows that exist (loaded, in doubt, …) are left as they are."""
        stamp = now_rfc3339()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO jobs (batch, job_id, run_id, holder, status, slot, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(batch, job_id, run_id, holder, PENDING, slot, stamp) for job_id, holder, slot in jobs],
            )

    def set_job(self, batch: str, job_id: str, run_id: str, holder: str, status: str, **fields: Any) -> None:
        unknown = set(fields) - set(JOB_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        with self._tx() as db:
            existing = db.execute("SELECT 1 FROM jobs WHERE batch = ? AND job_id = ?", (batch, job_id)).fetchone()
            if existing is None:
                db.execute(
                    "INSERT INTO jobs (batch, job_id, run_id, holder, status, updated) VALUES (?, ?, ?, ?, ?, ?)",
                    (batch, job_id, run_id, holder, status, now_rfc3339()),
                )
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(
                f"UPDATE jobs SET run_id = ?, holder = ?, status = ?, updated = ?{', ' + sets if sets else ''} "  # noqa: S608 - column names are checked above
                "WHERE batch = ? AND job_id = ?",
                (run_id, holder, status, now_rfc3339(), *fields.values(), batch, job_id),
            )

    # --- steps ---

    def step(self, run_id: str, batch: str, job_id: str, action: str, phase: str, detail: dict[str, Any] | None = None,
             *, durable: bool | None = None) -> None:  # fmt: skip
        """A step's ``begin`` (and ``fail``) is on disk before the step touches the card. Its ``end``
        is committed without an fsync of its own: the next step's ``begin``, or the job's result,
        syncs it before anything else happens to the card, so one fsync per step instead of two.
        A power cut in between loses at most that ``end``, and a begun step without an end is what
        ``resume`` already treats as in doubt (it reads the card's real state). ``durable=False``:
        a ``begin`` of a step that changes nothing on the card, synced the same way."""
        with self._tx(durable=phase != "end" if durable is None else durable) as db:
            db.execute("INSERT INTO steps (run_id, batch, job_id, action, phase, detail, time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (run_id, batch, job_id, action, phase, json.dumps(detail or {}, sort_keys=True), now_rfc3339()))  # fmt: skip

    def steps(self, batch: str, job_id: str) -> list[tuple[str, str, str, dict[str, Any], str]]:
        """(run_id, action, phase, detail, time) for a job, oldest first."""
        rows = self._read(
            "SELECT run_id, action, phase, detail, time FROM steps WHERE batch = ? AND job_id = ? ORDER BY id",
            (batch, job_id),
        )
        return [(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4]) for r in rows]

    def ended_steps(self, batch: str, job_id: str) -> set[str]:
        return {action for _, action, phase, _, _ in self.steps(batch, job_id) if phase == "end"}


# --- PIN holds (schema 2) ---
#
# A card that refused a PIN (63Cx, or blocked) is put on hold: no run sends it a PIN that no person
# typed until an operator clears the hold (``provision card clear-pin-hold``, audited). The same
# wrong PIN from a file, a variable or a program would otherwise cost one try per run until the card
# blocks. Nothing derived from the PIN is kept: with six digits, even a hash of it gives it away.

PIN_HOLD_SCHEMA_VERSION = 2
SEALS_SCHEMA_VERSION = 3  # every seal of the audit log, not only each run's last (Journal.add_seal)
LATEST_SCHEMA_VERSION = SEALS_SCHEMA_VERSION

_SEALS_TABLE = """
CREATE TABLE IF NOT EXISTS seals (
    seq INTEGER NOT NULL, hash TEXT PRIMARY KEY, run_id TEXT, job_id TEXT, time TEXT NOT NULL
)
"""

_PIN_HOLDS_TABLE = """
CREATE TABLE IF NOT EXISTS pin_holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, card_serial INTEGER, chuid_guid TEXT, tries_left INTEGER,
    run_id TEXT NOT NULL, batch TEXT NOT NULL, job_id TEXT NOT NULL, since TEXT NOT NULL, updated TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class PinHold:
    card_serial: int | None
    chuid_guid: str | None
    tries_left: int | None  # as the card said at its last refusal
    run_id: str  # the run whose PIN the card refused first
    batch: str
    job_id: str
    since: str
    updated: str  # the last refusal

    def card_text(self) -> str:
        return f"card {self.card_serial}" if self.card_serial is not None else f"the card with GUID {self.chuid_guid}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PinHolds:
    """The PIN holds of one journal, by card serial and/or CHUID GUID (either identifies the card).

    The table arrives with the first hold (a migration old journals survive: their rows are kept
    and ``meta.schema`` becomes 2); reading a journal without it finds no hold and changes nothing."""

    def __init__(self, journal: Journal, *, owned: bool = False) -> None:
        self._journal = journal
        self._owned = owned  # opened for the holds alone (the run's journal is elsewhere): closed here

    def close(self) -> None:
        if self._owned:
            self._journal.close()

    def _has_table(self) -> bool:
        return bool(self._journal._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pin_holds'"))

    @staticmethod
    def _where(serial: int | None, guid: str | None) -> tuple[str, tuple[Any, ...]]:
        guid = guid.lower() if guid else None
        return ("(card_serial IS NOT NULL AND card_serial = ?) OR (chuid_guid IS NOT NULL AND chuid_guid = ?)",
                (serial, guid))  # fmt: skip

    def get(self, serial: int | None, guid: str | None) -> PinHold | None:
        if serial is None and not guid:
            return None
        where, args = self._where(serial, guid)
        with self._journal._lock:
            if not self._has_table():
                return None
            rows = self._journal._read(
                f"SELECT card_serial, chuid_guid, tries_left, run_id, batch, job_id, since, updated FROM pin_holds "  # noqa: S608 - fixed text
                f"WHERE {where} ORDER BY id LIMIT 1", args,
            )  # fmt: skip
        return _record(PinHold, rows[0], self._journal.path) if rows else None

    def all(self) -> list[PinHold]:
        with self._journal._lock:
            if not self._has_table():
                return []
            rows = self._journal._read(
                "SELECT card_serial, chuid_guid, tries_left, run_id, batch, job_id, since, updated FROM pin_holds ORDER BY id"
            )
        return [_record(PinHold, row, self._journal.path) for row in rows]

    def hold(self, serial: int | None, guid: str | None, *, tries_left: int | None, run_id: str, batch: str,
             job_id: str) -> None:  # fmt: skip
        """Record a refusal. A card already on hold keeps its first refusal and gets the latest tries."""
        if serial is None and not guid:
            return  # a card with neither cannot be recognised in another run
        where, args = self._where(serial, guid)
        now = now_rfc3339()
        with self._journal._tx() as db:
            db.execute(_PIN_HOLDS_TABLE)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?",
                       (str(PIN_HOLD_SCHEMA_VERSION), PIN_HOLD_SCHEMA_VERSION))  # fmt: skip
            found = db.execute(f"SELECT id FROM pin_holds WHERE {where}", args).fetchone()  # noqa: S608 - fixed text
            if found is None:
                db.execute("INSERT INTO pin_holds (card_serial, chuid_guid, tries_left, run_id, batch, job_id, since, "
                           "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (serial, guid.lower() if guid else None, tries_left, run_id, batch, job_id, now, now))  # fmt: skip
            else:
                db.execute("UPDATE pin_holds SET tries_left = ?, updated = ?, card_serial = COALESCE(card_serial, ?), "
                           "chuid_guid = COALESCE(chuid_guid, ?) WHERE id = ?",
                           (tries_left, now, serial, guid.lower() if guid else None, found[0]))  # fmt: skip

    def clear(self, serial: int | None, guid: str | None) -> PinHold | None:
        """Lift the hold; returns what it was (None: the card was not on hold)."""
        hold = self.get(serial, guid)
        if hold is None:
            return None
        where, args = self._where(serial, guid)
        with self._journal._tx() as db:
            db.execute(f"DELETE FROM pin_holds WHERE {where}", args)  # noqa: S608 - fixed text
        return hold
