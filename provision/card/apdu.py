"""ISO 7816-4 APDUs over a RawTransport: encoding, chaining, GET RESPONSE, status words, tracing.

``encode_apdu`` is a pure function. ``ApduChannel`` turns one logical command into the physical
APDUs a card needs:

- data longer than 255 bytes goes out in one extended APDU when ``transport.supports_extended``,
  otherwise as a command chain (CLA | 0x10 on every block but the last, ISO 7816-4 5.3.3);
- ``61xx`` is followed by GET RESPONSE ``00 C0 00 00 xx`` until the card stops saying "more";
- ``6Cxx`` ("wrong Le, use xx") re-sends the same APDU once with Le = xx;
- under T=0 (``transport.protocol``) APDUs are mapped as ISO/IEC 7816-3 12.2 says: never extended,
  case 1 with P3 = 00, case 4 without Le (the card then answers ``61xx``), as OpenSC's
  ``sc_apdu2bytes`` and yubico-piv-tool's ``_ykpiv_transfer_data`` send them.

A trace hook sees every physical APDU with secrets redacted (VERIFY, CHANGE REFERENCE,
RESET RETRY, SET MANAGEMENT KEY and IMPORT KEY data; management-key authentication data and
responses): only their length is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from provision.card.base import RawTransport
from provision.errors import CardProtocolError, CardStatusError
from provision.i18n import Msg, msg

SW_OK = 0x9000
SHORT_MAX_DATA = 255
EXTENDED_MAX_DATA = 65535
INS_GET_RESPONSE = 0xC0
CLA_CHAINING = 0x10

# A card that keeps answering 61xx forever must not hang a batch; PIV objects are < 64 KiB.
_MAX_RESPONSE_BYTES = 1 << 20

# INS whose command data is a secret (PIN, PUK, key material): recorded by length only.
_SECRET_DATA_INS = {
    0x20: "VERIFY",
    0x24: "CHANGE REFERENCE",
    0x2C: "RESET RETRY",
    0xFE: "IMPORT KEY",
    0xFF: "SET MANAGEMENT KEY",
}
_KEY_REF_MANAGEMENT = 0x9B

_INS_NAMES = {
    0x20: "VERIFY",
    0x24: "CHANGE REFERENCE",
    0x2C: "RESET RETRY",
    0x47: "GENERATE KEY",
    0x87: "GENERAL AUTHENTICATE",
    0xA4: "SELECT",
    0xC0: "GET RESPONSE",
    0xCB: "GET DATA",
    0xDB: "PUT DATA",
    0xF7: "GET METADATA",
    0xF8: "GET SERIAL",
    0xF9: "ATTEST",
    0xFB: "RESET",
    0xFD: "GET VERSION",
    0xFE: "IMPORT KEY",
    0xFF: "SET MANAGEMENT KEY",
}

_SW_MEANINGS = {
    0x6281: msg("part of the returned data may be corrupted"),
    0x6581: msg("memory failure"),
    0x6700: msg("wrong length"),
    0x6882: msg("secure messaging not supported"),
    0x6883: msg("the card expected the last command of a chain"),
    0x6884: msg("command chaining not supported by this card"),
    0x6982: msg("security status not satisfied (PIN or management key needed, or PIN policy 'always')"),
    0x6983: msg("authentication method blocked"),
    0x6984: msg("reference data not usable"),
    0x6985: msg("conditions of use not satisfied"),
    0x6986: msg("command not allowed"),
    0x6A80: msg("incorrect data in the command"),
    0x6A81: msg("function not supported by this card"),
    0x6A82: msg("data object or application not found"),
    0x6A84: msg("not enough memory on the card"),
    0x6A86: msg("incorrect P1/P2 (slot or object not supported)"),
    0x6A88: msg("referenced data not found"),
    0x6B00: msg("wrong parameters P1/P2"),
    0x6D00: msg("instruction not supported by this card"),
    0x6E00: msg("class not supported"),
    0x6F00: msg("the card reported an internal error"),
}


def describe_sw(sw: int) -> Msg:
    """A short human explanation of a status word (recorded in English, shown translated)."""
    if sw == SW_OK:
        return msg("success")
    if sw & 0xFFF0 == 0x63C0:
        return msg("verification failed, {n} tries left", n=sw & 0x0F)
    if sw >> 8 == 0x61:
        return msg("more response data available")
    if sw >> 8 == 0x6C:
        return msg("wrong Le")
    return _SW_MEANINGS.get(sw) or msg("unexpected status")


def ins_name(ins: int) -> str:
    return _INS_NAMES.get(ins, f"INS {ins:02X}")


def encode_apdu(
    cla: int,
    ins: int,
    p1: int,
    p2: int,
    data: bytes | bytearray = b"",
    le: int | None = None,
    extended: bool = False,
) -> bytes:
    """One command APDU (ISO 7816-4 5.1), as bytes.

    ``le`` is Ne, the number of response bytes expected: None omits the Le field (cases 1 and 3);
    0 means "as many as you have" (256 short, 65536 extended), as do 256 and 65536 themselves.
    Short form: Lc and Le are one byte. Extended form: Lc is ``00 HH LL``; Le is ``HH LL`` after
    data, or ``00 HH LL`` when there is no data.
    """
    for name, value in (("CLA", cla), ("INS", ins), ("P1", p1), ("P2", p2)):
        if not 0 <= value <= 0xFF:
            raise ValueError(f"{name} must be one byte, got {value}")
    out = bytearray((cla, ins, p1, p2))
    n = len(data)
    if extended:
        if n > EXTENDED_MAX_DATA:
            raise ValueError(f"command data of {n} bytes exceeds an extended APDU")
        if le is not None and not 0 <= le <= 65536:
            raise ValueError(f"Le {le} out of range for an extended APDU")
        if n:
            out += b"\x00" + n.to_bytes(2, "big") + data
        if le is not None:
            if not n:
                out += b"\x00"
            out += (le & 0xFFFF).to_bytes(2, "big")
    else:
        if n > SHORT_MAX_DATA:
            raise ValueError(f"command data of {n} bytes exceeds a short APDU; chain it")
        if le is not None and not 0 <= le <= 256:
            raise ValueError(f"Le {le} out of range for a short APDU")
        if n:
            out.append(n)
            out += data
        if le is not None:
            out.append(le & 0xFF)
    return bytes(out)


def split_response(response: bytes) -> tuple[bytes, int]:
    """Response APDU → (data, SW). Fewer than two bytes is a protocol error."""
    if len(response) < 2:
        raise CardProtocolError(
            msg('the card answered {n} byte(s); a response needs at least the 2-byte status', n=len(response))
        )
    return response[:-2], (response[-2] << 8) | response[-1]


@dataclass(frozen=True)
class TraceRecord:
    """One physical APDU and its response, with secrets replaced by their length.

    ``header`` is CLA INS P1 P2; ``body`` is everything after it as sent (Lc, data, Le), or None
    when it carried a secret. ``response`` is None when it was redacted. The lengths are always
    the true ones, so a trace still shows the shape of a redacted exchange.
    """

    header: bytes
    body: bytes | None
    body_length: int
    response: bytes | None
    response_length: int
    sw: int

    def __str__(self) -> str:
        cmd = self.header.hex(" ").upper()
        if self.body is None:
            cmd += f" <{self.body_length} bytes redacted>"
        elif self.body:
            cmd += " " + self.body.hex(" ").upper()
        if self.response is None:
            resp = f"<{self.response_length} bytes redacted> "
        else:
            resp = self.response.hex(" ").upper() + " " if self.response else ""
        return f"> {cmd}\n< {resp}{self.sw:04X}"


TraceHook = Callable[[TraceRecord], None]


# Commands whose answer may exceed 256 bytes: GET DATA (certificates), GET METADATA (an RSA public
# key), GENERAL AUTHENTICATE with a key slot (an RSA signature), ATTEST, GENERATE KEY. Management-key
# authentication (87 .. 9B) answers one cipher block.
_LONG_RESPONSE_INS = frozenset({0xCB, 0xF7, 0x87, 0xF9, 0x47})


def _long_response(ins: int, p2: int) -> bool:
    return ins in _LONG_RESPONSE_INS and not (ins == 0x87 and p2 == _KEY_REF_MANAGEMENT)


def _redaction(ins: int, p2: int) -> tuple[bool, bool]:
    """(redact command data, redact response data) for a logical command."""
    if ins in _SECRET_DATA_INS:
        return True, False
    if ins == 0x87 and p2 == _KEY_REF_MANAGEMENT:
        return True, True
    return False, False


class ApduChannel:
    """Logical commands over one RawTransport. Never retries a command the card refused."""

    def __init__(self, transport: RawTransport, trace: TraceHook | None = None) -> None:
        self.transport = transport
        self.trace = trace

    def send(
        self,
        ins: int,
        p1: int,
        p2: int,
        data: bytes | bytearray = b"",
        *,
        cla: int = 0x00,
        le: int | None = None,
    ) -> bytes:
        """Send a command; return its response data on 9000, raise CardStatusError otherwise."""
        response, sw = self.send_raw_sw(ins, p1, p2, data, cla=cla, le=le)
        if sw != SW_OK:
            raise CardStatusError(
                msg('{ins_name} failed: the card answered {sw:04X} ({describe_sw})', ins_name=ins_name(ins), sw=sw, describe_sw=describe_sw(sw)), sw
            )
        return response

    def send_raw_sw(
        self,
        ins: int,
        p1: int,
        p2: int,
        data: bytes | bytearray = b"",
        *,
        cla: int = 0x00,
        le: int | None = None,
    ) -> tuple[bytes, int]:
        """Send a command; return (response data, SW) whatever the SW. 61xx/6Cxx are resolved."""
        if len(data) > EXTENDED_MAX_DATA:
            raise ValueError(f"command data of {len(data)} bytes is too long for one command")
        redact_cmd, redact_resp = _redaction(ins, p2)
        t0 = self.transport.protocol == "T=0"
        # T=0 carries no extended APDU (its P3 is one byte). Extended only where it buys something: long data, or a response that may exceed 256
        # bytes, which then comes whole instead of in 61xx pieces. SELECT and other small
        # commands stay short even with le=0: readers and cards handle those most reliably.
        extended = not t0 and self.transport.supports_extended and (
            len(data) > SHORT_MAX_DATA
            or (le is not None and le > 256)
            or (le == 0 and _long_response(ins, p2))
        )
        if extended or len(data) <= SHORT_MAX_DATA:
            blocks = [bytes(data)]
        else:
            blocks = [bytes(data[i : i + SHORT_MAX_DATA]) for i in range(0, len(data), SHORT_MAX_DATA)]
        for block in blocks[:-1]:
            _, sw = self._exchange(
                cla | CLA_CHAINING, ins, p1, p2, block, None, False, redact_cmd, redact_resp
            )
            if sw != SW_OK:
                return b"", sw  # the card broke the chain; report its answer
        data_out, sw = self._exchange(cla, ins, p1, p2, blocks[-1], le, extended, redact_cmd, redact_resp)
        chunks = [data_out]
        total = len(data_out)
        while sw >> 8 == 0x61:
            more, sw = self._exchange(
                cla & 0x03, INS_GET_RESPONSE, 0, 0, b"", sw & 0xFF, False, False, redact_resp
            )
            chunks.append(more)
            total += len(more)
            if total > _MAX_RESPONSE_BYTES:
                raise CardProtocolError(msg('the card keeps sending response data (more than 1 MiB); giving up'))
        return b"".join(chunks), sw

    def _exchange(
        self,
        cla: int,
        ins: int,
        p1: int,
        p2: int,
        data: bytes,
        le: int | None,
        extended: bool,
        redact_cmd: bool,
        redact_resp: bool,
    ) -> tuple[bytes, int]:
        """One APDU (plus one re-send on 6Cxx)."""
        apdu = self._encode(cla, ins, p1, p2, data, le, extended)
        response, sw = self._transmit(apdu, redact_cmd, redact_resp)
        if sw >> 8 == 0x6C:
            # ISO 7816-4 case 2 "wrong Le": the same command again, Le = the card's Na.
            apdu = self._encode(cla, ins, p1, p2, data, (sw & 0xFF) or 256, extended)
            response, sw = self._transmit(apdu, redact_cmd, redact_resp)
            if sw >> 8 == 0x6C:
                raise CardProtocolError(msg('the card asked twice for a different Le ({sw:04X})', sw=sw))
        return response, sw

    def _encode(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None, extended: bool
    ) -> bytes:
        if self.transport.protocol != "T=0":
            return encode_apdu(cla, ins, p1, p2, data, le, extended)
        # ISO/IEC 7816-3 12.2.2 and 12.2.5: case 1 is sent with P3 = 00; case 4 without Le, the
        # answer follows by GET RESPONSE after 61xx.
        apdu = encode_apdu(cla, ins, p1, p2, data, None if data else le, False)
        return apdu + b"\x00" if len(apdu) == 4 else apdu

    def _transmit(self, apdu: bytes, redact_cmd: bool, redact_resp: bool) -> tuple[bytes, int]:
        response, sw = split_response(self.transport.transmit(apdu))
        if self.trace is not None:
            body = apdu[4:]
            # A body of one byte is a lone Le: nothing secret in it.
            hide_body = redact_cmd and len(body) > 1
            self.trace(
                TraceRecord(
                    header=apdu[:4],
                    body=None if hide_body else body,
                    body_length=len(body),
                    response=None if redact_resp and response else response,
                    response_length=len(response),
                    sw=sw,
                )
            )
        return response, sw
