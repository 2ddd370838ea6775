"""A run always ends in the journal (records that cannot lie): SIGTERM, SIGHUP, SIGINT and a PC/SC
service that goes away under a live run through a real pcscd each leave the run interrupted, with
its end record and a seal in a verified audit log, its reports written, and `provision resume`
finishing what is left."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, wait_for
from tests.helpers.product import provision_cmd

NOW = datetime.now(UTC)
FIRST, SECOND = 23450001, 23450002


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Run Ends CA")


def write_job(tmp: Path, canaries: Any, ca: fixtures.Issuer) -> Path:
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    cards = ""
    for job_id, cn, serial in (("HK-1", "CHAN Tai Man", FIRST), ("HK-2", "LEE Siu Ming", SECOND)):
        (tmp / f"{job_id}.p12").write_bytes(fixtures.holder_p12(
            ca, cn, canaries.pkcs12_password, key_type="p256", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=365)))  # fmt: skip
        cards += (f"  - id: {job_id}\n    holder: {cn}\n    card: {{serial: {serial}}}\n"
                  f"    pkcs12: {{path: {job_id}.p12, password: {{file: p12.pass}}}}\n")  # fmt: skip
    job = tmp / "job.yaml"
    job.write_text("version: 1\nbatch: ends\ndefaults:\n  slot: 9a\n  slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n"
                   "  pin: {file: card.pin}\ncards:\n" + cards)  # fmt: skip
    return job


def start_run(pcscd: PrivatePcscd, tmp: Path, job: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*provision_cmd(), "run", str(job), "--unattended", "--wait", "300", "--json", "--no-progress",
         "--logs", str(tmp / "logs")],
        env=pcscd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@contextmanager
def live_run(pcscd: PrivatePcscd, cards: Cards, canaries: Any, ca: fixtures.Issuer, tmp: Path) -> Iterator[Any]:
    """A run that has loaded HK-1 and now waits for HK-2's card; killed at the end if still alive."""
    job = write_job(tmp, canaries, ca)
    cards.insert(0, kind="sim", options={"serial": FIRST})
    proc = start_run(pcscd, tmp, job)
    try:
        wait_for(lambda: any(e["event"] == "job_loaded" for e in audit_events(tmp)), 60, "HK-1 loaded")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def audit_events(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "logs" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def journal_run(tmp: Path, run_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(tmp / "logs" / "journal.sqlite3") as db:
        return db.execute("SELECT status, seal FROM runs WHERE run_id = ?", (run_id,)).fetchone()


def check_ended_and_resume(pcscd: PrivatePcscd, cards: Cards, tmp: Path, done: subprocess.CompletedProcess[str] | Any,
                           stdout: str, stderr: str, code: int, stopped_by: str) -> None:  # fmt: skip
    assert done == code, stderr
    assert "Traceback" not in stderr
    document = json.loads(stdout)
    assert document["stopped_by"] == stopped_by
    assert {j["id"]: j["status"] for j in document["jobs"]} == {"HK-1": "loaded", "HK-2": "pending"}
    status, seal = journal_run(tmp, document["run_id"])
    assert status == "interrupted" and seal and seal == document["seal"]
    events = audit_events(tmp)
    finished = [e for e in events if e["event"] == "run_finished" and e["run_id"] == document["run_id"]]
    assert finished and finished[-1]["outcome"] == "interrupted" and finished[-1]["stopped_by"] == stopped_by
    assert events[-1]["event"] == "seal"
    for fmt in ("json", "csv", "html"):
        assert (tmp / "logs" / "reports" / f"{document['run_id']}.{fmt}").is_file()
    verify = subprocess.run([*provision_cmd(), "audit", "verify", "--logs", str(tmp / "logs")], env=pcscd.env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # What is left is finished by resume once the card comes.
    cards.insert(1, kind="sim", options={"serial": SECOND})
    resumed = subprocess.run(
        [*provision_cmd(), "resume", "--unattended", "--wait", "30", "--json", "--no-progress", "--logs",
         str(tmp / "logs")], env=pcscd.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [j["status"] for j in json.loads(resumed.stdout)["jobs"]] == ["loaded"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_ends_the_run_sealed_reported_and_resumable(signame: str, pcscd: PrivatePcscd, cards: Cards,
                                                             canaries: Any, ca: fixtures.Issuer,
                                                             tmp_path: Path) -> None:  # fmt: skip
    with live_run(pcscd, cards, canaries, ca, tmp_path) as proc:
        time.sleep(0.5)  # the run is waiting for HK-2's card now
        proc.send_signal(getattr(signal, signame))
        stdout, stderr = proc.communicate(timeout=60)
    canaries.outputs += [stdout, stderr]
    check_ended_and_resume(pcscd, cards, tmp_path, proc.returncode, stdout, stderr, 130, signame)


@pytest.mark.timeout(180)
def test_a_vanished_pcsc_service_ends_the_run_sealed_reported_and_resumable(pcscd: PrivatePcscd, cards: Cards,
                                                                            canaries: Any, ca: fixtures.Issuer,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    try:
        with live_run(pcscd, cards, canaries, ca, tmp_path) as proc:
            time.sleep(0.5)
            cards.pull_all()
            pcscd.stop()  # the PC/SC service goes away under the live run
            stdout, stderr = proc.communicate(timeout=60)
    finally:
        if not pcscd.running:
            pcscd.start()
            pcscd.wait_ready()
    canaries.outputs += [stdout, stderr]
    assert "PC/SC" in stderr and stderr.count("\n") <= 3, stderr
    check_ended_and_resume(pcscd, cards, tmp_path, proc.returncode, stdout, stderr, 3, "ServiceDownError")


@pytest.mark.timeout(180)
def test_a_run_killed_outright_is_recognised_and_recorded_by_the_next_command(pcscd: PrivatePcscd, cards: Cards,
                                                                               canaries: Any, ca: fixtures.Issuer,
                                                                               tmp_path: Path) -> None:  # fmt: skip
    with live_run(pcscd, cards, canaries, ca, tmp_path) as proc:
        proc.kill()
        proc.communicate(timeout=30)
    killed_run = next(e["run_id"] for e in audit_events(tmp_path) if e["event"] == "run_started")
    status = json.loads(subprocess.run([*provision_cmd(), "status", "--json", "--logs", str(tmp_path / "logs")],
                                       env=pcscd.env, capture_output=True, text=True, timeout=60).stdout)  # fmt: skip
    (run,) = status["runs"]
    assert run["status"] == "running" and run["process_gone"] is True
    resumed = subprocess.run(
        [*provision_cmd(), "resume", "--unattended", "--json", "--no-progress", "--logs", str(tmp_path / "logs")],
        env=pcscd.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert resumed.returncode == 1, resumed.stderr  # HK-2's card never came: pending
    assert journal_run(tmp_path, killed_run)[0] == "interrupted"
    abandoned = [e for e in audit_events(tmp_path) if e["event"] == "run_abandoned"]
    assert [e["abandoned_run_id"] for e in abandoned] == [killed_run]
