"""Durable file writes, used wherever a file must be whole or absent after a crash or a pulled plug:
the certificate store, reports, the simulated card's state, the audit log's directory."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    if sys.platform == "win32":  # directories cannot be opened for fsync there; NTFS journals renames
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644) -> None:
    """Write a unique temporary file, fsync it, rename it into place, fsync the directory.
    ``data``: the bytes, or pieces of them written one after another."""
    write_all_atomically([(path, data)], mode)


def write_all_atomically(files: Sequence[tuple[Path, bytes | Iterable[bytes]]], mode: int = 0o644) -> None:
    """Several files, each whole or absent after a crash, with one directory sync per directory.

    Every file is written to a temporary file and fsynced first; only when all of them are on disk
    are they renamed into place, and then each directory is synced once (the three reports of a
    run: four syncs instead of six). A failure before the renames (a full disk) leaves none of the
    new files and no temporary file behind."""
    written: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            directory = path.parent if str(path.parent) else Path(".")
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
            written.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                else:
                    handle.writelines(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
        while written:
            tmp, path = written[0]
            os.replace(tmp, path)
            written.pop(0)
    except BaseException:
        for tmp, _path in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    for directory in dict.fromkeys(path.parent if str(path.parent) else Path(".") for path, _data in files):
        fsync_dir(directory)
