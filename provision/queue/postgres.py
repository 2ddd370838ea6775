"""Many stations, one queue: the journal and the job queue in PostgreSQL (psycopg 3).

What a station does with it:

* ``claim`` locks the job's row with ``SELECT … FOR UPDATE SKIP LOCKED`` in a transaction and, if
  nobody holds a live lease on it and it is not finished, sets ``claimed_by`` to this station,
  ``lease_until = now() + lease`` and a new ``epoch`` (a fencing token). Leases are compared with
  the *server's* clock, so stations' clocks do not matter.
* While a claim is held a background thread renews its lease every third of the lease time.
* Every journal write about a claimed job (``step``, ``set_job``) is fenced: it only happens while
  ``claimed_by`` and ``epoch`` are still ours, so a station that stalled past its lease cannot
  overwrite the station that took over. A status other than in-progress ends the claim.
* A station killed mid-load stops renewing; when its lease runs out the job reads as *in doubt*
  and the next station that sees the card claims it and resumes from the card's real state.
* Every statement runs with retries (tenacity): when the server restarts or the network drops,
  the station reconnects and repeats the transaction. Each write is idempotent for that reason
  (steps carry a client-made key, claims by the same holder are re-granted).

The job file is not stored in the database: stations read the same job file from a shared path
(secrets stay where the job file says: files, environment, programs). ``queue push`` records the
file's path and SHA-256 per batch; a station whose copy differs is refused before any card.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow

from provision import journal as jn
from provision.errors import LeaseLost, QueueError, QueueUnavailable
from provision.i18n import msg
from provision.journal import JOB_COLUMNS, JobRecord, RunRecord, now_rfc3339
from provision.queue.base import Claim

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

SCHEMA_VERSION = 1
RETRY_SECONDS = 90.0  # how long a station keeps reconnecting before it gives up (a server restart)
_SCHEMA_LOCK = 0x70726F76  # pg_advisory_xact_lock key: stations starting together create the schema once

_SCHEMA = """
CREATE TABLE IF NOT EXISTS provision_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS provision_batches (
    batch TEXT PRIMARY KEY, jobfile TEXT NOT NULL, jobfile_sha256 TEXT NOT NULL, jobs INTEGER NOT NULL,
    pushed TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS provision_runs (
    run_id TEXT PRIMARY KEY, station TEXT NOT NULL, batch TEXT NOT NULL, jobfile TEXT NOT NULL,
    mode TEXT NOT NULL, started TEXT NOT NULL, finished TEXT, status TEXT NOT NULL, seal TEXT
);
CREATE TABLE IF NOT EXISTS provision_jobs (
    batch TEXT NOT NULL, job_id TEXT NOT NULL, position INTEGER NOT NULL, run_id TEXT NOT NULL DEFAULT '',
    holder TEXT NOT NULL, status TEXT NOT NULL,
    want_serial BIGINT, want_guid TEXT, any_card BOOLEAN NOT NULL DEFAULT FALSE,
    card_serial BIGINT, slot TEXT, slot_name TEXT, fingerprint_sha256 TEXT, replaced_sha256 TEXT,
    archived_to TEXT, pin_tries_left INTEGER, not_after TEXT, apdus INTEGER, seconds DOUBLE PRECISION,
    error TEXT, updated TEXT NOT NULL,
    claimed_by TEXT, lease_until TIMESTAMPTZ, epoch BIGINT NOT NULL DEFAULT 0, station TEXT,
    PRIMARY KEY (batch, job_id)
);
CREATE INDEX IF NOT EXISTS provision_jobs_serial ON provision_jobs (batch, want_serial);
CREATE TABLE IF NOT EXISTS provision_steps (
    id BIGSERIAL PRIMARY KEY, step_key TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL, station TEXT NOT NULL,
    batch TEXT NOT NULL, job_id TEXT NOT NULL, action TEXT NOT NULL, phase TEXT NOT NULL, detail TEXT,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS provision_steps_job ON provision_steps (batch, job_id, id);
CREATE TABLE IF NOT EXISTS provision_audit (
    station TEXT NOT NULL, seq BIGINT NOT NULL, record TEXT NOT NULL, hash TEXT NOT NULL, prev TEXT NOT NULL,
    PRIMARY KEY (station, seq)
);
"""

# What a job reads as: an in-progress job whose lease ran out is in doubt (its station is gone).
_STATUS = ("CASE WHEN status = 'in-progress' AND (lease_until IS NULL OR lease_until < now()) "
           "THEN 'in-doubt' ELSE status END")  # fmt: skip
_JOB_SELECT = (
    f"SELECT batch, job_id, run_id, holder, {_STATUS}, card_serial, slot, slot_name, fingerprint_sha256, "  # noqa: S608 - constant text
    "replaced_sha256, archived_to, pin_tries_left, not_after, apdus, seconds, error, updated FROM provision_jobs"
)
_CLAIMABLE = frozenset({jn.PENDING, jn.IN_DOUBT})


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return url.split("://", 1)[0] + "://…"
    host, port, db = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}{':' + str(port) if port else ''}/{db}"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PostgresQueue:
    """The shared journal and queue of one office. Safe to share between reader worker threads."""

    shared = True

    def __init__(self, url: str, *, station: str, lease_seconds: float = 30.0,
                 retry_seconds: float = RETRY_SECONDS) -> None:  # fmt: skip
        if not station:
            raise QueueError(msg('a station needs a name (--station NAME)'))
        self.url = url
        self.station = station
        self.lease_seconds = float(lease_seconds)
        self.retry_seconds = retry_seconds
        self.reconnects = 0
        self._lock = threading.RLock()
        self._conn: Conn | None = None
        self._held: dict[tuple[str, str], int] = {}  # (batch, job_id) → epoch of our claim
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._transaction(self._create_schema)

    # --- connection, transactions, retries ---

    def _connect(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                         application_name=f"provision {self.station}"[:63])  # fmt: skip
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _transaction(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` in one transaction; on a lost connection reconnect and run it again."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

        def before_sleep(_: Any) -> None:
            self.reconnects += 1
            self._drop()

        retrying = Retrying(
            retry=retry_if_exception_type((psycopg.OperationalError, psycopg.InterfaceError)),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential(multiplier=0.1, max=2),
            before_sleep=before_sleep,
            reraise=True,
        )

        def attempt() -> T:
            with self._lock:
                conn = self._connect()
                with conn.transaction():
                    return work(conn)

        try:
            return retrying(attempt)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            raise QueueUnavailable(
                msg('the queue database {url} cannot be reached ({reason}); check that PostgreSQL runs and this station may connect', url=redact(self.url), reason=type(exc).__name__)
            ) from None

    def _create_schema(self, conn: Conn) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_SCHEMA)  # several statements: psycopg sends them in one simple query
        conn.execute("INSERT INTO provision_meta VALUES ('schema', %s) ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        with self._lock:
            self._drop()

    # --- pushing a batch ---

    def push(self, jobfile: Any) -> tuple[int, int]:
        """Put a validated job file's jobs into the queue: (added, already there). Idempotent per
        (batch, job_id); a batch pushed from a different job file is refused."""
        path = Path(jobfile.path).resolve()
        digest = file_sha256(path)

        def work(conn: Conn) -> tuple[int, int]:
            row = conn.execute("SELECT jobfile, jobfile_sha256 FROM provision_batches WHERE batch = %s FOR UPDATE",
                               (jobfile.batch,)).fetchone()  # fmt: skip
            if row is None:
                conn.execute("INSERT INTO provision_batches VALUES (%s, %s, %s, %s, %s)",
                             (jobfile.batch, str(path), digest, len(jobfile.jobs), now_rfc3339()))  # fmt: skip
            elif row[1] != digest:
                raise QueueError(
                    msg('batch {batch} is already in the queue from {source} with other contents (SHA-256 {sha}…, this file {digest}…); give the new file another batch id', batch=jobfile.batch, source=row[0], sha=row[1][:16], digest=digest[:16])
                )
            added = 0
            for position, job in enumerate(jobfile.jobs):
                cur = conn.execute(
                    "INSERT INTO provision_jobs (batch, job_id, position, holder, status, want_serial, want_guid, "
                    "any_card, slot, updated) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (jobfile.batch, job.id, position, job.holder, jn.PENDING, job.card.serial, job.card.guid,
                     bool(job.card.any), job.slot.hex, now_rfc3339()),
                )  # fmt: skip
                added += cur.rowcount
            return added, len(jobfile.jobs) - added

        return self._transaction(work)

    def batch_info(self, batch: str) -> tuple[str, str] | None:
        row = self._transaction(lambda c: c.execute(
            "SELECT jobfile, jobfile_sha256 FROM provision_batches WHERE batch = %s", (batch,)).fetchone())  # fmt: skip
        return (row[0], row[1]) if row else None

    # --- runs ---

    def start_run(self, run_id: str, batch: str, jobfile: str, mode: str) -> None:
        pushed = self.batch_info(batch)
        if pushed is None:
            raise QueueError(msg('batch {batch} is not in the queue {url}; push it first: provision queue push {jobfile} --queue URL', batch=batch, url=redact(self.url), jobfile=jobfile))  # fmt: skip
        digest = file_sha256(Path(jobfile))
        if digest != pushed[1]:
            raise QueueError(msg('{jobfile} is not the job file pushed for batch {batch} ({pushed}, SHA-256 {sha}…, this one {digest}…); use the shared copy', jobfile=jobfile, batch=batch, pushed=pushed[0], sha=pushed[1][:16], digest=digest[:16]))  # fmt: skip
        self._transaction(lambda c: c.execute(
            "INSERT INTO provision_runs VALUES (%s, %s, %s, %s, %s, %s, NULL, 'running', NULL)",
            (run_id, self.station, batch, jobfile, mode, now_rfc3339())))  # fmt: skip

    def finish_run(self, run_id: str, status: str, seal: str | None) -> None:
        def work(conn: Conn) -> None:
            conn.execute("UPDATE provision_runs SET finished = %s, status = %s, seal = %s WHERE run_id = %s",
                         (now_rfc3339(), status, seal, run_id))  # fmt: skip
            # Whatever this run left started is in doubt and free for the station that sees the card.
            conn.execute("UPDATE provision_jobs SET status = %s, updated = %s, claimed_by = NULL, lease_until = NULL "
                         "WHERE run_id = %s AND claimed_by = %s AND status = %s",
                         (jn.IN_DOUBT, now_rfc3339(), run_id, self.station, jn.IN_PROGRESS))  # fmt: skip

        self._transaction(work)
        with self._lock:
            self._held.clear()

    def recover_abandoned_runs(self) -> list[str]:
        """This station's runs left 'running' by a killed process: their claims end at once (in
        doubt) instead of at the end of their lease. Other stations' runs are theirs."""

        def work(conn: Conn) -> list[str]:
            rows = [r[0] for r in conn.execute(
                "SELECT run_id FROM provision_runs WHERE status = 'running' AND station = %s", (self.station,))]  # fmt: skip
            for run_id in rows:
                conn.execute("UPDATE provision_runs SET status = 'interrupted', finished = %s WHERE run_id = %s",
                             (now_rfc3339(), run_id))  # fmt: skip
                conn.execute("UPDATE provision_jobs SET status = %s, updated = %s, claimed_by = NULL, lease_until = NULL "
                             "WHERE run_id = %s AND claimed_by = %s AND status = %s",
                             (jn.IN_DOUBT, now_rfc3339(), run_id, self.station, jn.IN_PROGRESS))  # fmt: skip
            return rows

        return self._transaction(work)

    def runs(self) -> list[RunRecord]:
        rows = self._transaction(lambda c: c.execute(
            "SELECT run_id, batch, jobfile, mode, started, finished, status, seal FROM provision_runs "
            "ORDER BY started, run_id").fetchall())  # fmt: skip
        return [RunRecord(*row) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        row = self._transaction(lambda c: c.execute(
            "SELECT run_id, batch, jobfile, mode, started, finished, status, seal FROM provision_runs "
            "WHERE run_id = %s", (run_id,)).fetchone())  # fmt: skip
        return RunRecord(*row) if row else None

    def last_run(self) -> RunRecord | None:
        runs = self.runs()
        return runs[-1] if runs else None

    def seals(self, station: str | None = None) -> list[str]:
        """This station's seals (or ``station``'s), oldest first."""
        rows = self._transaction(lambda c: c.execute(
            "SELECT seal FROM provision_runs WHERE seal IS NOT NULL AND station = %s ORDER BY started",
            (station or self.station,)).fetchall())  # fmt: skip
        return [r[0] for r in rows]

    def stations(self) -> list[str]:
        rows = self._transaction(lambda c: c.execute(
            "SELECT station FROM provision_audit GROUP BY station UNION SELECT station FROM provision_runs "
            "ORDER BY 1").fetchall())  # fmt: skip
        return [r[0] for r in rows]

    # --- jobs ---

    def job(self, batch: str, job_id: str) -> JobRecord | None:
        row = self._transaction(lambda c: c.execute(
            _JOB_SELECT + " WHERE batch = %s AND job_id = %s", (batch, job_id)).fetchone())  # fmt: skip
        return JobRecord(*row) if row else None

    def jobs(self, *, batch: str | None = None, run_id: str | None = None) -> list[JobRecord]:
        query, args = _JOB_SELECT, tuple[str, ...]()
        if batch is not None:
            query, args = query + " WHERE batch = %s", (batch,)
        elif run_id is not None:
            query, args = query + " WHERE run_id = %s", (run_id,)
        rows = self._transaction(lambda c: c.execute(query + " ORDER BY batch, position", args).fetchall())
        return [JobRecord(*row) for row in rows]

    def holders(self, batch: str) -> dict[str, tuple[str | None, str | None]]:
        """job_id → (station that holds or last worked on it, claimed_by now): who did what."""
        rows = self._transaction(lambda c: c.execute(
            "SELECT job_id, station, claimed_by FROM provision_jobs WHERE batch = %s", (batch,)).fetchall())  # fmt: skip
        return {r[0]: (r[1], r[2]) for r in rows}

    def claim(self, batch: str, job_id: str, run_id: str, *, card_serial: int | None) -> Claim:
        def work(conn: Conn) -> Claim:
            row = conn.execute(
                "SELECT status, claimed_by, lease_until > now(), epoch, station, card_serial FROM provision_jobs "
                "WHERE batch = %s AND job_id = %s FOR UPDATE SKIP LOCKED", (batch, job_id)).fetchone()  # fmt: skip
            if row is None:
                exists = conn.execute("SELECT 1 FROM provision_jobs WHERE batch = %s AND job_id = %s",
                                      (batch, job_id)).fetchone()  # fmt: skip
                if exists is None:
                    return Claim(batch, job_id, False, reason=f"job {job_id} of batch {batch} is not in the queue; "
                                 "push the job file with 'provision queue push'")  # fmt: skip
                return Claim(batch, job_id, False, reason=f"another station is claiming job {job_id} right now")
            status, claimed_by, live, epoch, last_station, started_on = row
            if status == jn.IN_PROGRESS and live and claimed_by is not None and claimed_by != self.station:
                return Claim(batch, job_id, False, station=claimed_by,
                             reason=f"job {job_id} is being loaded at station {claimed_by}")  # fmt: skip
            mine = status == jn.IN_PROGRESS and claimed_by == self.station  # our own claim, asked again
            if status not in _CLAIMABLE and status != jn.IN_PROGRESS:
                return Claim(batch, job_id, False, station=last_station,
                             reason=f"job {job_id} is already {status} (station {last_station})")  # fmt: skip
            resuming = status == jn.IN_DOUBT or (status == jn.IN_PROGRESS and not mine)
            if resuming and started_on is not None and card_serial is not None and started_on != card_serial:
                return Claim(batch, job_id, False, station=last_station,
                             reason=f"job {job_id} was interrupted on card {started_on}; only that card finishes it")  # fmt: skip
            new_epoch = int(epoch) + 1
            conn.execute(
                "UPDATE provision_jobs SET status = %s, claimed_by = %s, station = %s, run_id = %s, card_serial = %s, "
                "lease_until = now() + make_interval(secs => %s), epoch = %s, updated = %s "
                "WHERE batch = %s AND job_id = %s",
                (jn.IN_PROGRESS, self.station, self.station, run_id, card_serial, self.lease_seconds, new_epoch,
                 now_rfc3339(), batch, job_id),
            )  # fmt: skip
            return Claim(batch, job_id, True, resuming=resuming, station=self.station, epoch=new_epoch)

        claim = self._transaction(work)
        if claim.granted:
            with self._lock:
                self._held[(batch, job_id)] = claim.epoch
            self._start_heartbeat()
        return claim

    def release(self, batch: str, job_id: str) -> None:
        with self._lock:
            epoch = self._held.pop((batch, job_id), None)
        if epoch is None:
            return
        # A job still in progress when its claim ends was interrupted: in doubt, for whoever sees the card.
        self._transaction(lambda c: c.execute(
            "UPDATE provision_jobs SET status = CASE WHEN status = %s THEN %s ELSE status END, claimed_by = NULL, "
            "lease_until = NULL, updated = %s WHERE batch = %s AND job_id = %s AND claimed_by = %s AND epoch = %s",
            (jn.IN_PROGRESS, jn.IN_DOUBT, now_rfc3339(), batch, job_id, self.station, epoch)))  # fmt: skip

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return
            self._heartbeat = threading.Thread(target=self._beat, daemon=True, name=f"lease-{self.station}")
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                self.renew_leases(held)
            except QueueUnavailable:
                continue  # the next beat tries again; the lease covers a short outage

    def renew_leases(self, held: dict[tuple[str, str], int] | None = None) -> int:
        """Extend the lease of every claim we hold (also one that expired while the server was
        away, as long as nobody took it over). Returns how many were renewed."""
        with self._lock:
            held = dict(self._held) if held is None else held

        def work(conn: Conn) -> list[tuple[str, str]]:
            lost = []
            for (batch, job_id), epoch in held.items():
                cur = conn.execute(
                    "UPDATE provision_jobs SET lease_until = now() + make_interval(secs => %s) "
                    "WHERE batch = %s AND job_id = %s AND claimed_by = %s AND epoch = %s AND status = %s",
                    (self.lease_seconds, batch, job_id, self.station, epoch, jn.IN_PROGRESS))  # fmt: skip
                if cur.rowcount == 0:
                    lost.append((batch, job_id))
            return lost

        lost = self._transaction(work)
        with self._lock:
            for key in lost:
                if self._held.get(key) == held[key]:
                    del self._held[key]
        return len(held) - len(lost)

    def add_pending(self, batch: str, run_id: str, jobs: list[tuple[str, str, str]]) -> None:
        """Nothing to add: ``queue push`` made a row for every job of the batch."""

    def set_job(self, batch: str, job_id: str, run_id: str, holder: str, status: str, **fields: Any) -> None:
        unknown = set(fields) - set(JOB_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        with self._lock:
            epoch = self._held.get((batch, job_id))
        sets = "".join(f", {k} = %s" for k in fields)

        def work(conn: Conn) -> bool:
            if epoch is None:
                return False
            cur = conn.execute(
                f"UPDATE provision_jobs SET run_id = %s, holder = %s, status = %s, updated = %s{sets} "  # noqa: S608 - column names are checked above
                "WHERE batch = %s AND job_id = %s AND claimed_by = %s AND epoch = %s",
                (run_id, holder, status, now_rfc3339(), *fields.values(), batch, job_id, self.station, epoch),
            )
            return bool(cur.rowcount)

        done = self._transaction(work)
        if not done and status in (jn.IN_PROGRESS, jn.LOADED, jn.SKIPPED):
            raise LeaseLost(msg("job {job_id} is no longer this station's ({station}): another station took it over after the lease ran out; nothing more is written for it here", job_id=job_id, station=self.station))  # fmt: skip

    # --- steps ---

    def step(self, run_id: str, batch: str, job_id: str, action: str, phase: str,
             detail: dict[str, Any] | None = None, *, durable: bool | None = None) -> None:  # fmt: skip
        # ``durable`` is the local journal's fsync choice; every commit here is the server's to keep.
        with self._lock:
            epoch = self._held.get((batch, job_id))
        key = uuid.uuid4().hex
        text = json.dumps(detail or {}, sort_keys=True)

        def work(conn: Conn) -> bool:
            if epoch is None:
                return False
            cur = conn.execute(
                "INSERT INTO provision_steps (step_key, run_id, station, batch, job_id, action, phase, detail, time) "
                "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM provision_jobs "
                "WHERE batch = %s AND job_id = %s AND claimed_by = %s AND epoch = %s) ON CONFLICT (step_key) DO NOTHING",
                (key, run_id, self.station, batch, job_id, action, phase, text, now_rfc3339(),
                 batch, job_id, self.station, epoch),
            )  # fmt: skip
            if cur.rowcount:
                return True
            return conn.execute("SELECT 1 FROM provision_steps WHERE step_key = %s", (key,)).fetchone() is not None

        if not self._transaction(work) and phase != "fail":
            raise LeaseLost(msg("job {job_id} is no longer this station's ({station}); the load stops here", job_id=job_id, station=self.station))

    def steps(self, batch: str, job_id: str) -> list[tuple[str, str, str, dict[str, Any], str]]:
        rows = self._transaction(lambda c: c.execute(
            "SELECT run_id, action, phase, detail, time FROM provision_steps WHERE batch = %s AND job_id = %s "
            "ORDER BY id", (batch, job_id)).fetchall())  # fmt: skip
        return [(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4]) for r in rows]

    def ended_steps(self, batch: str, job_id: str) -> set[str]:
        return {action for _, action, phase, _, _ in self.steps(batch, job_id) if phase == "end"}

    def steps_of_batch(self, batch: str) -> list[tuple[str, str, str, str]]:
        """(station, job_id, action, phase) of every step of a batch, in order (for checks and reviews)."""
        rows = self._transaction(lambda c: c.execute(
            "SELECT station, job_id, action, phase FROM provision_steps WHERE batch = %s ORDER BY id",
            (batch,)).fetchall())  # fmt: skip
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # --- audit chains of the stations ---

    def mirror_audit(self, audit: Any) -> Any:
        from provision.queue.audit_mirror import MirroredAudit

        return MirroredAudit(audit, self)

    def audit_max_seq(self, station: str) -> int:
        row = self._transaction(lambda c: c.execute(
            "SELECT max(seq) FROM provision_audit WHERE station = %s", (station,)).fetchone())  # fmt: skip
        return int(row[0]) if row and row[0] is not None else 0

    def add_audit_records(self, station: str, records: list[tuple[int, str, str, str]]) -> None:
        """(seq, line as written, hash, prev) of a station's chain; a seq already there must be the same record."""
        from provision.errors import AuditError

        def work(conn: Conn) -> list[int]:
            clashes = []
            for seq, line, digest, prev in records:
                cur = conn.execute("INSERT INTO provision_audit VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                   (station, seq, line, digest, prev))  # fmt: skip
                if cur.rowcount == 0:
                    row = conn.execute("SELECT hash FROM provision_audit WHERE station = %s AND seq = %s",
                                       (station, seq)).fetchone()  # fmt: skip
                    if row is None or row[0] != digest:
                        clashes.append(seq)
            return clashes

        clashes = self._transaction(work)
        if clashes:
            raise AuditError(msg("station {station}'s audit chain in the queue has another record at seq {clashes}: two logs directories use the same station name; give each station its own --station", station=station, clashes=clashes[0]))  # fmt: skip

    def audit_lines(self, station: str) -> Iterator[str]:
        """The lines of a station's chain as written, in seq order (fetched in pages)."""
        last = 0
        while True:
            rows = self._transaction(lambda c, after=last: c.execute(  # type: ignore[misc]
                "SELECT seq, record FROM provision_audit WHERE station = %s AND seq > %s ORDER BY seq LIMIT 5000",
                (station, after)).fetchall())  # fmt: skip
            if not rows:
                return
            for seq, line in rows:
                yield line
                last = seq

    @contextmanager
    def raw(self) -> Iterator[Conn]:
        """A transaction for tests and benchmarks that inspect the tables directly."""
        with self._lock:
            conn = self._connect()
            with conn.transaction():
                yield conn
