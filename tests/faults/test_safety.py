"""Family 5: safety, counted in APDUs by the simulator.

* a job for card A never writes to card B, for every way a job names its card (serial, CHUID GUID,
  ``any`` at the counter), and a card whose job is done is not taken by an ``any`` job;
* a card with fewer PIN tries than ``min_pin_retries`` (or a blocked PIN) receives no VERIFY with
  data; a wrong PIN is tried exactly once, a wrong management key exactly once;
* two runs on one logs directory cannot interleave, and logs that cannot be written stop the run
  before any APDU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provision.app import run_jobfile
from provision.jobfile import load_jobfile
from provision.logsdir import LogsLock
from provision.sim.card import SimOptions
from provision.sim.source import SimSource
from tests.helpers.faults_common import (
    INS_AUTH,
    INS_VERIFY,
    CountingCard,
    FaultJob,
    Material,
    new_card_state,
    record,
)

FAMILY = "safety (wrong card, PIN, keys)"
SERIAL_A, SERIAL_B = 12345678, 87654321
GUID_A = "00112233445566778899aabbccddeeff"



def _run(job: FaultJob, cards: list[Any], *, unattended: bool = True) -> Any:
    jobfile = load_jobfile(job.path, unattended=unattended)
    return run_jobfile(jobfile, logs=job.directory / "logs", unattended=unattended, wait=0.2,
                       source=SimSource([cards]), progress=False, say=lambda _t: None)  # fmt: skip


def _card(card_dir: Path, name: str, canaries: Any, material: Material, serial: int, **options: Any) -> CountingCard:
    state = card_dir / f"{name}.json"
    new_card_state(state, canaries, material, serial=serial, old_cert=False, pin=options.pop("pin", None))
    card = CountingCard(SimOptions(serial=serial, **options), state)
    if "pin_tries" in options:  # the state file was made with the default counter
        card._state.pin_tries_max = card._state.pin_tries_left = options["pin_tries"]  # noqa: SLF001
    return card


@pytest.mark.parametrize("kind", ["serial", "guid", "any-at-the-counter"])
def test_a_job_for_card_a_never_writes_to_card_b(kind: str, tmp_path: Path, canaries: Any, material: Material,
                                                 card_dir: Path) -> None:  # fmt: skip
    spec = {"serial": f"{{serial: {SERIAL_A}}}", "guid": f"{{guid: {GUID_A}}}", "any-at-the-counter": f"{{serial: {SERIAL_A}}}"}[kind]
    extra = ""
    if kind == "any-at-the-counter":  # the counter expects A's holder; a second job takes any card
        extra = ("  - id: HK-2\n    holder: LEE Siu Ming\n    card: {any: true}\n"
                 "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n    slot: 9a\n"
                 '    slot_name: "x"\n    pin: {file: card.pin}\n')  # fmt: skip
    job = FaultJob(tmp_path / kind, canaries, material, card_spec=spec, extra=extra)
    stranger = _card(card_dir, f"b-{kind}", canaries, material, SERIAL_B)
    outcome = _run(job, [stranger], unattended=kind != "any-at-the-counter")
    writes = stranger.write_attempt_count
    ok = writes == 0 and outcome.document["refused_cards"] and outcome.document["jobs"][0]["status"] == "pending"
    record(FAMILY, f"wrong card ({kind})", consistent=bool(ok), why=f"{writes} writes, {outcome.document['jobs']}")
    assert ok, (writes, outcome.document)


def test_a_card_whose_job_is_done_is_not_taken_by_an_any_job(tmp_path: Path, canaries: Any, material: Material,
                                                             card_dir: Path) -> None:  # fmt: skip
    extra = ("  - id: HK-2\n    holder: LEE Siu Ming\n    card: {any: true}\n"
             "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n    slot: 9a\n"
             '    slot_name: "x"\n    pin: {file: card.pin}\n')  # fmt: skip
    job = FaultJob(tmp_path / "done", canaries, material, extra=extra)
    card = _card(card_dir, "a-done", canaries, material, SERIAL_A)
    first = _run(job, [card])
    assert first.document["jobs"][0]["status"] == "loaded", first.document
    writes = card.write_attempt_count
    again = _run(job, [card])
    ok = card.write_attempt_count == writes and again.document["jobs"][1]["status"] == "pending"
    record(FAMILY, "done card offered to an any job", consistent=ok, why=str(again.document["jobs"]))
    assert ok, again.document


@pytest.mark.parametrize("tries,floor", [(1, 2), (2, 3), (0, 2), (4, 5), (2, 2)])
def test_pin_floor_and_blocked_pin(tries: int, floor: int, tmp_path: Path, canaries: Any, material: Material,
                                   card_dir: Path) -> None:  # fmt: skip
    """Below the floor (or blocked): no VERIFY with data at all. At the floor, JOBFILE.md allows the
    VERIFY ("refuse when fewer tries than this"): exactly one, never a second."""
    job = FaultJob(tmp_path / "floor", canaries, material, extra=f"    min_pin_retries: {floor}\n")
    card = _card(card_dir, f"floor-{tries}-{floor}", canaries, material, SERIAL_A, pin_tries=5)
    card._state.pin_tries_left = tries  # noqa: SLF001 - the card's counter, as earlier failures left it
    outcome = _run(job, [card])
    verifies = card.count(INS_VERIFY, with_data=True)
    first_write = next((i for i, a in enumerate(card.apdus) if a[1] == 0xFE), len(card.apdus))
    before_writes = sum(1 for a in card.apdus[:first_write] if a[1] == INS_VERIFY and len(a) > 5)
    entry = outcome.document["jobs"][0]
    if tries < floor:
        ok = verifies == 0 and entry["status"] == "failed" and card.write_attempt_count == 0
        ok = ok and card.state.pin_tries_left == tries and str(tries) in (entry["error"] or "")
    else:
        # One VERIFY to load; PIN policy "always" of 9C asks one more right before the test signature.
        ok = before_writes == 1 and verifies <= 2 and entry["status"] == "loaded"
    record(FAMILY, f"PIN tries {tries}, floor {floor}", consistent=ok, why=f"{verifies} VERIFY, {entry}")
    assert ok, (verifies, entry)


def test_a_wrong_pin_is_tried_once(tmp_path: Path, canaries: Any, material: Material, card_dir: Path) -> None:
    job = FaultJob(tmp_path / "pin", canaries, material, pin="99999999")
    card = _card(card_dir, "wrong-pin", canaries, material, SERIAL_A, pin_tries=5)
    outcome = _run(job, [card])
    entry = outcome.document["jobs"][0]
    ok = card.count(INS_VERIFY, with_data=True) == 1 and card.state.pin_tries_left == 4 and entry["status"] == "failed"
    ok = ok and card.write_attempt_count == 0 and entry["pin_tries_left"] == 4
    record(FAMILY, "wrong PIN tried once", consistent=ok, why=str(entry))
    assert ok, entry


def test_a_wrong_management_key_is_tried_once(tmp_path: Path, canaries: Any, material: Material, card_dir: Path) -> None:
    job = FaultJob(tmp_path / "mgmt", canaries, material)
    canaries.write_secret_file(job.directory / "mgmt.key", "0f" * 24)
    card = _card(card_dir, "wrong-key", canaries, material, SERIAL_A)
    outcome = _run(job, [card])
    entry = outcome.document["jobs"][0]
    witness_requests = sum(1 for a in card.apdus if len(a) > 8 and a[1] == INS_AUTH and a[3] == 0x9B
                           and a[5:9] == bytes.fromhex("7c028000"))  # fmt: skip
    ok = witness_requests == 1 and card.count(INS_AUTH, p2=0x9B) <= 2 and entry["status"] == "failed"
    ok = ok and card.write_attempt_count == 0
    record(FAMILY, "wrong management key tried once", consistent=ok, why=f"{witness_requests} {entry}")
    assert ok, (witness_requests, entry)


def test_two_runs_on_one_logs_directory_cannot_interleave(tmp_path: Path, canaries: Any, material: Material,
                                                          card_dir: Path) -> None:  # fmt: skip
    from provision.errors import EnvironmentProblem

    job = FaultJob(tmp_path / "lock", canaries, material)
    card = _card(card_dir, "lock", canaries, material, SERIAL_A)
    with LogsLock(job.directory / "logs"), pytest.raises(EnvironmentProblem) as info:
        _run(job, [card])
    ok = card.apdus == [] and "another provision run" in info.value.message
    record(FAMILY, "second run on a locked logs directory", consistent=ok, why=info.value.message)
    assert ok


def test_logs_that_cannot_be_written_stop_the_run_before_any_apdu(tmp_path: Path, canaries: Any, material: Material,
                                                                   card_dir: Path) -> None:  # fmt: skip
    from provision.errors import ProvisionError

    job = FaultJob(tmp_path / "ro", canaries, material)
    (job.directory / "logs").mkdir()
    (job.directory / "logs" / "store").write_text("a file where the store directory should be")
    card = _card(card_dir, "ro", canaries, material, SERIAL_A)
    with pytest.raises(ProvisionError) as info:
        _run(job, [card])
    ok = info.value.exit_code == 3 and card.apdus == []
    record(FAMILY, "unwritable logs stop the run", consistent=ok, why=info.value.message)
    assert ok
