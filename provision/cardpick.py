"""Which card an ``any: true`` job takes when more than one card is in view: one rule, used by
``run --unattended`` (``runner.Runner.match``) and by ``plan`` (``plan.match_cards``), so that
the plan's prediction is what the run does.

The rule (``pick_cards``): the cards in view that no job names and that are not handled yet are
put in one order, lowest card serial first, then cards with a CHUID GUID only (by GUID), then
cards with neither; cards that say the same are ordered by reader name. The open ``any: true``
jobs, in job-file order, take them in that order: the first job the first card, and so on. A card
beyond the last such job gets none (it is refused: the jobs for any card go to the cards before it).

The order is the cards' own (their serials), not the order in which readers report them or
workers happen to read them, so it does not depend on timing, and a plan made before the run
names the same card for each job when the same cards are in.

A person at the station (the counter screen, a plain terminal) takes no part in this: the job of
the holder called takes whichever card is presented, so ``plan`` says that instead of naming one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

J = TypeVar("J")


def card_order(serial: int | None, guid: str | None, reader: str) -> tuple[int, int, str, str]:
    """Where a card stands among the cards an ``any: true`` job may take (smallest first)."""
    if serial is not None:
        return (0, serial, "", reader)
    if guid:
        return (1, 0, guid, reader)
    return (2, 0, "", reader)


def pick_cards(jobs: Sequence[J], cards: Sequence[tuple[str, int | None, str | None]]) -> dict[str, J]:
    """Reader → job: the open ``any: true`` jobs (in job-file order) and the cards they may take
    (reader, serial, GUID), paired by the rule above. Readers not in the result get no job."""
    ordered = sorted(cards, key=lambda card: card_order(card[1], card[2], card[0]))
    return {reader: job for job, (reader, _serial, _guid) in zip(jobs, ordered, strict=False)}
