"""The PKCS#11 tier: SoftHSM2 tokens in a private directory per test (in-process and ``provision run``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.softhsm import SoftHsm, missing


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
