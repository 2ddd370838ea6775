"""The PKCS#11 tier: SoftHSM2 tokens in a private directory per test (in-process and ``provision run``),
and NSS softoken tokens behind a private ``p11-kit server`` (``nss``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.nss_token import NssToken
from tests.helpers.nss_token import missing as nss_missing
from tests.helpers.softhsm import SoftHsm, missing
from tests.helpers.tiers import require


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    reason = missing()
    if reason:
        if os.environ.get("PROVISION_REQUIRE_ALL_TIERS"):
            pytest.fail(f"the PKCS#11 tier cannot run: {reason}")
        pytest.skip(reason)
    hsm = SoftHsm(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    from provision.p11.module import finalize_modules

    finalize_modules()  # a module left initialised by another test would keep that test's tokens
    try:
        yield hsm
    finally:
        finalize_modules()


@pytest.fixture
def nss(monkeypatch: pytest.MonkeyPatch) -> Iterator[NssToken]:
    """A second, independent PKCS#11 implementation: NSS's softoken behind ``p11-kit server``
    (``tests/helpers/nss_token.py``); call ``init_token`` to create the token and start its server."""
    require(nss_missing(), "PKCS#11 tier (NSS softoken)")
    token = NssToken()
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", token.address)
    from provision.p11.module import finalize_modules

    finalize_modules()  # p11-kit's client module reads the server's address at C_Initialize
    try:
        yield token
    finally:
        finalize_modules()
        token.close()
