"""A simulated card in an in-process "reader": the RawTransport of ``run --sim``, ``demo`` and tests.

No pcscd, no sockets: ``transmit`` calls ``SimCard.process``. A card that vanishes becomes
``CardRemovedError``, exactly what the PC/SC transport raises when a card is pulled.
"""

from __future__ import annotations

from provision.card.transport import atr_offers_t1, atr_supports_extended
from provision.errors import CardRemovedError, CardVanished
from provision.i18n import msg
from provision.sim.card import SimCard


class SimTransport:
    """One connection to a simulated card. Implements ``provision.card.base.RawTransport``."""

    def __init__(self, card: SimCard, reader: str = "Provision Sim 00") -> None:
        self.card = card
        self.reader = reader
        self.apdu_count = 0
        self._closed = False
        self._in_transaction = False

    def transmit(self, apdu: bytes) -> bytes:
        if self._closed:
            raise CardRemovedError(msg('the connection to the card in {reader} is closed', reader=self.reader))
        self.apdu_count += 1
        try:
            return self.card.process(apdu)
        except CardVanished:
            raise CardRemovedError(
                msg('the card left reader {reader}; put it back and run the job again', reader=self.reader)
            ) from None

    @property
    def atr(self) -> bytes:
        return self.card.atr

    @property
    def supports_extended(self) -> bool:
        """As a PC/SC reader tells it: from the card's ATR (a YubiKey's says yes; a card whose ATR
        does not, like CanoKey's, gets long commands as chains)."""
        return self.protocol == "T=1" and atr_supports_extended(self.card.atr)

    @property
    def protocol(self) -> str:
        """As PC/SC negotiates it: T=1 when the card's ATR offers it, else T=0."""
        return "T=1" if atr_offers_t1(self.card.atr) else "T=0"

    def begin_transaction(self) -> None:
        self._in_transaction = True

    def end_transaction(self) -> None:
        self._in_transaction = False

    def close(self) -> None:
        """Leave the card powered, as SCARD_LEAVE_CARD does: its security status survives."""
        self._closed = True
