"""Card safety across runs (issue 19): the promises tried the way an unlucky operator or an attacker
would break them.

* never lose the replaced certificate: every kind of damaged store entry is planted before the run;
  afterwards the old certificate is recoverable from the store (parsed, same SHA-256), or the job
  stopped before any write to the card;
* never call a half-finished load done: a fault after every APDU of a load, then a clean re-run;
  the re-run ends ``loaded`` or ``skipped`` only with the whole target proven on the card, and never
  ``skipped`` when something was missing;
* never block a PIN, across runs: once a card refused a PIN, no later run sends it a PIN from a
  file (not even the PIN status read) until ``provision card clear-pin-hold`` clears the hold;
* locks before changes: ``resume`` and ``run`` against a live run's logs change not one byte.

Cards are in-process simulated cards whose state file (their EEPROM) lives outside tmp_path and
survives from one run to the next; every run is a separate ``run_jobfile`` (its own run id, journal
connection and audit log), or the real CLI in a child process where the behaviour is the CLI's.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from provision import fixtures
from provision.app import run_jobfile
from provision.card.apdu import ApduChannel
from provision.jobfile import load_jobfile
from provision.logsdir import LogsLock
from provision.piv.session import PivSession
from provision.runner import Runner, RunOptions
from provision.secrets import Secret
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport
from provision.sim.source import SimSource
from provision.store import CertificateStore
from provision.ui import UnattendedUI
from tests.helpers.faults_common import (
    SERIAL,
    CountingCard,
    FaultJob,
    Material,
    new_card_state,
    record,
    view_card,
)

FAMILY = "card safety across runs"
INS_VERIFY = 0x20



def _run(job: FaultJob, cards: list[Any]) -> Any:
    jobfile = load_jobfile(job.path, unattended=True)
    return run_jobfile(jobfile, logs=job.directory / "logs", unattended=True, wait=0.2,
                       source=SimSource([cards]), progress=False, say=lambda _t: None)  # fmt: skip


def _session(card: SimCard) -> PivSession:
    card.power_on()
    session = PivSession(ApduChannel(SimTransport(card)))
    session.select()
    return session


def _target_on_card(state: Path, job: FaultJob, pin: str, slot_name: str, **options: Any) -> dict[str, bool]:
    """What a copy of the card holds in 9C: the job's certificate bytes, its slot name (a card that
    refuses the vendor object cannot hold one: not counted), and a key that signs a fresh challenge
    verifiably under the certificate's public key."""
    copy = state.with_name(state.name + ".proof")
    copy.write_bytes(state.read_bytes())
    try:
        session = _session(SimCard(SimOptions(serial=job.serial, **options), copy))
        cert_equal = session.read_certificate(0x9C) == job.der
        names = session.read_slot_names() if options.get("profile") != "pivapplet" else None
        name_equal = names is None or names.get(0x9C) == slot_name
        certificate = x509.load_der_x509_certificate(job.der)
        public = certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        challenge = os.urandom(32)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(challenge)
        session.verify_pin(Secret(pin))  # 9C's PIN policy "always": the VERIFY right before the key's use
        try:
            signature = session.sign_test(0x9C, 0x11, digest.finalize())
            public.verify(signature, challenge, ec.ECDSA(hashes.SHA256()))
            key_proven = True
        except Exception:  # noqa: BLE001 - any refusal or a bad signature: not proven
            key_proven = False
        return {"cert": cert_equal, "name": name_equal, "key": key_proven}
    finally:
        copy.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# 19.4 never lose the replaced certificate


def _plant(kind: str, store: Path, old: bytes, other: bytes, outside: Path) -> None:
    sha = hashlib.sha256(old).hexdigest()
    pem, meta = store / f"{sha}.pem", store / f"{sha}.json"
    store.mkdir(parents=True, exist_ok=True)
    good_pem = x509.load_der_x509_certificate(old).public_bytes(Encoding.PEM)
    other_pem = x509.load_der_x509_certificate(other).public_bytes(Encoding.PEM)
    good_meta = ('{"archived_at": "2020-01-01T00:00:00Z", "batch": "faults", "card_serial": 12345678, '
                 f'"holder": "CHAN Tai Man", "job_id": "HK-1", "not_after": "x", "path": "{pem}", "run_id": "r", '
                 f'"sha256": "{sha}", "slot": "9c", "slot_name": null, "subject": "CN=CHAN Tai Man"}}\n')  # fmt: skip
    if kind == "empty pem":
        pem.write_bytes(b"")
    elif kind == "truncated pem":
        pem.write_bytes(good_pem[: len(good_pem) // 2])
    elif kind == "garbage pem":
        pem.write_bytes(os.urandom(700))
    elif kind == "another certificate":
        pem.write_bytes(other_pem)
    elif kind == "symlink to another certificate":
        (outside / "other.pem").write_bytes(other_pem)
        pem.symlink_to(outside / "other.pem")
    elif kind == "symlink to a good copy":  # a link can change under us: never trusted
        (outside / "good.pem").write_bytes(good_pem)
        pem.symlink_to(outside / "good.pem")
    elif kind == "dangling symlink":
        pem.symlink_to(outside / "nowhere.pem")
    elif kind == "metadata damaged":
        pem.write_bytes(good_pem)
        meta.write_bytes(b'{"sha256": "' + sha.encode() + b'", "pa')
        return
    elif kind == "metadata of another certificate":
        pem.write_bytes(good_pem)
        meta.write_text(good_meta.replace(sha, hashlib.sha256(other).hexdigest()))
        return
    elif kind == "metadata without the certificate":
        pass
    elif kind == "metadata is a symlink":
        pem.write_bytes(good_pem)
        (outside / "meta.json").write_text(good_meta)
        meta.symlink_to(outside / "meta.json")
        return
    elif kind == "pem is a directory":
        pem.mkdir()
    meta.write_text(good_meta)


DAMAGE = ["empty pem", "truncated pem", "garbage pem", "another certificate", "symlink to another certificate",
          "symlink to a good copy", "dangling symlink", "metadata damaged", "metadata of another certificate",
          "metadata without the certificate", "metadata is a symlink", "pem is a directory"]  # fmt: skip


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_store_entry_never_loses_the_replaced_certificate(kind: str, tmp_path: Path, canaries: Any,
                                                                     material: Material, card_dir: Path) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material)
    state = card_dir / f"store-{kind.replace(' ', '-')}.json"
    old = new_card_state(state, canaries, material)
    assert old is not None
    _, other = fixtures.make_leaf(material.ca, "Somebody Else", key_type="p256", serial=0x778)
    outside = tmp_path / "outside"
    outside.mkdir()
    store = job.directory / "logs" / "store"
    _plant(kind, store, old, other.public_bytes(Encoding.DER), outside)

    card = CountingCard(SimOptions(serial=SERIAL), state)
    outcome = _run(job, [card])
    entry = outcome.document["jobs"][0]
    sha = hashlib.sha256(old).hexdigest()
    on_card = view_card(state).cert_sha256
    if entry["status"] == "loaded":
        pem = store / f"{sha}.pem"
        ok = not pem.is_symlink() and pem.is_file()
        recovered = x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(Encoding.DER) if ok else b""
        ok = ok and hashlib.sha256(recovered).hexdigest() == sha and entry["archived_to"] == str(pem)
        meta = store / f"{sha}.json"
        ok = ok and not meta.is_symlink() and json.loads(meta.read_text())["sha256"] == sha and on_card == job.sha256
        ok = ok and any(s.sha256 == sha for s in CertificateStore(store).list())
    else:  # the store could not be made to prove it: the card was not written at all
        ok = entry["status"] == "failed" and card.write_attempt_count == 0 and on_card == sha
    if kind != "pem is a directory":
        ok = ok and entry["status"] == "loaded"  # a damaged entry is rewritten, not a reason to stop
    record(FAMILY, f"store: {kind}", consistent=ok, lost=on_card != sha and not ok, why=str(entry))
    assert ok, (kind, entry, on_card)


def test_bytes_that_are_not_a_certificate_are_archived_byte_for_byte(tmp_path: Path, canaries: Any,
                                                                      material: Material, card_dir: Path) -> None:  # fmt: skip
    """A slot whose certificate object holds no certificate (a broken writer, a hostile card): the
    bytes are what would be lost, so they are what the store keeps and proves."""
    import base64

    job = FaultJob(tmp_path / "job", canaries, material)
    state = card_dir / "not-a-cert.json"
    new_card_state(state, canaries, material)
    junk = b"\x30\x03" + os.urandom(200)
    session = _session(SimCard(SimOptions(serial=SERIAL), state))
    session.authenticate(bytes.fromhex(canaries.management_key))
    session.write_certificate(0x9C, junk)
    store = job.directory / "logs" / "store"
    sha = hashlib.sha256(junk).hexdigest()
    store.mkdir(parents=True)
    (store / f"{sha}.pem").write_bytes(b"")  # and a damaged entry for it, too
    entry = _run(job, [SimCard(SimOptions(serial=SERIAL), state)]).document["jobs"][0]
    text = (store / f"{sha}.pem").read_bytes()
    body = b"".join(text.split(b"-----")[2].split())
    ok = entry["status"] == "loaded" and entry["replaced_sha256"] == sha and base64.b64decode(body) == junk
    ok = ok and view_card(state).cert_sha256 == job.sha256
    record(FAMILY, "store: not a certificate on the card", consistent=ok, why=str(entry))
    assert ok, entry


# ----------------------------------------------------------------------------------------------
# 19.6 never call a half-finished load done


def _full_load_apdus(job: FaultJob, canaries: Any, material: Material, card_dir: Path, **options: Any) -> int:
    state = card_dir / "count.json"
    new_card_state(state, canaries, material)
    card = SimCard(SimOptions(serial=SERIAL, **options), state)
    outcome = _run(job, [card])
    assert outcome.document["jobs"][0]["status"] == "loaded", outcome.document
    _reset_logs(job)
    return card.apdu_count


def _reset_logs(job: FaultJob) -> None:
    import shutil

    shutil.rmtree(job.directory / "logs", ignore_errors=True)
    shutil.rmtree(job.directory / "out", ignore_errors=True)


@pytest.mark.parametrize("fault,profile", [("fail-after", "yubikey"), ("vanish-after", "yubikey"),
                                           ("fail-after", "pivapplet")])  # fmt: skip
def test_a_fault_after_every_apdu_is_never_reported_skipped_with_something_missing(
        fault: str, profile: str, tmp_path: Path, canaries: Any, material: Material, card_dir: Path) -> None:  # fmt: skip
    """PivApplet (no vendor objects: the slot name lives in the journal; 5 PIN tries) as well as a YubiKey."""
    job = FaultJob(tmp_path / "job", canaries, material)
    card_options: dict[str, Any] = {"profile": profile}
    total = _full_load_apdus(job, canaries, material, card_dir, **card_options)
    assert total > 10
    bad = []
    for k in range(1, total + 1):
        state = card_dir / f"{fault}-{profile}-{k}.json"
        new_card_state(state, canaries, material)
        options: dict[str, Any] = {"fail_after": k} if fault == "fail-after" else {"vanish_after": k}
        first = _run(job, [SimCard(SimOptions(serial=SERIAL, **card_options, **options), state)])
        slot_name = first.document["jobs"][0]["slot_name"]
        between = _target_on_card(state, job, canaries.pin, slot_name, **card_options)
        again = _run(job, [SimCard(SimOptions(serial=SERIAL, **card_options), state)])
        entry = again.document["jobs"][0]
        after = _target_on_card(state, job, canaries.pin, slot_name, **card_options)
        ok = entry["status"] in ("loaded", "skipped") and all(after.values()) and entry["slot_name"] == slot_name
        if not all(between.values()):
            ok = ok and entry["status"] == "loaded"  # something was missing: it was finished, not skipped
        if not ok:
            bad.append((k, first.document["jobs"][0]["status"], between, entry["status"], after, entry["error"]))
        _reset_logs(job)
    record(FAMILY, f"{fault} at every APDU then a clean re-run", consistent=not bad, why=str(bad[:3]))
    assert not bad, bad


def test_a_missing_slot_name_turns_a_skip_into_a_load(tmp_path: Path, canaries: Any, material: Material,
                                                      card_dir: Path) -> None:  # fmt: skip
    """The seen case: new key and certificate on the card, the old slot name, nothing in the journal
    (another logs directory, or a journal moved aside). Not ``skipped``: the name is written."""
    job = FaultJob(tmp_path / "job", canaries, material)
    state = card_dir / "name.json"
    new_card_state(state, canaries, material)
    first = _run(job, [SimCard(SimOptions(serial=SERIAL), state)])
    slot_name = first.document["jobs"][0]["slot_name"]
    card = SimCard(SimOptions(serial=SERIAL), state)
    session = _session(card)
    session.authenticate(bytes.fromhex(canaries.management_key))
    session.write_slot_name(0x9C, "e-Cert20060729")  # the old certificate's name
    _reset_logs(job)
    again = _run(job, [SimCard(SimOptions(serial=SERIAL), state)])
    entry = again.document["jobs"][0]
    after = _target_on_card(state, job, canaries.pin, slot_name)
    ok = entry["status"] == "loaded" and all(after.values())
    third = _run(job, [SimCard(SimOptions(serial=SERIAL), state)])  # now everything is there: skipped
    ok = ok and third.document["jobs"][0]["status"] == "skipped"
    record(FAMILY, "old slot name with new key and certificate", consistent=ok, why=str(entry))
    assert ok, (entry, after, third.document["jobs"][0])


# ----------------------------------------------------------------------------------------------
# 19.7 locks before changes


def _snapshot(logs: Path) -> dict[str, bytes]:
    return {str(p.relative_to(logs)): p.read_bytes() for p in sorted(logs.rglob("*"))
            if p.is_file() and p.name != ".lock"}  # fmt: skip


@pytest.fixture
def live_run_lock(tmp_path: Path) -> Any:
    """A child process holding the logs lock the way a live run does (``logsdir.LogsLock``)."""
    procs: list[subprocess.Popen[str]] = []

    def hold(logs: Path) -> None:
        code = ("import sys; from pathlib import Path; from provision.logsdir import LogsLock\n"
                "with LogsLock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()\n")  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-c", code, str(logs)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        proc.communicate(timeout=30)  # closing its stdin ends it


def _journal_of_a_live_run(job: FaultJob, canaries: Any, material: Material, card_dir: Path) -> Path:
    """A finished run, then a second one that is 'alive': its run row says running, its job in progress."""
    from provision import journal as jn

    state = card_dir / "live.json"
    new_card_state(state, canaries, material)
    _run(job, [SimCard(SimOptions(serial=SERIAL), state)])
    logs = job.directory / "logs"
    journal = jn.Journal(logs / "journal.sqlite3")
    try:
        journal.start_run("live-run", "faults", str(job.path), "unattended")
        journal.set_job("faults", "HK-1", "live-run", "CHAN Tai Man", jn.IN_PROGRESS, card_serial=SERIAL)
    finally:
        journal.close()
    return logs


@pytest.mark.parametrize("command", ["resume", "run", "clear-pin-hold", "demo", "status", "store list", "audit verify",
                                     "audit show"])
def test_a_live_run_keeps_its_journal_and_audit_log_byte_for_byte(command: str, tmp_path: Path, canaries: Any,
                                                                    material: Material, card_dir: Path, cli: Any,
                                                                    live_run_lock: Any) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material)
    logs = _journal_of_a_live_run(job, canaries, material, card_dir)
    if command == "clear-pin-hold":
        from provision import journal as jn

        journal = jn.Journal(logs / "journal.sqlite3")
        jn.PinHolds(journal).hold(SERIAL, None, tries_left=2, run_id="live-run", batch="faults", job_id="HK-1")
        journal.close()
    before = _snapshot(logs)
    assert "journal.sqlite3" in before and "audit.jsonl" in before
    live_run_lock(logs)
    argv = {"resume": ["resume", "--unattended", "--no-progress"],
            "run": ["run", str(job.path), "--unattended", "--no-progress", "--sim"],
            "clear-pin-hold": ["card", "clear-pin-hold", str(SERIAL), "--reason", "citizen unblocked it"],
            "demo": ["demo", "--holders", "1"],  # its material goes to LOGS/demo: not before the lock
            "status": ["status"], "store list": ["store", "list"],
            "audit verify": ["audit", "verify", "--key-file", str(job.audit_key_file)],
            "audit show": ["audit", "show", "--key-file", str(job.audit_key_file)]}[command]  # fmt: skip
    done = cli(*argv, "--logs", str(logs))
    after = _snapshot(logs)
    if command in ("status", "store list", "audit verify", "audit show"):  # readers: no lock, no change
        ok = done.returncode == 0 and after == before
    else:
        ok = done.returncode == 3 and "another provision run is using" in done.stderr and after == before
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    record(FAMILY, f"{command} against a live run", consistent=ok, why=f"{done.returncode} {changed} {done.stderr[-200:]}")
    assert ok, (done.returncode, done.stderr, changed)


def test_resume_without_a_journal_creates_nothing(tmp_path: Path, cli: Any) -> None:
    logs = tmp_path / "empty-logs"
    done = cli("resume", "--unattended", "--logs", str(logs))
    assert done.returncode == 0 and "Nothing to resume" in done.stdout
    assert not (logs / "journal.sqlite3").exists()


def test_an_old_journal_survives_the_pin_hold_migration(tmp_path: Path) -> None:
    """A journal written before PIN holds existed (schema 1): opened, migrated, its rows kept."""
    from provision import journal as jn

    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(jn._SCHEMA)  # noqa: SLF001 - the version-1 tables, as the old code made them
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    db.execute("INSERT INTO runs VALUES ('old-run', 'b', 'j.yaml', 'unattended', 't', 't', 'finished', NULL)")
    db.commit()
    db.close()
    journal = jn.Journal(path)
    try:
        holds = jn.PinHolds(journal)
        assert holds.get(SERIAL, None) is None  # reading does not migrate
        holds.hold(SERIAL, None, tries_left=1, run_id="r", batch="b", job_id="j")
        hold = holds.get(SERIAL, None)
        assert hold is not None and hold.tries_left == 1
        assert [r.run_id for r in journal.runs()] == ["old-run"]
    finally:
        journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(jn.PIN_HOLD_SCHEMA_VERSION)
    db.close()


# ----------------------------------------------------------------------------------------------
# 19.5 never block a PIN, across runs


def _holds(logs: Path) -> list[Any]:
    from provision import journal as jn

    journal = jn.Journal(logs / "journal.sqlite3")
    try:
        return jn.PinHolds(journal).all()
    finally:
        journal.close()


def test_a_refused_pin_is_never_sent_again_by_later_runs_until_an_operator_clears_the_hold(
        tmp_path: Path, canaries: Any, material: Material, card_dir: Path, cli: Any) -> None:  # fmt: skip
    """min_pin_retries: 1 and a wrong PIN in the job's file: one try is spent, by the first run only.
    Every later run (even after the file is corrected) sends no VERIFY at all, not even the status
    read, and fails naming the command that clears the hold; the audited clear lets the next run load."""
    job = FaultJob(tmp_path / "job", canaries, material, pin="99999999", extra="    min_pin_retries: 1\n")
    state = card_dir / "held.json"
    new_card_state(state, canaries, material)
    logs = job.directory / "logs"

    first_card = CountingCard(SimOptions(serial=SERIAL, pin_tries=5), state)
    first_card._state.pin_tries_max = first_card._state.pin_tries_left = 5  # noqa: SLF001 - a card with 5 tries
    first_card._commit()  # noqa: SLF001
    first = _run(job, [first_card]).document["jobs"][0]
    problems: list[tuple[Any, ...]] = []
    if not (first["status"] == "failed" and first_card.verifies() >= 1 and view_card(state).pin_tries == 4):
        problems.append(("first run", first, first_card.verifies()))
    holds = _holds(logs)
    if [(h.card_serial, h.tries_left) for h in holds] != [(SERIAL, 4)]:
        problems.append(("hold recorded", holds))
    for attempt in range(4):
        if attempt == 2:  # the PIN file is corrected: still no PIN until the hold is cleared
            canaries.write_secret_file(job.directory / "card.pin", canaries.pin)
        card = CountingCard(SimOptions(serial=SERIAL), state)
        entry = _run(job, [card]).document["jobs"][0]
        error = entry["error"] or ""
        if not (entry["status"] == "failed" and card.verifies() == 0 and card.write_attempt_count == 0
                and f"provision card clear-pin-hold {SERIAL}" in error and view_card(state).pin_tries == 4):
            problems.append((f"held run {attempt}", entry, card.verifies()))

    status = cli("status", "--json", "--logs", str(logs))
    if [h["card_serial"] for h in json.loads(status.stdout)["pin_holds"]] != [SERIAL]:
        problems.append(("status", status.stdout[-300:]))
    refused = cli("card", "clear-pin-hold", str(SERIAL), "--logs", str(logs))  # no --reason: usage error
    cleared = cli("card", "clear-pin-hold", str(SERIAL), "--reason", "PIN file corrected, checked with the holder",
                  "--key-file", str(job.audit_key_file), "--logs", str(logs), "--json")  # fmt: skip
    again = cli("card", "clear-pin-hold", str(SERIAL), "--reason", "twice", "--key-file", str(job.audit_key_file),
                "--logs", str(logs))  # fmt: skip
    if refused.returncode != 2 or cleared.returncode != 0 or json.loads(cleared.stdout)["card_serial"] != SERIAL:
        problems.append(("clear", refused.returncode, cleared.returncode, cleared.stdout, cleared.stderr))
    if again.returncode != 2 or "not on PIN hold" not in again.stderr or _holds(logs):
        problems.append(("clear twice", again.returncode, again.stderr))
    verified = cli("audit", "verify", "--key-file", str(job.audit_key_file), "--logs", str(logs))
    shown = cli("audit", "show", "--event", "pin_hold_cleared", "--json", "--key-file", str(job.audit_key_file),
                "--logs", str(logs))  # fmt: skip
    if verified.returncode != 0 or "checked with the holder" not in shown.stdout:
        problems.append(("audit", verified.returncode, verified.stderr[-300:], shown.stdout[-300:]))

    card = CountingCard(SimOptions(serial=SERIAL), state)
    entry = _run(job, [card]).document["jobs"][0]
    if entry["status"] != "loaded" or view_card(state).cert_sha256 != job.sha256:
        problems.append(("after clear", entry))
    record(FAMILY, "wrong PIN across runs", consistent=not problems, why=str(problems)[:300])
    assert not problems, problems


def _counter_run(job: FaultJob, cards: list[Any], typed: str) -> Any:
    """Counter mode in-process: the citizen types ``typed`` when asked (the job's PIN is a prompt)."""
    text = job.path.read_text().replace("pin: {file: card.pin}", 'pin: {prompt: "PIN of the card"}')
    path = job.path.with_name("counter.yaml")
    path.write_text(text)
    asked: list[int | None] = []

    def ask_pin(holder: str, tries: int | None) -> Secret:
        asked.append(tries)
        return Secret(typed)

    class Citizen(UnattendedUI):  # types the PIN; the certificate is not shown to anyone
        types_pins = True

        def ask_pin(self, holder: str, tries: int | None) -> Secret:
            return ask_pin(holder, tries)

    logs = job.directory / "logs"
    options = RunOptions(logs=logs, unattended=False, wait=0.2, progress=False)
    with LogsLock(logs):
        runner = Runner(load_jobfile(path, unattended=False), SimSource([cards]), options, ui=Citizen(lambda _t: None))
        runner.prepare()
        runner.run()
        document = runner.document()
        runner.journal.close()
        runner.pin_holds.close()
    return document, asked


def test_a_person_at_the_counter_is_not_held_and_their_good_pin_lifts_the_hold(
        tmp_path: Path, canaries: Any, material: Material, card_dir: Path) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, pin="99999999")
    state = card_dir / "counter.json"
    new_card_state(state, canaries, material)
    logs = job.directory / "logs"
    card = CountingCard(SimOptions(serial=SERIAL), state)
    assert _run(job, [card]).document["jobs"][0]["status"] == "failed"
    held = [h.card_serial for h in _holds(logs)]
    card = CountingCard(SimOptions(serial=SERIAL), state)
    document, asked = _counter_run(job, [card], canaries.pin)
    entry = document["jobs"][0]
    ok = held == [SERIAL] and entry["status"] == "loaded" and asked and not _holds(logs)
    record(FAMILY, "counter PIN on a held card", consistent=bool(ok), why=str((held, entry, asked)))
    assert ok, (held, entry, asked)


def test_a_card_known_only_by_its_guid_is_held_and_cleared_by_its_guid(tmp_path: Path, canaries: Any,
                                                                       material: Material, card_dir: Path,
                                                                       cli: Any) -> None:  # fmt: skip
    """A PivApplet without the serial command: the hold is kept and cleared by the CHUID GUID."""
    state = card_dir / "guid.json"
    new_card_state(state, canaries, material)
    options: dict[str, Any] = {"profile": "pivapplet", "no_f8": True}
    guid = _session(SimCard(SimOptions(serial=SERIAL, **options), state)).read_chuid()
    assert guid
    job = FaultJob(tmp_path / "job", canaries, material, pin="99999999", card_spec=f"{{guid: {guid}}}")
    logs = job.directory / "logs"
    first = CountingCard(SimOptions(serial=SERIAL, **options), state)
    entry = _run(job, [first]).document["jobs"][0]
    holds = [(h.card_serial, h.chuid_guid) for h in _holds(logs)]
    canaries.write_secret_file(job.directory / "card.pin", canaries.pin)
    held = CountingCard(SimOptions(serial=SERIAL, **options), state)
    refused = _run(job, [held]).document["jobs"][0]
    cleared = cli("card", "clear-pin-hold", guid.upper(), "--reason", "checked", "--key-file", str(job.audit_key_file),
                  "--logs", str(logs))  # fmt: skip
    loaded = _run(job, [SimCard(SimOptions(serial=SERIAL, **options), state)]).document["jobs"][0]
    ok = entry["status"] == "failed" and first.verifies() >= 1 and holds == [(None, guid)]
    ok = ok and refused["status"] == "failed" and held.verifies() == 0 and f"clear-pin-hold {guid}" in refused["error"]
    ok = ok and cleared.returncode == 0 and loaded["status"] == "loaded"
    record(FAMILY, "PIN hold by GUID", consistent=ok, why=str((entry, holds, refused, cleared.stderr, loaded))[:300])
    assert ok, (entry, holds, refused, cleared.stderr, loaded)


def _below_floor(state: Path) -> None:
    """The card's PIN has 1 try left (below the default floor of 2): wrong PINs typed elsewhere."""
    card = SimCard(SimOptions(serial=SERIAL), state)
    session = _session(card)
    while (session.pin_tries() or 0) > 1:
        with pytest.raises(Exception, match="wrong PIN"):
            session.verify_pin(Secret("00000000"))


class _Unblocker:
    """The citizen's side of the PIN service: the PUK and a new PIN, typed twice."""

    def __init__(self, typed: list[str]) -> None:
        self.typed = typed

    def say(self, text: str) -> None:
        pass

    def ask_secret(self, prompt: str) -> Secret:
        return Secret(self.typed.pop(0))

    def confirm_last_try(self, what: str) -> bool:
        return False


def test_unblocking_is_offered_only_where_the_holder_types_the_pin(
        tmp_path: Path, canaries: Any, material: Material, card_dir: Path) -> None:  # fmt: skip
    """A card below the floor, a PIN from a file: no unblock is offered (a new PIN would not match
    the file), no PIN is sent, the job fails. The same card at the counter with the PIN typed: the
    holder unblocks it with the PUK and the load goes on in the same run."""
    job = FaultJob(tmp_path / "job", canaries, material)
    state = card_dir / "below-floor.json"
    new_card_state(state, canaries, material)
    _below_floor(state)
    offered: list[int] = []

    class Counter(UnattendedUI):
        types_pins = True

        def ask_pin(self, holder: str, tries: int | None) -> Secret:
            return Secret(canaries.pin)

        def offer_unblock(self, holder: str, tries: int, make_service: Any) -> bool:
            offered.append(tries)
            make_service(_Unblocker(["12345678", canaries.pin, canaries.pin])).unblock_pin()
            return True

    def run(path: Path) -> Any:
        logs = job.directory / "logs"
        options = RunOptions(logs=logs, unattended=False, wait=0.2, progress=False)
        card = CountingCard(SimOptions(serial=SERIAL), state)
        from provision.app import open_audit

        with LogsLock(logs):
            jobfile = load_jobfile(path, unattended=False)
            audit = open_audit(logs, jobfile, unattended=False, accept_damaged_tail=None, operator="Clerk Lau")
            runner = Runner(jobfile, SimSource([[card]]), options, ui=Counter(lambda _t: None), audit=audit)
            runner.prepare()
            runner.run()
            document = runner.document()
            runner.journal.close()
            runner.pin_holds.close()
            audit.close()
        return document["jobs"][0], card

    entry, card = run(job.path)  # pin: {file: card.pin}
    assert entry["status"] == "failed" and not offered and card.count(INS_VERIFY, with_data=True) == 0, entry
    assert card.count(0x2C) == 0 and view_card(state).pin_tries == 1
    counter = job.path.with_name("counter.yaml")
    counter.write_text(job.path.read_text().replace("pin: {file: card.pin}", 'pin: {prompt: "PIN of the card"}'))
    entry, card = run(counter)
    assert entry["status"] == "loaded" and offered == [1] and card.count(0x2C) == 1, entry
    audit = [json.loads(line) for line in (job.directory / "logs" / "audit.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in audit if r["event"] == "pin_unblock"] == ["ok"]
