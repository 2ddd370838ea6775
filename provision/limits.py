"""Bounds on every input (docs/batch.md, "Bounds on every input").

Each input is measured against its bound *before* the work it would cause: a file is read with a
bounded read (``read_bounded``: at most limit + 1 bytes, so ``/dev/zero``, a FIFO or a growing file
cannot make us read for ever, whatever ``stat`` says), a program's output is read up to its bound
and for at most its time, a template's widths are checked before anything is formatted.
"""

from __future__ import annotations

import os
from pathlib import Path

from provision.errors import InputTooLargeError

MAX_JOBFILE_BYTES = 16 * 1024 * 1024  # a 10,000-card job file is about 2.5 MB
MAX_CARDS = 20_000  # cards in one job file; a larger batch is split into several files
MAX_EXPANDED_NODES = 2_000_000  # YAML values after alias expansion ("billion laughs")
MAX_PKCS12_BYTES = 16 * 1024 * 1024  # an e-Cert PKCS#12 is a few kB; a long chain tens of kB
MAX_REPORT_BYTES = 64 * 1024 * 1024  # a run's JSON report, read back by 'provision report': 20,000 jobs are ~20 MB
MAX_SECRET_FILE_BYTES = 64 * 1024  # a {file: …} secret file: one line is used
MAX_COMMAND_OUTPUT_BYTES = 64 * 1024  # a {command: …} secret program's stdout
COMMAND_TIMEOUT_SECONDS = 60  # a {command: …} program may ask for a passphrase (gpg)
MAX_SECRET_CHARS = 1024  # any secret, from any source: PINs are 8, a management key 64 hex
MAX_TEMPLATE_CHARS = 512  # a slot-name or export-path template as written
MAX_FORMAT_WIDTH = 255  # width and precision in a template field's format spec
MAX_RENDERED_CHARS = 1024  # a rendered template (a slot name must then fit its own bound)
MAX_SLOT_NAME_CHARS = 64  # a rendered slot name (the card's 5FFF50 entry)

_CHUNK = 64 * 1024


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, or InputTooLargeError once more than ``limit`` bytes were read.

    Never reads more than ``limit + 1`` bytes. ``what`` names the input in the error ("job file").
    OSError (missing, a directory, no permission) is the caller's to word."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblock)  # a FIFO's open must not hang
    try:
        if nonblock:
            os.set_blocking(fd, True)  # but reading it waits for its writer, as a file read does
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise InputTooLargeError(what, limit, str(path))
    return b"".join(chunks)
