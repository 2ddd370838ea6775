"""One checklist: what ``plan`` says a card needs is what the PIV loader journals on it.

Each load is planned against the very card it then runs on (the plan reads the card read-only),
and the journal's steps of that run must be the planned steps that apply, in order: a fresh card,
a card whose old certificate is archived, a card that already carries the target (skipped), and a
load resumed after the card was pulled (a subsequence of the plan: nothing outside it, nothing
out of order).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision import journal as jn
from provision.jobfile import load_jobfile
from provision.plan import Plan, match_cards, plan_jobfile
from provision.plancards import read_transports
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport
from provision.steps import PIV_STEPS, PKCS11_STEPS
from tests.sim.test_runner import Batch, preload_old_certificate

SERIAL = 12345678
ALIASES = {"prove_archived_certificate": "archive_replaced_certificate"}


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Checklist CA")


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer) -> Batch:
    batch = Batch(tmp_path, canaries, ca, None)
    batch.holder("HK-1", "CHAN Tai Man", SERIAL)
    return batch


def plan_on(batch: Batch, card: SimCard) -> Plan:
    """``plan`` against this card, read-only, as ``provision plan`` does with a card in a reader."""
    jobfile = load_jobfile(batch.write(), unattended=True)
    card.power_on()
    plan = match_cards(plan_jobfile(jobfile, unattended=True), read_transports([("sim", SimTransport(card))]))
    card.reset()
    return plan


def needed(plan: Plan) -> list[str]:
    """The journaled actions the plan says this card needs, in order."""
    job = plan.jobs[0]
    assert job.card_seen is not None, job.differences
    runner_steps = {s.action for s in PIV_STEPS if not s.journaled}
    return [s.action for s in job.steps if s.applies and s.action not in runner_steps]


def planned(plan: Plan) -> list[str]:
    return [s.action for s in plan.jobs[0].steps]


def journaled(batch: Batch, run_id: str) -> list[str]:
    journal = jn.Journal(batch.logs / "journal.sqlite3")
    try:
        return [a for r, a, phase, _, _ in journal.steps("test-batch", "HK-1") if r == run_id and phase == "end"]
    finally:
        journal.close()


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(any(step == w for w in rest) for step in part)


def test_a_fresh_card_takes_exactly_the_planned_steps(batch: Batch) -> None:
    card = SimCard(SimOptions(serial=SERIAL))
    plan = plan_on(batch, card)
    assert plan.jobs[0].card_seen is not None and plan.jobs[0].card_seen.slot_action == "empty"
    outcome = batch.run([card])
    assert outcome.document["jobs"][0]["status"] == "loaded"
    steps = journaled(batch, outcome.document["run_id"])
    assert steps == needed(plan)
    assert "import_key" in steps and "archive_replaced_certificate" not in steps


def test_a_replacing_load_takes_exactly_the_planned_steps(batch: Batch, ca: fixtures.Issuer) -> None:
    card = SimCard(SimOptions(serial=SERIAL))
    preload_old_certificate(card, ca, "CHAN Tai Man")
    plan = plan_on(batch, card)
    assert plan.jobs[0].card_seen is not None and plan.jobs[0].card_seen.slot_action == "archive"
    assert any("would be archived" in d for d in plan.jobs[0].differences)
    outcome = batch.run([card])
    assert outcome.document["jobs"][0]["status"] == "loaded"
    steps = journaled(batch, outcome.document["run_id"])
    assert steps == needed(plan)
    assert steps.index("archive_replaced_certificate") < steps.index("verify_pin") < steps.index("import_key")


def test_a_card_that_carries_the_target_takes_only_the_planned_proof(batch: Batch, tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    assert batch.run([SimCard(SimOptions(serial=SERIAL), state)]).exit_code == 0
    card = SimCard(SimOptions(serial=SERIAL), state)
    plan = plan_on(batch, card)
    assert plan.jobs[0].card_seen is not None and plan.jobs[0].card_seen.slot_action == "target"
    outcome = batch.run([card])
    assert outcome.document["jobs"][0]["status"] == "skipped"
    steps = journaled(batch, outcome.document["run_id"])
    assert steps == needed(plan) == ["preflight", "verify_pin", "verify_load", "export_pem"]


def test_a_resumed_load_takes_planned_steps_only_in_order(batch: Batch, ca: fixtures.Issuer, tmp_path: Path) -> None:
    """The card pulled after each APDU of a replacing load, then planned and resumed."""
    import shutil

    resumed_loads = 0
    for pulled_after in range(1, 40):
        state = tmp_path / f"card-{pulled_after}.json"
        preload_old_certificate(SimCard(SimOptions(serial=SERIAL), state), ca, "CHAN Tai Man")
        first = batch.run([SimCard(SimOptions(serial=SERIAL, vanish_after=pulled_after), state)])
        if first.document["jobs"][0]["status"] == "loaded":
            break  # the whole load fits in fewer APDUs
        card = SimCard(SimOptions(serial=SERIAL), state)
        plan = plan_on(batch, card)
        resumed = batch.run([card])
        assert resumed.document["jobs"][0]["status"] == "loaded", pulled_after
        steps = [ALIASES.get(a, a) for a in journaled(batch, resumed.document["run_id"])]
        # nothing outside the plan, nothing out of its order
        assert steps and is_subsequence(steps, planned(plan)), (pulled_after, steps, planned(plan))
        # every write the plan said this card still needs is done (the loader may prove more, never less)
        assert is_subsequence(needed(plan), steps), (pulled_after, steps, needed(plan))
        resumed_loads += first.document["jobs"][0]["status"] == "in-doubt"
        shutil.rmtree(batch.logs)
    assert resumed_loads > 5


def _literal_steps(path: Path) -> set[str]:
    """Step names written as literals in ``self.step("…")`` / ``journal_step(ctx, "…", …)`` calls."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args[1:] if name == "journal_step" else node.args if name == "step" else []
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                names.add(args[0].value)
    return names


def test_every_step_a_loader_can_journal_is_declared() -> None:
    import provision.load
    import provision.p11.loader

    piv = {s.action for s in PIV_STEPS} | {a for s in PIV_STEPS for a in s.aliases}
    p11 = {s.action for s in PKCS11_STEPS}
    assert _literal_steps(Path(provision.load.__file__)) <= piv
    assert _literal_steps(Path(provision.p11.loader.__file__)) <= p11
    assert "commit" in _literal_steps(Path(provision.p11.loader.__file__))
