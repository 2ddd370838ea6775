"""Management keys on the simulated card: a key derived per card, and management_key_rotate (to the
derived key, or to a random key stored PIN-protected as ykman does), finished after an interruption,
never leaving a card on the factory key, and said in every report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision import journal as jn
from provision.errors import ManagementKeyError
from provision.piv import mgmtkey
from provision.report import render_csv, render_html
from provision.secrets import Secret
from provision.sim.card import SimCard, SimOptions
from tests.sim.test_runner import DEFAULT_KEY, Batch, session_for

SERIAL = 12345678
LABEL = "HK e-Cert 2026"


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Management Key CA")


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer) -> Batch:
    canaries.write_secret_file(tmp_path / "master.key", canaries.management_key)  # the master secret
    batch = Batch(tmp_path, canaries, ca, None)
    batch.holder("HK-1", "CHAN Tai Man", SERIAL)
    return batch


def derived(canaries: Any, serial: int = SERIAL) -> bytes:
    return bytes(mgmtkey.derive_management_key(bytes.fromhex(canaries.management_key), LABEL, serial))


DERIVE = f'{{derive: {{master: {{file: master.key}}, label: "{LABEL}"}}}}'


def opens(card: SimCard, key: bytes) -> bool:
    session = session_for(card)
    try:
        session.authenticate(key)
    except ManagementKeyError:
        return False
    finally:
        card.reset()
    return True


def ended_actions(batch: Batch) -> list[str]:
    journal = jn.Journal(batch.logs / "journal.sqlite3")
    try:
        return [a for _, a, phase, _, _ in journal.steps("test-batch", "HK-1") if phase == "end"]
    finally:
        journal.close()


def assert_key_not_in_logs(batch: Batch, key: bytes) -> None:
    """The card's new key is in no journal, audit record or report (the master is a canary)."""
    import base64

    forms = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)]
    for path in batch.logs.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(form in blob for form in forms), f"the management key is in {path}"


def only_job(outcome: Any) -> dict[str, Any]:
    assert outcome.exit_code == 0, outcome.document
    (job,) = outcome.document["jobs"]
    return dict(job)


@pytest.mark.parametrize("firmware", [(5, 7, 1), (5, 4, 3)], ids=["aes192", "3des"])
def test_a_card_on_its_derived_key_loads(batch: Batch, canaries: Any, firmware: tuple[int, int, int]) -> None:
    card = SimCard(SimOptions(serial=SERIAL, firmware=firmware))
    session = session_for(card)
    session.authenticate(DEFAULT_KEY)
    session.set_management_key(derived(canaries), session.management_key_algorithm())
    card.reset()
    job = only_job(batch.run([card], defaults=f"  management_key: {DERIVE}\n"))
    assert job["status"] == "loaded" and job["management_key"] == "derived"
    assert not any("factory default" in note for note in job["notes"])
    assert card.state.mgmt_algorithm == (0x0A if firmware >= (5, 7, 0) else 0x03)


def test_derived_key_of_another_serial_is_refused(batch: Batch, canaries: Any) -> None:
    card = SimCard(SimOptions(serial=SERIAL))
    session = session_for(card)
    session.authenticate(DEFAULT_KEY)
    session.set_management_key(derived(canaries, SERIAL + 1), 0x0A)
    card.reset()
    outcome = batch.run([card], defaults=f"  management_key: {DERIVE}\n")
    assert outcome.document["jobs"][0]["status"] == "failed"
    assert outcome.document["jobs"][0]["management_key"] is None  # nothing known: not claimed


@pytest.mark.parametrize("firmware", [(5, 7, 1), (5, 4, 3), (5, 2, 7)], ids=["aes192", "3des", "3des-no-metadata"])
def test_rotation_to_the_derived_key(batch: Batch, canaries: Any, firmware: tuple[int, int, int]) -> None:
    card = SimCard(SimOptions(serial=SERIAL, firmware=firmware))
    job = only_job(batch.run([card], defaults=f"  management_key_rotate: {DERIVE}\n"))
    assert job["status"] == "loaded" and job["management_key"] == "derived"
    assert not any("factory default" in note for note in job["notes"])  # the card did not stay on it
    assert card.state.mgmt_key == derived(canaries)
    assert opens(card, derived(canaries)) and not opens(card, DEFAULT_KEY)
    assert_key_not_in_logs(batch, derived(canaries))
    actions = ended_actions(batch)
    assert actions.index("verify_load") < actions.index("rotate_management_key") < actions.index("commit")
    # Reports: JSON (run), CSV column, HTML words.
    assert "derived" in render_csv(outcome_doc := batch_doc(batch)).splitlines()[1].split(",")
    assert "derived per card" in render_html(outcome_doc)
    # A second run: the card already carries all; the rotation is not done again, the key stays.
    again = only_job(batch.run([card], defaults=f"  management_key: {DERIVE}\n  management_key_rotate: {DERIVE}\n"))
    assert again["status"] == "skipped" and card.state.mgmt_key == derived(canaries)


def batch_doc(batch: Batch) -> dict[str, Any]:
    reports = sorted((batch.logs / "reports").glob("*.json"))
    return dict(json.loads(reports[-1].read_text()))


def test_rotation_to_a_pin_protected_key(batch: Batch) -> None:
    card = SimCard(SimOptions(serial=SERIAL))
    job = only_job(batch.run([card], defaults="  management_key_rotate: {pin_protected: true}\n"))
    assert job["status"] == "loaded" and job["management_key"] == "pin-protected"
    state = card.state
    stored = mgmtkey.stored_key(state.objects[mgmtkey.PROTECTED_DATA_OBJECT_ID])
    assert stored is not None and len(stored) == 24 and stored == state.mgmt_key != DEFAULT_KEY
    assert mgmtkey.admin_data_flags(state.objects[mgmtkey.ADMIN_DATA_OBJECT_ID]) & mgmtkey.FLAG_MGM_KEY_PROTECTED
    assert opens(card, stored) and not opens(card, DEFAULT_KEY)
    assert_key_not_in_logs(batch, stored)
    # The stored key is readable only after VERIFY PIN (6982 before).
    session = session_for(card)
    with pytest.raises(Exception) as refused:
        session.get_object(mgmtkey.PROTECTED_DATA_OBJECT_ID)
    assert getattr(refused.value, "sw", None) == 0x6982
    session.verify_pin(Secret("123456"))
    assert mgmtkey.stored_key(session.get_object(mgmtkey.PROTECTED_DATA_OBJECT_ID)) == stored
    card.reset()


def _interrupted_pin_protected(card: SimCard, *, key_changed: bool) -> bytes:
    """The card as an interrupted rotation left it: the new key stored, changed on the card or not,
    ADMIN DATA not yet saying so."""
    key = bytes(range(1, 25))
    session = session_for(card)
    session.authenticate(DEFAULT_KEY)
    session.put_object(mgmtkey.PROTECTED_DATA_OBJECT_ID, bytes(mgmtkey.protected_data(key)))
    if key_changed:
        session.set_management_key(key, 0x0A)
    card.reset()
    return key


@pytest.mark.parametrize("key_changed", [False, True], ids=["before-change", "after-change"])
def test_an_interrupted_pin_protected_rotation_is_finished(batch: Batch, key_changed: bool) -> None:
    card = SimCard(SimOptions(serial=SERIAL))
    key = _interrupted_pin_protected(card, key_changed=key_changed)
    job = only_job(batch.run([card], defaults="  management_key_rotate: {pin_protected: true}\n"))
    assert job["status"] == "loaded" and job["management_key"] == "pin-protected"
    state = card.state
    # The key stored by the interrupted attempt is the one the card ends with: never a second random key.
    assert state.mgmt_key == key and mgmtkey.stored_key(state.objects[mgmtkey.PROTECTED_DATA_OBJECT_ID]) == key
    assert mgmtkey.admin_data_flags(state.objects[mgmtkey.ADMIN_DATA_OBJECT_ID]) & mgmtkey.FLAG_MGM_KEY_PROTECTED


def test_an_interrupted_derive_rotation_is_finished(batch: Batch, canaries: Any) -> None:
    """The card already has the derived key (the change went through, the journal never heard):
    the run tries the target first and finishes; the job's old key is not needed."""
    card = SimCard(SimOptions(serial=SERIAL))
    session = session_for(card)
    session.authenticate(DEFAULT_KEY)
    session.set_management_key(derived(canaries), 0x0A)
    card.reset()
    job = only_job(batch.run([card], defaults=f"  management_key_rotate: {DERIVE}\n"))
    assert job["status"] == "loaded" and job["management_key"] == "derived"
    assert card.state.mgmt_key == derived(canaries)
    assert "rotate_management_key" not in ended_actions(batch)  # nothing left to change


def test_the_factory_key_is_flagged_and_plan_names_the_rotation(batch: Batch, cli: Any) -> None:
    card = SimCard(SimOptions(serial=SERIAL))
    job = only_job(batch.run([card]))
    assert job["management_key"] == "default" and any("factory default" in n for n in job["notes"])
    path = batch.write(f"  management_key_rotate: {DERIVE}\n")
    shown = cli("plan", str(path), "--json")
    steps = json.loads(shown.stdout)["jobs"][0]["steps"]
    words = [s for s in steps if s["action"] == "rotate_management_key"]
    assert words and f"label {LABEL!r}" in json.dumps(words[0])


def _apdus_of_a_load(batch: Batch, defaults: str, tmp_path: Path) -> int:
    import shutil

    card = SimCard(SimOptions(serial=SERIAL))
    batch.run([card], defaults=defaults)
    shutil.rmtree(batch.logs)
    shutil.rmtree(batch.tmp / "out", ignore_errors=True)
    return int(card.apdu_count)


@pytest.mark.parametrize("rotate", ["pin", "derive"])
def test_a_card_pulled_at_every_apdu_of_the_rotation_ends_on_the_target_key(
    batch: Batch, canaries: Any, tmp_path: Path, rotate: str
) -> None:
    """Pull the card after each APDU of the rotation (and of the commit around it); put it back;
    the next run finishes: the card ends on the target key, never on an unknown one."""
    import shutil

    defaults = ("  management_key_rotate: {pin_protected: true}\n" if rotate == "pin"
                else f"  management_key_rotate: {DERIVE}\n")  # fmt: skip
    plain = _apdus_of_a_load(batch, "", tmp_path)
    total = _apdus_of_a_load(batch, defaults, tmp_path)
    assert total > plain
    halfway: set[str] = set()
    for k in range(plain - 8, total):
        state = tmp_path / f"card-{k}.json"
        first = SimCard(SimOptions(serial=SERIAL, vanish_after=k), state)
        batch.run([first], defaults=defaults)
        left = first.state
        marked = mgmtkey.admin_data_flags(left.objects.get(mgmtkey.ADMIN_DATA_OBJECT_ID)) & 0x02
        if rotate == "pin" and marked and not left.objects.get(mgmtkey.PROTECTED_DATA_OBJECT_ID):
            halfway.add("marked, not yet stored")
        if rotate == "pin" and left.objects.get(mgmtkey.PROTECTED_DATA_OBJECT_ID) and left.mgmt_key == DEFAULT_KEY:
            halfway.add("stored, not yet changed")
        if rotate == "derive" and left.mgmt_key != DEFAULT_KEY:
            halfway.add("changed")
        back = SimCard(SimOptions(serial=SERIAL), state)
        job = only_job(batch.run([back], defaults=defaults))
        assert job["status"] == "loaded" and job["management_key"] == ("pin-protected" if rotate == "pin"
                                                                      else "derived"), (k, job)  # fmt: skip
        card_state = back.state
        if rotate == "pin":
            stored = mgmtkey.stored_key(card_state.objects.get(mgmtkey.PROTECTED_DATA_OBJECT_ID))
            assert stored is not None and card_state.mgmt_key == stored, k
            assert mgmtkey.admin_data_flags(card_state.objects.get(mgmtkey.ADMIN_DATA_OBJECT_ID)) & 0x02, k
        else:
            assert card_state.mgmt_key == derived(canaries), k
        assert card_state.mgmt_key != DEFAULT_KEY, k
        shutil.rmtree(batch.logs)
        shutil.rmtree(batch.tmp / "out", ignore_errors=True)
    # The sweep did stop the card in the middle of the rotation, at each of its stages.
    assert halfway == ({"marked, not yet stored", "stored, not yet changed"} if rotate == "pin" else {"changed"})


@pytest.mark.parametrize("rotate", ["{pin_protected: true}", DERIVE], ids=["pin", "derive"])
def test_a_rotating_load_takes_exactly_the_planned_steps(batch: Batch, rotate: str) -> None:
    from provision.jobfile import load_jobfile
    from provision.plan import match_cards, plan_jobfile
    from provision.plancards import read_transports
    from provision.sim.inprocess import SimTransport
    from tests.sim.test_checklist import journaled, needed

    defaults = f"  management_key_rotate: {rotate}\n"
    card = SimCard(SimOptions(serial=SERIAL))
    card.power_on()
    plan = match_cards(plan_jobfile(load_jobfile(batch.write(defaults), unattended=True), unattended=True),
                       read_transports([("sim", SimTransport(card))]))  # fmt: skip
    card.reset()
    outcome = batch.run([card], defaults=defaults)
    assert outcome.document["jobs"][0]["status"] == "loaded"
    steps = journaled(batch, outcome.document["run_id"])
    assert steps == needed(plan)
    assert steps[-2:] == ["rotate_management_key", "commit"] or steps[-3:-1] == ["rotate_management_key", "commit"]


def test_a_card_without_admin_data_keeps_its_key_and_says_why(batch: Batch) -> None:
    """PIN-protected needs ADMIN DATA (5FFF00) for ykman to find the key: a card that refuses vendor
    objects fails the job before its key is changed, and the reports do not claim a rotation."""
    card = SimCard(SimOptions(serial=SERIAL, no_vendor_objects=True))
    outcome = batch.run([card], defaults="  management_key_rotate: {pin_protected: true}\n")
    (job,) = outcome.document["jobs"]
    assert job["status"] == "failed" and "ADMIN DATA" in job["error"]
    assert card.state.mgmt_key == DEFAULT_KEY and job["management_key"] == "default"
    assert any("factory default" in note for note in job["notes"])
