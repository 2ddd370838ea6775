"""Simulated readers in-process, as a card source of the runner (``run --sim``, ``demo``, tests).

Each reader has its pile of simulated cards; the next one goes in when the runner is done with the
one before. The composition root (``provision.app``) hands such a source to the runner, which does
not know the cards are simulated.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from provision.backend import CardEvent
from provision.card.base import RawTransport
from provision.errors import CardRemovedError
from provision.i18n import msg
from provision.sim.inprocess import SimTransport


class SimSource:
    """In-process simulated readers: each reader gets its queue of cards, one after another."""

    def __init__(self, cards_per_reader: list[list[Any]]) -> None:
        self.names = [f"Provision Sim {i:02d}" for i in range(len(cards_per_reader))]
        self._queues = {name: list(cards) for name, cards in zip(self.names, cards_per_reader, strict=True)}
        self._current: dict[str, Any] = {}
        self._events: queue.Queue[CardEvent] = queue.Queue()
        for name in self.names:
            self._insert_next(name)

    def _insert_next(self, reader: str) -> None:
        pending = self._queues[reader]
        if pending:
            card = pending.pop(0)
            card.power_on()
            self._current[reader] = card
            self._events.put(CardEvent("inserted", reader))
        else:
            self._current.pop(reader, None)

    def insert(self, reader: str, card: Any) -> None:
        """Put a card (back) into a reader, e.g. a pulled card returning."""
        self._queues[reader].insert(0, card)
        if reader not in self._current:
            self._insert_next(reader)

    def events(self, timeout: float | None) -> Iterator[CardEvent]:
        # Every card of a simulated source is "present": its queue only waits for the reader to be
        # free. So the source ends when every card has been handed over, not after ``timeout``.
        while True:
            try:
                yield self._events.get(timeout=0.05)
            except queue.Empty:
                if not self._current and self._events.empty():
                    return
                yield CardEvent("tick", "")

    def connect(self, reader: str) -> RawTransport:
        card = self._current.get(reader)
        if card is None or getattr(card, "vanished", False):
            raise CardRemovedError(msg('no card in {reader}', reader=reader))
        return SimTransport(card, reader)

    def done_with(self, reader: str) -> None:
        self._events.put(CardEvent("removed", reader))
        self._insert_next(reader)

    def present(self) -> list[str]:
        return [name for name in self.names if name in self._current]

    def requeue(self, reader: str) -> None:
        """Take the card out and put it at the back of the pile (the counter skipped its holder)."""
        card = self._current.pop(reader, None)
        if card is not None:
            self._queues[reader].append(card)
        self._insert_next(reader)
