"""Where the journal lives: ``sqlite:///logs/journal.sqlite3`` (one station) or
``postgresql://…`` (many stations, one queue). ``open_queue`` is the only place that knows which."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from provision.errors import QueueError
from provision.i18n import msg
from provision.queue.base import Claim, JobQueue, JournalStore

__all__ = ["Claim", "JobQueue", "JournalStore", "default_station", "is_shared_url", "open_queue"]

DEFAULT_LEASE_SECONDS = 30.0


def default_station() -> str:
    """``$PROVISION_STATION``, else the host name: one station is one PC with its own logs directory."""
    return os.environ.get("PROVISION_STATION") or socket.gethostname()


def is_shared_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def open_queue(url: str | None, *, logs: Path, station: str | None = None,
               lease_seconds: float = DEFAULT_LEASE_SECONDS) -> JobQueue:  # fmt: skip
    """The queue named by ``url``; None means the default ``logs/journal.sqlite3``.

    ``sqlite:///PATH`` takes PATH as written (relative to the working directory), ``sqlite:////abs``
    an absolute path, as SQLAlchemy does."""
    station = station or default_station()
    if url is None or url == "":
        from provision.queue.sqlite import SqliteQueue

        return SqliteQueue(logs / "journal.sqlite3", station=station)
    if url.startswith("sqlite:///"):
        from provision.queue.sqlite import SqliteQueue

        path = Path(url[len("sqlite:///"):])
        if not path.parent.is_dir():  # a mistyped URL must not create directories
            raise QueueError(msg('--queue sqlite:///{path}: the directory {parent} does not exist; create it or correct the URL', path=path, parent=path.parent))  # fmt: skip
        return SqliteQueue(path, station=station)
    if is_shared_url(url):
        from provision.queue.postgres import PostgresQueue

        return PostgresQueue(url, station=station, lease_seconds=lease_seconds)
    scheme = url.split(":", 1)[0]  # never the whole URL: it may hold a password
    raise QueueError(msg('--queue {scheme}:…: give sqlite:///PATH or postgresql://USER@HOST:PORT/DB', scheme=scheme))
