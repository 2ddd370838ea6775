"""A PIV card and a PKCS#11 token in view at once, with jobs for any card: a token is never taken
for a job for any card (a token is always named by its job), in `run` as in `plan`; the plan's card
per job is the one the run used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.app import run_jobfile
from provision.jobfile import load_jobfile
from provision.p11.source import with_pkcs11_tokens
from provision.plan import match_cards, plan_jobfile
from provision.plancards import read_transports
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport
from provision.sim.source import SimSource
from tests.helpers.softhsm import SoftHsm
from tests.p11.test_softhsm import TokenBatch

SERIAL = 11111111


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("PKCS#11 any-card CA")


def test_two_any_card_jobs_a_piv_card_and_a_token_plan_is_run(tmp_path: Path, canaries: Any, ca: fixtures.Issuer,
                                                               softhsm: SoftHsm) -> None:  # fmt: skip
    tb = TokenBatch(tmp_path, canaries, ca, softhsm)
    softhsm.init_token("tok")
    for number, name in enumerate(("any1", "any2", "tok")):
        tb.p12(name, f"Holder {number}", "p256", serial=60 + number)
    tb.job("HK-A1", "Holder 0", "any1", "{any: true}")
    tb.job("HK-A2", "Holder 1", "any2", "{any: true}")
    tb.job("HK-T", "Holder 2", "tok", tb.token_card("tok"))
    jobfile = load_jobfile(tb.write(), unattended=True)
    card = SimCard(SimOptions(serial=SERIAL))
    card.power_on()
    plan = match_cards(plan_jobfile(jobfile, unattended=True), read_transports([("sim", SimTransport(card, "sim"))]))
    card.reset()
    predicted = {jp.job.id: jp.card_seen.info.serial if jp.card_seen is not None else None for jp in plan.jobs}
    assert predicted == {"HK-A1": SERIAL, "HK-A2": None, "HK-T": None}
    assert plan.to_json()["jobs"][2]["card_choice"] == "named"
    assert plan.jobs[2].differences == ("PKCS#11 tokens are not read by plan",)
    outcome = run_jobfile(jobfile, logs=tb.logs, unattended=True, wait=0, progress=False, say=lambda _: None,
                          source=with_pkcs11_tokens(jobfile, SimSource([[card]])))  # fmt: skip
    done = {j["id"]: (j["status"], j["card_serial"]) for j in outcome.document["jobs"]}
    # The any-card job the plan gave no card stays pending: the token is not taken for it.
    assert done == {"HK-A1": ("loaded", SERIAL), "HK-A2": ("pending", None), "HK-T": ("loaded", None)}
    assert outcome.document["refused_cards"] == []
