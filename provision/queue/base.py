"""The journal/queue interface the runner talks to, whichever database is behind it.

``JournalStore`` is what ``journal.Journal`` already does (runs, jobs, steps). ``JobQueue`` adds
claiming: before a station writes to a card it claims the card's job, and only the holder of a
claim may journal that job until it ends (loaded, skipped, failed, refused, in doubt). With SQLite
there is one station (the logs lock makes sure of it) and every claim is granted; with PostgreSQL
many stations share one queue and a claim is a row lock plus a lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from provision.journal import JobRecord, RunRecord


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: granted (and then whether an earlier attempt was interrupted) or why not."""

    batch: str
    job_id: str
    granted: bool
    resuming: bool = False
    reason: str = ""
    station: str | None = None  # who holds the job (us when granted)
    epoch: int = 0  # fencing token: grows with every grant of this job


@runtime_checkable
class JournalStore(Protocol):
    """Runs, jobs and steps: what ``journal.Journal`` provides and the Loader uses."""

    def close(self) -> None: ...

    def start_run(self, run_id: str, batch: str, jobfile: str, mode: str) -> None: ...

    def finish_run(self, run_id: str, status: str, seal: str | None) -> None: ...

    def recover_abandoned_runs(self) -> list[str]: ...

    def runs(self) -> list[RunRecord]: ...

    def run(self, run_id: str) -> RunRecord | None: ...

    def last_run(self) -> RunRecord | None: ...

    def seals(self) -> list[str]: ...

    def job(self, batch: str, job_id: str) -> JobRecord | None: ...

    def jobs(self, *, batch: str | None = None, run_id: str | None = None) -> list[JobRecord]: ...

    def add_pending(self, batch: str, run_id: str, jobs: list[tuple[str, str, str]]) -> None: ...

    def set_job(self, batch: str, job_id: str, run_id: str, holder: str, status: str, **fields: Any) -> None: ...

    def step(self, run_id: str, batch: str, job_id: str, action: str, phase: str,
             detail: dict[str, Any] | None = None, *, durable: bool | None = None) -> None: ...  # fmt: skip

    def steps(self, batch: str, job_id: str) -> list[tuple[str, str, str, dict[str, Any], str]]: ...

    def ended_steps(self, batch: str, job_id: str) -> set[str]: ...


@runtime_checkable
class JobQueue(JournalStore, Protocol):
    """A journal that several stations may share: claims, leases and the stations' audit chains."""

    station: str
    shared: bool  # True when other stations may work on the same jobs (refresh from it)

    def claim(self, batch: str, job_id: str, run_id: str, *, card_serial: int | None) -> Claim:
        """Take the job for this station, or say who has it. A granted claim is heartbeated until
        ``release``; meanwhile only its holder may journal the job."""
        ...

    def release(self, batch: str, job_id: str) -> None:
        """End a claim: the job keeps the status last set (one still in progress becomes in doubt)."""
        ...

    def mirror_audit(self, audit: Any) -> Any:
        """The audit log to use: ``audit`` itself, or one that also writes into the shared database."""
        ...
