"""An unattended renewal batch on simulated cards: due cards are renewed, the others skipped with
the reason and zero writes, a stale "renewal" refused; the reasons reach the run document, the
summary line and the audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from provision import fixtures
from provision.app import run_jobfile
from provision.card.apdu import ApduChannel
from provision.jobfile import load_jobfile
from provision.piv.session import PivSession
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport
from provision.sim.source import SimSource

NOW = datetime.now(UTC)
DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Renewal Test CA")


def card_with_certificate(ca: fixtures.Issuer, serial: int, cn: str, not_after: datetime) -> SimCard:
    """A card that already carries an e-Cert in 9c, valid until ``not_after``."""
    card = SimCard(SimOptions(serial=serial))
    key, cert = fixtures.make_leaf(ca, cn, key_type="p256", serial=0x700 + serial % 100,
                                   not_before=NOW - timedelta(days=1000), not_after=not_after)  # fmt: skip
    card.power_on()
    session = PivSession(ApduChannel(SimTransport(card)))
    session.select()
    session.authenticate(DEFAULT_KEY)
    session.import_key(0x9C, key)  # type: ignore[arg-type]
    session.write_certificate(0x9C, cert.public_bytes(Encoding.DER))
    card.reset()
    return card


class RenewalBatch:
    def __init__(self, tmp: Path, canaries: Any, ca: fixtures.Issuer) -> None:
        self.tmp, self.ca, self.logs = tmp, ca, tmp / "logs"
        self.password = canaries.pkcs12_password
        canaries.write_secret_file(tmp / "p12.pass", self.password)
        canaries.write_secret_file(tmp / "card.pin", "123456")
        self.cards: list[str] = []

    def holder(self, job_id: str, cn: str, serial: int, *, new_not_after: datetime, extra: str = "") -> None:
        data = fixtures.holder_p12(self.ca, cn, self.password, serial=serial, not_before=NOW - timedelta(days=1),
                                   not_after=new_not_after)  # fmt: skip
        (self.tmp / f"{job_id}.p12").write_bytes(data)
        self.cards.append(f"  - id: {job_id}\n    holder: {cn}\n    card: {{serial: {serial}}}\n"
                          f"    pkcs12: {{path: {job_id}.p12, password: {{file: p12.pass}}}}\n{extra}")  # fmt: skip

    def run(self, cards: list[SimCard]) -> Any:
        path = self.tmp / "renewal.yaml"
        path.write_text(
            "version: 1\nbatch: renewal-test\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
            '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: card.pin}\n'
            "  renew: {when_expires_within: 30d}\ncards:\n" + "".join(self.cards)
        )
        lines: list[str] = []
        outcome = run_jobfile(load_jobfile(path, unattended=True), logs=self.logs, unattended=True, wait=0,
                              source=SimSource([cards]), progress=False, say=lines.append)  # fmt: skip
        outcome.lines = lines
        return outcome

    def audit_events(self) -> list[dict[str, Any]]:
        text = (self.logs / "audit.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer) -> RenewalBatch:
    return RenewalBatch(tmp_path, canaries, ca)


def test_unattended_renewal_renews_due_cards_and_skips_the_rest(batch: RenewalBatch, ca: fixtures.Issuer) -> None:
    new_until = NOW + timedelta(days=1095)
    batch.holder("HK-DUE", "CHAN Tai Man", 12345678, new_not_after=new_until)
    batch.holder("HK-FINE", "LEE Siu Ming", 12345679, new_not_after=new_until)
    batch.holder("HK-EMPTY", "WONG Mei Ling", 12345680, new_not_after=new_until)
    batch.holder("HK-EXPIRED", "HO Ka Yan", 12345681, new_not_after=new_until)
    due = card_with_certificate(ca, 12345678, "CHAN Tai Man", NOW + timedelta(days=10))
    fine_until = NOW + timedelta(days=200)
    fine = card_with_certificate(ca, 12345679, "LEE Siu Ming", fine_until)
    empty = SimCard(SimOptions(serial=12345680))
    expired = card_with_certificate(ca, 12345681, "HO Ka Yan", NOW - timedelta(days=3))
    writes_before = fine.write_attempt_count

    outcome = batch.run([due, fine, empty, expired])

    assert outcome.exit_code == 0, outcome.document
    jobs = {j["id"]: j for j in outcome.document["jobs"]}
    assert {k: j["status"] for k, j in jobs.items()} == {
        "HK-DUE": "loaded", "HK-FINE": "skipped", "HK-EMPTY": "loaded", "HK-EXPIRED": "loaded"}  # fmt: skip
    assert jobs["HK-DUE"]["archived_to"] and jobs["HK-EXPIRED"]["archived_to"]
    # The card that needs nothing: zero writes, and the reason in words everywhere.
    assert fine.write_attempt_count == writes_before
    skipped = jobs["HK-FINE"]
    local = fine_until.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Hong_Kong"))
    reason = skipped["notes"][0]
    assert reason.startswith(f"the certificate on the card is valid until {local:%Y-%m-%d %H:%M} HKT, more than 30d")
    assert skipped["error"] is None and skipped["replaced_sha256"] is None and skipped["archived_to"] is None
    assert any(line == f"LEE Siu Ming (HK-FINE): skipped, nothing written: {reason}" for line in outcome.lines)
    events = batch.audit_events()
    said = [e for e in events if e.get("job_id") == "HK-FINE" and e["event"] == "skipped"]
    assert said and said[0]["reason"] == reason and said[0]["outcome"] == "not_due"
    preflight = [e for e in events if e.get("job_id") == "HK-FINE" and e["event"] == "preflight"]
    assert preflight[0]["outcome"] == "not_due"
    # The report carries the note too.
    report = json.loads(Path(outcome.reports["json"]).read_text(encoding="utf-8"))
    assert {j["id"]: j["notes"] for j in report["jobs"]}["HK-FINE"] == [reason]


def test_a_renewal_that_is_not_newer_is_refused_and_writes_nothing(batch: RenewalBatch, ca: fixtures.Issuer) -> None:
    card_until = NOW + timedelta(days=20)
    batch.holder("HK-STALE", "CHAN Tai Man", 12345678, new_not_after=card_until - timedelta(days=5))
    card = card_with_certificate(ca, 12345678, "CHAN Tai Man", card_until)
    writes_before = card.write_attempt_count

    outcome = batch.run([card])

    assert outcome.exit_code == 1
    job = outcome.document["jobs"][0]
    assert job["status"] == "refused" and "a renewal must be newer" in job["error"]
    assert job["replaced_sha256"] is None and job["archived_to"] is None
    assert card.write_attempt_count == writes_before
    refused = [e for e in batch.audit_events() if e.get("job_id") == "HK-STALE" and e["event"] == "job_refused"]
    assert refused and "a renewal must be newer" in refused[0]["error"]


def test_a_rerun_after_renewal_skips_as_already_on_the_card(batch: RenewalBatch, ca: fixtures.Issuer) -> None:
    batch.holder("HK-DUE", "CHAN Tai Man", 12345678, new_not_after=NOW + timedelta(days=1095))
    card = card_with_certificate(ca, 12345678, "CHAN Tai Man", NOW + timedelta(days=3))
    assert batch.run([card]).document["jobs"][0]["status"] == "loaded"
    writes = card.write_attempt_count
    again = batch.run([card])
    assert again.exit_code == 0 and again.document["jobs"][0]["status"] == "skipped"
    assert again.document["jobs"][0]["notes"] == []  # the loader's own idempotent path, not the policy
    assert card.write_attempt_count == writes
