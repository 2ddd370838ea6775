"""The batch on in-process simulated cards: load, archive, skip, refuse, fail safely, resume."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision import journal as jn
from provision.app import run_jobfile
from provision.card.apdu import ApduChannel
from provision.cardinfo import read_card_info
from provision.jobfile import load_jobfile
from provision.piv.session import PivSession
from provision.secrets import Secret
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport
from provision.sim.source import SimSource

NOW = datetime.now(UTC)
DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Runner Test CA")


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    return fixtures.generate_key("rsa2048")


class Batch:
    """A job file with holders, their PKCS#12 files and secret files, written into tmp_path."""

    def __init__(self, tmp: Path, canaries: Any, ca: fixtures.Issuer, rsa_key: Any) -> None:
        self.tmp, self.canaries, self.ca, self.rsa_key = tmp, canaries, ca, rsa_key
        self.logs = tmp / "logs"
        canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
        canaries.write_secret_file(tmp / "card.pin", "123456")  # the simulated card's PIN
        self.cards: list[str] = []

    def holder(self, job_id: str, cn: str, serial: int, *, key_type: str = "p256", extra: str = "",
               not_after: datetime | None = None) -> None:  # fmt: skip
        key = self.rsa_key if key_type == "rsa2048" else None
        data = fixtures.holder_p12(self.ca, cn, self.canaries.pkcs12_password, key_type=key_type, key=key,  # type: ignore[arg-type]
                                   serial=serial, not_before=NOW - timedelta(days=1),
                                   not_after=not_after or NOW + timedelta(days=365))  # fmt: skip
        (self.tmp / f"{job_id}.p12").write_bytes(data)
        self.cards.append(
            f"  - id: {job_id}\n    holder: {cn}\n    card: {{serial: {serial}}}\n"
            f"    pkcs12: {{path: {job_id}.p12, password: {{file: p12.pass}}}}\n{extra}"
        )

    def write(self, defaults: str = "") -> Path:
        path = self.tmp / "batch.yaml"
        path.write_text(
            "version: 1\nbatch: test-batch\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
            '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: card.pin}\n'
            '  export: {pem: "out/{job.id}.pem"}\n' + defaults + "cards:\n" + "".join(self.cards)
        )
        return path

    def run(self, cards: list[SimCard], **kw: Any) -> Any:
        jobfile = load_jobfile(self.write(kw.pop("defaults", "")), unattended=True)
        return run_jobfile(jobfile, logs=self.logs, unattended=True, wait=0, source=SimSource([cards]),
                           progress=False, say=lambda _: None, **kw)  # fmt: skip


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer, rsa_key: Any) -> Batch:
    return Batch(tmp_path, canaries, ca, rsa_key)


def session_for(card: SimCard) -> PivSession:
    card.power_on()
    session = PivSession(ApduChannel(SimTransport(card)))
    session.select()
    return session


def preload_old_certificate(card: SimCard, ca: fixtures.Issuer, cn: str) -> bytes:
    """An e-Cert from three years ago, already on the card in 9c (what the counter replaces)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    key, cert = fixtures.make_leaf(ca, cn, key_type="p256", serial=0x777, not_before=NOW - timedelta(days=1100),
                                   not_after=NOW + timedelta(days=5))  # fmt: skip
    session = session_for(card)
    session.authenticate(DEFAULT_KEY)
    session.import_key(0x9C, key)  # type: ignore[arg-type]
    session.write_certificate(0x9C, cert.public_bytes(Encoding.DER))
    card.reset()
    return cert.public_bytes(Encoding.DER)


def test_batch_loads_archives_and_verifies(batch: Batch, ca: fixtures.Issuer) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678, key_type="rsa2048")
    batch.holder("HK-2", "LEE Siu Ming", 12345679)
    first, second = SimCard(SimOptions(serial=12345678)), SimCard(SimOptions(serial=12345679))
    old = preload_old_certificate(first, ca, "CHAN Tai Man")
    outcome = batch.run([first, second])
    assert outcome.exit_code == 0, outcome.document
    jobs = {j["id"]: j for j in outcome.document["jobs"]}
    assert [j["status"] for j in jobs.values()] == ["loaded", "loaded"]
    # The old certificate is On Disk, byte for byte, and named in the result.
    archived = Path(jobs["HK-1"]["archived_to"])
    from cryptography import x509

    assert (
        x509.load_pem_x509_certificate(archived.read_bytes()).public_bytes(
            __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER
        )
        == old
    )
    assert jobs["HK-1"]["replaced_sha256"] and jobs["HK-2"]["replaced_sha256"] is None
    # The card holds the new certificate, its key and the slot name.
    info = read_card_info(session_for(first))
    slot = info.slot(0x9C)
    assert slot.certificate is not None and slot.certificate.sha256 == jobs["HK-1"]["fingerprint_sha256"]
    assert slot.key_matches_certificate is True and slot.slot_name == jobs["HK-1"]["slot_name"]
    assert slot.slot_name.startswith("e-Cert")
    # Export and journal.
    assert (batch.tmp / "out" / "HK-1.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    journal = jn.Journal(batch.logs / "journal.sqlite3")
    assert {j.job_id: j.status for j in journal.jobs()} == {"HK-1": "loaded", "HK-2": "loaded"}
    actions = [a for _, a, phase, _, _ in journal.steps("test-batch", "HK-1") if phase == "end"]
    assert (
        actions.index("archive_replaced_certificate")
        < actions.index("verify_pin")
        < actions.index("import_key")
    )
    assert actions[-1] == "export_pem"


def test_rerun_is_idempotent_and_writes_nothing(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678))
    assert batch.run([card]).exit_code == 0
    writes = card.write_attempt_count
    again = batch.run([card])
    assert again.exit_code == 0
    assert again.document["jobs"][0]["status"] == "skipped"
    assert card.write_attempt_count == writes


def test_wrong_card_is_refused_with_zero_writes(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    stranger = SimCard(SimOptions(serial=99999999))
    outcome = batch.run([stranger])
    assert outcome.exit_code == 1
    assert outcome.document["jobs"][0]["status"] == "pending"
    assert outcome.document["refused_cards"][0]["card_serial"] == 99999999
    assert stranger.write_attempt_count == 0


def test_wrong_pin_fails_once_without_retry(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    batch.canaries.write_secret_file(batch.tmp / "card.pin", "654321")
    card = SimCard(SimOptions(serial=12345678))
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 1 and job["status"] == "failed"
    assert job["pin_tries_left"] == 2  # one try spent, the card is not blocked
    assert card.write_attempt_count == 0


def test_pin_below_the_floor_sends_no_verify(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678))
    session = session_for(card)
    with pytest.raises(Exception):
        session.verify_pin(Secret("000000"))
    with pytest.raises(Exception):
        session.verify_pin(Secret("000000"))  # 1 try left, floor is 2
    card.reset()
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "fewer than min_pin_retries" in job["error"]
    assert read_card_info(session_for(card)).pin_tries_left == 1  # untouched


def test_wrong_management_key_fails_without_retry(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    management_key: {file: mgmt.key}\n")
    batch.canaries.write_secret_file(batch.tmp / "mgmt.key", batch.canaries.management_key)
    card = SimCard(SimOptions(serial=12345678))
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "ManagementKey" not in (job["error"] or "")
    assert card.write_attempt_count == 0


def test_replace_refuse_leaves_the_card_untouched(batch: Batch, ca: fixtures.Issuer) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    replace: refuse\n")
    card = SimCard(SimOptions(serial=12345678))
    preload_old_certificate(card, ca, "CHAN Tai Man")
    before = card.write_attempt_count
    outcome = batch.run([card])
    assert outcome.document["jobs"][0]["status"] == "refused"
    assert card.write_attempt_count == before


def test_bad_bundle_fails_before_any_card(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    expect: {subject_cn: Somebody Else}\n")
    card = SimCard(SimOptions(serial=12345678))
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "expect.subject_cn" in job["error"]
    assert card.write_attempt_count == 0


class BundleWatch:
    """Counts each PKCS#12 decryption and how many decrypted bundles are alive at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import weakref

        from provision import bundle as bundle_module

        self.opened: list[bytes] = []
        self.alive: list[Any] = []
        self.most_alive = 0
        real = bundle_module.inspect_pkcs12

        def counting(data: bytes, password: Any) -> Any:
            inspection, opened = real(data, password)
            self.opened.append(data)
            if opened is not None:
                self.alive = [r for r in self.alive if r() is not None] + [weakref.ref(opened)]
                self.most_alive = max(self.most_alive, len(self.alive))
            return inspection, opened

        monkeypatch.setattr(bundle_module, "inspect_pkcs12", counting)

    def still_alive(self) -> int:
        return sum(1 for r in self.alive if r() is not None)


def test_bundles_are_decrypted_once_a_window_ahead_and_dropped_after_their_job(
        batch: Batch, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    watch = BundleWatch(monkeypatch)
    for n in range(12):
        batch.holder(f"HK-{n:02d}", f"HOLDER {n}", 20_000_000 + n)
    cards = [SimCard(SimOptions(serial=20_000_000 + n)) for n in range(12)]
    outcome = batch.run(cards, bundle_window=3)
    assert [j["status"] for j in outcome.document["jobs"]] == ["loaded"] * 12
    assert len(watch.opened) == 12 and len(set(watch.opened)) == 12  # each file decrypted exactly once
    assert 3 <= watch.most_alive <= 3 + 1  # the window, plus the one its card is using
    assert watch.still_alive() == 0  # every decrypted key is gone once its job ended


def test_a_card_out_of_order_is_loaded_from_a_bundle_opened_for_it(
        batch: Batch, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    watch = BundleWatch(monkeypatch)
    for n in range(6):
        batch.holder(f"HK-{n:02d}", f"HOLDER {n}", 20_000_000 + n)
    batch.holder("HK-BAD", "HOLDER BAD", 20_000_099, extra="    expect: {subject_cn: Somebody Else}\n")
    cards = [SimCard(SimOptions(serial=20_000_000 + n)) for n in reversed(range(6))]
    bad = SimCard(SimOptions(serial=20_000_099))
    outcome = batch.run([bad, *cards], bundle_window=1)
    jobs = {j["id"]: j for j in outcome.document["jobs"]}
    assert all(jobs[f"HK-{n:02d}"]["status"] == "loaded" for n in range(6))
    assert jobs["HK-BAD"]["status"] == "failed" and "expect.subject_cn" in jobs["HK-BAD"]["error"]
    assert bad.write_attempt_count == 0  # a bundle found wrong when its card came: nothing written
    assert len(watch.opened) == 7 and len(set(watch.opened)) == 7


def full_load_apdus(batch: Batch, ca: fixtures.Issuer, tmp_path: Path) -> int:
    card = SimCard(SimOptions(serial=12345678), tmp_path / "probe.json")
    preload_old_certificate(card, ca, "CHAN Tai Man")
    card.power_on()
    before = card.apdu_count
    batch.run([card])
    count = card.apdu_count - before
    for leftover in (batch.logs, tmp_path / "probe.json", batch.tmp / "out"):
        import shutil

        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return count


def test_pulled_card_at_every_apdu_resumes_without_repeating_a_write(batch: Batch, ca: fixtures.Issuer,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    """Pull the card after APDU k for every k of a full load; put it back; the next run finishes it."""
    import hashlib
    import shutil

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    total = full_load_apdus(batch, ca, tmp_path)
    assert total > 10
    for k in range(1, total):
        state = tmp_path / f"card-{k}.json"
        first = SimCard(SimOptions(serial=12345678), state)
        old = preload_old_certificate(first, ca, "CHAN Tai Man")
        first = SimCard(SimOptions(serial=12345678, vanish_after=k), state)
        outcome = batch.run([first])
        job = outcome.document["jobs"][0]
        # pending until the card was identified, in doubt after: the status says which, as the journal does
        assert job["status"] == ("in-doubt" if job["in_doubt"] else "pending"), (k, job)
        assert job["status"] == "pending" or job["card_serial"] == 12345678, (k, job)
        back = SimCard(SimOptions(serial=12345678), state)  # the same card, put back
        resumed = batch.run([back])
        assert resumed.exit_code == 0, (k, resumed.document["jobs"])
        assert resumed.document["jobs"][0]["status"] == "loaded", k
        slot = read_card_info(session_for(back)).slot(0x9C)
        assert slot.certificate is not None and slot.key_matches_certificate is True, k
        assert slot.slot_name == job["slot_name"], k
        # The old certificate is in the store whenever it left the card.
        assert (batch.logs / "store" / f"{hashlib.sha256(old).hexdigest()}.pem").exists(), k
        # No write was done twice across the interrupted run and its resume.
        journal = jn.Journal(batch.logs / "journal.sqlite3")
        ended = [a for _, a, phase, _, _ in journal.steps("test-batch", "HK-1") if phase == "end"]
        journal.close()
        for write in ("import_key", "write_certificate", "write_slot_name", "commit"):
            assert ended.count(write) <= 1, (k, write, ended)
        shutil.rmtree(batch.logs)


def test_logs_that_cannot_be_written_stop_the_run(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    batch.logs.mkdir()
    (batch.logs / "store").write_text("a file where the store directory should be")
    card = SimCard(SimOptions(serial=12345678))
    from provision.errors import ProvisionError

    with pytest.raises(ProvisionError) as info:
        batch.run([card])
    assert info.value.exit_code == 3 and "cannot be written" in info.value.message
    assert card.apdu_count == 0


def test_run_document_matches_cli_contract(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    outcome = batch.run([SimCard(SimOptions(serial=12345678))])
    doc = outcome.document
    assert {"run_id", "batch", "started", "finished", "jobs"} <= set(doc)
    assert {"id", "holder", "status", "card_serial", "slot", "slot_name", "fingerprint_sha256", "replaced_sha256",
            "archived_to", "pin_tries_left", "apdus", "seconds", "error"} <= set(doc["jobs"][0])  # fmt: skip
    assert doc["jobs"][0]["apdus"] > 0
    json.dumps(doc)
    assert replace  # keep the import honest for future cases


def test_retired_slot_is_counted_in_key_history(batch: Batch) -> None:
    from provision.piv import tlv

    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    slot: retired3\n")
    card = SimCard(SimOptions(serial=12345678))
    assert batch.run([card]).exit_code == 0
    history = dict(tlv.iter_tlv(session_for(card).get_object(0x5FC10C) or b""))
    assert history[0xC1] == b"\x03"  # 82, 83, 84: middleware reads up to retired3
    writes = card.write_attempt_count
    assert batch.run([card]).document["jobs"][0]["status"] == "skipped"
    assert card.write_attempt_count == writes


def test_a_card_that_wants_the_pin_for_every_use_of_9a_is_verified_once_more(batch: Batch) -> None:
    # Neither the job nor the usual 9A default says "always", so the test signature meets 6982; the
    # PIN the card accepted moments before is presented again, once, and the check succeeds.
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    slot: 9a\n")
    strict = SimCard(SimOptions(serial=12345678, pin_always_also=(0x9A,)))
    tries = strict._state.pin_tries_left
    outcome = batch.run([strict])
    job = outcome.document["jobs"][0]
    assert job["status"] == "loaded", job
    assert strict._state.pin_tries_left == tries  # no VERIFY failed on the way


class FlakySource(SimSource):
    """The card is reset by another program once, after APDU ``at`` of the first connection."""

    def __init__(self, cards: list[SimCard], at: int) -> None:
        super().__init__([cards])
        self.at, self.connections = at, 0

    def connect(self, reader: str) -> Any:
        from provision.errors import TransientCardError

        transport = super().connect(reader)
        self.connections += 1
        if self.connections > 1:
            return transport
        original, count = transport.transmit, [0]

        def transmit(apdu: bytes) -> bytes:
            count[0] += 1
            if count[0] > self.at:
                transport.card.reset()  # what SCARD_W_RESET_CARD means: the card lost its state
                raise TransientCardError("transmit was interrupted (SCARD_W_RESET_CARD); reconnecting")
            return original(apdu)

        transport.transmit = transmit  # type: ignore[method-assign]
        return transport


@pytest.mark.parametrize("at", [3, 7, 11])
def test_transient_reset_is_retried_and_finishes_the_load(batch: Batch, at: int) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678))
    jobfile = load_jobfile(batch.write(), unattended=True)
    source = FlakySource([card], at)
    outcome = run_jobfile(jobfile, logs=batch.logs, unattended=True, wait=0, source=source, progress=False,
                          say=lambda _: None)  # fmt: skip
    assert outcome.exit_code == 0, outcome.document["jobs"]
    assert source.connections == 2 and outcome.document["jobs"][0]["status"] == "loaded"
    journal = jn.Journal(batch.logs / "journal.sqlite3")
    ended = [a for _, a, phase, _, _ in journal.steps("test-batch", "HK-1") if phase == "end"]
    for write in ("import_key", "write_certificate", "write_slot_name"):
        assert ended.count(write) == 1, ended


def test_rerun_proves_an_always_key_when_the_pin_is_already_verified(batch: Batch) -> None:
    """Seen on PivApplet: the PIN stays verified across a re-SELECT, so a program that comes after
    another one (here a session that verified the PIN and left the card powered, as PC/SC leaves
    it) finds it verified, and its status read sends no VERIFY. The re-run must still give 9C's
    key (PIN policy *always*) its own VERIFY before the test signature, prove the target and
    write nothing; it used to take the 6982 for "not this key" and import the key again. No F7,
    as PivApplet for an imported key: only the test signature can prove the key."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678, no_f7=True, pin_kept_on_select=True))
    assert batch.run([card]).exit_code == 0
    session_for(card).verify_pin(Secret("123456"))
    writes = card.write_attempt_count
    card.power_on = lambda: None  # type: ignore[method-assign]  # connecting does not reset a powered card
    again = batch.run([card])
    assert again.document["jobs"][0]["status"] == "skipped", again.document["jobs"][0]
    assert card.write_attempt_count == writes


def test_rerun_with_a_wrong_pin_and_the_pin_already_verified_spends_one_try_and_writes_nothing(
    batch: Batch, canaries: Any
) -> None:
    """The same re-run with a wrong PIN file: the VERIFY before the test signature is refused, the
    job fails on that, and nothing is written or presented again (never a second try)."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678, no_f7=True, pin_kept_on_select=True))
    assert batch.run([card]).exit_code == 0
    session_for(card).verify_pin(Secret("123456"))
    canaries.write_secret_file(batch.tmp / "card.pin", "99999999")
    writes = card.write_attempt_count
    card.power_on = lambda: None  # type: ignore[method-assign]
    again = batch.run([card])
    job = again.document["jobs"][0]
    assert job["status"] == "failed" and "PIN" in job["error"], job
    assert card.write_attempt_count == writes
    assert session_for(card).pin_tries() == 2  # 3 tries, one spent


def test_rerun_on_a_card_that_refuses_the_slot_name_is_skipped_without_a_write(batch: Batch) -> None:
    """PivApplet refuses vendor objects (GET DATA 5FFF50 6A82, PUT DATA refused): the first load
    keeps the slot name in the journal only. A re-run proves certificate and key and does not ask
    the card for the name again: ``skipped``, no write APDU, no management-key authentication."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678, profile="pivapplet"))
    first = batch.run([card])
    assert first.document["jobs"][0]["status"] == "loaded"
    assert first.document["jobs"][0]["slot_name_on_card"] is False
    writes = card.write_attempt_count
    again = batch.run([card])
    job = again.document["jobs"][0]
    assert job["status"] == "skipped", job
    assert card.write_attempt_count == writes
    assert not any("authenticate_management_key" == s[1] for s in jn.Journal(batch.logs / "journal.sqlite3")
                   .steps("test-batch", "HK-1") if s[0] == again.document["run_id"])  # fmt: skip


def test_the_notes_of_a_card_that_refuses_slot_names_are_shown_in_chinese(batch: Batch) -> None:
    """A run in Chinese on a card like PivApplet (no vendor objects, the factory management key):
    the notes its loads and re-runs record stay English in the records and are shown in Chinese in
    the report, as read back from the run document."""
    import json as json_module

    from provision import i18n
    from provision.report import render_html

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = SimCard(SimOptions(serial=12345678, profile="pivapplet"))
    documents = [json_module.loads(json_module.dumps(batch.run([card]).document)) for _ in range(2)]
    assert [d["jobs"][0]["status"] for d in documents] == ["loaded", "skipped"]
    notes = [note for d in documents for note in d["jobs"][0]["notes"]]
    assert any(n.startswith("written with the card's factory default management key") for n in notes), notes
    assert any(
        n.startswith("slot name kept by provision only: the card does not keep vendor objects") for n in notes
    )
    assert "slot name kept by provision only: the card refused it when this job was loaded" in notes
    i18n.set_language(i18n.CHINESE)
    try:
        shown = {note: i18n.localize(note) for note in notes}
        pages = [render_html(d) for d in documents]
    finally:
        i18n.set_language(i18n.ENGLISH)
    for note, text in shown.items():
        assert text != note and re.search("[\u4e00-\u9fff]", text), (note, text)
    assert "以卡的出廠預設管理密碼匙寫入" in pages[0] and "此卡不儲存供應商物件（6A86：" in pages[0], (
        re.findall('<span class="note">[^<]*', pages[0])
    )
    assert "槽位名稱只由 provision 保存：載入此工作時，卡拒絕了它" in pages[1]
    for page in pages:
        assert "slot name kept" not in page and "written with the card" not in page


def test_a_touch_policy_the_card_does_not_take_is_named(batch: Batch) -> None:
    """PivApplet answers IMPORT KEY with 6A81 for touch policies other than default/never: the job
    fails saying so, and nothing is on the card (no key, no certificate)."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678, extra="    touch_policy: always\n")
    card = SimCard(SimOptions(serial=12345678, profile="pivapplet"))
    outcome = batch.run([card])
    job = outcome.document["jobs"][0]
    assert job["status"] == "failed" and "touch policy 'always'" in job["error"], job
    info = read_card_info(session_for(card))
    assert info.slot(0x9C).certificate is None and info.slot(0x9C).key is None


def test_a_card_that_answers_like_pivapplet_is_loaded_replaced_and_skipped_on_rerun(
    batch: Batch, ca: fixtures.Issuer
) -> None:
    """Everything PivApplet 0.9.0 did differently at once (docs/development.md, "A PIV card that is not ours"):
    metadata without tag 01 and 6F00 for imported keys, the PIN kept across a re-SELECT, no vendor
    objects. The old certificate and its imported key are replaced (archived), card info calls the
    new key unknown, and a re-run after another program verified the PIN proves the target and
    writes nothing."""
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    options = SimOptions(
        serial=12345678, profile="pivapplet", metadata_like_pivapplet=True, pin_kept_on_select=True
    )
    card = SimCard(options)
    preload_old_certificate(card, ca, "CHAN Tai Man")
    first = batch.run([card])
    job = first.document["jobs"][0]
    assert job["status"] == "loaded" and job["replaced_sha256"] and job["archived_to"], job
    info = read_card_info(session_for(card))
    assert (info.pin_tries_left, info.pin_tries_total) == (5, 5)
    slot = info.slot(0x9C)
    assert slot.certificate is not None and slot.certificate.sha256 == job["fingerprint_sha256"]
    assert slot.key is None and slot.error is not None and "6F00" in slot.error
    assert info.slot(0x9A).error is None and not info.slot(0x9A).occupied
    session_for(card).verify_pin(Secret("123456"))
    writes = card.write_attempt_count
    card.power_on = lambda: None  # type: ignore[method-assign]
    again = batch.run([card])
    assert again.document["jobs"][0]["status"] == "skipped", again.document["jobs"][0]
    assert card.write_attempt_count == writes


def test_a_failure_stays_an_exception_until_it_is_shown(batch: Batch) -> None:
    """Job state keeps what failed as the exception it was (its class, tries left, the bundle's
    status); the run JSON and the runner's line say its sentence."""
    from provision.errors import BundleError, PinError
    from provision.logsdir import LogsLock
    from provision.runner import Runner, RunOptions
    from provision.ui import UnattendedUI

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    batch.holder("HK-2", "LEE Siu Ming", 12345679, extra="    expect: {subject_cn: Somebody Else}\n")
    batch.canaries.write_secret_file(batch.tmp / "card.pin", "654321")  # not the card's PIN
    jobfile = load_jobfile(batch.write(), unattended=True)
    lines: list[str] = []
    with LogsLock(batch.logs):
        runner = Runner(jobfile, SimSource([[SimCard(SimOptions(serial=12345678))]]),
                        RunOptions(logs=batch.logs, unattended=True, wait=0, progress=False), ui=UnattendedUI(lines.append))  # fmt: skip
        runner.prepare()
        runner.run()
        document = runner.document()
        runner.journal.close()
        runner.pin_holds.close()
    wrong_pin, unexpected = (s.failure for s in runner.states)
    assert isinstance(wrong_pin, PinError) and wrong_pin.tries_left == 2
    assert wrong_pin.__traceback__ is None  # its frames (card, bundle, PIN) are not kept with it
    assert isinstance(unexpected, BundleError) and unexpected.status is None
    assert unexpected.message.startswith("expect.subject_cn: expected 'Somebody Else'")
    assert [j["error"] for j in document["jobs"]] == [wrong_pin.message, unexpected.message]
    assert f"CHAN Tai Man (HK-1): FAILED: {wrong_pin.message}" in lines


def test_two_cards_with_one_serial_in_two_readers_are_both_refused_and_neither_written(batch: Batch) -> None:
    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    batch.holder("HK-2", "LEE Siu Ming", 12345679)
    twin_a, twin_b = SimCard(SimOptions(serial=12345678)), SimCard(SimOptions(serial=12345678))
    other = SimCard(SimOptions(serial=12345679))
    jobfile = load_jobfile(batch.write(), unattended=True)
    outcome = run_jobfile(jobfile, logs=batch.logs, unattended=True, wait=0, source=SimSource([[twin_a], [twin_b, other]]),
                          progress=False, say=lambda _: None)  # fmt: skip
    jobs = {j["id"]: j["status"] for j in outcome.document["jobs"]}
    assert jobs == {"HK-1": "pending", "HK-2": "loaded"}  # the card with a serial of its own is loaded
    refused = outcome.document["refused_cards"]
    assert len(refused) == 2 and {c["reader"] for c in refused} == {"Provision Sim 00", "Provision Sim 01"}
    for card in refused:
        assert card["card_serial"] == 12345678
        assert (
            "all answer to job HK-1 (CHAN Tai Man)" in card["reason"] and "none is written" in card["reason"]
        )
    assert twin_a.write_attempt_count == 0 and twin_b.write_attempt_count == 0
    audit = [json.loads(line) for line in (batch.logs / "audit.jsonl").read_text().splitlines()]
    reasons = [e["reason"] for e in audit if e["event"] == "card_refused"]
    assert reasons == [c["reason"] for c in refused]


def test_a_card_after_the_last_any_card_job_ended_is_told_so_not_that_no_job_is_for_it(batch: Batch) -> None:
    """Seen with two foreign cards and one `card: {any: true}` job: the second card was refused with
    "no job ... is for this card", which is not true of a job file that takes any card. The refusal
    says the jobs for any card have ended, names the last, and nothing is written to the card."""
    batch.holder("HK-1", "CHAN Tai Man", 1)
    batch.cards[-1] = batch.cards[-1].replace("card: {serial: 1}", "card: {any: true}")
    batch.holder("HK-2", "LEE Siu Ming", 33333333)  # its card never comes: the run goes on after HK-1
    first, second = SimCard(SimOptions(serial=22222222)), SimCard(SimOptions(serial=11111111))
    jobfile = load_jobfile(batch.write(), unattended=True)
    # One reader: the second card comes after the first was loaded and taken out.
    outcome = run_jobfile(jobfile, logs=batch.logs, unattended=True, wait=0, source=SimSource([[first, second]]),
                          progress=False, say=lambda _: None)  # fmt: skip
    assert outcome.document["jobs"][0]["status"] == "loaded"
    assert outcome.document["jobs"][0]["card_serial"] == 22222222  # the card that came first: alone in view
    (refused,) = outcome.document["refused_cards"]
    assert refused["card_serial"] == 11111111
    assert refused["reason"].startswith(
        "every job in batch.yaml for any card is taken (1; the last, HK-1 (CHAN Tai Man), is loaded)"
    ), refused
    assert "no job" not in refused["reason"]
    assert second.write_attempt_count == 0 and first.write_attempt_count > 0


@pytest.mark.parametrize("repeat", range(3))
def test_two_cards_in_view_for_one_any_card_job_the_lowest_serial_takes_it_whatever_the_timing(
        batch: Batch, repeat: int) -> None:  # fmt: skip
    """Two cards in two readers at once and one `any: true` job: which card was written depended on
    which reader's worker matched first. By the rule (cardpick) it is the lowest serial, here the
    card in the second reader, and the other is told the job goes to another card in view."""
    batch.holder("HK-1", "CHAN Tai Man", 1)
    batch.cards[-1] = batch.cards[-1].replace("card: {serial: 1}", "card: {any: true}")
    # The higher serial answers slowly: its worker is the last to read its card, and the first to
    # match (the other one waits for it, polling): first come, first served would give it the job.
    high, low = SimCard(SimOptions(serial=22222222, latency_ms=30 * repeat)), SimCard(SimOptions(serial=11111111))
    jobfile = load_jobfile(batch.write(), unattended=True)
    outcome = run_jobfile(jobfile, logs=batch.logs, unattended=True, wait=0, source=SimSource([[high], [low]]),
                          progress=False, say=lambda _: None)  # fmt: skip
    assert outcome.document["jobs"][0]["status"] == "loaded"
    assert outcome.document["jobs"][0]["card_serial"] == 11111111
    (refused,) = outcome.document["refused_cards"]
    assert refused["card_serial"] == 22222222 and refused["reader"] == "Provision Sim 00"
    # Said as the job goes to the other card, or (when that load already ended) as every job is taken.
    assert refused["reason"] in (
        "the open jobs in batch.yaml for any card (1) go to other cards in view, lowest serial first; this card "
        "(serial 22222222) is not written",
        "every job in batch.yaml for any card is taken (1; the last, HK-1 (CHAN Tai Man), is loaded); this card "
        "(serial 22222222) is not written",
    ), refused["reason"]
    assert high.write_attempt_count == 0 and low.write_attempt_count > 0


def test_the_readers_are_listed_for_the_any_card_rule_outside_the_runners_lock(batch: Batch) -> None:
    """The any-card rule needs the readers with a card (a PC/SC call). It was asked while the
    runner's lock was held, so a slow pcscd held up every other reader's worker. Now it is asked
    before the lock: whenever the source is asked, another thread can take the lock."""
    batch.holder("HK-1", "CHAN Tai Man", 1)
    batch.cards[-1] = batch.cards[-1].replace("card: {serial: 1}", "card: {any: true}")
    high, low = SimCard(SimOptions(serial=22222222)), SimCard(SimOptions(serial=11111111))
    source = SimSource([[high], [low]])
    jobfile = load_jobfile(batch.write(), unattended=True)
    held: list[bool] = []
    runners: list[object] = []
    from provision import runner as runner_module

    real_init = runner_module.Runner.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_init(self, *args, **kwargs)
        runners.append(self)

    real_present = source.present

    def present() -> list[str]:
        if runners:
            free: list[bool] = []
            probe = threading.Thread(target=lambda: free.append(_try_lock(runners[0]._lock)))  # type: ignore[attr-defined]
            probe.start()
            probe.join()
            held.append(not free[0])
        return real_present()

    source.present = present  # type: ignore[method-assign]
    runner_module.Runner.__init__ = init  # type: ignore[method-assign]
    try:
        outcome = run_jobfile(jobfile, logs=batch.logs, unattended=True, wait=0, source=source, progress=False,
                              say=lambda _: None)  # fmt: skip
    finally:
        runner_module.Runner.__init__ = real_init  # type: ignore[method-assign]
    assert outcome.document["jobs"][0]["card_serial"] == 11111111
    assert held and not any(held), held  # asked (the rule ran), never under the lock


def _try_lock(lock: threading.RLock) -> bool:
    if lock.acquire(timeout=0.5):
        lock.release()
        return True
    return False


def test_at_the_counter_a_twin_in_another_reader_is_read_before_the_first_card_is_written(batch: Batch) -> None:
    """The counter handles one card at a time, so no worker reads the other readers: the first card
    was matched (and written) before its twin in the second reader had been read. Now the other
    cards are read before a card is matched: both twins are refused, neither is written."""
    from provision.logsdir import LogsLock
    from provision.runner import Runner, RunOptions
    from provision.ui import TerminalUI

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    twin_a, twin_b = SimCard(SimOptions(serial=12345678)), SimCard(SimOptions(serial=12345678))
    jobfile = load_jobfile(batch.write())
    lines: list[str] = []
    with LogsLock(batch.logs):
        runner = Runner(jobfile, SimSource([[twin_a], [twin_b]]),
                        RunOptions(logs=batch.logs, unattended=False, wait=0, progress=False),
                        ui=TerminalUI(lines.append))  # fmt: skip
        assert runner.ui.types_pins  # one card at a time: the counter's way
        runner.prepare()
        runner.run()
        document = runner.document()
        runner.journal.close()
        runner.pin_holds.close()
    assert [j["status"] for j in document["jobs"]] == ["pending"]
    refused = document["refused_cards"]
    assert {c["reader"] for c in refused} == {"Provision Sim 00", "Provision Sim 01"}, lines
    assert all("all answer to job HK-1 (CHAN Tai Man)" in c["reason"] for c in refused)
    assert twin_a.write_attempt_count == 0 and twin_b.write_attempt_count == 0


def test_at_the_counter_a_twin_that_does_not_answer_is_waited_for_a_bounded_time(batch: Batch) -> None:
    """The other readers are read with a bound: a card there that answers too slowly is not waited
    for longer than IDENTIFY_WAIT_SECONDS (the first card is then matched on what is known)."""
    import time

    from provision import runner as runner_module
    from provision.logsdir import LogsLock
    from provision.runner import Runner, RunOptions
    from provision.ui import TerminalUI

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    ours, slow = SimCard(SimOptions(serial=12345678)), SimCard(SimOptions(serial=55555555, latency_ms=1500))
    jobfile = load_jobfile(batch.write())
    with LogsLock(batch.logs):
        runner = Runner(jobfile, SimSource([[ours], [slow]]),
                        RunOptions(logs=batch.logs, unattended=False, wait=0, progress=False),
                        ui=TerminalUI(lambda _: None))  # fmt: skip
        runner.prepare()
        original = runner_module.IDENTIFY_WAIT_SECONDS
        runner_module.IDENTIFY_WAIT_SECONDS = 0.5
        try:
            started = time.monotonic()
            seen = runner._in_view("Provision Sim 00", runner.backend.open("Provision Sim 00").identify())
            waited = time.monotonic() - started
        finally:
            runner_module.IDENTIFY_WAIT_SECONDS = original
        runner.finish(False)
        runner.journal.close()
        runner.pin_holds.close()
    assert waited < 1.2, waited  # the slow card's first answer alone takes 1.5 s
    assert seen.others == ()  # not read in time: not known


def test_a_killed_runs_missing_time_stamps_are_settled_even_if_the_settling_run_is_stopped(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while its TSA was answering leaves a seal that asked for a token and has none;
    the next run records why (settle_stamps). That next run stopped before it got there (Ctrl-C,
    a second kill) must not lose the settling: the journal still calls the killed run running
    until it is settled, so a later run settles it and verify has no false alarm."""
    from provision.audit.chain import AuditLog
    from provision.audit.verify import verify
    from tests.helpers.tsa import serving_tsa

    batch.holder("HK-1", "CHAN Tai Man", 11111111)
    with serving_tsa() as tsa:
        path = batch.write()
        path.write_text(path.read_text() + f"audit:\n  timestamp: '{tsa.url}'\n")

        def run(cards: list[SimCard]) -> Any:
            jobfile = load_jobfile(path, unattended=True)
            return run_jobfile(jobfile, logs=batch.logs, unattended=True, wait=0, source=SimSource([cards]),
                               progress=False, say=lambda _: None)  # fmt: skip

        assert run([SimCard(SimOptions(serial=11111111))]).exit_code == 0
        # A run killed while it waited for its seal's token: running in the journal, no token kept.
        journal = jn.Journal(batch.logs / "journal.sqlite3")
        journal.start_run("20261129T000000Z-killed", "test-batch", str(path), "unattended")
        journal.close()
        with monkeypatch.context() as patch:
            patch.setattr(AuditLog, "_stamp", lambda self, seal: None)
            AuditLog(batch.logs / "audit.jsonl", timestamp=tsa.url).seal(run_id="20261129T000000Z-killed")
        assert not verify(batch.logs, timestamps=True).ok  # a token that should exist is missing
        with monkeypatch.context() as patch:
            def stopped(self: Any, run_ids: Any) -> int:
                raise KeyboardInterrupt

            patch.setattr(AuditLog, "settle_stamps", stopped)
            with pytest.raises(KeyboardInterrupt):
                run([])
        run([])
    result = verify(batch.logs, timestamps=True, tsa_certs=[tsa.cert_der])
    assert result.ok, result.message


class _SaysNoCertificateOnce(SimCard):
    """A card that holds a certificate in 9C but answers the first read of it with ``answer``:
    6A82 (not found) or 9000 with no data, as a glitch or a buggy card would."""

    def __init__(self, options: SimOptions, answer: bytes) -> None:
        super().__init__(options)
        self.answer, self.lied = answer, True

    def process(self, apdu: bytes) -> bytes:
        if not self.lied and apdu[1] == 0xCB and bytes.fromhex("5C035FC10A") in apdu:
            self.lied = True
            return self.answer
        return super().process(apdu)


@pytest.mark.parametrize("answer", ["6A82", "9000"])
def test_one_answer_that_the_slot_is_empty_never_gets_its_certificate_overwritten_unarchived(
        batch: Batch, ca: fixtures.Issuer, answer: str) -> None:  # fmt: skip
    """The full fault campaign lost a certificate: one emptied answer to the read before the load
    made slot 9C look empty, so nothing was archived and the old certificate was overwritten. The
    card must now say twice that the slot has no certificate; here it says so once, and the old
    certificate is archived, byte for byte, before the new one is written."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    batch.holder("HK-1", "CHAN Tai Man", 12345678)
    card = _SaysNoCertificateOnce(SimOptions(serial=12345678), bytes.fromhex(answer))
    old = preload_old_certificate(card, ca, "CHAN Tai Man")
    card.lied = False
    outcome = batch.run([card])
    (job,) = outcome.document["jobs"]
    assert card.lied and job["status"] == "loaded", job
    assert job["archived_to"], job
    archived = x509.load_pem_x509_certificate(Path(job["archived_to"]).read_bytes())
    assert archived.public_bytes(Encoding.DER) == old
