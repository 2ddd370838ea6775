"""Run the ``provision`` command line with per-phase timers (bench/profile_load.py starts this).

The product carries no timers: this wrapper, started in place of ``provision``, wraps the functions
that make up a run (job file, PKCS#12, APDUs, journal, audit, store, reports, fsync) before the CLI
runs, and writes what it measured as JSON to ``$PROVISION_TRACE_OUT`` when the process ends. With
no wrapper nothing is measured and nothing costs: a plain ``provision run`` never sees this file.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the first statement: everything before it is the interpreter's start

import atexit  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

PHASES: dict[str, list[float]] = {}  # phase -> [seconds, calls]
MARKS: dict[str, float] = {"started": STARTED}
_LOCK = threading.Lock()
_DEPTH = threading.local()


def _add(phase: str, seconds: float) -> None:
    with _LOCK:
        entry = PHASES.setdefault(phase, [0.0, 0])
        entry[0] += seconds
        entry[1] += 1


def timed(phase: str, fn: Callable[..., Any], *, first_mark: str | None = None) -> Callable[..., Any]:
    """``fn`` counted under ``phase``; a call made from inside another timed call of the same phase
    (a journal method calling another) counts once."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_DEPTH, phase, 0)
        if first_mark is not None and first_mark not in MARKS:
            MARKS[first_mark] = time.monotonic()
        setattr(_DEPTH, phase, depth + 1)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            setattr(_DEPTH, phase, depth)
            if depth == 0:
                _add(phase, time.perf_counter() - start)

    return wrapper


def wrap_methods(cls: type, phase: str, names: list[str] | None = None) -> None:
    for name, value in list(vars(cls).items()):
        if (names is None and name.startswith("_")) or (names is not None and name not in names):
            continue
        if callable(value) and not isinstance(value, (staticmethod, classmethod, property, type)):
            setattr(cls, name, timed(phase, value))


def install() -> None:
    import provision.app as app
    import provision.audit.chain as chain
    import provision.bundle as bundle
    import provision.card.transport as transport
    import provision.jobfile as jobfile
    import provision.journal as journal
    import provision.runner as runner
    import provision.store as store

    MARKS["imported"] = time.monotonic()
    os.fsync = timed("fsync (Python-level)", os.fsync)
    jobfile.load_jobfile = timed("job file", jobfile.load_jobfile, first_mark="job file")
    bundle.inspect_pkcs12 = timed("PKCS#12 decryption", bundle.inspect_pkcs12)
    runner.open_bundle = timed("PKCS#12 read + decryption", runner.open_bundle)
    transport.PcscTransport.transmit = timed("card APDUs", transport.PcscTransport.transmit,  # type: ignore[method-assign]
                                             first_mark="first APDU")
    transport.PcscTransport._connect = timed("PC/SC connect", transport.PcscTransport._connect)  # type: ignore[method-assign]
    wrap_methods(journal.Journal, "journal")
    wrap_methods(journal.PinHolds, "journal")
    wrap_methods(chain.AuditLog, "audit", ["_write"])
    wrap_methods(store.CertificateStore, "store", ["archive", "prove"])
    app.write_run_reports = timed("reports", app.write_run_reports)
    app.open_audit = timed("open audit log", app.open_audit)


def dump() -> None:
    out = os.environ.get("PROVISION_TRACE_OUT")
    if not out:
        return
    MARKS["ended"] = time.monotonic()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"marks": MARKS, "phases": PHASES}, handle)


def main() -> None:
    install()
    from provision.cli import exit_after
    from provision.cli import main as cli_main

    atexit.register(dump)
    exit_after(cli_main(sys.argv[1:]))  # ends as the ``provision`` command does


if __name__ == "__main__":
    main()
