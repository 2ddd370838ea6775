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

from tests.helpers.pcsc_harness import (
    Cards,
    PrivatePcscd,
    inserted_cards,
    missing_tools,
    require,
    serving,
)

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
    require(missing_tools(), "PC/SC tier")
    with serving(PrivatePcscd(_WORKDIR, READERS), _WORKDIR) as daemon:
        yield daemon


@pytest.fixture
def cards(pcscd: PrivatePcscd) -> Iterator[Cards]:
    yield from inserted_cards(pcscd)
