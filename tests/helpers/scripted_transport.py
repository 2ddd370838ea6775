"""A scripted stand-in for a card transport, for the pure APDU and PIV-session unit tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@dataclass
class ScriptedTransport:
    """RawTransport stand-in: each step is (expected APDU or None, response or f(apdu))."""

    script: list[tuple[bytes | None, bytes | Callable[[bytes], bytes]]]
    extended: bool = False
    protocol: str = "T=1"  # "T=0": what PC/SC negotiated (ISO/IEC 7816-3)
    reader: str = "Scripted 00"
    apdu_count: int = 0
    sent: list[bytes] = field(default_factory=list)

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        self.apdu_count += 1
        assert self.script, f"unexpected extra APDU {apdu.hex(' ')}"
        expected, response = self.script.pop(0)
        if expected is not None:
            assert apdu.hex(" ") == expected.hex(" ")
        return response(apdu) if callable(response) else response

    @property
    def atr(self) -> bytes:
        return b"\x3b\x00"

    @property
    def supports_extended(self) -> bool:
        return self.extended

    def begin_transaction(self) -> None: ...

    def end_transaction(self) -> None: ...

    def close(self) -> None: ...

    def done(self) -> None:
        assert not self.script, f"{len(self.script)} scripted APDU(s) never sent"
