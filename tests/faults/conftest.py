"""The fault campaign: pull the card, kill the process, fuzz the inputs, hunt for leaked secrets.

``PROVISION_FAULTS=full`` runs every case (``make faults``); otherwise a reduced, deterministic
sample runs (part of ``make test``). Every case is counted per family (cases / consistent / lost /
leaked) and the table is printed at the end of the session, and written as JSON to
``$PROVISION_FAULTS_SUMMARY`` when that is set.

PC/SC: like the interop tier, this package runs its own private pcscd on the process's
``PCSCLITE_CSOCK_NAME`` (the client library reads it once), one daemon after the other when the
pcsc tier runs in the same session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.faults_common import Material, summary_json, summary_lines
from tests.helpers.pcsc_harness import (
    Cards,
    PrivatePcscd,
    inserted_cards,
    missing_tools,
    require,
    serving,
)

READERS = 2
_OWN_DIR: Path | None = None
_inherited = os.environ.get("PCSCLITE_CSOCK_NAME", "")
if not Path(_inherited).parent.name.startswith("provision-pcscd-"):
    _OWN_DIR = Path(tempfile.mkdtemp(prefix="provision-pcscd-faults-"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(_OWN_DIR / "pcscd.comm")


class FaultsPcscd(PrivatePcscd):
    """A private pcscd on the socket path the process already uses; its files in ``workdir``."""

    socket_file: Path = Path()

    @property
    def socket_path(self) -> Path:
        return self.socket_file


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(600))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.helpers.faults_common import TALLY

    if not TALLY:
        return
    terminalreporter.section("fault campaign summary")
    for line in summary_lines():
        terminalreporter.write_line(line)
    target = os.environ.get("PROVISION_FAULTS_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(summary_json(), indent=2) + "\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN_DIR is not None:
        shutil.rmtree(_OWN_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def material() -> Material:
    return Material()


@pytest.fixture(scope="package")
def pcscd() -> Iterator[FaultsPcscd]:
    require(missing_tools(), "fault campaign's PC/SC part")
    socket_file = Path(os.environ["PCSCLITE_CSOCK_NAME"])
    workdir = socket_file.parent / "faults"
    daemon = FaultsPcscd(workdir, READERS)
    daemon.socket_file = socket_file
    with serving(daemon, workdir) as running:
        yield running


@pytest.fixture
def cards(pcscd: FaultsPcscd) -> Iterator[Cards]:
    yield from inserted_cards(pcscd)


@pytest.fixture
def card_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Card state files live outside tmp_path: a card's EEPROM holds its PIN, which the canary
    search of tmp_path would (rightly) find."""
    return tmp_path_factory.mktemp("cards")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A directory on a read-only file system, for root too (mode bits do not stop root): a tmpfs
    remounted read-only, or else an immutable directory (chattr +i). Yields it and a function that
    makes it read-only (the test may populate it first)."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                             capture_output=True, check=False).returncode == 0  # fmt: skip
    if mounted:
        def freeze() -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)

        try:
            yield where, freeze
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        return
    if shutil.which("chattr") is None:
        require("neither a tmpfs mount nor chattr is available to make a read-only directory", "read-only case")

    def freeze_immutable() -> None:
        if subprocess.run(["chattr", "-R", "+i", str(where)], capture_output=True, check=False).returncode != 0:
            require("this file system does not support chattr +i", "read-only case")

    try:
        yield where, freeze_immutable
    finally:
        subprocess.run(["chattr", "-R", "-i", str(where)], check=False, capture_output=True)
