"""What a second PIV implementation that is not ours, CanoKey (canokey-core's PIV applet, run as a
virtual card behind vpcd), did differently, each on the simulator (docs/development.md, "CanoKey").

CanoKey is within SP 800-73-4 where it differs: it has no Key History object (optional), only the
retired slots 82 and 83, an ATR without extended length (long commands go as chains), and it stores
a chained PUT DATA segment by segment, so a load interrupted in the middle of the certificate
leaves a truncated object in the slot.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision import journal as jn
from provision.cardinfo import read_card_info
from provision.sim.card import SimCard, SimOptions
from tests.sim.test_runner import Batch, preload_old_certificate, session_for

# CanoKey's ATR: historical bytes "Canokey" (category 43), no card capabilities: no extended Lc/Le.
CANOKEY_ATR = bytes.fromhex("3BF71100008131FE6543616E6F6B657999")
KEY_HISTORY = 0x5FC10C


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("CanoKey Test CA")


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer) -> Batch:
    return Batch(tmp_path, canaries, ca, fixtures.generate_key("rsa2048"))


def canokey(serial: int = 12345678, state: Path | None = None, **extra: object) -> SimCard:
    options = SimOptions(serial=serial, profile="pivapplet", retired_slots_max=0x83, absent_objects=(KEY_HISTORY,),
                         chain_stored_per_segment=True, atr=CANOKEY_ATR, **extra)  # type: ignore[arg-type]  # fmt: skip
    return SimCard(options, state)


def test_a_rerun_on_a_card_without_key_history_writes_nothing(batch: Batch) -> None:
    """A retired slot is counted in Key History (5FC10C) for middleware; CanoKey has no such object
    (GET and PUT answer 6A82). The load still succeeds, with a note; a re-run used to authenticate
    with the management key and try the refused PUT DATA again every time, ending "loaded"."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    slot: 82\n")
    card = canokey()
    first = batch.run([card])
    job = first.document["jobs"][0]
    assert job["status"] == "loaded", job
    assert KEY_HISTORY not in card.state.objects
    writes = card.write_attempt_count
    again = batch.run([card])
    job = again.document["jobs"][0]
    assert job["status"] == "skipped", job
    assert card.write_attempt_count == writes  # not even a refused PUT DATA
    assert any("Key History not updated: the card refused it" in str(note) for note in job["notes"]), job["notes"]


def test_a_card_pulled_in_the_middle_of_the_certificate_is_finished_by_the_next_run(
    batch: Batch, ca: fixtures.Issuer, tmp_path: Path
) -> None:
    """The certificate goes to CanoKey as a command chain, stored segment by segment: pulled after
    any APDU of the load, the slot may hold a truncated certificate object. The next run sees the
    interrupted write in the journal, writes the certificate again and ends "loaded"; before, it
    failed on the truncated object ("truncated TLV") at every later attempt."""
    import shutil

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    probe = canokey(state=tmp_path / "probe.json")
    preload_old_certificate(probe, ca, "CHAN Tai Man")
    before = probe.apdu_count
    assert batch.run([probe]).document["jobs"][0]["status"] == "loaded"
    total = probe.apdu_count - before
    shutil.rmtree(batch.logs)
    torn_seen = 0
    for k in range(1, total):
        state = tmp_path / f"card-{k}.json"
        card = canokey(state=state)
        old = preload_old_certificate(card, ca, "CHAN Tai Man")
        pulled = canokey(state=state, vanish_after=k)
        batch.run([pulled])
        stored = pulled.state.objects.get(0x5FC10A)
        if stored is not None and stored[:1] == b"\x70" and len(stored) < 4 + int.from_bytes(stored[2:4], "big"):
            torn_seen += 1
        back = canokey(state=state)  # the same card, put back
        resumed = batch.run([back])
        job = resumed.document["jobs"][0]
        assert resumed.exit_code == 0 and job["status"] == "loaded", (k, job)
        slot = read_card_info(session_for(back)).slot(0x9C)
        assert slot.error is None and slot.certificate is not None, (k, slot)
        assert slot.certificate.sha256 == job["fingerprint_sha256"] and slot.key_matches_certificate is True, k
        assert (batch.logs / "store" / f"{hashlib.sha256(old).hexdigest()}.pem").exists(), k
        journal = jn.Journal(batch.logs / "journal.sqlite3")
        ended = [a for _, a, phase, _, _ in journal.steps("test-batch", "HK-1") if phase == "end"]
        journal.close()
        for write in ("import_key", "commit"):
            assert ended.count(write) <= 1, (k, write, ended)
        shutil.rmtree(batch.logs)
    assert torn_seen >= 1  # the campaign really met a truncated certificate object


def test_a_truncated_certificate_that_no_load_of_this_job_left_is_not_overwritten(
    batch: Batch, ca: fixtures.Issuer
) -> None:
    """A truncated object this job's journal knows nothing of (another program's interrupted
    write, a damaged card) is not taken for ours: the job fails saying what the slot holds, and the
    card is not changed."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = canokey()
    preload_old_certificate(card, ca, "CHAN Tai Man")
    session = session_for(card)
    from tests.sim.test_runner import DEFAULT_KEY

    session.authenticate(DEFAULT_KEY)
    body = b"\x5c\x03\x5f\xc1\x0a" + b"\x53\x82\x01\x80" + b"\x70\x82\x01\x7c" + bytes(200)
    session.channel.send(0xDB, 0x3F, 0xFF, body, cla=0x10)  # the first segment of a chain, never finished
    card.reset()
    writes = card.write_attempt_count
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "cannot be read" in job["error"] and "slot 9c" in job["error"], job
    assert card.write_attempt_count == writes


def test_a_retired_slot_the_card_does_not_have_is_named_before_anything_is_written(batch: Batch) -> None:
    """A card with retired slots 82 and 83 only that says so in GET METADATA (6A86 for 84): a job
    for 84 is refused in preflight, with the PIN and the management key unused."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    slot: 84\n")
    card = canokey()
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] in ("failed", "refused") and "no slot 84" in job["error"], job
    assert card.write_attempt_count == 0
    assert read_card_info(session_for(card)).pin_tries_left == 5


def test_a_retired_slot_the_card_hides_as_empty_is_named_when_the_import_is_refused(batch: Batch) -> None:
    """CanoKey answers GET METADATA 84 with 6A88 ("empty") although it has no slot 84; only IMPORT
    KEY says so (6A86). The job fails naming the missing slot, not "incorrect P1/P2", and the card
    holds nothing new."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    slot: 84\n")
    card = canokey(missing_slots_look_empty=True)
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "no slot 84" in job["error"] and "6A86" in job["error"], job
    assert card.state.keys == {} and not any(0x5FC10F <= oid <= 0x5FC120 for oid in card.state.objects)


def test_a_certificate_too_large_for_any_piv_object_is_refused_before_any_card(
    batch: Batch, ca: fixtures.Issuer
) -> None:
    """A 4 kB certificate that gzip cannot shrink: CanoKey took the key, then answered 6700 to the
    twelfth segment of its certificate, leaving the new key under a truncated object (the old
    certificate archived). No PIV card provision writes for holds such an object, so plan names
    the problem and run fails the job before it touches a card."""
    import os
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from provision.jobfile import load_jobfile
    from provision.plan import match_cards, plan_jobfile
    from provision.plancards import read_transports
    from provision.sim.inprocess import SimTransport

    key = fixtures.generate_key("p256")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CHAN Tai Man")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(0x4242)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), os.urandom(3300)), critical=False)
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (batch.tmp / "HK-1.p12").write_bytes(fixtures.pkcs12_bytes(key, cert, password=batch.canaries.pkcs12_password))
    batch.cards.append("  - id: HK-1\n    holder: CHAN Tai Man\n    card: {serial: 12345678}\n"
                       "    pkcs12: {path: HK-1.p12, password: {file: p12.pass}}\n")  # fmt: skip
    card = canokey()
    old = preload_old_certificate(card, ca, "CHAN Tai Man")
    card.power_on()
    plan = match_cards(plan_jobfile(load_jobfile(batch.write(), unattended=True), unattended=True),
                       read_transports([("sim", SimTransport(card))]))  # fmt: skip
    card.reset()
    assert any("more than a PIV card's data object holds" in str(p) for p in plan.jobs[0].problems), plan.jobs[0].problems
    writes = card.write_attempt_count
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "more than a PIV card's data object holds" in job["error"], job
    assert card.write_attempt_count == writes
    slot = read_card_info(session_for(card)).slot(0x9C)
    assert slot.certificate is not None and slot.certificate.sha256 == hashlib.sha256(old).hexdigest()


def test_a_certificate_larger_than_this_cards_objects_is_named_at_the_write(batch: Batch, ca: fixtures.Issuer) -> None:
    """CanoKey's objects hold 2996 bytes, less than the 3063 plan checks: a certificate object of
    about 3030 bytes passes plan, and the card answers 6700 in the middle of the chain, after the key
    import. The job fails saying the card has no room and what the slot now holds; a re-run meets
    the same (the torn object is its own interrupted write) and never reports it loaded."""
    import os
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    from provision.piv.profiles import COMPRESS_ABOVE_BYTES, MAX_OBJECT_CONTENT_BYTES
    from provision.piv.session import encode_certificate_object

    key = fixtures.generate_key("p256")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CHAN Tai Man")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(0x4343)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), os.urandom(2660)), critical=False)
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    der = cert.public_bytes(Encoding.DER)
    size = len(encode_certificate_object(der, compress=len(der) > COMPRESS_ABOVE_BYTES))
    assert 2996 < size <= MAX_OBJECT_CONTENT_BYTES, size
    (batch.tmp / "HK-1.p12").write_bytes(fixtures.pkcs12_bytes(key, cert, password=batch.canaries.pkcs12_password))
    batch.cards.append("  - id: HK-1\n    holder: CHAN Tai Man\n    card: {serial: 12345678}\n"
                       "    pkcs12: {path: HK-1.p12, password: {file: p12.pass}}\n")  # fmt: skip
    card = canokey(max_object_content=2996)
    for _ in range(2):
        job = batch.run([card]).document["jobs"][0]
        assert job["status"] == "failed" and "the card has no room for this certificate (PUT DATA answered 6700)" in job["error"], job
        assert "slot 9c" in job["error"]


def test_a_truncated_certificate_on_another_card_is_not_taken_for_the_jobs_own(
    batch: Batch, ca: fixtures.Issuer, tmp_path: Path
) -> None:
    """An ``any: true`` job whose certificate write was torn on one card (pulled mid-chain) is
    in doubt; when another card comes first, the job goes to it. A truncated certificate object on
    that other card is not this job's interrupted write (its key is not the job's): it is not
    overwritten, since its old certificate was never archived."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    batch.cards[-1] = batch.cards[-1].replace("{serial: 12345678}", "{any: true}")
    probe = canokey(state=tmp_path / "probe.json")
    before = probe.apdu_count
    assert batch.run([probe]).document["jobs"][0]["status"] == "loaded"
    total = probe.apdu_count - before
    import shutil

    shutil.rmtree(batch.logs)
    for k in range(1, total):  # the first pull that leaves a truncated certificate object
        state = tmp_path / f"card-{k}.json"
        pulled = canokey(state=state, vanish_after=k)
        batch.run([pulled])
        stored = pulled.state.objects.get(0x5FC10A)
        if stored is not None and stored[:1] == b"\x70" and len(stored) < 4 + int.from_bytes(stored[2:4], "big"):
            break
        shutil.rmtree(batch.logs)
    else:
        pytest.fail("no pull left a truncated certificate object")
    other = canokey(serial=87654321)
    preload_old_certificate(other, ca, "LEE Siu Ming")
    session = session_for(other)
    from tests.sim.test_runner import DEFAULT_KEY

    session.authenticate(DEFAULT_KEY)
    body = b"\x5c\x03\x5f\xc1\x0a" + b"\x53\x82\x01\x80" + b"\x70\x82\x01\x7c" + bytes(200)
    session.channel.send(0xDB, 0x3F, 0xFF, body, cla=0x10)  # another program's write, torn
    other.reset()
    torn = other.state.objects.get(0x5FC10A)
    writes = other.write_attempt_count
    outcome = batch.run([other])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "cannot be read" in job["error"], job
    assert other.write_attempt_count == writes
    assert other.state.objects.get(0x5FC10A) == torn
