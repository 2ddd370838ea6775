"""Remember which job-file texts passed the schema check, so a re-run does not repeat it.

A counter runs the same job file many times a day (``validate``, ``plan``, ``run``, ``resume``)
and a renewal batch runs the same file every night. The schema check is the slowest part of
starting: importing jsonschema and building its validators costs ~60 ms before the first APDU. An
entry is an empty file named by the SHA-256 of (this package's schema file, the job file's exact
text): any change to either is a different name, so a stale entry cannot apply. Only that hash is
stored, never the text. Everything that depends on the machine (files, secret sources, semantic
checks) is checked on every run all the same.

``PROVISION_CACHE_DIR`` moves the cache; ``PROVISION_CACHE_DIR=off`` turns it off. The default is
the user's cache directory (``%LOCALAPPDATA%`` on Windows, ``~/Library/Caches`` on macOS,
``$XDG_CACHE_HOME`` or ``~/.cache`` elsewhere).
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import cache
from pathlib import Path

from provision import resources

KEEP = 512  # entries; the oldest go first


def directory() -> Path | None:
    chosen = os.environ.get("PROVISION_CACHE_DIR")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "no") else Path(chosen) / "validated"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "provision" / "validated"


@cache
def _schema_digest() -> bytes:
    try:
        return hashlib.sha256(resources.job_schema_bytes()).digest()
    except OSError:
        return b""


def marker(text: str) -> Path | None:
    """The entry for this job-file text, or None when there is no cache."""
    where = directory()
    schema = _schema_digest()
    if where is None or not schema:
        return None
    return where / hashlib.sha256(schema + text.encode("utf-8", "surrogatepass")).hexdigest()


def remember(entry: Path) -> None:
    """Best effort: a cache that cannot be written only means the next start checks again."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry.touch()
        entries = list(entry.parent.iterdir())
        if len(entries) > KEEP:
            entries.sort(key=lambda p: p.stat().st_mtime)
            for old in entries[: len(entries) - KEEP]:
                old.unlink(missing_ok=True)
    except OSError:
        pass
