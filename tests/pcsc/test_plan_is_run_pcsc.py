"""`plan` is what `run` does, with two cards in a real pcscd (vpcd readers, simulated cards served
from this process): for jobs for any card (`card: {any: true}`), for one such job beside a job
that names a card in view, and for two cards that say they are one. For each case the plan's JSON
(the card serial per job, the steps it says that card needs, the cards no job takes) is compared
with what `run --json` then did and with the steps the journal recorded."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision import journal as jn
from provision.steps import PIV_STEPS
from tests.helpers.pcsc_harness import Cards, CardServer, PrivatePcscd
from tests.helpers.product import provision_cmd

NOW = datetime.now(UTC)
LOW, HIGH = 11111111, 22222222
RUNNER_STEPS = {s.action for s in PIV_STEPS if not s.journaled}
FAILS_BEFORE_CARD = "the job fails before any card is used (its problems say why): no card is written for it"
FAILING = "expect: {subject_cn: Nobody}"  # the certificate is not Nobody's: the job fails as its file is opened


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("PC/SC Plan-is-run CA")


def write_jobs(tmp: Path, canaries: Any, ca: fixtures.Issuer, cards: list[tuple[str, str]]) -> Path:
    """A job file with one job per (id, card identity in YAML)."""
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    lines = []
    for number, (job_id, card) in enumerate(cards):
        data = fixtures.holder_p12(ca, f"Holder {number}", canaries.pkcs12_password, key_type="p256", serial=100 + number,
                                   not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
        (tmp / f"{job_id}.p12").write_bytes(data)
        lines.append(f"  - {{id: {job_id}, holder: Holder {number}, card: {card}, "
                     f"pkcs12: {{path: {job_id}.p12, password: {{file: p12.pass}}}}}}\n")  # fmt: skip
    job = tmp / "job.yaml"
    job.write_text("version: 1\nbatch: plan-is-run\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
                   '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: card.pin}\ncards:\n' + "".join(lines))  # fmt: skip
    return job


def provision(pcscd: PrivatePcscd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*provision_cmd(), *argv], env=pcscd.env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def plan_and_run(pcscd: PrivatePcscd, tmp: Path, job: Path, *mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    planned = provision(pcscd, "plan", str(job), "--json", *mode)
    assert planned.returncode in (0, 2), planned.stderr
    # With a person at the station a run waits for missing cards until stopped: 3 s of nothing here.
    done = provision(pcscd, "run", str(job), "--json", "--no-progress", "--logs", str(tmp / "logs"), "--wait", "3",
                     *mode)  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return json.loads(planned.stdout), json.loads(done.stdout)


def insert(cards: Cards, index: int, serial: int, **options: Any) -> CardServer:
    return cards.insert(index, kind="sim", options={"serial": serial, **options})


def journaled(tmp: Path, run_id: str, job_id: str) -> list[str]:
    journal = jn.Journal(tmp / "logs" / "journal.sqlite3")
    try:
        return [a for r, a, phase, _, _ in journal.steps("plan-is-run", job_id) if r == run_id and phase == "end"]
    finally:
        journal.close()


def serials_in(texts: list[str]) -> set[int]:
    return {int(m.group(1)) for text in texts for m in [re.search(r"card serial (\d+)", text)] if m}


def assert_plan_is_run(tmp: Path, plan: dict[str, Any], run: dict[str, Any]) -> None:
    """Per job: the card serial the plan names is the one the run used, a job the plan gives no card
    stays pending, the steps the plan says that card needs are the steps the journal recorded, and
    the cards the plan leaves without a job are the cards the run refused."""
    done = {j["id"]: j for j in run["jobs"]}
    for job in plan["jobs"]:
        result = done[job["id"]]
        seen = job["card_seen"]
        if seen is None:
            fails = job["differences"][:1] == [FAILS_BEFORE_CARD]
            assert result["status"] == ("failed" if fails else "pending") and result["card_serial"] is None, (job, result)
            continue
        assert job["card_choice"] in ("named", "rule")
        assert result["card_serial"] == seen["serial"], (job["id"], seen["serial"], result)
        assert result["status"] == "loaded", result
        needed = [s["action"] for s in job["steps"] if s["applies"] and s["action"] not in RUNNER_STEPS]
        assert journaled(tmp, run["run_id"], job["id"]) == needed
        assert (seen["slot_action"] == "empty") is (result["replaced_sha256"] is None)
    # Twins are the plan's problem of their job (checked by the test that has them), not cards without a job.
    refused = {c["card_serial"] for c in run["refused_cards"] if "all answer to job" not in c["reason"]}
    assert serials_in(plan["cards"]["without_job"]) == refused


# Unattended: the rule (provision/cardpick.py) decides, and plan --unattended predicts it. The card
# with the higher serial sits in the first reader and answers slowly, so it is listed first and its
# reader's worker is the last to read and the first to match: the order readers are listed in, or
# first come first served, would both give it the job for any card.
SCENARIOS = {
    "one any-card job, two cards": ([("HK-A", "{any: true}")], {"HK-A": LOW}),
    "two any-card jobs, two cards": ([("HK-A", "{any: true}"), ("HK-B", "{any: true}")], {"HK-A": LOW, "HK-B": HIGH}),
    "an any-card job before the job of the higher serial": (
        [("HK-A", "{any: true}"), ("HK-S", f"{{serial: {HIGH}}}")], {"HK-A": LOW, "HK-S": HIGH}),
    "an any-card job after the job of the lower serial": (
        [("HK-S", f"{{serial: {LOW}}}"), ("HK-A", "{any: true}")], {"HK-S": LOW, "HK-A": HIGH}),
    # A job that fails as its PKCS#12 is opened takes no card: the next job for any card takes the
    # lowest serial, and the card a failing job names is refused.
    "the first any-card job's file fails": (
        [("HK-F", "{any: true}, " + FAILING), ("HK-A", "{any: true}")], {"HK-F": None, "HK-A": LOW}),
    "a failing job names the lower serial": (
        [("HK-F", f"{{serial: {LOW}}}, " + FAILING), ("HK-A", "{any: true}")], {"HK-F": None, "HK-A": HIGH}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_unattended_plan_names_the_card_run_takes(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                  ca: fixtures.Issuer, tmp_path: Path, scenario: str) -> None:  # fmt: skip
    jobs, expected = SCENARIOS[scenario]
    job = write_jobs(tmp_path, canaries, ca, jobs)
    high = insert(cards, 0, HIGH, latency_ms=40)
    low = insert(cards, 1, LOW)
    plan, run = plan_and_run(pcscd, tmp_path, job, "--unattended")
    assert {j["id"]: j["card_seen"]["serial"] if j["card_seen"] else None for j in plan["jobs"]} == expected
    assert_plan_is_run(tmp_path, plan, run)
    written = {HIGH: high.card.write_attempt_count > 0, LOW: low.card.write_attempt_count > 0}
    assert written == {serial: serial in expected.values() for serial in (HIGH, LOW)}


@pytest.mark.timeout(120)
def test_with_a_person_at_the_station_plan_says_the_card_is_the_one_presented(pcscd: PrivatePcscd, cards: Cards,
                                                                             canaries: Any, ca: fixtures.Issuer,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    """Not unattended, a job for any card takes whichever card is presented when its holder is
    called: plan names no card for it, says why, and lists the cards it may take; the run then takes
    one of those (and the job that names a card takes that card, as predicted)."""
    job = write_jobs(tmp_path, canaries, ca, [("HK-S", f"{{serial: {HIGH}}}"), ("HK-A", "{any: true}")])
    insert(cards, 0, HIGH)
    insert(cards, 1, LOW)
    plan, run = plan_and_run(pcscd, tmp_path, job)
    named, anyone = plan["jobs"]
    assert named["card_choice"] == "named" and named["card_seen"]["serial"] == HIGH
    assert anyone["card_choice"] == "presented" and anyone["card_seen"] is None
    assert anyone["differences"] == ["the card presented when Holder 1 is called: a person chooses it, so plan names "
                                     "none ('plan --unattended' names the card an unattended run takes)"]  # fmt: skip
    assert serials_in(plan["cards"]["for_any_if_presented"]) == {LOW} and plan["cards"]["without_job"] == []
    done = {j["id"]: j for j in run["jobs"]}
    assert done["HK-S"]["card_serial"] == HIGH and done["HK-S"]["status"] == "loaded"
    assert done["HK-A"]["status"] == "loaded" and done["HK-A"]["card_serial"] in serials_in(
        plan["cards"]["for_any_if_presented"])
    text = provision(pcscd, "plan", str(job)).stdout
    assert "Card for a job for any card, if presented: " in text and str(LOW) in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [(), ("--unattended",)], ids=["counter", "unattended"])
def test_two_cards_with_one_serial_are_a_problem_in_the_plan_and_neither_is_written(
        pcscd: PrivatePcscd, cards: Cards, canaries: Any, ca: fixtures.Issuer, tmp_path: Path,
        mode: tuple[str, ...]) -> None:  # fmt: skip
    """Twins (one serial, two readers): the plan says the run refuses both, and the run does, also
    at a station with a person (one card at a time), where the second reader used to be read only
    after the first card was written. The twin in the second reader answers slowly, so it is not
    read yet when the first card is matched unless the runner reads it first."""
    job = write_jobs(tmp_path, canaries, ca, [("HK-1", f"{{serial: {LOW}}}")])
    first = insert(cards, 0, LOW)
    second = insert(cards, 1, LOW, latency_ms=40)
    plan, run = plan_and_run(pcscd, tmp_path, job, *mode)
    (planned,) = plan["jobs"]
    assert planned["card_seen"] is None
    assert any("2 cards in view answer to this job (card serial 11111111): run refuses every one" in p
               for p in planned["problems"]), planned  # fmt: skip
    assert_plan_is_run(tmp_path, plan, run)  # the job stays pending
    refused = run["refused_cards"]
    assert sorted(c["card_serial"] for c in refused) == [LOW, LOW]
    assert all("all answer to job HK-1" in c["reason"] for c in refused), refused
    assert first.card.write_attempt_count == 0 and second.card.write_attempt_count == 0
