"""What real PIV cards do differently: the one place for card quirks (PIV.md, "Real cards differ").

Pure data and pure functions, no card I/O: the status words that mean "this card cannot do that",
the firmware gates of the YubiKey extensions, the PIN-always rule, and the Key History object's
bytes. ``session.py`` (the APDUs), ``load.py`` (the checklist) and ``cardinfo.py`` (the report) ask
here instead of keeping their own copies.
"""

from __future__ import annotations

from provision.errors import CardError
from provision.piv import tlv

Version = tuple[int, int, int]

# --- status-word sets ---------------------------------------------------------------------------

# "This card does not have that command / function": YubiKeys answer 6D00; other applets were seen
# answering 6A81, 6B00 or 6E00. GET METADATA (F7, YubiKey 5.3+) and GET VERSION are detected by
# this answer, not by a firmware number (other applets have neither).
UNSUPPORTED_SW = frozenset({0x6D00, 0x6A81, 0x6B00, 0x6E00})

# "This card does not take objects in the vendor range" (5FFFxx): the slot name then lives only in
# the journal, the store and the audit log.
VENDOR_REFUSED_SW = frozenset({0x6A82, 0x6A86, 0x6A81, 0x6A84})
# "This card has no such slot" (PivApplet: 6A86 beyond retired slot 8C).
SLOT_REFUSED_SW = frozenset({0x6A86, 0x6A81})
# The card refused the management key's witness (a wrong key), as different applets say it.
MANAGEMENT_KEY_REFUSED_SW = frozenset({0x6982, 0x6A80, 0x6984})


def refuses_vendor_instruction(sw: int) -> bool:
    """Whether a card's answer to a YubiKey-only read (GET VERSION, GET SERIAL) means "not on this
    card": any ISO 7816-4 checking error (SW1 67 to 6E: wrong length, CLA/INS/P1-P2 or data not
    accepted, command not allowed; cards without a serial were seen answering 6A82, 6A86, 6A88),
    not only the 6D00 of ``UNSUPPORTED_SW``. These INS are proprietary in the interindustry class,
    so a card that lacks them may refuse them any such way: OpenSC takes any failed GET VERSION as
    "not a YubiKey" (card-piv.c) and yubico-piv-tool connects whatever GET SERIAL answered
    (ykpiv.c). Execution errors (64xx, 65xx) and 6Fxx stay errors: the card failed, it did not
    decline."""
    return 0x67 <= sw >> 8 <= 0x6E


# --- firmware gates (YubiKey GET VERSION; None: a card without it) ------------------------------

# From 5.7 the factory default management key is AES-192 (same value as the old 3DES default),
# and RSA-3072/4096, Ed25519 and X25519 keys can be imported.
FIRMWARE_AES_DEFAULT_MANAGEMENT_KEY: Version = (5, 7, 0)
FIRMWARE_EXTENDED_ALGORITHMS: Version = (5, 7, 0)

# Management-key algorithm codes (SP 800-78-4 + YubiKey).
MGMT_3DES = 0x03
MGMT_AES192 = 0x0A


def default_management_key_algorithm(version: Version | None) -> int:
    """The algorithm of a 24-byte management key when the card does not say (no GET METADATA):
    3DES before firmware 5.7 and on cards without GET VERSION, AES-192 from 5.7 on."""
    return MGMT_AES192 if version is not None and version >= FIRMWARE_AES_DEFAULT_MANAGEMENT_KEY else MGMT_3DES


def holds_extended_algorithms(version: Version | None) -> bool:
    """The card can hold keys beyond RSA-1024/2048, P-256 and P-384 (YubiKey 5.7+)."""
    return version is not None and version >= FIRMWARE_EXTENDED_ALGORITHMS


# --- PIN policy ---------------------------------------------------------------------------------

PIN_POLICY_ALWAYS = 0x03
# Slots whose key a YubiKey imports with PIN policy "always" when the job leaves it at "default".
PIN_ALWAYS_BY_DEFAULT = frozenset({0x9C})


def pin_always(key_ref: int, job_policy: str, card_policy: int | None = None) -> bool:
    """Whether a VERIFY must come immediately before the slot's key is used. The card's own
    metadata (``card_policy``) decides when it has it; without, the job's policy; without one
    (``default``), the YubiKey default of the slot."""
    if card_policy is not None:
        return card_policy == PIN_POLICY_ALWAYS
    if job_policy != "default":
        return job_policy == "always"
    return key_ref in PIN_ALWAYS_BY_DEFAULT


# --- defaults and sizes -------------------------------------------------------------------------

# The factory management key of YubiKeys and most applets (3DES before 5.7, AES-192 from 5.7).
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
# YubiKey data objects hold about 3 kB: larger certificates are written gzipped, as ykman does.
COMPRESS_ABOVE_BYTES = 2900
# The most any PIV card provision writes for holds in one data object (inside 53): a YubiKey's
# 3072-byte object less the 5C and 53 headers. Others hold less (CanoKey: 3000 with the 53 header).
MAX_OBJECT_CONTENT_BYTES = 3063

# --- Key History (SP 800-73-4 part 1, 3.3.2) ----------------------------------------------------

KEY_HISTORY_OBJECT_ID = 0x5FC10C  # C1 keysWithOnCardCerts, C2 keysWithOffCardCerts, F3 URL, FE
FIRST_RETIRED_KEY_REF = 0x82


def key_history_update(current: bytes | None, key_ref: int) -> tuple[int, bytes | None]:
    """Middleware (OpenSC, Windows) finds a retired slot only through Key History's ``C1``: how many
    retired slots, from 82 on, to read. Returns (the count this slot needs, the object body that
    raises ``C1`` to it keeping everything else as it was), the body None when ``current`` already
    covers the slot. An unreadable object is rewritten whole."""
    needed = key_ref - FIRST_RETIRED_KEY_REF + 1
    fields: dict[int, bytes] = {}
    if current:
        try:
            fields = dict(tlv.iter_tlv(current))
        except CardError:
            fields = {}
    on_card = fields.get(0xC1, b"\x00")
    if len(on_card) == 1 and on_card[0] >= needed:
        return needed, None
    fields[0xC1] = bytes([needed])
    fields.setdefault(0xC2, b"\x00")
    body = b"".join(tlv.encode(tag, fields[tag]) for tag in (0xC1, 0xC2, 0xF3) if tag in fields)
    return needed, body + tlv.encode(0xFE, b"")
