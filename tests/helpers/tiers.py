"""Skips that are honest: a test that cannot run here fails under ``make test``.

``make test`` sets ``PROVISION_REQUIRE_ALL_TIERS=1``: there every tier and every peer must run, and
a missing tool (pcscd, vpcd, ykman, OpenSC, chromium, certutil, systemd-analyze, PostgreSQL ...) is
a failure, not a quiet skip. Elsewhere (a developer's laptop) it stays a skip that says what to
install. ``tests/conftest.py`` enforces the same for any ``pytest.skip`` under that variable.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL_TIERS = "PROVISION_REQUIRE_ALL_TIERS"


def all_tiers_required() -> bool:
    return bool(os.environ.get(REQUIRE_ALL_TIERS))


def require(reason: str | None, tier: str) -> None:
    """``reason`` (why ``tier`` cannot run here) fails under PROVISION_REQUIRE_ALL_TIERS, else skips.
    None: it can run."""
    if not reason:
        return
    if all_tiers_required():
        pytest.fail(f"the {tier} cannot run: {reason}")
    pytest.skip(reason)
