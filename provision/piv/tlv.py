"""BER-TLV as PIV uses it (SP 800-73-4 part 2, section 3): pure functions, bytes in and out.

Tags are 1 byte, or several when the low five bits of the first are all set (``5F C1 05``,
``7F 49``). Lengths are short (< 0x80) or ``81 xx`` / ``82 xx xx`` / ``83 xx xx xx``. Decoding is
strict: a truncated or overlong value raises ``CardProtocolError`` rather than guessing, because
a card that answers garbage must give a typed error, never a wrong certificate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from provision.errors import CardProtocolError
from provision.i18n import msg


def encode_length(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative length")
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82]) + n.to_bytes(2, "big")
    if n <= 0xFFFFFF:
        return bytes([0x83]) + n.to_bytes(3, "big")
    raise ValueError("TLV value too long")


def tag_bytes(tag: int) -> bytes:
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode(tag: int, value: bytes) -> bytes:
    return tag_bytes(tag) + encode_length(len(value)) + value


def encode_many(items: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(encode(tag, value) for tag, value in items)


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise CardProtocolError(msg('truncated TLV: a tag was expected'))
    first = data[pos]
    tag = first
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise CardProtocolError(msg('truncated TLV: a multi-byte tag ends early'))
            b = data[pos]
            tag = (tag << 8) | b
            pos += 1
            if not b & 0x80:
                break
            if tag > 0xFFFFFFFF:
                raise CardProtocolError(msg('malformed TLV: tag longer than 4 bytes'))
    return tag, pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise CardProtocolError(msg('truncated TLV: a length was expected'))
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 3:
        raise CardProtocolError(msg('malformed TLV: unsupported length form 0x{first:02X}', first=first))
    if pos + count > len(data):
        raise CardProtocolError(msg('truncated TLV: the length field ends early'))
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


def iter_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield ``(tag, value)`` for each TLV in ``data``; the whole input must be TLVs."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos)
        end = pos + length
        if end > len(data):
            raise CardProtocolError(
                msg('truncated TLV: tag {tag:X} claims {length} bytes, {left} remain', tag=tag, length=length, left=len(data) - pos)
            )
        yield tag, data[pos:end]
        pos = end


def parse_dict(data: bytes) -> dict[int, bytes]:
    """TLVs as a dict (first occurrence of each tag wins)."""
    out: dict[int, bytes] = {}
    for tag, value in iter_tlv(data):
        out.setdefault(tag, value)
    return out


def unwrap(data: bytes, expected_tag: int) -> bytes:
    """The value of a single TLV with ``expected_tag`` at the start of ``data``.

    Trailing bytes after it are ignored (some cards pad responses); a different tag is an error.
    """
    tag, pos = _read_tag(data, 0)
    if tag != expected_tag:
        raise CardProtocolError(msg('expected tag {expected_tag:X}, the card answered tag {tag:X}', expected_tag=expected_tag, tag=tag))
    length, pos = _read_length(data, pos)
    if pos + length > len(data):
        raise CardProtocolError(
            msg('truncated TLV: tag {tag:X} claims {length} bytes, {left} remain', tag=tag, length=length, left=len(data) - pos)
        )
    return data[pos : pos + length]
