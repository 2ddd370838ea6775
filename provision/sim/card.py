"""A simulated PIV card that behaves like a YubiKey 5.7 PIV application, one APDU at a time.

Written from SP 800-73-4, ISO 7816-4 and the behaviour that the peers (yubikit, yubico-piv-tool,
OpenSC) and a real applet (PivApplet) rely on; deliberately independent of this project's own PIV
client, so the two cannot agree on the same mistake.

``SimCard.process(apdu) -> response`` is the whole interface a reader needs. Everything the card
stores lives in ``CardState`` and is saved atomically *before* the answer leaves the card; the
security status (PIN verified, management key authenticated, pending chains and responses) is
volatile and dies with ``power_on``/``reset``, as on a real card.

Knobs for tests (``SimOptions``): firmware level, a generic "pivapplet" profile with the quirks of
PIV.md "Real cards differ", latency, a card that vanishes or fails after N APDUs, a stall, and a
JSON-lines APDU log (header, lengths and status word, never data bytes).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provision.errors import CardProtocolError, CardVanished
from provision.piv import tlv
from provision.sim.state import (
    DEFAULT_MGMT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    MGMT_AES128,
    MGMT_AES192,
    MGMT_AES256,
    MGMT_TDES,
    CardState,
    KeyRecord,
    load_state,
    pad_pin,
    save_state,
)

logger = logging.getLogger(__name__)

# --- constants -------------------------------------------------------------------------------

# The ATR of a YubiKey 5 over USB (yubico-piv-tool's YKPIV_ATR_YK5). Historical bytes:
# 80 (status indicator follows as TLVs), 73 C0 21 C0 (card capabilities: the third byte C0 says
# command chaining and extended Lc/Le are supported), 57 "YubiKey"; the last byte is TCK.
YUBIKEY5_ATR = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
# The ATR a YubiKey 5 NFC gives in a contactless reader (yubico-piv-tool's YKPIV_ATR_YK5_NFC): the
# same historical bytes after T0 = 8D (only TD1 follows: no USB-style interface bytes). ykman
# (yubikit ``ScardSmartCardConnection``) takes an ATR whose T0 has the high nibble F for USB and
# then needs a USB product id that only a reader named "Yubico YubiKey ..." gives; with this ATR it
# treats any other reader as NFC and reads the card without one.
YUBIKEY5_NFC_ATR = bytes.fromhex("3B8D80018073C021C057597562694B6579F9")
ATR_NAMES = {"usb": YUBIKEY5_ATR, "nfc": YUBIKEY5_NFC_ATR}

PIV_AID = bytes.fromhex("A000000308000010000100")  # RID A000000308, PIX 00001000 0100
# The YubiKey's OTP application over CCID (yubikit AID.OTP). Its API request 01 with slot 10 answers
# the serial: how a YubiKey NEO/4 gives it (its PIV application has no F8 before firmware 5), and
# what yubico-piv-tool/ykcs11 ask below firmware 5 (lib/ykpiv.c: _ykpiv_get_serial). Simulated
# below firmware 5 only.
OTP_AID = bytes.fromhex("A0000005272001")
INS_OTP_API = 0x01
OTP_SLOT_DEVICE_SERIAL = 0x10
PIV_RID = PIV_AID[:5]
PIV_PIX = PIV_AID[5:]

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_SECURITY = 0x6982
SW_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FUNC_NOT_SUPPORTED = 0x6A81
SW_NOT_FOUND = 0x6A82
SW_NO_SPACE = 0x6A84
SW_WRONG_P1P2 = 0x6A86
SW_REF_NOT_FOUND = 0x6A88
SW_CHAIN_EXPECTED = 0x6883
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_UNKNOWN = 0x6F00

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE = 0x24
INS_RESET_RETRY = 0x2C
INS_GENERATE = 0x47
INS_AUTHENTICATE = 0x87
INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0
INS_GET_DATA = 0xCB
INS_PUT_DATA = 0xDB
INS_MOVE_KEY = 0xF6
INS_METADATA = 0xF7
INS_SERIAL = 0xF8
INS_ATTEST = 0xF9
INS_SET_PIN_RETRIES = 0xFA
INS_RESET = 0xFB
INS_VERSION = 0xFD
INS_IMPORT = 0xFE
INS_SET_MGMT_KEY = 0xFF

# Commands that may change what the card stores (counted in ``write_attempt_count``).
WRITE_INS = frozenset(
    {
        INS_CHANGE_REFERENCE,
        INS_RESET_RETRY,
        INS_GENERATE,
        INS_PUT_DATA,
        INS_MOVE_KEY,
        INS_SET_PIN_RETRIES,
        INS_RESET,
        INS_IMPORT,
        INS_SET_MGMT_KEY,
    }
)

SLOT_MGMT = 0x9B
SLOT_OCC_AUTH = 0x96  # YubiKey Bio: fingerprint (on-card comparison) metadata
PIN_REF = 0x80
PUK_REF = 0x81

RSA_BITS = {0x06: 1024, 0x07: 2048, 0x05: 3072, 0x16: 4096}
EC_CURVES: dict[int, tuple[ec.EllipticCurve, int, hashes.HashAlgorithm]] = {
    0x11: (ec.SECP256R1(), 32, hashes.SHA256()),
    0x14: (ec.SECP384R1(), 48, hashes.SHA384()),
}
ALG_ED25519 = 0xE0
ALG_X25519 = 0xE1
ALGS_BASE = frozenset({0x06, 0x07, 0x11, 0x14})
ALGS_57 = frozenset({0x05, 0x16, ALG_ED25519, ALG_X25519})

PIN_POLICY_DEFAULT, PIN_POLICY_NEVER, PIN_POLICY_ONCE, PIN_POLICY_ALWAYS = 0, 1, 2, 3
TOUCH_DEFAULT, TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED = 0, 1, 2, 3
ORIGIN_GENERATED, ORIGIN_IMPORTED = 1, 2

MGMT_KEY_LENGTHS = {MGMT_TDES: 24, MGMT_AES128: 16, MGMT_AES192: 24, MGMT_AES256: 32}

OBJ_DISCOVERY = 0x7E
OBJ_CHUID = 0x5FC102
OBJ_CCC = 0x5FC107
# Objects a reader may only see after the PIN (SP 800-73-4 part 1, table 3).
PIN_PROTECTED_OBJECTS = frozenset({0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121})
# YKPIV_OBJ_MAX_SIZE (3072) minus the 5C and 53 headers around the content.
MAX_OBJECT_CONTENT = 3063
MAX_CHAIN_BYTES = 16 * 1024

# The all-nines FASC-N (agency 9999, system 9999, credential 999999) used by Yubico's CHUIDs.
CHUID_FASCN = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
CHUID_EXPIRY = b"20451231"

PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey
)

Profile = Literal["yubikey", "pivapplet"]


class _Status(Exception):  # noqa: N818 - control flow: answer with this status word
    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimOptions:
    """How the simulated card behaves. ``None`` means "what the profile does"."""

    serial: int = 10_000_001
    firmware: tuple[int, int, int] = (5, 7, 1)
    profile: Profile = "yubikey"
    pin_tries: int | None = None  # yubikey 3, pivapplet 5
    puk_tries: int | None = None  # same as pin_tries unless given
    pin_always_9c: bool = True  # default PIN policy of 9C is "always" (YubiKey and PivApplet)
    pin_always_also: tuple[int, ...] = ()  # other slots whose default PIN policy is "always" (some cards: 9A)
    no_vendor_objects: bool | None = None  # 5FFFxx refused (pivapplet)
    retired_slots_max: int | None = None  # last retired slot: 0x95 yubikey, 0x8C pivapplet
    no_f7: bool | None = None  # no metadata: automatic below firmware 5.3
    no_f8: bool = False  # no serial command
    # The PIN stays verified across a re-SELECT of PIV (PivApplet does; SP 800-73-4 asks no reset
    # there): a program that connects after another one verified the PIN finds it verified.
    pin_kept_on_select: bool = False
    # GET METADATA as PivApplet answers it: no tag 01 for PIN and PUK, 9000 with only the policies
    # for an empty key slot (not 6A88), 6F00 for an imported key (it never has the public half).
    metadata_like_pivapplet: bool = False
    restricted_touch: bool | None = None  # touch policies other than default/never → 6A81
    # Data objects this card does not have: GET DATA and PUT DATA both answer 6A82 (CanoKey has
    # no Key History 5FC10C; SP 800-73-4 makes it optional).
    absent_objects: tuple[int, ...] = ()
    # PUT DATA command chaining stored segment by segment as it arrives (CanoKey writes the first
    # segment, then appends): a card pulled mid-chain keeps a truncated object.
    chain_stored_per_segment: bool = False
    # GET METADATA of a slot the card does not have answers 6A88, as for an empty slot (CanoKey);
    # only IMPORT KEY (6A86) then says the slot is not there.
    missing_slots_look_empty: bool = False
    # The most a data object holds (inside 53): a YubiKey's 3063; CanoKey's is 2996 (3000 with the 53
    # header), and it answers 6700 to the segment that goes past it.
    max_object_content: int = MAX_OBJECT_CONTENT
    latency_ms: float = 0.0
    vanish_after: int | None = None  # after N APDUs the card is gone
    fail_after: int | None = None  # after N APDUs every answer is 6F00
    stall_after: int | None = None  # APDU N+1 hangs (until ``release_stall`` or an hour)
    apdu_log: Path | None = None
    chuid_guid: bytes | None = None  # default: derived from the serial
    atr: bytes = YUBIKEY5_ATR  # what the reader reports; YUBIKEY5_NFC_ATR for generic readers

    def __post_init__(self) -> None:
        if not 0 <= self.serial <= 0xFFFFFFFF:
            raise ValueError("serial must fit in 4 unsigned bytes")
        if len(self.firmware) != 3 or not all(0 <= v <= 255 for v in self.firmware):
            raise ValueError("firmware must be three numbers 0-255")
        if self.profile not in ("yubikey", "pivapplet"):
            raise ValueError(f"unknown profile {self.profile!r}")
        for name, tries in (("pin_tries", self.pin_tries), ("puk_tries", self.puk_tries)):
            if tries is not None and not 1 <= tries <= 255:
                raise ValueError(f"{name} must be 1-255")
        if self.retired_slots_max is not None and not 0x81 <= self.retired_slots_max <= 0x95:
            raise ValueError("retired_slots_max must be 0x81 (none) to 0x95")
        if self.chuid_guid is not None and len(self.chuid_guid) != 16:
            raise ValueError("chuid_guid must be 16 bytes")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        if not 2 <= len(self.atr) <= 33 or self.atr[0] not in (0x3B, 0x3F):
            raise ValueError("an ATR is 2 to 33 bytes and starts with 3B or 3F")

    @property
    def is_yubikey(self) -> bool:
        return self.profile == "yubikey"

    @property
    def effective_pin_tries(self) -> int:
        if self.pin_tries is not None:
            return self.pin_tries
        return 3 if self.is_yubikey else 5

    @property
    def effective_puk_tries(self) -> int:
        return self.puk_tries if self.puk_tries is not None else self.effective_pin_tries

    @property
    def has_vendor_objects(self) -> bool:
        return not (self.no_vendor_objects if self.no_vendor_objects is not None else not self.is_yubikey)

    @property
    def last_retired_slot(self) -> int:
        if self.retired_slots_max is not None:
            return self.retired_slots_max
        return 0x95 if self.is_yubikey else 0x8C

    @property
    def has_metadata(self) -> bool:
        if self.no_f7 is not None:
            return not self.no_f7
        return self.firmware >= (5, 3, 0)

    @property
    def touch_restricted(self) -> bool:
        return self.restricted_touch if self.restricted_touch is not None else not self.is_yubikey

    @property
    def guid(self) -> bytes:
        if self.chuid_guid is not None:
            return self.chuid_guid
        return uuid.uuid5(uuid.NAMESPACE_URL, f"urn:provision:sim:{self.serial}").bytes

    @property
    def default_mgmt_algorithm(self) -> int:
        return MGMT_AES192 if self.firmware >= (5, 7, 0) else MGMT_TDES

    @property
    def supported_algorithms(self) -> frozenset[int]:
        return ALGS_BASE | ALGS_57 if self.firmware >= (5, 7, 0) else ALGS_BASE


def build_chuid(guid: bytes) -> bytes:
    """A CHUID as Yubico's tools write it: FASC-N, GUID, expiry, empty signature, LRC."""
    return tlv.encode_many(
        [(0x30, CHUID_FASCN), (0x34, guid), (0x35, CHUID_EXPIRY), (0x3E, b""), (0xFE, b"")]
    )


def build_ccc(serial: int) -> bytes:
    card_id = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:provision:sim-ccc:{serial}").bytes[:14]
    return tlv.encode_many(
        [
            (0xF0, bytes.fromhex("A000000116FF02") + card_id),
            (0xF1, b"\x21"),
            (0xF2, b"\x21"),
            (0xF3, b""),
            (0xF4, b"\x00"),
            (0xF5, b"\x10"),
            (0xF6, b""),
            (0xF7, b""),
            (0xFA, b""),
            (0xFB, b""),
            (0xFC, b""),
            (0xFD, b""),
            (0xFE, b""),
        ]
    )


DISCOVERY = tlv.encode_many([(0x4F, PIV_AID), (0x5F2F, b"\x40\x00")])  # PIV PIN only, no OCC


def fresh_state(options: SimOptions) -> CardState:
    return CardState(
        serial=options.serial,
        firmware=options.firmware,
        profile=options.profile,
        pin=pad_pin(DEFAULT_PIN),
        puk=pad_pin(DEFAULT_PUK),
        pin_tries_max=options.effective_pin_tries,
        pin_tries_left=options.effective_pin_tries,
        puk_tries_max=options.effective_puk_tries,
        puk_tries_left=options.effective_puk_tries,
        mgmt_algorithm=options.default_mgmt_algorithm,
        mgmt_key=DEFAULT_MGMT_KEY,
        objects={OBJ_CHUID: build_chuid(options.guid), OBJ_CCC: build_ccc(options.serial)},
    )


# --- APDU parsing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    lc: int | None  # None: no command data field
    le: int | None  # Ne (0 → 256 or 65536 already applied); None: no Le field
    extended: bool

    @property
    def ne(self) -> int:
        """How many response bytes the terminal takes at once."""
        if self.le is not None:
            return self.le
        return 65536 if self.extended else 256


def parse_apdu(apdu: bytes) -> Command:
    """ISO 7816-3 cases 1-4, short and extended. A length that does not add up is 6700."""
    if len(apdu) < 4:
        raise _Status(SW_WRONG_LENGTH)
    cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    body = apdu[4:]
    n = len(body)
    if n == 0:
        return Command(cla, ins, p1, p2, b"", None, None, False)
    if n == 1:
        return Command(cla, ins, p1, p2, b"", None, body[0] or 256, False)
    if body[0] != 0:
        lc = body[0]
        if n == 1 + lc:
            return Command(cla, ins, p1, p2, bytes(body[1:]), lc, None, False)
        if n == 2 + lc:
            return Command(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), lc, body[-1] or 256, False)
        raise _Status(SW_WRONG_LENGTH)
    # body[0] == 0 and more than one byte: extended length
    if n == 3:
        return Command(cla, ins, p1, p2, b"", None, int.from_bytes(body[1:3], "big") or 65536, True)
    if n < 3:
        raise _Status(SW_WRONG_LENGTH)
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise _Status(SW_WRONG_LENGTH)
    if n == 3 + lc:
        return Command(cla, ins, p1, p2, bytes(body[3:]), lc, None, True)
    if n == 5 + lc:
        le = int.from_bytes(body[-2:], "big") or 65536
        return Command(cla, ins, p1, p2, bytes(body[3 : 3 + lc]), lc, le, True)
    raise _Status(SW_WRONG_LENGTH)


def _parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    try:
        return list(tlv.iter_tlv(data))
    except CardProtocolError:
        raise _Status(SW_WRONG_DATA) from None


def _unique_tlvs(data: bytes, allowed: set[int] | frozenset[int]) -> dict[int, bytes]:
    """TLVs as a dict; an unknown or repeated tag is wrong data."""
    out: dict[int, bytes] = {}
    for tag, value in _parse_tlvs(data):
        if tag not in allowed or tag in out:
            raise _Status(SW_WRONG_DATA)
        out[tag] = value
    return out


def _sw(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _tries_sw(left: int) -> int:
    return 0x63C0 | min(left, 15)


# --- the card --------------------------------------------------------------------------------


class SimCard:
    """One simulated PIV card. Not a transport: readers and bridges call ``process``."""

    def __init__(self, options: SimOptions | None = None, state_path: Path | None = None) -> None:
        self.options = options or SimOptions()
        self.state_path = state_path
        loaded = load_state(state_path) if state_path is not None else None
        if loaded is not None and loaded.serial != self.options.serial:
            raise ValueError(
                f"{state_path} holds the card with serial {loaded.serial}, not {self.options.serial}"
            )
        self._state = loaded or fresh_state(self.options)
        if loaded is None and state_path is not None:
            save_state(state_path, self._state)
        self.apdu_count = 0
        self.write_apdu_count = 0  # commands that changed the stored state (not VERIFY's counter)
        self.write_attempt_count = 0  # write commands received, whatever their outcome
        self._lock = threading.Lock()
        self._stall_release = threading.Event()
        self._stall_next: float | None = None
        self._vanished = False
        self._key_cache: dict[bytes, PrivateKey] = {}
        self._wrote = False
        self._selected = False
        self._otp_selected = False  # the OTP application is selected (YubiKey profile)
        self._pin_verified = False
        self._pin_always_ready = False  # the previous complete command was a good VERIFY
        self._always_window = False  # ... as seen by the command being processed
        self._mgmt_authenticated = False
        self._chain: tuple[tuple[int, int, int], bytes] | None = None  # (INS, P1, P2), data so far
        self._pending_response = b""
        self._mgmt_witness: bytes | None = None  # mutual auth: the witness we sent, decrypted
        self._mgmt_challenge: bytes | None = None  # one-way auth: the challenge we sent
        self._reset_security()

    # -- public API ---------------------------------------------------------------------------

    @property
    def atr(self) -> bytes:
        return self.options.atr

    @property
    def serial(self) -> int:
        return self.options.serial

    @property
    def vanished(self) -> bool:
        return self._vanished

    @property
    def state(self) -> CardState:
        """The stored state (a copy: tests inspect it, they do not change the card through it)."""
        return copy.deepcopy(self._state)

    def power_on(self) -> None:
        """Cold reset: the security status and every pending buffer are gone."""
        with self._lock:
            self._reset_security()

    def reset(self) -> None:
        """Warm reset; same effect on a PIV card as a power cycle."""
        self.power_on()

    def stall(self, seconds: float = 3600.0) -> None:
        """The next APDU hangs for ``seconds`` or until ``release_stall``."""
        self._stall_release.clear()
        self._stall_next = seconds

    def release_stall(self) -> None:
        self._stall_release.set()

    def process(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data + SW1 SW2. Raises only ``CardVanished``."""
        try:
            apdu = bytes(apdu)  # pyscard and some bridges hand over lists of ints
        except (TypeError, ValueError):
            apdu = b""  # not bytes at all: answered as a malformed APDU
        with self._lock:
            self.apdu_count += 1
            count = self.apdu_count
            opts = self.options
            if self._vanished or (opts.vanish_after is not None and count > opts.vanish_after):
                self._vanished = True
                self._log(apdu, None, None, event="vanished")
                raise CardVanished(f"simulated card {opts.serial} left the reader")
            if opts.stall_after is not None and count == opts.stall_after + 1:
                self.stall()
            if self._stall_next is not None:
                seconds, self._stall_next = self._stall_next, None
                self._stall_release.wait(seconds)
            if opts.latency_ms:
                time.sleep(opts.latency_ms / 1000.0)
            cmd: Command | None = None
            if opts.fail_after is not None and count > opts.fail_after:
                response = _sw(SW_UNKNOWN)
            else:
                snapshot = copy.deepcopy(self._state)
                # PIN policy "always": only the command right after a good VERIFY may use the key;
                # any other APDU in between (even a malformed one) closes the window.
                self._always_window, self._pin_always_ready = self._pin_always_ready, False
                try:
                    cmd = parse_apdu(apdu)
                    response = self._dispatch(cmd)
                except _Status as status:
                    response = _sw(status.sw)
                except Exception:  # any bug or I/O failure is a 6F00, never silence
                    logger.exception("simulated card: internal error on APDU %s", apdu[:4].hex())
                    self._state = snapshot
                    self._chain = None
                    self._pending_response = b""
                    response = _sw(SW_UNKNOWN)
            self._log(apdu, cmd, response[-2:])
            return response

    # -- plumbing -----------------------------------------------------------------------------

    def _reset_security(self) -> None:
        self._selected = False
        self._otp_selected = False
        self._pin_verified = False
        self._pin_always_ready = False
        self._always_window = False
        self._mgmt_authenticated = False
        self._mgmt_witness = None
        self._mgmt_challenge = None
        self._chain = None
        self._pending_response = b""

    def _log(self, apdu: bytes, cmd: Command | None, sw: bytes | None, event: str | None = None) -> None:
        path = self.options.apdu_log
        if path is None:
            return
        header = apdu[:4]
        record: dict[str, object] = {
            "n": self.apdu_count,
            "t": round(time.time(), 6),
            "serial": self.options.serial,
            "cla": f"{header[0]:02X}" if len(header) > 0 else None,
            "ins": f"{header[1]:02X}" if len(header) > 1 else None,
            "p1": f"{header[2]:02X}" if len(header) > 2 else None,
            "p2": f"{header[3]:02X}" if len(header) > 3 else None,
            "lc": cmd.lc if cmd else None,
            "le": cmd.le if cmd else None,
            "ext": cmd.extended if cmd else None,
            "sw": sw.hex().upper() if sw is not None else None,
        }
        if event:
            record["event"] = event
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError:
            logger.warning("simulated card: cannot write the APDU log %s", path, exc_info=True)

    def _commit(self, counts_as_write: bool = True) -> None:
        """Persist the state before the answer leaves the card."""
        if self.state_path is not None:
            save_state(self.state_path, self._state)
        if counts_as_write:
            self._wrote = True

    def _respond(self, data: bytes, cmd: Command) -> bytes:
        """Data + 9000, or as much as the terminal takes + 61xx and the rest for GET RESPONSE."""
        chunk = cmd.ne if cmd.extended else min(cmd.ne, 256)
        if len(data) <= chunk:
            return data + _sw(SW_OK)
        self._pending_response = data[chunk:]
        return data[:chunk] + bytes([0x61, min(len(self._pending_response), 256) & 0xFF])

    def _dispatch(self, cmd: Command) -> bytes:
        if cmd.cla & ~0x10 != 0:
            raise _Status(SW_CLA_NOT_SUPPORTED)
        if cmd.ins == INS_GET_RESPONSE and cmd.cla == 0 and self._chain is None:
            return self._get_response(cmd)
        self._pending_response = b""
        header = (cmd.ins, cmd.p1, cmd.p2)
        data = cmd.data
        if self._chain is not None:
            chain_header, previous = self._chain
            if chain_header != header:
                self._chain = None
                raise _Status(SW_CHAIN_EXPECTED)
            data = previous + data
        if cmd.cla & 0x10:
            if len(data) > MAX_CHAIN_BYTES:
                self._chain = None
                raise _Status(SW_NO_SPACE)
            if cmd.ins == INS_PUT_DATA and self.options.chain_stored_per_segment:
                self._store_partial_object(data)
            self._chain = (header, data)
            self._pin_always_ready = self._always_window  # a chain segment is not "in between"
            return _sw(SW_OK)
        self._chain = None
        full = Command(cmd.cla, cmd.ins, cmd.p1, cmd.p2, data, cmd.lc, cmd.le, cmd.extended)
        if cmd.ins == INS_SELECT:
            return self._respond(self._select(full), full)
        if self._otp_selected:
            return self._respond(self._otp_request(full), full)
        if not self._selected:
            raise _Status(SW_INS_NOT_SUPPORTED)
        handler = self._handlers().get(cmd.ins)
        if handler is None:
            raise _Status(SW_INS_NOT_SUPPORTED)
        if cmd.ins in WRITE_INS:
            self.write_attempt_count += 1
        self._wrote = False
        try:
            answer = handler(full)
        finally:
            if self._wrote:
                self.write_apdu_count += 1
        return self._respond(answer, full)

    def _handlers(self) -> dict[int, Callable[[Command], bytes]]:
        return {
            INS_VERIFY: self._verify,
            INS_CHANGE_REFERENCE: self._change_reference,
            INS_RESET_RETRY: self._reset_retry,
            INS_GENERATE: self._generate,
            INS_AUTHENTICATE: self._authenticate,
            INS_GET_DATA: self._get_data,
            INS_PUT_DATA: self._put_data,
            INS_MOVE_KEY: self._move_key,
            INS_METADATA: self._metadata,
            INS_SERIAL: self._serial,
            INS_ATTEST: self._attest,
            INS_SET_PIN_RETRIES: self._set_pin_retries,
            INS_RESET: self._factory_reset,
            INS_VERSION: self._version,
            INS_IMPORT: self._import,
            INS_SET_MGMT_KEY: self._set_mgmt_key,
        }

    def _get_response(self, cmd: Command) -> bytes:
        if (cmd.p1, cmd.p2) != (0, 0):
            raise _Status(SW_WRONG_P1P2)
        if not self._pending_response:
            raise _Status(SW_CONDITIONS)
        data, self._pending_response = self._pending_response, b""
        return self._respond(data, cmd)

    @staticmethod
    def _require_p1p2(cmd: Command, p1: int, p2: int) -> None:
        if (cmd.p1, cmd.p2) != (p1, p2):
            raise _Status(SW_WRONG_P1P2)

    def _require_mgmt(self) -> None:
        if not self._mgmt_authenticated:
            raise _Status(SW_SECURITY)

    def _key_slots(self) -> frozenset[int]:
        retired = range(0x82, self.options.last_retired_slot + 1)
        return frozenset({0x9A, 0x9C, 0x9D, 0x9E, *retired})

    def _require_key_slot(self, slot: int) -> None:
        if slot not in self._key_slots():
            raise _Status(SW_WRONG_P1P2)

    # -- SELECT, version, serial --------------------------------------------------------------

    def _select(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x04 or cmd.p2 not in (0x00, 0x0C):
            raise _Status(SW_WRONG_P1P2)
        aid = cmd.data
        # Only below firmware 5, where peers need it for the serial: on a 5.x key ykman would go on
        # to read the OTP configuration, which the simulator does not model (it answers 6A82 there).
        if (self.options.is_yubikey and self.options.firmware < (5, 0, 0) and len(aid) >= len(OTP_AID)
                and aid.startswith(OTP_AID)):  # fmt: skip
            self._reset_security()  # PIV is no longer selected: its security status is gone
            self._otp_selected = True
            # the OTP status: firmware, programming sequence, touch level (no slot programmed)
            return bytes(self.options.firmware) + b"\x00\x00\x00"
        if len(aid) < len(PIV_RID) or not PIV_AID.startswith(aid):
            raise _Status(SW_NOT_FOUND)  # the current selection stays as it was
        # (Re)selecting PIV drops the security status, as on real cards (OpenSC avoids reselecting
        # for exactly this reason); some keep the PIN verified (``pin_kept_on_select``).
        pin_verified = self._pin_verified
        self._reset_security()
        self._pin_verified = pin_verified and self.options.pin_kept_on_select
        self._selected = True
        if cmd.p2 == 0x0C:
            return b""
        return self._application_property_template()

    def _application_property_template(self) -> bytes:
        algorithms_ac = b"".join(
            tlv.encode(0x80, bytes([alg])) for alg in (self.options.default_mgmt_algorithm, 0x07, 0x11, 0x14)
        ) + tlv.encode(0x06, b"\x00")
        if self.options.is_yubikey:
            # YubiKeys answer with the PIX (with version) in 4F and the RID in 79, as SP 800-73-4.
            body = tlv.encode(0x4F, PIV_PIX) + tlv.encode(0x79, tlv.encode(0x4F, PIV_RID))
        else:
            body = (
                tlv.encode(0x4F, PIV_AID)
                + tlv.encode(0x79, tlv.encode(0x4F, PIV_RID))
                + tlv.encode(0x50, b"Provision Sim PIV")
            )
        return tlv.encode(0x61, body + tlv.encode(0xAC, algorithms_ac))

    def _otp_request(self, cmd: Command) -> bytes:
        """The OTP application: only the serial request (API request 01, slot 10)."""
        if cmd.ins != INS_OTP_API:
            raise _Status(SW_INS_NOT_SUPPORTED)
        if cmd.p1 != OTP_SLOT_DEVICE_SERIAL or cmd.p2 != 0:
            raise _Status(SW_WRONG_P1P2)
        return self.options.serial.to_bytes(4, "big")

    def _version(self, cmd: Command) -> bytes:
        self._require_p1p2(cmd, 0, 0)
        return bytes(self.options.firmware)

    def _serial(self, cmd: Command) -> bytes:
        # A YubiKey NEO or 4 has no GET SERIAL in its PIV application (it came with firmware 5;
        # yubikit's PivSession.get_serial requires 5.0): peers read the serial through OTP there.
        if self.options.no_f8 or (self.options.is_yubikey and self.options.firmware < (5, 0, 0)):
            raise _Status(SW_INS_NOT_SUPPORTED)
        self._require_p1p2(cmd, 0, 0)
        return self.options.serial.to_bytes(4, "big")

    # -- PIN and PUK --------------------------------------------------------------------------

    def _verify(self, cmd: Command) -> bytes:
        if cmd.p1 not in (0x00, 0xFF):
            raise _Status(SW_WRONG_P1P2)
        if cmd.p2 != PIN_REF:
            raise _Status(SW_REF_NOT_FOUND)
        st = self._state
        if cmd.p1 == 0xFF:  # "reset the security status" (ISO 7816-4, used by ykman)
            if cmd.data:
                raise _Status(SW_WRONG_LENGTH)
            self._pin_verified = False
            return b""
        if not cmd.data:  # status: costs no try
            if st.pin_tries_left == 0:
                raise _Status(SW_BLOCKED)
            if self._pin_verified:
                return b""
            raise _Status(_tries_sw(st.pin_tries_left))
        if len(cmd.data) != 8:
            raise _Status(SW_WRONG_DATA)
        if st.pin_tries_left == 0:
            raise _Status(SW_BLOCKED)
        if cmd.data != st.pin:
            self._pin_verified = False
            st.pin_tries_left -= 1
            self._commit(counts_as_write=False)
            raise _Status(_tries_sw(st.pin_tries_left))
        if st.pin_tries_left != st.pin_tries_max:
            st.pin_tries_left = st.pin_tries_max
            self._commit(counts_as_write=False)
        self._pin_verified = True
        self._pin_always_ready = True
        return b""

    @staticmethod
    def _valid_new_pin(padded: bytes) -> bool:
        value = padded.rstrip(b"\xff")
        return 6 <= len(value) <= 8 and b"\xff" not in value

    def _change_reference(self, cmd: Command) -> bytes:
        if cmd.p1 != 0:
            raise _Status(SW_WRONG_P1P2)
        if cmd.p2 not in (PIN_REF, PUK_REF):
            raise _Status(SW_REF_NOT_FOUND)
        if len(cmd.data) != 16:
            raise _Status(SW_WRONG_DATA)
        old, new = cmd.data[:8], cmd.data[8:]
        if not self._valid_new_pin(new):
            raise _Status(SW_WRONG_DATA)
        st = self._state
        is_pin = cmd.p2 == PIN_REF
        left = st.pin_tries_left if is_pin else st.puk_tries_left
        if left == 0:
            raise _Status(SW_BLOCKED)
        if old != (st.pin if is_pin else st.puk):
            if is_pin:
                self._pin_verified = False
                st.pin_tries_left -= 1
            else:
                st.puk_tries_left -= 1
            self._commit()
            raise _Status(_tries_sw(left - 1))
        if is_pin:
            st.pin, st.pin_tries_left = new, st.pin_tries_max
        else:
            st.puk, st.puk_tries_left = new, st.puk_tries_max
        self._commit()
        return b""

    def _reset_retry(self, cmd: Command) -> bytes:
        if cmd.p1 != 0:
            raise _Status(SW_WRONG_P1P2)
        if cmd.p2 != PIN_REF:
            raise _Status(SW_REF_NOT_FOUND)
        if len(cmd.data) != 16:
            raise _Status(SW_WRONG_DATA)
        puk, new_pin = cmd.data[:8], cmd.data[8:]
        if not self._valid_new_pin(new_pin):
            raise _Status(SW_WRONG_DATA)
        st = self._state
        if st.puk_tries_left == 0:
            raise _Status(SW_BLOCKED)
        if puk != st.puk:
            st.puk_tries_left -= 1
            self._commit()
            raise _Status(_tries_sw(st.puk_tries_left))
        st.pin, st.pin_tries_left = new_pin, st.pin_tries_max
        st.puk_tries_left = st.puk_tries_max
        self._commit()
        return b""

    def _set_pin_retries(self, cmd: Command) -> bytes:
        if not (self._mgmt_authenticated and self._pin_verified):
            raise _Status(SW_SECURITY)
        if cmd.p1 == 0 or cmd.p2 == 0:
            raise _Status(SW_WRONG_P1P2)
        st = self._state
        # As on a YubiKey: PIN and PUK go back to their defaults along with the new counts.
        st.pin, st.puk = pad_pin(DEFAULT_PIN), pad_pin(DEFAULT_PUK)
        st.pin_tries_max = st.pin_tries_left = cmd.p1
        st.puk_tries_max = st.puk_tries_left = cmd.p2
        self._pin_verified = False
        self._commit()
        return b""

    def _factory_reset(self, cmd: Command) -> bytes:
        self._require_p1p2(cmd, 0, 0)
        st = self._state
        if st.pin_tries_left != 0 or st.puk_tries_left != 0:
            raise _Status(SW_CONDITIONS)
        self._state = fresh_state(self.options)
        self._key_cache.clear()
        self._commit()
        self._reset_security()
        self._selected = True
        return b""

    # -- management key -----------------------------------------------------------------------

    def _mgmt_cipher(self) -> Cipher[modes.ECB]:
        st = self._state
        if st.mgmt_algorithm == MGMT_TDES:
            return Cipher(TripleDES(st.mgmt_key), modes.ECB())  # noqa: S305 - the PIV protocol
        return Cipher(algorithms.AES(st.mgmt_key), modes.ECB())  # noqa: S305 - the PIV protocol

    def _mgmt_block(self) -> int:
        return 8 if self._state.mgmt_algorithm == MGMT_TDES else 16

    def _encrypt(self, block: bytes) -> bytes:
        enc = self._mgmt_cipher().encryptor()
        return enc.update(block) + enc.finalize()

    def _authenticate(self, cmd: Command) -> bytes:
        if cmd.p2 == SLOT_MGMT:
            return self._authenticate_mgmt(cmd)
        return self._use_private_key(cmd)

    def _dynamic_auth(self, data: bytes) -> dict[int, bytes]:
        outer = _parse_tlvs(data)
        if len(outer) != 1 or outer[0][0] != 0x7C:
            raise _Status(SW_WRONG_DATA)
        return _unique_tlvs(outer[0][1], {0x80, 0x81, 0x82, 0x85})

    def _authenticate_mgmt(self, cmd: Command) -> bytes:
        st = self._state
        if cmd.p1 != st.mgmt_algorithm:
            raise _Status(SW_WRONG_DATA)
        items = self._dynamic_auth(cmd.data)
        block = self._mgmt_block()
        shape = {tag: bool(value) for tag, value in items.items()}
        if shape == {0x80: False}:  # step 1 of mutual auth: a new attempt starts from nothing
            self._mgmt_authenticated = False
            self._mgmt_challenge = None
            self._mgmt_witness = os.urandom(block)
            return tlv.encode(0x7C, tlv.encode(0x80, self._encrypt(self._mgmt_witness)))
        if shape == {0x80: True, 0x81: True}:  # step 2: our witness decrypted + their challenge
            expected, self._mgmt_witness = self._mgmt_witness, None
            if expected is None:
                raise _Status(SW_CONDITIONS)
            if len(items[0x80]) != block or items[0x80] != expected or len(items[0x81]) != block:
                self._mgmt_authenticated = False
                raise _Status(SW_SECURITY)
            self._mgmt_authenticated = True
            return tlv.encode(0x7C, tlv.encode(0x82, self._encrypt(items[0x81])))
        if shape == {0x81: False}:  # one-way (external) auth, step 1: give a challenge
            self._mgmt_authenticated = False
            self._mgmt_witness = None
            self._mgmt_challenge = os.urandom(block)
            return tlv.encode(0x7C, tlv.encode(0x81, self._mgmt_challenge))
        if shape == {0x82: True}:  # one-way auth, step 2: the challenge encrypted
            challenge, self._mgmt_challenge = self._mgmt_challenge, None
            if challenge is None:
                raise _Status(SW_CONDITIONS)
            if items[0x82] != self._encrypt(challenge):
                self._mgmt_authenticated = False
                raise _Status(SW_SECURITY)
            self._mgmt_authenticated = True
            return b""
        raise _Status(SW_WRONG_DATA)

    def _set_mgmt_key(self, cmd: Command) -> bytes:
        if cmd.p1 != 0xFF or cmd.p2 not in (0xFF, 0xFE):
            raise _Status(SW_WRONG_P1P2)
        self._require_mgmt()
        if len(cmd.data) < 1:
            raise _Status(SW_WRONG_DATA)
        algorithm = cmd.data[0]
        items = _unique_tlvs(cmd.data[1:], {SLOT_MGMT})
        key = items.get(SLOT_MGMT)
        if key is None or MGMT_KEY_LENGTHS.get(algorithm) != len(key):
            raise _Status(SW_WRONG_DATA)
        if algorithm != MGMT_TDES and self.options.firmware < (5, 4, 0):
            raise _Status(SW_WRONG_DATA)
        st = self._state
        st.mgmt_algorithm, st.mgmt_key, st.mgmt_touch = algorithm, key, cmd.p2 == 0xFE
        self._commit()
        return b""

    # -- keys ---------------------------------------------------------------------------------

    def _resolve_policies(self, slot: int, items: dict[int, bytes]) -> tuple[int, int]:
        pin_policy = self._policy_byte(items, 0xAA, 3)
        touch_policy = self._policy_byte(items, 0xAB, 3)
        if self.options.touch_restricted and touch_policy not in (TOUCH_DEFAULT, TOUCH_NEVER):
            raise _Status(SW_FUNC_NOT_SUPPORTED)
        if pin_policy == PIN_POLICY_DEFAULT:
            if (slot == 0x9C and self.options.pin_always_9c) or slot in self.options.pin_always_also:
                pin_policy = PIN_POLICY_ALWAYS
            elif slot == 0x9E:
                pin_policy = PIN_POLICY_NEVER
            else:
                pin_policy = PIN_POLICY_ONCE
        if touch_policy == TOUCH_DEFAULT:
            touch_policy = TOUCH_NEVER
        return pin_policy, touch_policy

    @staticmethod
    def _policy_byte(items: dict[int, bytes], tag: int, highest: int) -> int:
        value = items.get(tag)
        if value is None:
            return 0
        if len(value) != 1 or value[0] > highest:
            raise _Status(SW_WRONG_DATA)
        return value[0]

    def _require_algorithm(self, algorithm: int) -> None:
        if algorithm not in self.options.supported_algorithms:
            raise _Status(SW_WRONG_DATA if self.options.is_yubikey else SW_FUNC_NOT_SUPPORTED)

    def _store_key(
        self, slot: int, algorithm: int, key: PrivateKey, policies: tuple[int, int], origin: int
    ) -> None:
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._key_cache[der] = key
        self._state.keys[slot] = KeyRecord(algorithm, policies[0], policies[1], origin, der)
        self._commit()

    def _import(self, cmd: Command) -> bytes:
        algorithm, slot = cmd.p1, cmd.p2
        self._require_key_slot(slot)
        self._require_mgmt()
        self._require_algorithm(algorithm)
        policy_tags = {0xAA, 0xAB}
        key: PrivateKey
        if algorithm in RSA_BITS:
            items = _unique_tlvs(cmd.data, {1, 2, 3, 4, 5} | policy_tags)
            key = self._rsa_from_crt(RSA_BITS[algorithm], items)
        elif algorithm in EC_CURVES:
            items = _unique_tlvs(cmd.data, {6} | policy_tags)
            curve, size, _ = EC_CURVES[algorithm]
            scalar = items.get(6)
            if scalar is None or not 0 < len(scalar) <= size:
                raise _Status(SW_WRONG_DATA)
            try:
                key = ec.derive_private_key(int.from_bytes(scalar, "big"), curve)
            except ValueError:
                raise _Status(SW_WRONG_DATA) from None
        else:  # Ed25519 (tag 07) or X25519 (tag 08), as yubikit encodes them
            tag = 0x07 if algorithm == ALG_ED25519 else 0x08
            items = _unique_tlvs(cmd.data, {tag} | policy_tags)
            raw = items.get(tag)
            if raw is None or len(raw) != 32:
                raise _Status(SW_WRONG_DATA)
            if algorithm == ALG_ED25519:
                key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
            else:
                key = x25519.X25519PrivateKey.from_private_bytes(raw)
        policies = self._resolve_policies(slot, items)
        self._store_key(slot, algorithm, key, policies, ORIGIN_IMPORTED)
        return b""

    @staticmethod
    def _rsa_from_crt(bits: int, items: dict[int, bytes]) -> rsa.RSAPrivateKey:
        half = bits // 16
        parts = []
        for tag in (1, 2, 3, 4, 5):
            value = items.get(tag)
            if value is None or not 0 < len(value) <= half:
                raise _Status(SW_WRONG_DATA)
            parts.append(int.from_bytes(value, "big"))
        p, q, dp, dq, qinv = parts
        e = 65537  # the only public exponent a YubiKey takes
        n = p * q
        if p < 3 or q < 3 or p == q or n.bit_length() != bits:
            raise _Status(SW_WRONG_DATA)
        try:
            d = pow(e, -1, (p - 1) * (q - 1))
            consistent = dp == d % (p - 1) and dq == d % (q - 1) and qinv == pow(q, -1, p)
        except ValueError:
            consistent = False
        if not consistent:
            raise _Status(SW_WRONG_DATA)
        numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qinv, rsa.RSAPublicNumbers(e, n))
        try:
            return numbers.private_key(unsafe_skip_rsa_key_validation=True)
        except ValueError:
            raise _Status(SW_WRONG_DATA) from None

    def _generate(self, cmd: Command) -> bytes:
        if cmd.p1 != 0:
            raise _Status(SW_WRONG_P1P2)
        slot = cmd.p2
        self._require_key_slot(slot)
        self._require_mgmt()
        outer = _parse_tlvs(cmd.data)
        if len(outer) != 1 or outer[0][0] != 0xAC:
            raise _Status(SW_WRONG_DATA)
        items = _unique_tlvs(outer[0][1], {0x80, 0xAA, 0xAB})
        alg_bytes = items.get(0x80)
        if alg_bytes is None or len(alg_bytes) != 1:
            raise _Status(SW_WRONG_DATA)
        algorithm = alg_bytes[0]
        self._require_algorithm(algorithm)
        policies = self._resolve_policies(slot, items)
        key: PrivateKey
        if algorithm in RSA_BITS:
            key = rsa.generate_private_key(65537, RSA_BITS[algorithm])
        elif algorithm in EC_CURVES:
            key = ec.generate_private_key(EC_CURVES[algorithm][0])
        elif algorithm == ALG_ED25519:
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            key = x25519.X25519PrivateKey.generate()
        self._store_key(slot, algorithm, key, policies, ORIGIN_GENERATED)
        return tlv.encode(0x7F49, self._public_key_tlvs(key))

    def _move_key(self, cmd: Command) -> bytes:
        if self.options.firmware < (5, 7, 0):
            raise _Status(SW_INS_NOT_SUPPORTED)
        to_slot, from_slot = cmd.p1, cmd.p2
        self._require_key_slot(from_slot)
        if to_slot != 0xFF:
            self._require_key_slot(to_slot)
        self._require_mgmt()
        st = self._state
        if from_slot not in st.keys:
            raise _Status(SW_REF_NOT_FOUND)
        if to_slot != 0xFF and to_slot in st.keys:
            raise _Status(SW_CONDITIONS)
        record = st.keys.pop(from_slot)
        if to_slot != 0xFF:
            st.keys[to_slot] = record
        self._commit()
        return b""

    def _private_key(self, record: KeyRecord) -> PrivateKey:
        cached = self._key_cache.get(record.private_der)
        if cached is not None:
            return cached
        loaded = serialization.load_der_private_key(
            record.private_der, password=None, unsafe_skip_rsa_key_validation=True
        )
        if not isinstance(
            loaded,
            rsa.RSAPrivateKey
            | ec.EllipticCurvePrivateKey
            | ed25519.Ed25519PrivateKey
            | x25519.X25519PrivateKey,
        ):
            raise TypeError(f"unexpected key type in the state: {type(loaded).__name__}")
        self._key_cache[record.private_der] = loaded
        return loaded

    @staticmethod
    def _public_key_tlvs(key: PrivateKey) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            pub = key.public_key().public_numbers()
            n_bytes = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
            e_bytes = pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")
            return tlv.encode(0x81, n_bytes) + tlv.encode(0x82, e_bytes)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            point = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return tlv.encode(0x86, point)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return tlv.encode(0x86, raw)

    def _use_private_key(self, cmd: Command) -> bytes:
        slot = cmd.p2
        self._require_key_slot(slot)
        record = self._state.keys.get(slot)
        if record is None or record.algorithm != cmd.p1:
            raise _Status(SW_WRONG_DATA)
        items = self._dynamic_auth(cmd.data)
        if items.get(0x82) != b"" or len(items) != 2 or not ({0x81, 0x85} & items.keys()):
            raise _Status(SW_WRONG_DATA)
        if record.pin_policy == PIN_POLICY_ALWAYS and not self._always_window:
            raise _Status(SW_SECURITY)
        if record.pin_policy == PIN_POLICY_ONCE and not self._pin_verified:
            raise _Status(SW_SECURITY)
        # Touch policies are satisfied at once: nobody sits at a simulated card.
        key = self._private_key(record)
        if 0x81 in items:
            result = self._sign_or_decrypt(record.algorithm, key, items[0x81])
        else:
            result = self._key_agreement(key, items[0x85])
        return tlv.encode(0x7C, tlv.encode(0x82, result))

    @staticmethod
    def _sign_or_decrypt(algorithm: int, key: PrivateKey, data: bytes) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            size = RSA_BITS[algorithm] // 8
            numbers = key.private_numbers()
            n = numbers.public_numbers.n
            message = int.from_bytes(data, "big")
            if len(data) != size or message >= n:
                raise _Status(SW_WRONG_DATA)
            return pow(message, numbers.d, n).to_bytes(size, "big")  # raw RSA on the padded block
        if isinstance(key, ec.EllipticCurvePrivateKey):
            _, size, digest = EC_CURVES[algorithm]
            if not 0 < len(data) <= size:
                raise _Status(SW_WRONG_DATA)
            # A shorter hash is the same integer left-padded: sign it as a full-size digest.
            return key.sign(data.rjust(size, b"\x00"), ec.ECDSA(Prehashed(digest)))
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        raise _Status(SW_WRONG_DATA)  # X25519 only agrees keys

    @staticmethod
    def _key_agreement(key: PrivateKey, peer: bytes) -> bytes:
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                peer_key = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, peer)
                return key.exchange(ec.ECDH(), peer_key)
            if isinstance(key, x25519.X25519PrivateKey):
                return key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            raise _Status(SW_WRONG_DATA) from None
        raise _Status(SW_WRONG_DATA)

    def _attest(self, cmd: Command) -> bytes:
        slot = cmd.p1
        self._require_key_slot(slot)
        if cmd.p2 != 0:
            raise _Status(SW_WRONG_P1P2)
        record = self._state.keys.get(slot)
        if record is None:
            raise _Status(SW_REF_NOT_FOUND)
        # A YubiKey attests only keys it generated; the simulator has no attestation key at all.
        raise _Status(SW_WRONG_DATA if record.origin == ORIGIN_IMPORTED else SW_FUNC_NOT_SUPPORTED)

    # -- metadata -----------------------------------------------------------------------------

    def _metadata(self, cmd: Command) -> bytes:
        if not self.options.has_metadata:
            raise _Status(SW_INS_NOT_SUPPORTED)
        if cmd.p1 != 0:
            raise _Status(SW_WRONG_P1P2)
        st = self._state
        ref = cmd.p2
        if ref in (PIN_REF, PUK_REF):
            is_pin = ref == PIN_REF
            default = st.pin_is_default if is_pin else st.puk_is_default
            tries = (st.pin_tries_max, st.pin_tries_left) if is_pin else (st.puk_tries_max, st.puk_tries_left)
            items = [(0x05, bytes([int(default)])), (0x06, bytes([min(t, 255) for t in tries]))]
            return tlv.encode_many(items if self.options.metadata_like_pivapplet else [(0x01, b"\xff"), *items])
        if ref == SLOT_MGMT:
            touch = TOUCH_ALWAYS if st.mgmt_touch else TOUCH_NEVER
            return tlv.encode_many(
                [
                    (0x01, bytes([st.mgmt_algorithm])),
                    (0x02, bytes([PIN_POLICY_DEFAULT, touch])),
                    (0x05, bytes([int(st.mgmt_is_default)])),
                ]
            )
        if ref == SLOT_OCC_AUTH:
            # Biometric (OCC) metadata exists only on a YubiKey Bio; other YubiKeys say 6A88, which
            # `ykman piv info` takes as "no biometrics" (any other SW aborts it).
            raise _Status(SW_REF_NOT_FOUND)
        if self.options.missing_slots_look_empty and ref not in self._key_slots():
            raise _Status(SW_REF_NOT_FOUND)
        self._require_key_slot(ref)
        record = st.keys.get(ref)
        if self.options.metadata_like_pivapplet:
            if record is None:
                return tlv.encode_many([(0x02, bytes([PIN_POLICY_DEFAULT, TOUCH_NEVER])), (0x03, b"\x00")])
            if record.origin == ORIGIN_IMPORTED:
                raise _Status(SW_UNKNOWN)
        if record is None:
            raise _Status(SW_REF_NOT_FOUND)
        return tlv.encode_many(
            [
                (0x01, bytes([record.algorithm])),
                (0x02, bytes([record.pin_policy, record.touch_policy])),
                (0x03, bytes([record.origin])),
                (0x04, self._public_key_tlvs(self._private_key(record))),
            ]
        )

    # -- data objects -------------------------------------------------------------------------

    def _object_id(self, raw: bytes) -> int:
        oid = int.from_bytes(raw, "big")
        if len(raw) == 1 and oid == OBJ_DISCOVERY:
            return oid
        if len(raw) == 2 and oid == 0x7F61:
            return oid
        if len(raw) == 3 and 0x5FC101 <= oid <= 0x5FC123:
            return oid
        if len(raw) == 3 and 0x5FFF00 <= oid <= 0x5FFFFF:
            return oid
        raise _Status(SW_NOT_FOUND)

    def _get_data(self, cmd: Command) -> bytes:
        self._require_p1p2(cmd, 0x3F, 0xFF)
        items = _parse_tlvs(cmd.data)
        if len(items) != 1 or items[0][0] != 0x5C or not 1 <= len(items[0][1]) <= 3:
            raise _Status(SW_WRONG_DATA)
        oid = self._object_id(items[0][1])
        if oid == OBJ_DISCOVERY:
            return tlv.encode(0x7E, DISCOVERY)
        if oid >> 8 == 0x5FFF and not self.options.has_vendor_objects or oid in self.options.absent_objects:
            raise _Status(SW_NOT_FOUND)
        if oid in PIN_PROTECTED_OBJECTS and not self._pin_verified:
            raise _Status(SW_SECURITY)
        content = self._state.objects.get(oid)
        if content is None:
            raise _Status(SW_NOT_FOUND)
        return tlv.encode(0x53, content)

    def _store_partial_object(self, data: bytes) -> None:
        """``chain_stored_per_segment``: what has arrived of a chained PUT DATA is already stored, as
        the content of its object (whose inner TLV is then cut short until the last segment)."""
        if len(data) < 7 or data[0] != 0x5C or not 1 <= data[1] <= 3 or data[2 + data[1]] != 0x53:
            return  # not enough yet to name the object: nothing stored
        oid = int.from_bytes(data[2 : 2 + data[1]], "big")
        pos = 3 + data[1]
        length_bytes = data[pos] - 0x80 if data[pos] > 0x80 else 0
        content = data[pos + 1 + length_bytes :]
        if not self._mgmt_authenticated or oid in self.options.absent_objects or not 0x5FC101 <= oid <= 0x5FC123:
            return
        if len(content) > self.options.max_object_content:
            self._chain = None
            raise _Status(SW_WRONG_LENGTH)  # what was stored before this segment stays
        self._state.objects[oid] = content
        self._commit()

    def _put_data(self, cmd: Command) -> bytes:
        self._require_p1p2(cmd, 0x3F, 0xFF)
        items = _parse_tlvs(cmd.data)
        if len(items) != 2 or items[0][0] != 0x5C or items[1][0] != 0x53 or not 1 <= len(items[0][1]) <= 3:
            raise _Status(SW_WRONG_DATA)
        self._require_mgmt()
        try:
            oid = self._object_id(items[0][1])
        except _Status:
            raise _Status(SW_WRONG_DATA) from None
        if oid == OBJ_DISCOVERY:
            raise _Status(SW_FUNC_NOT_SUPPORTED)  # fixed on this card
        if oid >> 8 == 0x5FFF and not self.options.has_vendor_objects:
            raise _Status(SW_WRONG_P1P2)
        if oid in self.options.absent_objects:
            raise _Status(SW_NOT_FOUND)
        content = items[1][1]
        if len(content) > self.options.max_object_content:
            raise _Status(SW_WRONG_LENGTH if self.options.chain_stored_per_segment else SW_NO_SPACE)
        if content:
            self._state.objects[oid] = content
        else:  # an empty object deletes it, as ykman's "delete certificate" relies on
            self._state.objects.pop(oid, None)
        self._commit()
        return b""
