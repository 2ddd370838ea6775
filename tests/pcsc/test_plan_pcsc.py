"""`provision plan` with cards in a real pcscd: it reads them, read-only, and shows per job the
difference between the card and the job. Judged by the cards' own APDU logs: no PIN VERIFY with
data, no GENERAL AUTHENTICATE, no PUT DATA, no key import reached any card."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.pcsc_harness import Cards, PrivatePcscd
from tests.helpers.product import provision_cmd

NOW = datetime.now(UTC)
OURS, STRANGER, ABSENT = 12345678, 55555555, 99999999
P12 = "pkcs12: {path: chan.p12, password: {file: p12.pass}}"


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("PC/SC Plan CA")


def write_jobs(tmp: Path, canaries: Any, ca: fixtures.Issuer) -> Path:
    data = fixtures.holder_p12(ca, "CHAN Tai Man", canaries.pkcs12_password, key_type="p256",
                               not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
    (tmp / "chan.p12").write_bytes(data)
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    job = tmp / "job.yaml"
    job.write_text(
        "version: 1\nbatch: plan-batch\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: card.pin}\n  min_pin_retries: 2\ncards:\n'
        f"  - {{id: HK-1, holder: CHAN Tai Man, card: {{serial: {OURS}}}, {P12}}}\n"
        f"  - {{id: HK-2, holder: LEE Siu Ming, card: {{serial: {ABSENT}}}, {P12}}}\n"
    )
    return job


def plan(pcscd: PrivatePcscd, job: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*provision_cmd(), "plan", str(job), "--unattended", *extra], env=pcscd.env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def apdus(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_plan_reads_the_cards_read_only_and_shows_the_differences(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                                  ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    job = write_jobs(tmp_path, canaries, ca)
    ours_log, stranger_log = tmp_path / "ours.jsonl", tmp_path / "stranger.jsonl"
    cards.insert(0, kind="sim", options={"serial": OURS, "apdu_log": str(ours_log)})
    cards.insert(1, kind="sim", options={"serial": STRANGER, "apdu_log": str(stranger_log)})
    done = plan(pcscd, job, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    first, second = doc["jobs"]
    assert {"id", "card", "slot", "slot_name", "steps", "problems", "notes"} <= set(first)  # the fields kept
    seen = first["card_seen"]
    assert seen["serial"] == OURS and seen["pin_tries_left"] == 3 and seen["management_key_is_default"] is True
    assert seen["slot_action"] == "empty" and seen["slot"]["certificate"] is None
    assert "slot 9c is empty" in first["differences"]
    assert "PIN tries left: 3 (floor 2)" in first["differences"]
    assert "the card's management key is the factory default" in first["differences"]
    applies = {s["action"]: s["applies"] for s in first["steps"]}
    assert applies["archive_replaced_certificate"] is False and applies["import_key"] is True
    assert second["card_seen"] is None and second["differences"] == [f"card serial {ABSENT} is not in any reader"]
    assert doc["cards"]["read"] is True and doc["cards"]["unavailable"] is None
    assert len(doc["cards"]["without_job"]) == 1 and str(STRANGER) in doc["cards"]["without_job"][0]
    text = plan(pcscd, job)
    assert "Card without a job: " in text.stdout and str(STRANGER) in text.stdout
    assert "card: slot 9c is empty" in text.stdout
    for log in (ours_log, stranger_log):
        sent = apdus(log)
        assert any(e["ins"] == "A4" for e in sent)  # SELECT: the card was read
        assert any(e["ins"] == "20" and e["lc"] is None for e in sent)  # the PIN status, no try spent
        assert not [e for e in sent if e["ins"] == "20" and e["lc"] is not None], "a VERIFY with data"
        assert not [e for e in sent if e["ins"] in {"87", "DB", "FE", "FF", "24", "2C", "FA", "47"}], sent


def test_plan_reports_a_pin_below_the_floor_and_a_replaced_certificate(pcscd: PrivatePcscd, cards: Cards,
                                                                       canaries: Any, ca: fixtures.Issuer,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    job = write_jobs(tmp_path, canaries, ca)
    job.write_text(job.read_text().replace("min_pin_retries: 2", "min_pin_retries: 4"))
    cards.insert(2, kind="sim", options={"serial": OURS})
    done = plan(pcscd, job, "--json")
    assert done.returncode == 2, done.stderr  # a job that would fail
    first = json.loads(done.stdout)["jobs"][0]
    assert "PIN tries left: 3, below the floor min_pin_retries 4" in first["differences"]
    assert any("fewer than min_pin_retries (4)" in p for p in first["problems"])


def test_plan_without_a_card_says_so_in_one_line(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                 ca: fixtures.Issuer, tmp_path: Path) -> None:  # fmt: skip
    job = write_jobs(tmp_path, canaries, ca)
    done = plan(pcscd, job)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("Cards:")] == [
        "Cards: no card was read: no card is in any reader; the steps below are those of any card"]
    doc = json.loads(plan(pcscd, job, "--json").stdout)
    assert doc["cards"]["unavailable"] == "no card was read: no card is in any reader"
    assert all(j["card_seen"] is None for j in doc["jobs"])
