"""`provision run` against a real pcscd: simulated cards served over vpcd, the runner in its own
process, judged afterwards by yubico-piv-tool and by what the card's APDU log saw."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, card_present, wait_for
from tests.helpers.product import provision_cmd

NOW = datetime.now(UTC)
WRITE_INS = {"db", "fe", "ff", "24", "2c", "fa", "47"}


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("PC/SC Run CA")


def write_job(tmp: Path, canaries: Any, ca: fixtures.Issuer, serial: int) -> Path:
    data = fixtures.holder_p12(ca, "CHAN Tai Man", canaries.pkcs12_password, key_type="p256",
                               not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
    (tmp / "chan.p12").write_bytes(data)
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    job = tmp / "job.yaml"
    job.write_text(
        "version: 1\nbatch: pcsc-batch\ntimezone: Asia/Hong_Kong\ncards:\n"
        f"  - id: HK-1\n    holder: CHAN Tai Man\n    card: {{serial: {serial}}}\n"
        "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n"
        "    slot: 9c\n    slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n    pin: {file: card.pin}\n"
    )
    return job


def run(pcscd: PrivatePcscd, tmp: Path, job: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*provision_cmd(), "run", str(job), "--unattended", "--json", "--no-progress",
         "--logs", str(tmp / "logs"), *extra],
        env=pcscd.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def apdu_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_run_loads_a_card_that_yubico_piv_tool_then_reads(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                          ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    job = write_job(tmp_path, canaries, ca, 12345678)
    log = tmp_path / "apdu.jsonl"
    server = cards.insert(0, kind="sim", options={"serial": 12345678, "apdu_log": str(log)})
    done = run(pcscd, tmp_path, job, "--reader", server.reader)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["jobs"][0]
    assert result["status"] == "loaded" and result["apdus"] > 0
    # The command ends without the interpreter's teardown (cli.exit_after): the journal was closed
    # before that, so SQLite folded its write-ahead log back into the database file.
    assert not (tmp_path / "logs" / "journal.sqlite3-wal").exists()
    peer = shutil.which("yubico-piv-tool")
    assert peer, "yubico-piv-tool is part of the harness"
    read = subprocess.run([peer, "-r", server.reader, "-a", "read-certificate", "-s", "9c"], env=pcscd.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert read.returncode == 0, read.stderr
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(read.stdout.encode())
    assert cert.fingerprint(__import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex() \
        == result["fingerprint_sha256"]
    # Again: nothing to do, and no write APDU reaches the card.
    before = len(apdu_log(log))
    again = run(pcscd, tmp_path, job, "--reader", server.reader)
    assert again.returncode == 0 and json.loads(again.stdout)["jobs"][0]["status"] == "skipped"
    assert not [e for e in apdu_log(log)[before:] if e["ins"].lower() in WRITE_INS]


def test_wrong_card_is_refused_with_zero_write_apdus(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                     ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    job = write_job(tmp_path, canaries, ca, 12345678)
    log = tmp_path / "apdu.jsonl"
    server = cards.insert(1, kind="sim", options={"serial": 55555555, "apdu_log": str(log)})
    done = run(pcscd, tmp_path, job, "--reader", server.reader)
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["jobs"][0]["status"] == "pending"
    assert doc["refused_cards"][0]["card_serial"] == 55555555
    assert apdu_log(log) and not [e for e in apdu_log(log) if e["ins"].lower() in WRITE_INS]


def test_resume_after_the_card_is_pulled_mid_load(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                  ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    job = write_job(tmp_path, canaries, ca, 12345678)
    state = tmp_path / "card.json"
    server = cards.insert(2, kind="sim", mode="process", options={"serial": 12345678, "vanish_after": 16}, state=state)
    first = run(pcscd, tmp_path, job, "--reader", server.reader)
    assert first.returncode == 1, first.stderr
    assert json.loads(first.stdout)["jobs"][0]["in_doubt"] is True
    assert json.loads(first.stdout)["jobs"][0]["status"] == "in-doubt"
    wait_for(lambda: not card_present(server.reader), 10, "the pulled card to leave the reader")
    back = cards.insert(2, kind="sim", mode="process", options={"serial": 12345678}, state=state)
    resumed = subprocess.run(
        [*provision_cmd(), "resume", "--unattended", "--json", "--no-progress", "--logs",
         str(tmp_path / "logs"), "--reader", back.reader],
        env=pcscd.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["jobs"][0]["status"] == "loaded"


def test_a_retired_slot_load_is_listed_by_opensc(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                 ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    """OpenSC lists retired slots only as far as the Key History object counts them."""
    job = write_job(tmp_path, canaries, ca, 12345678)
    job.write_text(job.read_text().replace("slot: 9c", "slot: retired2"))
    server = cards.insert(3, kind="sim", options={"serial": 12345678})
    done = run(pcscd, tmp_path, job, "--reader", server.reader)
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "opensc.conf"
    conf.write_text("app default {\n\tframework pkcs15 {\n\t\tuse_file_caching = no;\n\t}\n}\n")
    env = {**pcscd.env, "OPENSC_CONF": str(conf), "HOME": str(tmp_path)}
    listing = subprocess.run(["pkcs15-tool", "--reader", server.reader, "--list-certificates"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "Retired Certificate for Key Management 2" in listing.stdout and "1001" in listing.stdout


def test_ctrl_c_exits_130_and_resume_finishes(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                              ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    import signal
    import time

    job = write_job(tmp_path, canaries, ca, 12345678)
    state = tmp_path / "card.json"
    server = cards.insert(1, kind="sim", mode="process", options={"serial": 12345678, "latency_ms": 150}, state=state)
    proc = subprocess.Popen(
        [*provision_cmd(), "run", str(job), "--unattended", "--no-progress", "--logs",
         str(tmp_path / "logs"), "--reader", server.reader],
        env=pcscd.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    journal_path = tmp_path / "logs" / "journal.sqlite3"

    def load_started() -> bool:
        files = [journal_path, journal_path.with_name("journal.sqlite3-wal")]
        return any(p.exists() and b"verify_pin" in p.read_bytes() for p in files)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not load_started():  # interrupt in the middle of the load
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "provision resume" in err and "Traceback" not in err
    from provision import journal as jn

    journal = jn.Journal(journal_path)
    assert journal.runs()[-1].status == "interrupted"
    assert journal.job("pcsc-batch", "HK-1").status in ("in-doubt", "loaded")  # type: ignore[union-attr]
    journal.close()
    resumed = subprocess.run(
        [*provision_cmd(), "resume", "--unattended", "--json", "--no-progress", "--logs",
         str(tmp_path / "logs"), "--reader", server.reader],
        env=pcscd.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if resumed.returncode == 0 and "Nothing to resume" in resumed.stdout:
        return  # the interrupt came after the commit
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["jobs"][0]["status"] in ("loaded", "skipped")
    audit = subprocess.run([*provision_cmd(), "audit", "verify", "--logs", str(tmp_path / "logs")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr
