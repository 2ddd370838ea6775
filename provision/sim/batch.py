"""A job file's simulated cards: what ``run --sim`` and ``plan --sim`` put in their readers."""

from __future__ import annotations

from provision.jobfile import JobFile
from provision.sim.card import SimCard, SimOptions


def sim_cards_for(jobfile: JobFile) -> list[SimCard]:
    """``run --sim``: one fresh simulated card per job, with the job's identity, in job order."""
    cards = []
    for index, job in enumerate(jobfile.jobs):
        if job.card.pkcs11 is not None:
            continue  # a token job: its token comes from the PKCS#11 module
        serial = job.card.serial if job.card.serial is not None else 30_000_000 + index
        guid = bytes.fromhex(job.card.guid) if job.card.guid else None
        cards.append(SimCard(SimOptions(serial=serial, chuid_guid=guid)))
    return cards
