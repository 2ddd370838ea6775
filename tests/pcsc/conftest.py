"""Fixtures for tests against a real (private) pcscd with vpcd virtual readers.

The PC/SC client library reads PCSCLITE_CSOCK_NAME once, on its first call, so the private
socket path is fixed here, at import time, before anything in this process touches PC/SC.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.pcsc_harness import Cards, PrivatePcscd, missing_tools, wait_for

READERS = 4
_WORKDIR = Path(tempfile.mkdtemp(prefix="provision-pcscd-"))
os.environ["PCSCLITE_CSOCK_NAME"] = str(_WORKDIR / "pcscd.comm")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_WORKDIR, ignore_errors=True)  # also when the pcscd fixture never ran


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.pcsc)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(60))


@pytest.fixture(scope="session")
def pcscd() -> Iterator[PrivatePcscd]:
    reason = missing_tools()
    if reason:
        # `make test` sets PROVISION_REQUIRE_ALL_TIERS: there a missing tier is a failure, never a skip.
        if os.environ.get("PROVISION_REQUIRE_ALL_TIERS"):
            pytest.fail(f"the PC/SC tier cannot run: {reason}")
        pytest.skip(reason)
    daemon = PrivatePcscd(_WORKDIR, READERS)
    try:
        daemon.start()
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(_WORKDIR, ignore_errors=True)


@pytest.fixture
def cards(pcscd: PrivatePcscd) -> Iterator[Cards]:
    if not pcscd.running:  # a test killed it
        pcscd.start()
        pcscd.wait_ready()
    helper = Cards(pcscd)
    try:
        yield helper
    finally:
        helper.pull_all()
        if not pcscd.running:
            pcscd.stop()
            pcscd.start()
            pcscd.wait_ready()
        else:
            from provision.card.transport import list_readers

            wait_for(lambda: not any(r.card_present for r in list_readers()), 10, "all readers empty")
