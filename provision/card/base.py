"""The interface every card transport offers: PC/SC (transport.py) and the in-process simulator.

A transport moves *one* APDU and its *one* response; chaining, ``61xx`` GET RESPONSE and status
words are handled once, above it, by ``provision.card.apdu``. Keeping the raw interface this small
is what lets the simulator stand in for a reader without a second implementation of the protocol.
"""

from __future__ import annotations

from typing import Protocol


class RawTransport(Protocol):
    """One connected card."""

    reader: str  # the reader's name, as PC/SC reports it
    apdu_count: int  # APDUs sent on this connection (benchmarks and fault tests read it)

    def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU; return the response data followed by SW1 SW2.

        Raises CardRemovedError, ReaderGoneError, ServiceDownError (never a library exception).
        """
        ...

    @property
    def atr(self) -> bytes: ...

    @property
    def supports_extended(self) -> bool:
        """Whether the reader and card take extended-length APDUs (from the ATR or a probe)."""
        ...

    @property
    def protocol(self) -> str:
        """The transmission protocol in use, ``"T=0"`` or ``"T=1"`` (PC/SC negotiates it). Under T=0
        the channel maps APDUs as ISO/IEC 7816-3 12.2 says (no extended APDUs, no Le in case 4)."""
        ...

    def begin_transaction(self) -> None:
        """Exclusive access for the duration of a load (SCardBeginTransaction)."""
        ...

    def end_transaction(self) -> None: ...

    def close(self) -> None:
        """Disconnect leaving the card powered (SCARD_LEAVE_CARD), so other handles survive."""
        ...
