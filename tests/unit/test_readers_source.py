"""The PC/SC card source tells every card that came or went, also while the runner was busy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from provision.card import transport
from provision.card.transport import ReaderState
from provision.readers import PcscSource

EMPTY, FULL = [ReaderState("R1", False)], [ReaderState("R1", True, b"\x3b")]


def _events(monkeypatch: pytest.MonkeyPatch, listings: list[list[ReaderState]], count: int) -> list[tuple[str, str]]:
    """Each listing is the next state of PC/SC; each watch slice sees nothing: the card came or went
    after the watch had stopped looking (the runner was busy with an event, a person at a prompt)."""

    def list_readers() -> list[ReaderState]:
        return listings.pop(0) if len(listings) > 1 else listings[0]

    def watch(known: Any, timeout: float | None = None) -> Iterator[Any]:
        return iter(())

    monkeypatch.setattr(transport, "list_readers", list_readers)
    monkeypatch.setattr(transport, "watch", watch)
    out = []
    for event in PcscSource().events(None):
        if event.kind != "tick":
            out.append((event.kind, event.reader))
        count -= 1
        if count == 0:
            break
    return out


def test_a_card_that_came_while_nobody_watched_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _events(monkeypatch, [EMPTY, FULL, FULL, EMPTY, EMPTY], 6) == [("inserted", "R1"), ("removed", "R1")]


def test_a_card_present_at_the_start_is_told_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _events(monkeypatch, [FULL, FULL, FULL], 5) == [("inserted", "R1")]
