"""Fixtures shared by every tier.

``cli`` runs the real ``provision`` command in a child process and remembers everything it printed;
``canaries`` hands out unique secret values (PIN, PUK, management key, PKCS#12 password, audit key)
and, when the test ends, searches every output of every run and every file the test wrote for them,
in plain text, hex and base64. A test that leaks a secret fails even if it asserted nothing else.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.product import product_env, provision_cmd
from tests.helpers.tiers import REQUIRE_ALL_TIERS, all_tiers_required


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that cannot exist on this platform are not generated (deselected), rather than skipped:
    under PROVISION_REQUIRE_ALL_TIERS every test that is collected must run."""
    if sys.platform != "win32":
        return
    excluded = [item for item in items if item.get_closest_marker("posix_only") is not None]
    if excluded:
        config.hook.pytest_deselected(items=excluded)
        items[:] = [item for item in items if item.get_closest_marker("posix_only") is None]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under PROVISION_REQUIRE_ALL_TIERS (``make test``) a skip is a failure: a skip there can only
    mean that something a tier needs is missing (see ``tests/helpers/tiers.py``)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and all_tiers_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under {REQUIRE_ALL_TIERS}, where every test must run: {reason}"

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Canaries:
    """Unique secret values for one test, and the places they may legitimately be stored."""

    pin: str = field(default_factory=lambda: f"{secrets.randbelow(10**8):08d}")
    puk: str = field(default_factory=lambda: f"{secrets.randbelow(10**8):08d}")
    management_key: str = field(default_factory=lambda: secrets.token_hex(24))
    pkcs12_password: str = field(default_factory=lambda: f"{secrets.randbelow(10**16):016d}")
    audit_key: str = field(default_factory=lambda: secrets.token_hex(32))
    secret_files: set[Path] = field(default_factory=set)  # where a test deliberately put a secret
    outputs: list[str] = field(default_factory=list)

    def values(self) -> dict[str, str]:
        return {
            "PIN": self.pin,
            "PUK": self.puk,
            "management key": self.management_key,
            "PKCS#12 password": self.pkcs12_password,
            "audit key": self.audit_key,
        }

    def write_secret_file(self, path: Path, value: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        os.chmod(path, 0o600)
        self.secret_files.add(path.resolve())
        return path

    def forms(self, value: str) -> list[bytes]:
        raw = value.encode()
        forms = [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw)]
        # A hex key's bytes, and those bytes in base64. Only for keys (16 hex digits or more): an
        # 8-digit PIN read as hex is 4 bytes, which turn up by chance in a binary file about once
        # in every 10**5 (a CI run failed on a journal that held a PUK's "bytes" so).
        if len(value) >= 16 and len(value) % 2 == 0 and all(c in "0123456789abcdef" for c in value):
            decoded = bytes.fromhex(value)
            forms += [decoded, base64.b64encode(decoded)]
        return forms

    def leaks_in(self, blob: bytes) -> list[str]:
        return [name for name, value in self.values().items() if any(f in blob for f in self.forms(value))]


@pytest.fixture
def canaries(tmp_path: Path) -> Iterator[Canaries]:
    found = Canaries()
    yield found
    leaks: list[str] = []
    for text in found.outputs:
        leaks += [f"{name} in command output" for name in found.leaks_in(text.encode())]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.resolve() not in found.secret_files:
            leaks += [f"{name} in {path}" for name in found.leaks_in(path.read_bytes())]
    assert not leaks, f"secrets leaked: {leaks}"


@pytest.fixture(autouse=True, scope="session")
def _private_schema_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """In-process job-file reads remember passed schema checks here, not in the user's cache."""
    os.environ["PROVISION_CACHE_DIR"] = str(tmp_path_factory.mktemp("schema-cache"))


@pytest.fixture
def cli(canaries: Canaries, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``provision ARGS`` as a child process; its outputs are checked for canaries."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None) -> Run:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
        full_env["PROVISION_LOGS"] = str(tmp_path / "logs")
        full_env["PROVISION_CACHE_DIR"] = str(tmp_path / "cache")
        full_env.update(env or {})
        full_env = product_env(full_env)
        argv = [*provision_cmd(), *args]
        done = subprocess.run(
            argv,
            cwd=cwd or tmp_path,
            env=full_env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        canaries.outputs += [done.stdout, done.stderr]
        return Run(argv, done.returncode, done.stdout, done.stderr)

    return run
