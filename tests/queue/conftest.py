"""The queue tier: a private PostgreSQL cluster (tests/helpers/pg_cluster.py) and batches of
holders whose stations run as separate processes (tests/queue/station.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.pg_cluster import Cluster, pg_bin
from tests.helpers.product import provision_cmd
from tests.helpers.tiers import require

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: starts a private PostgreSQL cluster (initdb + pg_ctl)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    bin_dir = pg_bin()
    require(None if bin_dir else "PostgreSQL is not installed (Debian: postgresql; make setup installs it)",
            "shared-queue tier")  # fmt: skip
    assert bin_dir is not None
    cluster = Cluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    return pg_cluster.new_database()


@pytest.fixture(scope="session")
def queue_ca() -> fixtures.Issuer:
    return fixtures.make_ca("Queue Test CA")


FIRST_SERIAL = 40_000_000


def write_batch(tmp: Path, canaries: Any, ca: fixtures.Issuer, count: int, batch: str = "queue-batch",
                any_card: bool = False) -> Path:  # fmt: skip
    """A job file of ``count`` holders (serials FIRST_SERIAL…, or ``any: true`` cards), their
    PKCS#12 and secret files."""
    now = datetime.now(UTC)
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    cards = []
    for i in range(count):
        serial = FIRST_SERIAL + i
        data = fixtures.holder_p12(ca, f"HOLDER {i:04d}", canaries.pkcs12_password, key_type="p256", serial=serial,
                                   not_before=now - timedelta(days=1), not_after=now + timedelta(days=365))  # fmt: skip
        (tmp / f"Q-{i:04d}.p12").write_bytes(data)
        card = "{any: true}" if any_card else f"{{serial: {serial}}}"
        cards.append(f"  - id: Q-{i:04d}\n    holder: HOLDER {i:04d}\n    card: {card}\n"
                     f"    pkcs12: {{path: Q-{i:04d}.p12, password: {{file: p12.pass}}}}\n")  # fmt: skip
    path = tmp / "batch.yaml"
    path.write_text(f"version: 1\nbatch: {batch}\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
                    '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: card.pin}\n'
                    "cards:\n" + "".join(cards))  # fmt: skip
    return path


def provision_cli(*args: str, logs: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env["PROVISION_LOGS"] = str(logs)
    return subprocess.run([*provision_cmd(), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def start_station(tmp: Path, name: str, *, jobfile: Path, queue: str, readers: list[list[tuple[int, Path]]],
                  lease: float = 10.0, latency_ms: float = 0.0, env: dict[str, str] | None = None) -> subprocess.Popen[str]:  # fmt: skip
    spec = {"jobfile": str(jobfile), "queue": queue, "station": name, "logs": str(tmp / f"logs-{name}"),
            "lease": lease, "latency_ms": latency_ms,
            "readers": [[[serial, str(state)] for serial, state in reader] for reader in readers]}  # fmt: skip
    spec_path = tmp / f"station-{name}.json"
    spec_path.write_text(json.dumps(spec))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "tests.queue.station", str(spec_path)], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip


def station_result(proc: subprocess.Popen[str], timeout: float = 150) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return dict(json.loads(out.strip().splitlines()[-1]))
