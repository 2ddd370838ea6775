"""One checklist on a PKCS#11 token: ``plan`` shows the PKCS#11 backend's steps (not PIV's), and the
journal of each load is the steps that apply to the token's state, in the declared order: fresh,
replacing an old certificate, already on the token (skipped), and resumed after the process died."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision import journal as jn
from provision.jobfile import load_jobfile
from provision.plan import plan_jobfile
from provision.steps import PIV_STEPS, PKCS11_STEPS, CardState, applicable_actions
from tests.helpers.product import provision_cmd
from tests.helpers.softhsm import SoftHsm
from tests.p11.test_softhsm import TokenBatch

FRESH = CardState(replaced=False, cert_on_card=False, key_on_card=False)
REPLACING = CardState(replaced=True, cert_on_card=False, key_on_card=False)
ON_TOKEN = CardState(replaced=False, cert_on_card=True, key_on_card=True)


def planned(tb: TokenBatch) -> list[str]:
    plan = plan_jobfile(load_jobfile(tb.write(), unattended=True), unattended=True)
    return [s.action for s in plan.jobs[0].steps]


def journaled(tb: TokenBatch, run_id: str, job_id: str = "HK-1") -> list[str]:
    journal = jn.Journal(tb.logs / "journal.sqlite3")
    try:
        return [a for r, a, phase, _, _ in journal.steps("p11-batch", job_id) if r == run_id and phase == "end"]
    finally:
        journal.close()


def expected(tb: TokenBatch, state: CardState) -> list[str]:
    job = load_jobfile(tb.write(), unattended=True).jobs[0]
    return applicable_actions(job, state)


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(any(step == w for w in rest) for step in part)


def test_plan_shows_the_pkcs11_steps_not_pivs(tb: TokenBatch) -> None:
    tb.p12("chan", "CHAN Tai Man", "p256", serial=31)
    steps = planned(tb)
    assert steps == [s.action.format(replace="archive") for s in PKCS11_STEPS
                     if not s.action.startswith("export_") and s.action != "so_login"]  # no so_pin: no SO login  # fmt: skip
    assert "authenticate_management_key" not in steps and "write_slot_name" not in steps
    assert steps != [s.action for s in PIV_STEPS]


def test_fresh_replacing_and_skipped_loads_take_the_planned_steps(tb: TokenBatch) -> None:
    old = tb.p12("chan", "CHAN Tai Man", "p256", serial=41)
    first = tb.run()
    assert first.document["jobs"][0]["status"] == "loaded"
    assert journaled(tb, first.document["run_id"]) == expected(tb, FRESH)
    again = tb.run()
    assert again.document["jobs"][0]["status"] == "skipped"
    assert journaled(tb, again.document["run_id"]) == expected(tb, ON_TOKEN) == ["preflight", "verify_pin", "inventory",
                                                                                   "verify_load"]  # skipped only once verified
    # a new key and certificate under the same label: the old ones are archived and deleted
    tb.p12("chan", "CHAN Tai Man", "p256", serial=42, not_before=old.not_valid_before_utc)
    (tb.logs / "journal.sqlite3").unlink()
    third = tb.run()
    assert third.document["jobs"][0]["status"] == "loaded"
    steps = journaled(tb, third.document["run_id"])
    assert steps == expected(tb, REPLACING)
    assert steps.index("archive_replaced_certificate") < steps.index("verify_pin")
    assert is_subsequence(steps, planned(tb))


@pytest.mark.parametrize("kill_at", ["import_key:end", "write_certificate:end", "delete_replaced_certificate:end"])
def test_a_resumed_load_takes_planned_steps_only_in_order(tb: TokenBatch, kill_at: str) -> None:
    old = tb.p12("chan", "CHAN Tai Man", "p256", serial=51)
    assert tb.cli().returncode == 0
    (tb.logs / "journal.sqlite3").unlink()
    tb.p12("chan", "CHAN Tai Man", "p256", serial=52, not_before=old.not_valid_before_utc)
    killed = tb.cli(env={**tb.hsm.env, "PROVISION_FAULT_KILL_AT": kill_at})
    assert killed.returncode < 0, killed.stderr
    resumed = tb.cli()
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["jobs"][0]["status"] == "loaded"
    steps = journaled(tb, doc["run_id"])
    assert steps and is_subsequence(steps, planned(tb)), (steps, planned(tb))
    assert steps[-1] == "commit"


def test_plan_of_a_token_job_says_tokens_are_not_read(tb: TokenBatch) -> None:
    tb.p12("chan", "CHAN Tai Man", "p256", serial=61)
    done = subprocess.run([*provision_cmd(), "plan", "--json", "--sim", str(tb.write())], env=tb.hsm.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["jobs"][0]
    assert job["card_seen"] is None and job["differences"] == ["PKCS#11 tokens are not read by plan"]
    assert [s["action"] for s in job["steps"]] == planned(tb)


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("PKCS#11 Checklist CA")


@pytest.fixture
def tb(tmp_path: Path, canaries: Any, ca: fixtures.Issuer, softhsm: SoftHsm) -> TokenBatch:
    batch = TokenBatch(tmp_path, canaries, ca, softhsm)
    batch.hsm.init_token("chan")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    return batch
