"""export.nssdb on a real NSS database (NSS certutil, Debian libnss3-tools): a load through the
runner puts the new e-Cert into the browser store under its nickname, byte for byte, once."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from provision import fixtures
from provision.app import run_jobfile
from provision.jobfile import load_jobfile
from provision.load import export_to_nssdb
from provision.sim.card import SimCard, SimOptions
from provision.sim.source import SimSource
from tests.helpers.tiers import require

NOW = datetime.now(UTC)
CERTUTIL = shutil.which("certutil")


@pytest.fixture(autouse=True)
def _certutil_installed() -> None:
    require(None if CERTUTIL else "NSS certutil is not installed (Debian: libnss3-tools)", "NSS export tests")


def certutil(*argv: str) -> subprocess.CompletedProcess[bytes]:
    assert CERTUTIL is not None
    return subprocess.run([CERTUTIL, *argv], capture_output=True, timeout=60, check=False)


def nicknames(db: Path) -> list[str]:
    listed = certutil("-L", "-d", f"sql:{db}").stdout.decode()
    # Header lines, then "<nickname><padding><trust>" per certificate (padded by bytes, not characters).
    return [line.rstrip().rsplit(None, 1)[0] for line in listed.splitlines()[4:] if line.strip()]


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("NSS Test CA")


def write_batch(tmp: Path, canaries: Any, ca: fixtures.Issuer, holders: list[tuple[str, str, int]]) -> Path:
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    cards = ""
    for job_id, cn, serial in holders:
        data = fixtures.holder_p12(ca, cn, canaries.pkcs12_password, serial=serial,
                                   not_before=datetime(2026, 7, 29, tzinfo=UTC), not_after=NOW + timedelta(days=900))  # fmt: skip
        (tmp / f"{job_id}.p12").write_bytes(data)
        cards += (f"  - id: {job_id}\n    holder: {cn}\n    card: {{serial: {serial}}}\n"
                  f"    pkcs12: {{path: {job_id}.p12, password: {{file: p12.pass}}}}\n")  # fmt: skip
    path = tmp / "counter.yaml"
    path.write_text(
        "version: 1\nbatch: nss-test\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: card.pin}\n'
        '  export: {nssdb: "browser/profile"}\ncards:\n' + cards, encoding="utf-8"
    )
    return path


def run(path: Path, cards: list[SimCard], logs: Path) -> Any:
    return run_jobfile(load_jobfile(path, unattended=True), logs=logs, unattended=True, wait=0,
                       source=SimSource([cards]), progress=False, say=lambda _: None)  # fmt: skip


def test_load_exports_the_certificate_into_a_real_nss_database(tmp_path: Path, canaries: Any,
                                                                ca: fixtures.Issuer) -> None:  # fmt: skip
    db = tmp_path / "browser" / "profile"
    db.mkdir(parents=True)
    made = certutil("-N", "-d", f"sql:{db}", "--empty-password")  # an existing profile, as a browser has
    assert made.returncode == 0, made.stderr
    path = write_batch(tmp_path, canaries, ca, [("HK-1", "CHAN Tai Man", 12345678), ("HK-2", "陳大文", 12345679)])
    cards = [SimCard(SimOptions(serial=12345678)), SimCard(SimOptions(serial=12345679))]

    outcome = run(path, cards, tmp_path / "logs")

    assert outcome.exit_code == 0, outcome.document
    assert sorted(nicknames(db)) == sorted(["CHAN Tai Man e-Cert20260729", "陳大文 e-Cert20260729"])
    for job in outcome.document["jobs"]:
        nick = f"{job['holder']} {job['slot_name']}"
        listed = certutil("-L", "-d", f"sql:{db}", "-n", nick, "-a")
        assert listed.returncode == 0, listed.stderr
        (cert,) = x509.load_pem_x509_certificates(listed.stdout)
        assert cert.fingerprint(__import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex() \
            == job["fingerprint_sha256"]  # the same DER as on the card

    # A second run (the cards already hold their certificates) adds no duplicate; neither does a
    # repeated export of the same certificate.
    again = run(path, cards, tmp_path / "logs")
    assert [j["status"] for j in again.document["jobs"]] == ["skipped", "skipped"]
    der = x509.load_pem_x509_certificates(certutil("-L", "-d", f"sql:{db}", "-n", "CHAN Tai Man e-Cert20260729",
                                                   "-a").stdout)[0]  # fmt: skip
    assert export_to_nssdb(db, der, nickname="CHAN Tai Man e-Cert20260729") == "CHAN Tai Man e-Cert20260729"
    assert len(nicknames(db)) == 2


def test_a_missing_database_is_created(tmp_path: Path, canaries: Any, ca: fixtures.Issuer) -> None:
    path = write_batch(tmp_path, canaries, ca, [("HK-1", "CHAN Tai Man", 12345678)])
    outcome = run(path, [SimCard(SimOptions(serial=12345678))], tmp_path / "logs")
    assert outcome.exit_code == 0, outcome.document
    assert nicknames(tmp_path / "browser" / "profile") == ["CHAN Tai Man e-Cert20260729"]


def test_two_holders_of_the_same_name_keep_their_own_certificates(tmp_path: Path, ca: fixtures.Issuer) -> None:
    db = tmp_path / "nss"
    certs = []
    for serial, org in ((1, "Provision Demo"), (2, "Other Office")):
        _key, cert = fixtures.make_leaf(ca, "CHAN Tai Man", serial=serial, organization=org)
        certs.append(cert)
    first = export_to_nssdb(db, certs[0], nickname="CHAN Tai Man e-Cert20260729")
    second = export_to_nssdb(db, certs[1], nickname="CHAN Tai Man e-Cert20260729")
    assert first == "CHAN Tai Man e-Cert20260729"
    assert second.startswith("CHAN Tai Man e-Cert20260729 [") and second != first
    assert export_to_nssdb(db, certs[1], nickname="CHAN Tai Man e-Cert20260729") == second  # idempotent
    for cert, nick in zip(certs, (first, second), strict=True):
        listed = x509.load_pem_x509_certificates(certutil("-L", "-d", f"sql:{db}", "-n", nick, "-a").stdout)
        assert [c.public_bytes(Encoding.DER) for c in listed] == [cert.public_bytes(Encoding.DER)]
    assert len(nicknames(db)) == 2
