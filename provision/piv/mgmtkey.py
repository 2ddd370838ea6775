"""Management keys a job does not hold as such: derived per card, or stored PIN-protected (pure).

**Derived** (``management_key: {derive: {master: …, label: "…"}}``): NIST SP 800-108r1 KDF in
counter mode with HMAC-SHA256 (cryptography's ``KBKDFHMAC``), exactly:

- key derivation key: the master secret (hex, decoded to bytes);
- counter: 4 bytes big-endian (``r = 32``), before the fixed input (``CounterLocation.BeforeFixed``);
- fixed input: ``label || 0x00 || context || L``, with label = the job's ``label`` as UTF-8,
  context = the card serial as 4 bytes big-endian (unsigned), L = the key length in bits as
  4 bytes big-endian;
- length: 24 bytes (AES-192 and 3DES keys are both 24 bytes).

So anyone holding the master secret recomputes a card's key from its serial (docs/batch.md shows how).

**PIN-protected** (``management_key_rotate: {pin_protected: true}``): as ykman's
``piv access change-management-key --protect``: the key in object 5FC109 as ``88 { 89 <key> }``
(readable only after VERIFY PIN) and ADMIN DATA 5FFF00 ``80 { 81 01 <flags> … }`` with flag 0x02
("management key stored PIN-protected").
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from provision.errors import CardError
from provision.piv import tlv

DERIVED_KEY_LENGTH = 24  # AES-192 or 3DES: the card's own algorithm decides, the length is the same

# ykman's PIVMAN objects.
ADMIN_DATA_OBJECT_ID = 0x5FFF00  # 80 { 81 01 flags, 82 salt, 83 PIN timestamp }
PROTECTED_DATA_OBJECT_ID = 0x5FC109  # "printed information": 88 { 89 key }, PIN-protected
FLAG_PUK_BLOCKED = 0x01
FLAG_MGM_KEY_PROTECTED = 0x02


def derive_management_key(master: bytes, label: str, serial: int, length: int = DERIVED_KEY_LENGTH) -> bytearray:
    """The card's management key from the master secret and the card's serial (see module doc)."""
    if not 0 <= serial <= 0xFFFFFFFF:
        raise ValueError("a card serial is 4 bytes")
    kdf = KBKDFHMAC(
        algorithm=hashes.SHA256(), mode=Mode.CounterMode, length=length, rlen=4, llen=4,
        location=CounterLocation.BeforeFixed, label=label.encode("utf-8"), context=serial.to_bytes(4, "big"),
        fixed=None,
    )  # fmt: skip
    return bytearray(kdf.derive(master))


def admin_data_flags(body: bytes | None) -> int:
    """The flags byte (tag 81) of ADMIN DATA, 0 when the object or the tag is missing."""
    if not body:
        return 0
    try:
        inner = tlv.parse_dict(tlv.unwrap(body, 0x80))
    except CardError:
        return 0
    flags = inner.get(0x81)
    return flags[0] if flags is not None and len(flags) == 1 else 0


def admin_data_with_flags(body: bytes | None, set_flags: int) -> bytes:
    """ADMIN DATA with ``set_flags`` raised, every other field kept as it was (as ykman does);
    a PIN-derived key's salt (82) is dropped, since the key is no longer that one."""
    fields: dict[int, bytes] = {}
    if body:
        try:
            fields = dict(tlv.iter_tlv(tlv.unwrap(body, 0x80)))
        except CardError:
            fields = {}
    fields.pop(0x82, None)
    flags = (fields[0x81][0] if len(fields.get(0x81, b"")) == 1 else 0) | set_flags
    fields[0x81] = bytes([flags])
    inner = b"".join(tlv.encode(tag, fields[tag]) for tag in sorted(fields))
    return tlv.encode(0x80, inner)


def protected_data(key: bytes | bytearray) -> bytearray:
    """The body of 5FC109 that holds ``key``: ``88 { 89 <key> }``."""
    inner = bytearray(tlv.tag_bytes(0x89) + tlv.encode_length(len(key))) + key
    out = bytearray(tlv.tag_bytes(0x88) + tlv.encode_length(len(inner))) + inner
    for i in range(len(inner)):
        inner[i] = 0
    return out


def stored_key(body: bytes | None) -> bytes | None:
    """The key ``protected_data`` stored, None when the object holds none."""
    if not body:
        return None
    try:
        return tlv.parse_dict(tlv.unwrap(body, 0x88)).get(0x89)
    except CardError:
        return None
