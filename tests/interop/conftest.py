"""Fixtures for the interop tier: the peers (yubico-piv-tool, OpenSC, ykman) against our simulated
card, through a real private pcscd and vpcd.

Reuses the pcsc tier's harness (``tests/helpers/pcsc_harness.py``: PrivatePcscd, Cards). The daemon
here is package-scoped; readers 0 and 1 are named like a YubiKey's, 2 and 3 are plain vpcd readers
(see ``tests/helpers/interop_peers.py``), and it listens on the process's ``PCSCLITE_CSOCK_NAME``: the PC/SC client library reads that name
once, so when tests/pcsc runs in the same session both tiers use the same socket path, one daemon
after the other (this one stops when the interop package is done).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.interop_peers import (
    APDU_COUNTS,
    InsertCard,
    InteropPcscd,
    Material,
    Peers,
    missing_peers,
    write_apdu_counts,
)
from tests.helpers.pcsc_harness import (
    Cards,
    CardServer,
    inserted_cards,
    missing_tools,
    require,
    serving,
)

READERS = 4  # two named like a YubiKey's reader, two plain vpcd readers
# The pcsc tier's conftest sets the socket in a "provision-pcscd-*" directory: keep it if it is
# there (in whichever order the conftests were imported, the last one wins before the first PC/SC
# call). Never take over a socket path that came from outside the test run.
_OWN_DIR: Path | None = None
_inherited = os.environ.get("PCSCLITE_CSOCK_NAME", "")
if not Path(_inherited).parent.name.startswith("provision-pcscd-"):
    _OWN_DIR = Path(tempfile.mkdtemp(prefix="provision-pcscd-interop-"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(_OWN_DIR / "pcscd.comm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)
            item.add_marker(pytest.mark.pcsc)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(120))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("PROVISION_INTEROP_APDU_COUNTS")
    if target and APDU_COUNTS:
        write_apdu_counts(Path(target))
    if _OWN_DIR is not None:
        shutil.rmtree(_OWN_DIR, ignore_errors=True)


@pytest.fixture(scope="package")
def pcscd() -> Iterator[InteropPcscd]:
    require(missing_tools() or missing_peers(), "interop tier")
    socket_file = Path(os.environ["PCSCLITE_CSOCK_NAME"])
    workdir = socket_file.parent / "interop"
    with serving(InteropPcscd(workdir, READERS, socket_file=socket_file), workdir) as daemon:
        yield daemon


@pytest.fixture
def cards(pcscd: InteropPcscd) -> Iterator[Cards]:
    yield from inserted_cards(pcscd)


@pytest.fixture(scope="session")
def material() -> Material:
    return Material()


@pytest.fixture
def insert_card(pcscd: InteropPcscd, cards: Cards, tmp_path: Path) -> InsertCard:
    """``insert_card(**sim_options) -> (server, peers)``: a simulated card in reader 0, in-process."""

    def insert(**options: object) -> tuple[CardServer, Peers]:
        server = cards.insert(0, kind="sim", mode="thread", options=dict(options))
        return server, Peers(pcscd, pcscd.reader_name(0), server.card, tmp_path)

    return insert
