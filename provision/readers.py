"""Real readers through PC/SC (pcscd, WinSCard) as a card source of the runner.

The composition root (``provision.app``) builds it for ``provision run`` without ``--sim``;
``card/transport.py`` stays the only module that imports pyscard, and only when a reader is used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from provision.backend import CardEvent
from provision.card.base import RawTransport

if TYPE_CHECKING:
    from provision.early import EarlyRead


class PcscSource:
    """Real readers through PC/SC (pcscd, WinSCard): insertion events on all readers at once."""

    def __init__(self, reader_filter: list[str] | None = None, early: EarlyRead | None = None) -> None:
        from provision.card import transport

        self._t = transport
        self._filter = [f.lower() for f in reader_filter or []]
        self._early = early  # the card read while the program started (provision.early), taken once

    def _wanted(self, name: str) -> bool:
        return not self._filter or any(f in name.lower() for f in self._filter)

    def events(self, timeout: float | None) -> Iterator[CardEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        known = self._t.list_readers()
        reported: dict[str, bool] = {}  # whether a card is in each reader, as the events said
        for state in known:
            if state.card_present and self._wanted(state.name):
                reported[state.name] = True
                yield CardEvent("inserted", state.name)
        while True:
            # Watch in one-second slices and tick between them, so the runner can notice that a
            # worker finished the last job without waiting for the card to be taken out.
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            for event in self._t.watch(known, timeout=1.0 if left is None else min(1.0, left)):
                if not self._wanted(event.reader):
                    continue
                if event.kind == "inserted":
                    reported[event.reader] = True
                    yield CardEvent("inserted", event.reader)
                elif event.kind in ("removed", "reader-removed"):
                    reported[event.reader] = False
                    yield CardEvent("removed", event.reader)
            known = self._t.list_readers()
            # A card that came or went while the runner was busy with an event (a person at a
            # prompt), after the watch had stopped looking: told now, never folded in unseen.
            now = {state.name: state.card_present for state in known if self._wanted(state.name)}
            for name in sorted(reported.keys() | now.keys()):
                if now.get(name, False) != reported.get(name, False):
                    reported[name] = now.get(name, False)
                    yield CardEvent("inserted" if reported[name] else "removed", name)
            yield CardEvent("tick", "")

    def connect(self, reader: str) -> RawTransport:
        if self._early is not None:
            card = self._early.take(reader)
            if card is not None:
                self._early = None
                return card  # its identity APDUs already answered, in the transaction the load goes on with
        return self._t.connect(reader)

    def done_with(self, reader: str) -> None:
        pass  # the person takes the card out; the removal event comes from PC/SC

    def present(self) -> list[str]:
        return [r.name for r in self._t.list_readers() if r.card_present and not r.mute and self._wanted(r.name)]
