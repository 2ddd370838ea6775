"""Run the ``provision`` command line with per-phase timers (bench/profile_load.py starts this).

The product carries no timers: this wrapper, started in place of ``provision``, wraps the functions
that make up a run (job file, PKCS#12, APDUs, journal, audit, store, reports, fsync) as the product
imports their modules, so that the run imports what it imports in its own order (the early card read
of ``provision.early`` starts before the heavy imports, as in a plain ``provision run``), and writes
what it measured as JSON to ``$PROVISION_TRACE_OUT`` when the process ends. APDUs and connects made by
the early read's thread are counted apart ("... (early)"): they overlap the start-up. With no wrapper
nothing is measured and nothing costs: a plain ``provision run`` never sees this file.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the first statement: everything before it is the interpreter's start

import atexit  # noqa: E402
import functools  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
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
                early = threading.current_thread().name == "early-card"
                _add(f"{phase} (early)" if early else phase, time.perf_counter() - start)

    return wrapper


def wrap_methods(cls: type, phase: str, names: list[str] | None = None) -> None:
    for name, value in list(vars(cls).items()):
        if (names is None and name.startswith("_")) or (names is not None and name not in names):
            continue
        if callable(value) and not isinstance(value, (staticmethod, classmethod, property, type)):
            setattr(cls, name, timed(phase, value))


def _patch_transport(transport: Any) -> None:
    transport.PcscTransport.transmit = timed("card APDUs", transport.PcscTransport.transmit, first_mark="first APDU")
    transport.PcscTransport._connect = timed("PC/SC connect", transport.PcscTransport._connect)


def _patch_cli(cli: Any) -> None:
    build = cli.build_parser

    def build_parser() -> Any:
        parser = timed("argument parsing", build)()
        parser.parse_args = timed("argument parsing", parser.parse_args)
        return parser

    cli.build_parser = build_parser


def _patch_jobfile(jobfile: Any) -> None:
    jobfile.load_jobfile = timed("job file", jobfile.load_jobfile, first_mark="job file")


def _patch_bundle(bundle: Any) -> None:
    bundle.inspect_pkcs12 = timed("PKCS#12 decryption", bundle.inspect_pkcs12)


def _patch_runner(runner: Any) -> None:
    runner.open_bundle = timed("PKCS#12 read + decryption", runner.open_bundle)


def _patch_journal(journal: Any) -> None:
    wrap_methods(journal.Journal, "journal")
    wrap_methods(journal.PinHolds, "journal")


def _patch_app(app: Any) -> None:
    app.write_run_reports = timed("reports", app.write_run_reports)
    app.open_audit = timed("open audit log", app.open_audit)


PATCHES: dict[str, Callable[[Any], None]] = {
    "provision.card.transport": _patch_transport,
    "provision.cli": _patch_cli,
    "provision.jobfile": _patch_jobfile,
    "provision.bundle": _patch_bundle,
    "provision.runner": _patch_runner,
    "provision.journal": _patch_journal,
    "provision.audit.chain": lambda chain: wrap_methods(chain.AuditLog, "audit", ["_write"]),
    "provision.store": lambda store: wrap_methods(store.CertificateStore, "store", ["archive", "prove"]),
    "provision.app": _patch_app,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patch(module)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Wraps a module's functions right after the product imports it, wherever that happens."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def install() -> None:
    os.fsync = timed("fsync (Python-level)", os.fsync)
    sys.meta_path.insert(0, _PatchingFinder())


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
