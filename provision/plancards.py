"""The cards ``provision plan`` looks at: read-only, through ``cardinfo.read_card_info``.

Only SELECT, GET VERSION, GET SERIAL, GET DATA, GET METADATA and the PIN-status VERIFY without data
(which costs no try) reach a card: no PIN, no management key, no write. PKCS#11 tokens are not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from provision.errors import CardError, ProvisionError
from provision.i18n import msg

if TYPE_CHECKING:
    from provision.card.base import RawTransport
    from provision.cardinfo import CardInfo
    from provision.jobfile import JobFile


@dataclass(frozen=True)
class PresentCard:
    reader: str
    info: CardInfo | None  # None: the card could not be read (``error`` says why)
    error: str | None = None


@dataclass(frozen=True)
class CardsSeen:
    cards: tuple[PresentCard, ...]
    unavailable: str | None = None  # why no card was read (no PC/SC service, no reader, no card)


def _read(reader: str, transport: RawTransport) -> PresentCard:
    from provision.backend import read_card_behind

    try:
        return PresentCard(reader, read_card_behind(transport))
    except CardError as exc:
        return PresentCard(reader, None, f"not read as a PIV card: {exc.message}")


def read_pcsc_cards() -> CardsSeen:
    """Every card in every PC/SC reader, read-only."""
    from provision.backend import connect_pcsc, pcsc_readers

    try:
        readers = pcsc_readers()
    except ProvisionError as exc:
        return CardsSeen((), msg("no card was read: {why}", why=exc.message))
    if not readers:
        return CardsSeen((), msg("no card was read: no smart-card reader is connected"))
    present = [r.name for r in readers if r.card_present]
    if not present:
        return CardsSeen((), msg("no card was read: no card is in any reader"))
    cards = []
    for name in present:
        try:
            transport = connect_pcsc(name)
        except ProvisionError as exc:
            cards.append(PresentCard(name, None, exc.message))
            continue
        try:
            cards.append(_read(name, transport))
        finally:
            transport.close()
    return CardsSeen(tuple(cards))


def read_transports(pairs: list[tuple[str, RawTransport]]) -> CardsSeen:
    """Cards behind transports already connected (tests, ``--sim``)."""
    return CardsSeen(tuple(_read(reader, transport) for reader, transport in pairs))


def read_sim_cards(jobfile: JobFile) -> CardsSeen:
    """``plan --sim``: the fresh simulated cards ``run --sim`` would have, one per PIV job."""
    from provision.sim.batch import sim_cards_for
    from provision.sim.inprocess import SimTransport

    pairs: list[tuple[str, RawTransport]] = []
    for number, card in enumerate(sim_cards_for(jobfile)):
        card.power_on()
        pairs.append((f"simulated reader {number}", SimTransport(card, f"Provision Sim {number:02}")))
    return read_transports(pairs)
