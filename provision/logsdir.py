"""The logs directory is ours: the one place where it is checked and created.

Whoever can write the logs directory could plant a symbolic link where provision keeps its own
files (``audit.jsonl -> /etc/shadow``, ``store -> /elsewhere``); following it would append records
to, or read records from, a file the operator never chose. So every entry provision owns is checked
with ``lstat`` before a command uses the directory, and files are opened with ``O_NOFOLLOW`` where
the platform has it (Windows does not: there the ``lstat`` check stands alone, and creating links
needs a privilege there anyway). The directory itself may be a link an administrator made (to
another disk), as long as it leads to a directory.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

from provision.errors import EnvironmentProblem, LogsError
from provision.i18n import Msg, msg

O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)

# What provision keeps in a logs directory; none of it may be a symbolic link.
OWN_FILES = (
    "audit.jsonl", ".audit.jsonl.lock", "journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm", ".lock",
    ".reserve", "audit-timestamps.jsonl",
)  # fmt: skip
OWN_DIRECTORIES = ("store", "reports")


def _planted_link(path: Path) -> LogsError:
    return LogsError(
        msg('{path} is a symbolic link, and provision follows no link to its own files (whoever can write there may have planted it); remove the link, check who can write the directory, and run again', path=path)
    )


def refuse_link(path: Path, *, directory: bool = False) -> None:
    """Raise LogsError when ``path`` is a symbolic link (or, for ``directory``, not a directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LogsError(
            msg('{path} cannot be examined ({strerror}); check the logs directory and its permissions', path=path, strerror=exc.strerror)
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise _planted_link(path)
    if directory and not stat.S_ISDIR(st.st_mode):
        raise LogsError(
            msg('{path} cannot be written: provision keeps a directory there, and this is not one; move it aside', path=path)
        )


def _kind(mode: int) -> Msg:
    if stat.S_ISDIR(mode):
        return msg("a directory")
    if stat.S_ISFIFO(mode):
        return msg("a named pipe (FIFO)")
    if stat.S_ISSOCK(mode):
        return msg("a socket")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return msg("a device")
    return msg("not a regular file")


def _not_regular(path: Path, mode: int) -> LogsError:
    return LogsError(
        msg('{path} is {kind} where provision keeps a regular file, and provision opens nothing else there (whoever can write the directory may have put it there); move it aside, check who can write the directory, and run again', path=path, kind=_kind(mode))
    )


def _linked_elsewhere(path: Path, links: int) -> LogsError:
    return LogsError(
        msg('{path} has {n} names (hard links), so writing it would also change a file elsewhere (whoever can write the directory may have linked it); move it aside (keep a copy for investigation), check who can write the directory, and run again', path=path, n=links)
    )


def refuse_not_regular(path: Path, *, writing: bool = False) -> None:
    """Raise LogsError when something other than a regular file (a FIFO, a directory, a device, a
    socket) or a link is at ``path``, or (``writing``) a file with other names; nothing there is fine."""
    refuse_link(path)
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    if writing and st.st_nlink > 1:
        raise _linked_elsewhere(path, st.st_nlink)


def open_regular(path: Path, flags: int, mode: int = 0o600, *, follow: bool = False) -> int:
    """``os.open`` for a file that must be a regular file: never waits, never follows a link.

    Opening a FIFO waits until a peer opens its other end (for ever, if an attacker planted it and
    nobody does), and ``O_NOFOLLOW`` does not prevent that; so the file is opened with
    ``O_NONBLOCK`` and must then be a regular file, or LogsError (exit 3) with the reason. A file
    opened for writing must also have no other name (a hard link planted in the logs directory
    would have provision append to a file elsewhere). ``follow``: a path the operator gave (an
    anchor), where a link is theirs to make."""
    nofollow = 0 if follow else O_NOFOLLOW
    if not follow and not O_NOFOLLOW:
        refuse_link(path)
    truncate = bool(flags & os.O_TRUNC)  # only once it is known to be ours: never a linked file elsewhere
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | nofollow | O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise _planted_link(path) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory; a FIFO opened for writing with no reader
            try:
                found = os.stat(path).st_mode if follow else os.lstat(path).st_mode
            except OSError:
                raise exc from None
            raise _not_regular(path, found) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if flags & (os.O_WRONLY | os.O_RDWR) and not follow and st.st_nlink > 1:
            raise _linked_elsewhere(path, st.st_nlink)
        if O_NONBLOCK:
            os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of one of provision's own files: a symbolic link, a FIFO, a directory or a file
    with other names (for writing) at ``path`` is refused (LogsError) instead of used."""
    return open_regular(path, flags, mode)


def open_read(path: Path, *, follow: bool = False) -> BinaryIO:
    """A regular file opened for reading (see open_regular): never a FIFO's endless wait."""
    return os.fdopen(open_regular(path, os.O_RDONLY | getattr(os, "O_BINARY", 0), follow=follow), "rb")


def open_logs(path: Path, *, create: bool) -> Path:
    """Check the logs directory (and, with ``create``, make it) before a command uses it.

    Without ``create`` an absent directory is fine (a command that only reads finds nothing). A
    dangling link, something that is not a directory, a directory that cannot be created, and a
    link in place of one of provision's own files are refused with a LogsError (exit 3)."""
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise LogsError(
            msg('{path} cannot be used as the logs directory ({strerror}); give another --logs', path=path, strerror=exc.strerror)
        ) from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            raise LogsError(
                msg('the logs directory {path} is a symbolic link to {readlink}, which does not exist; create that directory or give another --logs', path=path, readlink=os.readlink(path))
            ) from None
    if st is None:
        if not create:
            return path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LogsError(
                msg('the logs directory {path} cannot be created ({strerror}); give a --logs on a writable disk', path=path, strerror=exc.strerror)
            ) from None
    elif not stat.S_ISDIR(st.st_mode):
        raise LogsError(msg('the logs directory {path} is not a directory; give a directory with --logs', path=path))
    for name in OWN_FILES:
        refuse_not_regular(path / name, writing=create)
    for name in OWN_DIRECTORIES:
        refuse_link(path / name, directory=True)
    return path


def shared_write_warning(path: Path) -> str | None:
    """A sentence when others than the owner may write the logs directory (they could plant links or
    replace records); None otherwise, and always on Windows (ACLs, not mode bits)."""
    if sys.platform == "win32":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not stat.S_ISDIR(mode) or not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    who = "every user" if mode & stat.S_IWOTH else "its group"
    return (f"the logs directory {path} can be written by {who} (mode {stat.S_IMODE(mode):04o}), who could "
            f"plant links or replace records there; make it writable by its owner only (chmod go-w {path})")  # fmt: skip


# Space kept aside in the logs directory while a run works: when the disk fills under a run, this
# file is deleted so the run's end record, seal, journal end and reports still fit.
RESERVE_NAME = ".reserve"
RESERVE_BYTES = 2 * 1024 * 1024


def ensure_reserve(logs: Path) -> None:
    """Keep ``RESERVE_BYTES`` aside in ``logs`` (before any card). Real bytes, not a sparse file,
    so the space is really taken; a disk that cannot give them stops the run here (exit 3)."""
    path = logs / RESERVE_NAME
    try:
        if os.lstat(path).st_size == RESERVE_BYTES and not stat.S_ISLNK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LogsError(msg('{path} cannot be examined ({strerror}); check the logs directory', path=path, strerror=exc.strerror)) from None
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    try:
        chunk = os.urandom(64 * 1024)  # not zeros: a compressing file system would not store those
        for _ in range(RESERVE_BYTES // len(chunk)):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise LogsError(
            msg('the disk of the logs directory {logs} has less than {value} MiB free ({strerror}); free space, then run again (nothing was run)', logs=logs, value=RESERVE_BYTES // (1024 * 1024), strerror=exc.strerror)
        ) from None
    os.close(fd)


def release_reserve(logs: Path) -> bool:
    """Give the reserve back to the disk (a run that found it full ends in it); True if there was one."""
    try:
        (logs / RESERVE_NAME).unlink()
        return True
    except OSError:
        return False


# One run at a time per logs directory


class LogsLock:
    """One run at a time per logs directory (two runs must not interleave their journals)."""

    def __init__(self, logs: Path) -> None:
        self.path = logs / ".lock"
        self._handle: Any = None

    def __enter__(self) -> LogsLock:
        open_logs(self.path.parent, create=True)
        try:
            self._handle = os.fdopen(open_nofollow(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
        except OSError as exc:
            raise EnvironmentProblem(msg('the logs directory {parent} cannot be written ({strerror})', parent=self.path.parent, strerror=exc.strerror)) from None
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(self._handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            raise EnvironmentProblem(
                msg('another provision run is using {parent}; wait for it to finish or use another --logs', parent=self.path.parent)
            ) from None
        return self

    @property
    def held(self) -> bool:
        return self._handle is not None and not self._handle.closed

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()


def run_alive(logs: Path) -> bool:
    """Whether a live process holds this logs directory's lock (read-only: creates and writes
    nothing, so it works on an auditor's read-only copy). A run the journal calls 'running' while
    nobody holds the lock was killed outright."""
    path = logs / ".lock"
    if not path.is_file() or path.is_symlink():
        return False
    if sys.platform == "win32":
        try:
            with LogsLock(logs):
                return False
        except EnvironmentProblem:
            return True
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True  # a run holds it exclusively
    finally:
        os.close(fd)
    return False
