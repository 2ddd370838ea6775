"""A PIV session (SP 800-73-4 part 2 + the YubiKey extensions) over an ApduChannel.

Each method is one card operation with typed results: bytes in, frozen dataclasses or
``cryptography`` objects out, one exception type per failure (``provision.errors``). Nothing
here prints or logs. Secrets (PIN, management key, private keys) are copied into bytearrays we
control and zeroed after use; the ``bytes`` that ``Secret.reveal()`` and the transport need are
immutable and cannot be wiped, and neither can Python integers (RSA/EC private numbers): that is
a limit of the language, not something this module can fix.

Choices worth knowing:

- ``get_metadata`` raises ``CardNotSupportedError`` on cards without GET METADATA (``6D00``,
  also ``6A81``/``6B00``/``6E00`` seen on other applets) and returns None for an empty slot
  (``6A88``).
- ``authenticate`` picks the management-key algorithm from the card's own metadata (slot 9B,
  tag 01) when it has F7; otherwise the caller's ``key_type``; otherwise by key length: 16 → AES-128,
  32 → AES-256, 24 → 3DES on firmware before 5.7 (and on cards without GET VERSION), AES-192 from
  5.7 on (the YubiKey 5.7 default key changed algorithm, not value).
- Slot names live in vendor object ``5FFF50`` (see ``SLOT_NAMES_OBJECT_ID``).
- What differs between cards (status-word sets, firmware gates) is in ``provision.piv.profiles``.
"""

from __future__ import annotations

import hmac
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

from provision.card.apdu import SW_OK, ApduChannel, describe_sw
from provision.errors import (
    CardNotSupportedError,
    CardProtocolError,
    CardStatusError,
    KeyMismatchError,
    ManagementKeyError,
    MetadataUnavailableError,
    PinError,
    PinFormatError,
    PukError,
)
from provision.i18n import msg
from provision.piv import tlv
from provision.piv.identity import (
    INS_SELECT,
    OBJECT_ID_CHUID,
    object_id_tlv,
    send_get_object,
    send_get_serial,
    send_select,
)
from provision.piv.profiles import (
    MANAGEMENT_KEY_REFUSED_SW,
    UNSUPPORTED_SW,
    VENDOR_REFUSED_SW,
    default_management_key_algorithm,
    refuses_vendor_instruction,
)
from provision.piv.slots import ALGORITHM_BY_CODE, Algorithm, find_algorithm, slot_by_ref
from provision.secrets import Secret

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE = 0x24
INS_RESET_RETRY_COUNTER = 0x2C
INS_AUTHENTICATE = 0x87
INS_PUT_DATA = 0xDB
INS_GET_METADATA = 0xF7
INS_GET_VERSION = 0xFD
# A YubiKey's OTP application over CCID (yubikit's AID.OTP) and its API request for the serial.
YUBIKEY_OTP_AID = bytes.fromhex("A0000005272001")
INS_OTP_API = 0x01
OTP_SLOT_DEVICE_SERIAL = 0x10
INS_IMPORT_KEY = 0xFE
INS_SET_MANAGEMENT_KEY = 0xFF  # Yubico: 00 FF FF FF|FE  <alg> 9B len key  (FE: touch required)

KEY_REF_PIN = 0x80
KEY_REF_PUK = 0x81
KEY_REF_MANAGEMENT = 0x9B

OBJECT_ID_DISCOVERY = 0x7E

# Project slot-name object. Vendor range 5FFFxx; taken elsewhere: 5FFF00 (ykman PIVMAN data,
# yubico-piv-tool ADMIN DATA), 5FFF01 (attestation certificate), 5FFF10 (Microsoft container map),
# 5FFF11-5FFF15 (Microsoft roots; 5FFF16-1F left free for that family to grow). 5FFF50 is used by
# neither yubikit nor yubico-piv-tool nor OpenSC.
# Encoding of the value inside 53: 01 01 <format=01>, then per named slot, in key-ref order,
#   A0 L { 80 01 <key ref>  81 L <name, UTF-8, 1..64 bytes> }
SLOT_NAMES_OBJECT_ID = 0x5FFF50
SLOT_NAMES_FORMAT = 1
SLOT_NAME_MAX_BYTES = 64

SW_REFERENCE_NOT_FOUND = 0x6A88
SW_FILE_NOT_FOUND = 0x6A82
SW_WRONG_P1P2 = 0x6A86
SW_SECURITY_NOT_SATISFIED = 0x6982
SW_AUTH_BLOCKED = 0x6983
SW_UNKNOWN = 0x6F00

MANAGEMENT_KEY_ALGORITHMS: dict[str, int] = {"3des": 0x03, "aes128": 0x08, "aes192": 0x0A, "aes256": 0x0C}
_MGMT_KEY_LENGTH = {0x03: 24, 0x08: 16, 0x0A: 24, 0x0C: 32}
_MGMT_KEY_NAME = {v: k for k, v in MANAGEMENT_KEY_ALGORITHMS.items()}

ManagementKeyType = Literal["3des", "aes128", "aes192", "aes256"]
PinPolicy = Literal["default", "never", "once", "always"]
TouchPolicy = Literal["default", "never", "always", "cached"]
PIN_POLICIES: dict[str, int] = {"default": 0x00, "never": 0x01, "once": 0x02, "always": 0x03}
TOUCH_POLICIES: dict[str, int] = {"default": 0x00, "never": 0x01, "always": 0x02, "cached": 0x03}

# DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | x25519.X25519PublicKey
PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey
)


def _triple_des(key: bytes | bytearray) -> CipherAlgorithm:
    # TripleDES moved to the "decrepit" module in cryptography 43 and leaves the old one in 48.
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - cryptography < 43
        legacy: Callable[[bytes | bytearray], CipherAlgorithm] = getattr(algorithms, "TripleDES")  # noqa: B009
        return legacy(key)
    # A bytearray works at runtime (and stays wipeable); the stubs only say bytes.
    return TripleDES(cast(bytes, key))


def _management_cipher(algorithm: int, key: bytearray) -> Cipher[modes.ECB]:
    cipher_alg = _triple_des(key) if algorithm == 0x03 else algorithms.AES(key)
    return Cipher(cipher_alg, modes.ECB())  # noqa: S305 - PIV mutual auth is one block, ECB by spec


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


# --- pure codecs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplicationProperties:
    """The Application Property Template (tag 61) of the SELECT answer, SP 800-73-4 part 2 3.1.1."""

    aid: bytes  # tag 4F: the PIX (00 00 10 00 01 00) or the full AID
    authority: bytes | None  # tag 79/4F: A0 00 00 03 08
    label: str | None  # tag 50
    url: str | None  # tag 5F50
    algorithms: tuple[int, ...]  # tag AC/80, one per supported algorithm


def parse_application_properties(data: bytes) -> ApplicationProperties:
    fields = tlv.parse_dict(tlv.unwrap(data, 0x61))
    if 0x4F not in fields:
        raise CardProtocolError(msg('the PIV SELECT answer has no application identifier (tag 4F)'))
    authority = tlv.unwrap(fields[0x79], 0x4F) if 0x79 in fields else None
    algs: list[int] = []
    if 0xAC in fields:
        for tag, value in tlv.iter_tlv(fields[0xAC]):
            if tag == 0x80:
                if len(value) != 1:
                    raise CardProtocolError(msg('malformed algorithm entry in the SELECT answer'))
                algs.append(value[0])
    return ApplicationProperties(
        aid=fields[0x4F],
        authority=authority,
        label=fields[0x50].decode("utf-8", "replace") if 0x50 in fields else None,
        url=fields[0x5F50].decode("utf-8", "replace") if 0x5F50 in fields else None,
        algorithms=tuple(algs),
    )


@dataclass(frozen=True)
class SlotMetadata:
    """GET METADATA (YubiKey 5.3+). Fields the card did not send are None."""

    slot: int
    algorithm: int  # key algorithm (06, 07, 11 ...) or management-key algorithm (03, 08, 0A, 0C)
    pin_policy: int | None
    touch_policy: int | None
    origin: int | None  # 1 generated on the card, 2 imported
    public_key: PublicKey | None
    is_default: bool | None  # PIN/PUK/management key still the factory value
    retries_total: int | None
    retries_left: int | None

    @property
    def algorithm_info(self) -> Algorithm | None:
        return ALGORITHM_BY_CODE.get(self.algorithm)


def _single_byte(fields: dict[int, bytes], tag: int) -> int | None:
    if tag not in fields:
        return None
    value = fields[tag]
    if len(value) != 1:
        raise CardProtocolError(msg('metadata tag {tag:02X} has {len} bytes, expected 1', tag=tag, len=len(value)))
    return value[0]


def parse_public_key(algorithm: int, encoded: bytes) -> PublicKey | None:
    """The public key TLVs of GET METADATA tag 04 / GENERATE (RSA 81 n 82 e; EC/25519 86)."""
    info = ALGORITHM_BY_CODE.get(algorithm)
    if info is None:
        return None
    fields = tlv.parse_dict(encoded)
    try:
        if info.key_type == "RSA":
            if 0x81 not in fields or 0x82 not in fields:
                raise CardProtocolError(msg('RSA public key without modulus (81) or exponent (82)'))
            n = int.from_bytes(fields[0x81], "big")
            e = int.from_bytes(fields[0x82], "big")
            if n.bit_length() != info.bits:
                raise CardProtocolError(msg('RSA modulus has {bit_length} bits, expected {bits}', bit_length=n.bit_length(), bits=info.bits))
            return rsa.RSAPublicNumbers(e, n).public_key()
        if 0x86 not in fields:
            raise CardProtocolError(msg('public key without point (86)'))
        point = fields[0x86]
        if info.key_type == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(point)
        if info.key_type == "X25519":
            return x25519.X25519PublicKey.from_public_bytes(point)
        curve: ec.EllipticCurve = ec.SECP256R1() if info.bits == 256 else ec.SECP384R1()
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise CardProtocolError(msg('the card sent an invalid {name} public key: {exc}', name=info.name, exc=exc)) from None


ALGORITHM_PIN = 0xFF  # tag 01 of a YubiKey's PIN/PUK metadata


def parse_metadata(slot: int, data: bytes) -> SlotMetadata | None:
    """One GET METADATA answer. None: a key slot that holds no key.

    Tag 01 (algorithm) is optional where its meaning is fixed: 9B without it is 3DES (as yubikit
    assumes); PIN and PUK (80, 81) have no key algorithm (YubiKeys send FF, PivApplet nothing); a
    key slot without it and without a public key (04) holds no key: PivApplet answers 9000 with
    only the slot's policies there where a YubiKey answers 6A88.
    """
    fields = tlv.parse_dict(data)
    algorithm = _single_byte(fields, 0x01)
    if algorithm is None:
        if slot == KEY_REF_MANAGEMENT:
            algorithm = 0x03
        elif slot in (KEY_REF_PIN, KEY_REF_PUK):
            algorithm = ALGORITHM_PIN
        elif 0x04 in fields:
            raise CardProtocolError(msg('metadata for slot {slot:02X} has a public key but no algorithm (tag 01)', slot=slot))
        else:
            return None
    pin_policy = touch_policy = None
    if 0x02 in fields:
        policy = fields[0x02]
        if len(policy) != 2:
            raise CardProtocolError(msg('metadata policy (tag 02) has {len} bytes, expected 2', len=len(policy)))
        pin_policy, touch_policy = policy[0], policy[1]
    retries_total = retries_left = None
    if 0x06 in fields:
        retries = fields[0x06]
        if len(retries) != 2:
            raise CardProtocolError(msg('metadata retries (tag 06) has {len} bytes, expected 2', len=len(retries)))
        retries_total, retries_left = retries[0], retries[1]
    default = _single_byte(fields, 0x05)
    public_key = parse_public_key(algorithm, fields[0x04]) if 0x04 in fields else None
    return SlotMetadata(
        slot=slot,
        algorithm=algorithm,
        pin_policy=pin_policy,
        touch_policy=touch_policy,
        origin=_single_byte(fields, 0x03),
        public_key=public_key,
        is_default=None if default is None else default != 0,
        retries_total=retries_total,
        retries_left=retries_left,
    )


_MAX_CERT_BYTES = 1 << 16


def _gunzip(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        raise CardProtocolError(msg('the certificate is marked compressed but is not gzip data'))
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, _MAX_CERT_BYTES + 1)
    except zlib.error as exc:
        raise CardProtocolError(msg('the compressed certificate is corrupt: {exc}', exc=exc)) from None
    if len(out) > _MAX_CERT_BYTES or not inflater.eof:
        raise CardProtocolError(msg('the compressed certificate is truncated or inflates beyond 64 KiB'))
    return out


def encode_certificate_object(cert_der: bytes, compress: bool = False) -> bytes:
    """Certificate object body (inside 53): 70 cert, 71 01 info, FE 00 (SP 800-73-4 part 1 3.3)."""
    if compress:
        import gzip

        return tlv.encode_many(
            [(0x70, gzip.compress(cert_der, mtime=0)), (0x71, b"\x01"), (0xFE, b"")]
        )
    return tlv.encode_many([(0x70, cert_der), (0x71, b"\x00"), (0xFE, b"")])


def parse_certificate_object(body: bytes) -> bytes | None:
    """DER certificate from a certificate object body, or None for an empty object.

    Strict about 70 (a body without it is not a certificate object); lenient, like ykman and
    OpenSC, about a missing 71 (taken as "not compressed") or FE. CertInfo bit 0 (SP 800-73-3+)
    or bit 7 (800-72-1 era cards, as OpenSC accepts) means gzip.
    """
    if not body:
        return None
    fields = tlv.parse_dict(body)
    if 0x70 not in fields:
        raise CardProtocolError(msg('the certificate object has no certificate (tag 70)'))
    cert = fields[0x70]
    if not cert:
        return None
    info = fields.get(0x71, b"\x00")
    if len(info) > 1:
        raise CardProtocolError(msg('CertInfo (tag 71) has {len} bytes, expected 1', len=len(info)))
    if info and info[0] & 0x81:
        return _gunzip(cert)
    return cert


def encode_slot_names(names: dict[int, str]) -> bytes:
    items = [(0x01, bytes([SLOT_NAMES_FORMAT]))]
    for ref in sorted(names):
        encoded = names[ref].encode("utf-8")
        items.append((0xA0, tlv.encode_many([(0x80, bytes([ref])), (0x81, encoded)])))
    return tlv.encode_many(items)


def parse_slot_names(body: bytes) -> dict[int, str]:
    if not body:
        return {}
    out: dict[int, str] = {}
    version_seen = False
    for tag, value in tlv.iter_tlv(body):
        if tag == 0x01:
            if value != bytes([SLOT_NAMES_FORMAT]):
                raise CardProtocolError(
                    msg('slot-name object {SLOT_NAMES_OBJECT_ID:06X} has format {hex}, this version reads format {SLOT_NAMES_FORMAT}', SLOT_NAMES_OBJECT_ID=SLOT_NAMES_OBJECT_ID, hex=value.hex(), SLOT_NAMES_FORMAT=SLOT_NAMES_FORMAT)
                )
            version_seen = True
        elif tag == 0xA0:
            entry = tlv.parse_dict(value)
            ref = entry.get(0x80)
            name = entry.get(0x81)
            if ref is None or len(ref) != 1 or not name:
                raise CardProtocolError(msg('malformed entry in the slot-name object'))
            try:
                out[ref[0]] = name.decode("utf-8")
            except UnicodeDecodeError:
                raise CardProtocolError(msg('a slot name on the card is not UTF-8')) from None
    if not version_seen:
        raise CardProtocolError(msg('slot-name object {SLOT_NAMES_OBJECT_ID:06X} has no format tag', SLOT_NAMES_OBJECT_ID=SLOT_NAMES_OBJECT_ID))
    return out


@dataclass(frozen=True)
class SlotNameResult:
    """Outcome of writing the slot-name object. ``stored`` False: the card refused (``sw``)."""

    stored: bool
    sw: int | None = None

    @property
    def reason(self) -> str:
        if self.stored:
            return msg("stored on the card")
        assert self.sw is not None
        # Plain fields (not {sw:04X}), so the recorded note is recognised again when a report is shown in another language.
        return msg("the card does not keep vendor objects ({sw}: {describe_sw})", sw=format(self.sw, "04X"), describe_sw=describe_sw(self.sw))  # fmt: skip


def _pkcs1_v15_sha256_block(message: bytes, key_bytes: int) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(message)
    t = _SHA256_DIGEST_INFO + digest.finalize()
    if key_bytes < len(t) + 11:
        raise ValueError("RSA key too small for a PKCS#1 v1.5 SHA-256 block")
    return b"\x00\x01" + b"\xff" * (key_bytes - len(t) - 3) + b"\x00" + t


# --- the session --------------------------------------------------------------------------------

_UNSET = object()


class PivSession:
    """PIV operations on one card. Call ``select()`` first (a reset or another app deselects)."""

    def __init__(self, channel: ApduChannel, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.channel = channel
        self._rng = rng
        self._version: object = _UNSET
        self._serial: object = _UNSET

    # --- identity ---

    def select(self) -> ApplicationProperties | None:
        """SELECT the PIV application by its full AID. None: the card answered 9000 without an APT
        (or with something else than one)."""
        data, sw = send_select(self.channel)
        if sw != SW_OK:
            raise CardStatusError(
                msg('this card has no PIV application (SELECT answered {sw:04X}: {describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw
            )
        self._version = _UNSET
        if not data:
            return None
        try:
            return parse_application_properties(data)
        except CardProtocolError:
            # Not SP 800-73-4's template (61): older PIV cards answer with an FCI (6F) or odd bytes.
            # The application is selected all the same (9000 to its full AID), and nothing decides
            # on these properties, so, as OpenSC does, the card is not refused for them.
            return None

    def version(self) -> tuple[int, int, int] | None:
        """Firmware version (YubiKey GET VERSION), or None on cards without it."""
        if self._version is _UNSET:
            data, sw = self.channel.send_raw_sw(INS_GET_VERSION, 0, 0, le=0)
            if sw != SW_OK and refuses_vendor_instruction(sw):
                self._version = None
            elif sw != SW_OK:
                raise CardStatusError(msg('GET VERSION failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw)
            elif len(data) != 3:
                raise CardProtocolError(msg('GET VERSION answered {len} bytes, expected 3', len=len(data)))
            else:
                self._version = (data[0], data[1], data[2])
        assert self._version is None or isinstance(self._version, tuple)
        return self._version

    def serial(self) -> int | None:
        """Serial number, unsigned; None on cards without one. YubiKey 5 and cards like it answer
        GET SERIAL in the PIV application; a YubiKey NEO or 4 has no GET SERIAL there and gives its
        serial through its OTP application instead (``_serial_from_otp``). Read once per session:
        the serial does not change, and the OTP detour must not happen after a VERIFY."""
        if self._serial is _UNSET:
            data, sw = send_get_serial(self.channel)
            if sw in UNSUPPORTED_SW:
                self._serial = self._serial_from_otp()
            elif refuses_vendor_instruction(sw):
                self._serial = None
            elif sw != SW_OK:
                raise CardStatusError(msg('GET SERIAL failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw)
            elif len(data) != 4:
                raise CardProtocolError(msg('GET SERIAL answered {len} bytes, expected 4', len=len(data)))
            else:
                self._serial = int.from_bytes(data, "big", signed=False)
        assert self._serial is None or isinstance(self._serial, int)
        return self._serial

    def _serial_from_otp(self) -> int | None:
        """The serial of a YubiKey before firmware 5, from its OTP application (SELECT A0 00 00 05 27
        20 01, then request 01 with slot 10: four bytes), as yubico-piv-tool (``_ykpiv_get_serial``)
        and ykcs11 read it; then PIV is selected again. Asked only of a card whose GET VERSION says
        it is such a YubiKey: another PIV card without GET SERIAL sees one GET VERSION more, and
        nothing outside its PIV application. None where the key keeps its serial hidden."""
        version = self.version()
        if version is None or version >= (5, 0, 0) or version < (3, 0, 0):
            return None
        serial: int | None = None
        try:
            _data, sw = self.channel.send_raw_sw(INS_SELECT, 0x04, 0x00, YUBIKEY_OTP_AID, le=0)
            if sw == SW_OK:
                data, sw = self.channel.send_raw_sw(INS_OTP_API, OTP_SLOT_DEVICE_SERIAL, 0x00, le=0)
                if sw == SW_OK and len(data) == 4:
                    serial = int.from_bytes(data, "big", signed=False) or None
        finally:
            version_seen = self._version
            self.select()  # back to PIV (raises if the card no longer answers it)
            self._version = version_seen
        return serial

    def read_chuid(self) -> str | None:
        """The CHUID's GUID (tag 34) as lowercase hex, or None without a CHUID or GUID. Sixteen
        zero bytes are no GUID (a card identified by its FASC-N only; OpenSC skips them too)."""
        body = self.get_object(OBJECT_ID_CHUID)
        if not body:
            return None
        guid = tlv.parse_dict(body).get(0x34)
        if guid is None:
            return None
        if len(guid) != 16:
            raise CardProtocolError(msg('the CHUID GUID has {len} bytes, expected 16', len=len(guid)))
        if not any(guid):
            return None
        return guid.hex()

    # --- PIN ---

    def pin_tries(self) -> int | None:
        """PIN tries left, without spending one (VERIFY with no data). None: already verified."""
        _, sw = self.channel.send_raw_sw(INS_VERIFY, 0x00, KEY_REF_PIN)
        if sw == SW_OK:
            return None
        if sw & 0xFFF0 == 0x63C0:
            return sw & 0x0F
        if sw == SW_AUTH_BLOCKED:
            return 0
        raise CardStatusError(msg('reading the PIN status failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw)

    def verify_pin(self, pin: Secret) -> None:
        """VERIFY the PIN (padded with FF to 8). Never retried; a wrong PIN raises PinError."""
        buf = bytearray(pin.reveal())
        try:
            if not 6 <= len(buf) <= 8:
                raise PinFormatError(
                    msg('the PIN must be 6 to 8 bytes long, this one has {len}; nothing was sent to the card and no try was used', len=len(buf)),
                    None,
                )
            buf.extend(b"\xff" * (8 - len(buf)))
            _, sw = self.channel.send_raw_sw(INS_VERIFY, 0x00, KEY_REF_PIN, buf)
        finally:
            _wipe(buf)
        if sw == SW_OK:
            return
        if sw & 0xFFF0 == 0x63C0:
            left = sw & 0x0F
            if left == 0:
                raise PinError(msg('wrong PIN; the PIN is now blocked: unblock it with the PUK'), 0)
            raise PinError(msg('wrong PIN; {left} tries left. Check the PIN before trying again', left=left), left)
        if sw == SW_AUTH_BLOCKED:
            raise PinError(msg('the PIN is blocked: unblock it with the PUK'), 0)
        if sw >> 8 == 0x63:
            raise PinError(msg('the card refused the PIN (no try counter given)'), None)
        raise CardStatusError(msg('VERIFY failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw)

    # --- PIN service: unblock with the PUK, change PIN or PUK ---

    def puk_tries(self) -> int | None:
        """PUK tries left from GET METADATA on slot 81, without spending one. None: the card
        cannot tell (no F7, or no retries in its answer); PIV has no status read for the PUK."""
        try:
            meta = self.get_metadata(KEY_REF_PUK)
        except CardNotSupportedError:
            return None
        return None if meta is None else meta.retries_left

    @staticmethod
    def _padded_pair(first: Secret, second: Secret, first_what: str, second_what: str) -> bytearray:
        """Two 6–8 byte values, each padded with FF to 8 (RESET RETRY COUNTER, CHANGE REFERENCE DATA)."""
        data = bytearray()
        for value, what in ((first, first_what), (second, second_what)):
            buf = bytearray(value.reveal())
            try:
                if not 6 <= len(buf) <= 8 or b"\xff" in buf:
                    _wipe(data)
                    raise PinFormatError(
                        msg('the {what} must be 6 to 8 bytes long, this one has {len}; nothing was sent to the card and no try was used', what=what, len=len(buf)),
                        None,
                    )
                data.extend(buf)
                data.extend(b"\xff" * (8 - len(buf)))
            finally:
                _wipe(buf)
        return data

    def unblock_pin(self, puk: Secret, new_pin: Secret) -> None:
        """RESET RETRY COUNTER (``00 2C 00 80``, PUK || new PIN): sets a new PIN and gives it all its
        tries back. Never retried; a wrong PUK raises PukError with the PUK tries left."""
        data = self._padded_pair(puk, new_pin, "PUK", "new PIN")
        try:
            _, sw = self.channel.send_raw_sw(INS_RESET_RETRY_COUNTER, 0x00, KEY_REF_PIN, data)
        finally:
            _wipe(data)
        self._reference_answer(sw, "PUK", "RESET RETRY COUNTER")

    def change_reference(self, ref: int, old: Secret, new: Secret) -> None:
        """CHANGE REFERENCE DATA (``00 24 00 80`` PIN, ``00 24 00 81`` PUK): old || new. A wrong old
        value costs a try of that reference, as a wrong VERIFY does."""
        what = "PIN" if ref == KEY_REF_PIN else "PUK"
        data = self._padded_pair(old, new, what, f"new {what}")
        try:
            _, sw = self.channel.send_raw_sw(INS_CHANGE_REFERENCE, 0x00, ref, data)
        finally:
            _wipe(data)
        self._reference_answer(sw, what, "CHANGE REFERENCE DATA")

    @staticmethod
    def _reference_answer(sw: int, what: str, command: str) -> None:
        error = PinError if what == "PIN" else PukError
        if sw == SW_OK:
            return
        if sw & 0xFFF0 == 0x63C0:
            left = sw & 0x0F
            if left == 0:
                raise error(f"wrong {what}; the {what} is now blocked", 0)
            raise error(f"wrong {what}; {left} tr{'y' if left == 1 else 'ies'} left. Check the {what} before trying again", left)
        if sw == SW_AUTH_BLOCKED:
            raise error(f"the {what} is blocked; nothing was changed", 0)
        if sw == 0x6A80:
            raise PinFormatError(msg('the card refused the new value ({sw:04X}): a {what} of 6 to 8 characters is needed', sw=sw, what=what), None)
        raise CardStatusError(msg('{command} failed: {sw:04X} ({describe_sw})', command=command, sw=sw, describe_sw=describe_sw(sw)), sw)

    # --- management key ---

    def _management_key_algorithm(self, key_len: int, key_type: ManagementKeyType | None) -> int:
        wanted = None if key_type is None else MANAGEMENT_KEY_ALGORITHMS[key_type]
        try:
            meta = self.get_metadata(KEY_REF_MANAGEMENT)
        except CardNotSupportedError:
            meta = None
        if meta is not None:
            if wanted is not None and wanted != meta.algorithm:
                on_card = _MGMT_KEY_NAME.get(meta.algorithm, f"{meta.algorithm:02X}")
                raise ManagementKeyError(
                    msg("the card's management key is {on_card}, the job says {key_type}; nothing was sent", on_card=on_card, key_type=key_type)
                )
            return meta.algorithm
        if wanted is not None:
            return wanted
        if key_len == 16:
            return 0x08
        if key_len == 32:
            return 0x0C
        return default_management_key_algorithm(self.version())

    def authenticate(self, key: Secret | bytes, key_type: ManagementKeyType | None = None) -> None:
        """Mutual authentication with the management key (SP 800-73-4 part 2, 3.2.4 + appendix A).

        1. ``7C 02 80 00`` asks the card for a witness; 2. we send the decrypted witness and our own
        random challenge; 3. the card must answer our challenge encrypted with the same key. A card
        that refuses the witness (wrong key) or answers the challenge wrongly raises
        ManagementKeyError; it is never retried.
        """
        keybuf = bytearray(key.reveal() if isinstance(key, Secret) else key)
        witness = bytearray()
        try:
            alg = self._management_key_algorithm(len(keybuf), key_type)
            expected_len = _MGMT_KEY_LENGTH.get(alg)
            if expected_len is None:
                raise CardNotSupportedError(msg('unknown management-key algorithm {alg:02X} on the card', alg=alg))
            if len(keybuf) != expected_len:
                raise ManagementKeyError(
                    msg('the management key is {len} bytes; a {value} key needs {expected_len}; nothing was sent', len=len(keybuf), value=_MGMT_KEY_NAME[alg], expected_len=expected_len)
                )
            block = 8 if alg == 0x03 else 16
            cipher = _management_cipher(alg, keybuf)

            request = tlv.encode(0x7C, tlv.encode(0x80, b""))
            answer, sw = self.channel.send_raw_sw(INS_AUTHENTICATE, alg, KEY_REF_MANAGEMENT, request, le=0)
            if sw == SW_WRONG_P1P2:
                # P1 is not the algorithm of the key in 9B (CanoKey, PivApplet); no try was spent.
                raise ManagementKeyError(
                    msg("the card's management key is not {name} (GENERAL AUTHENTICATE answered {sw:04X}); set the "
                        "job's management_key_type to the card's (3des, aes128, aes192 or aes256)",
                        name=_MGMT_KEY_NAME[alg], sw=sw)
                )  # fmt: skip
            if sw != SW_OK:
                raise CardStatusError(
                    msg('management-key authentication failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw
                )
            encrypted_witness = tlv.parse_dict(tlv.unwrap(answer, 0x7C)).get(0x80)
            if encrypted_witness is None or len(encrypted_witness) != block:
                raise CardProtocolError(
                    msg("the card's witness is not one {block}-byte block; is the key type right?", block=block)
                )
            dec = cipher.decryptor()
            witness = bytearray(dec.update(encrypted_witness) + dec.finalize())
            challenge = self._rng(block)
            if len(challenge) != block:
                raise ValueError("the random source returned the wrong number of bytes")
            inner = bytearray(tlv.tag_bytes(0x80) + tlv.encode_length(block)) + witness
            inner += tlv.encode(0x81, challenge)
            body = bytearray(tlv.tag_bytes(0x7C) + tlv.encode_length(len(inner))) + inner
            _wipe(inner)
            try:
                answer, sw = self.channel.send_raw_sw(
                    INS_AUTHENTICATE, alg, KEY_REF_MANAGEMENT, body, le=0
                )
            finally:
                _wipe(body)
            if sw in MANAGEMENT_KEY_REFUSED_SW:
                raise ManagementKeyError(
                    msg('the card refused the management key (wrong key); it was not retried')
                )
            if sw == SW_AUTH_BLOCKED:
                raise ManagementKeyError(msg('management-key authentication is blocked on this card'))
            if sw != SW_OK:
                raise CardStatusError(
                    msg('management-key authentication failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw
                )
            card_answer = tlv.parse_dict(tlv.unwrap(answer, 0x7C)).get(0x82)
            if card_answer is None:
                raise CardProtocolError(msg("the card's authentication answer has no response (tag 82)"))
            enc = cipher.encryptor()
            expected = enc.update(challenge) + enc.finalize()
            if not hmac.compare_digest(expected, card_answer):
                raise ManagementKeyError(msg('the card did not prove it knows the key (mutual authentication)'))
        finally:
            _wipe(keybuf)
            _wipe(witness)

    def management_key_algorithm(self, key_type: ManagementKeyType | None = None) -> int:
        """The algorithm of the card's 24-byte management key: the card's own metadata (F7 on 9B)
        when it has it (a different ``key_type`` is refused), else ``key_type``, else the firmware's
        default (3DES before 5.7, AES-192 from 5.7)."""
        return self._management_key_algorithm(24, key_type)

    def set_management_key(self, key: Secret | bytes | bytearray, algorithm: int) -> None:
        """SET MANAGEMENT KEY (Yubico INS FF, P1 FF, P2 FF: no touch). Needs management-key
        authentication. The key's bytes are wiped from the buffers built here."""
        keybuf = bytearray(key.reveal() if isinstance(key, Secret) else key)
        body = bytearray()
        try:
            if _MGMT_KEY_LENGTH.get(algorithm) != len(keybuf):
                raise ManagementKeyError(msg('a new management key of {len} bytes does not fit algorithm {algorithm:02X}; nothing was sent', len=len(keybuf), algorithm=algorithm))  # fmt: skip
            body = bytearray([algorithm]) + tlv.tag_bytes(KEY_REF_MANAGEMENT) + tlv.encode_length(len(keybuf)) + keybuf
            _, sw = self.channel.send_raw_sw(INS_SET_MANAGEMENT_KEY, 0xFF, 0xFF, body)
            if sw != SW_OK:
                raise CardStatusError(msg('SET MANAGEMENT KEY failed: {sw:04X} ({describe_sw})', sw=sw, describe_sw=describe_sw(sw)), sw)
        finally:
            _wipe(keybuf)
            _wipe(body)

    # --- metadata ---

    def get_metadata(self, slot: int) -> SlotMetadata | None:
        """GET METADATA for a key slot, 9B, 80 (PIN) or 81 (PUK). None: empty slot (6A88, or an
        answer without an algorithm, see ``parse_metadata``).

        Raises CardNotSupportedError on cards without GET METADATA (YubiKey before 5.3, most
        non-Yubico applets), MetadataUnavailableError when one key slot's answer is ``6F00``.
        """
        data, sw = self.channel.send_raw_sw(INS_GET_METADATA, 0x00, slot, le=0)
        if sw == SW_REFERENCE_NOT_FOUND:
            return None
        fixed_reference = slot in (KEY_REF_MANAGEMENT, KEY_REF_PIN, KEY_REF_PUK)
        # For 9B, the PIN and the PUK any checking error means "no GET METADATA" (yubico-piv-tool's
        # ykpiv_authenticate takes 3DES whatever F7 9B answers); for a key slot, 6A86 and its like
        # may say "no such slot", which the callers tell apart.
        if sw in UNSUPPORTED_SW or (fixed_reference and sw != SW_OK and refuses_vendor_instruction(sw)):
            raise CardNotSupportedError(
                msg("this card has no GET METADATA ({sw:04X}); its slots' contents cannot be read", sw=sw)
            )
        if sw == SW_UNKNOWN and not fixed_reference:
            raise MetadataUnavailableError(
                msg("the card cannot describe the key in slot {slot:02X} (GET METADATA answered 6F00, as PivApplet does "
                    "for a key it imported)", slot=slot),
                sw,
            )
        if sw != SW_OK:
            raise CardStatusError(msg('GET METADATA {slot:02X} failed: {sw:04X} ({describe_sw})', slot=slot, sw=sw, describe_sw=describe_sw(sw)), sw)
        return parse_metadata(slot, data)

    # --- keys ---

    def import_key(
        self,
        slot: int,
        private_key: PrivateKey,
        pin_policy: PinPolicy = "default",
        touch_policy: TouchPolicy = "default",
    ) -> Algorithm:
        """IMPORT KEY (Yubico INS FE). Needs management-key authentication. Returns the algorithm."""
        slot_by_ref(slot)  # KeyError → not a key slot; checked before anything is built
        if pin_policy not in PIN_POLICIES:
            raise ValueError(f"unknown PIN policy {pin_policy!r}")
        if touch_policy not in TOUCH_POLICIES:
            raise ValueError(f"unknown touch policy {touch_policy!r}")
        data = bytearray()
        try:
            if isinstance(private_key, rsa.RSAPrivateKey):
                alg = find_algorithm("RSA", private_key.key_size, "yubikey-5.7")
                if alg is None:
                    raise CardNotSupportedError(msg('RSA-{key_size} cannot go into a PIV slot', key_size=private_key.key_size))
                numbers = private_key.private_numbers()
                if numbers.public_numbers.e != 65537:
                    raise CardNotSupportedError(msg('PIV cards take RSA keys with public exponent 65537 only'))
                size = alg.bits // 16
                for tag, value in (
                    (0x01, numbers.p),
                    (0x02, numbers.q),
                    (0x03, numbers.dmp1),
                    (0x04, numbers.dmq1),
                    (0x05, numbers.iqmp),
                ):
                    data += tlv.tag_bytes(tag) + tlv.encode_length(size)
                    data += value.to_bytes(size, "big")
            elif isinstance(private_key, ec.EllipticCurvePrivateKey):
                bits = {"secp256r1": 256, "secp384r1": 384}.get(private_key.curve.name)
                alg = None if bits is None else find_algorithm("EC", bits)
                if alg is None:
                    raise CardNotSupportedError(msg('curve {name} has no PIV algorithm', name=private_key.curve.name))
                size = alg.bits // 8
                data += tlv.tag_bytes(0x06) + tlv.encode_length(size)
                data += private_key.private_numbers().private_value.to_bytes(size, "big")
            elif isinstance(private_key, ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey):
                is_ed = isinstance(private_key, ed25519.Ed25519PrivateKey)
                alg = find_algorithm("Ed25519" if is_ed else "X25519", 255, "yubikey-5.7")
                assert alg is not None
                raw = private_key.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
                data += tlv.tag_bytes(0x07 if is_ed else 0x08) + tlv.encode_length(len(raw)) + raw
            else:
                raise CardNotSupportedError(msg('{name} keys cannot go into a PIV slot', name=type(private_key).__name__))
            if pin_policy != "default":
                data += tlv.encode(0xAA, bytes([PIN_POLICIES[pin_policy]]))
            if touch_policy != "default":
                data += tlv.encode(0xAB, bytes([TOUCH_POLICIES[touch_policy]]))
            self.channel.send(INS_IMPORT_KEY, alg.code, slot, data)
        finally:
            _wipe(data)
        return alg

    def sign_test(self, slot: int, algorithm: int, data: bytes) -> bytes:
        """GENERAL AUTHENTICATE with the slot's private key: 7C {82 00, 81 data} → 7C {82 result}.

        RSA takes the whole padded block, EC the hash, Ed25519 the message. A slot with PIN policy
        'always' needs VERIFY immediately before this call.
        """
        return self._general_authenticate(slot, algorithm, 0x81, data)

    def key_agreement(self, slot: int, algorithm: int, peer_public: bytes) -> bytes:
        """ECDH with the slot's key: 7C {82 00, 85 peer point} → the shared secret."""
        return self._general_authenticate(slot, algorithm, 0x85, peer_public)

    def _general_authenticate(self, slot: int, algorithm: int, tag: int, data: bytes) -> bytes:
        body = tlv.encode(0x7C, tlv.encode(0x82, b"") + tlv.encode(tag, data))
        answer = self.channel.send(INS_AUTHENTICATE, algorithm, slot, body, le=0)
        result = tlv.parse_dict(tlv.unwrap(answer, 0x7C)).get(0x82)
        if not result:
            raise CardProtocolError(msg('GENERAL AUTHENTICATE answered without a result (tag 82)'))
        return result

    def test_signature(self, slot: int, certificate: x509.Certificate) -> None:
        """Prove the key in ``slot`` matches ``certificate`` by using it once; KeyMismatchError if not."""
        public = certificate.public_key()
        message = self._rng(32)
        mismatch = KeyMismatchError(
            msg('the key in slot {slot:02X} does not match the certificate (serial {serial_number:x}); nothing more was written', slot=slot, serial_number=certificate.serial_number)
        )
        try:
            if isinstance(public, rsa.RSAPublicKey):
                alg = find_algorithm("RSA", public.key_size, "yubikey-5.7")
                if alg is None:
                    raise CardNotSupportedError(msg('RSA-{key_size} has no PIV algorithm', key_size=public.key_size))
                k = (public.key_size + 7) // 8
                signature = self.sign_test(slot, alg.code, _pkcs1_v15_sha256_block(message, k))
                public.verify(signature.rjust(k, b"\x00"), message, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(public, ec.EllipticCurvePublicKey):
                bits = {"secp256r1": 256, "secp384r1": 384}.get(public.curve.name)
                alg = None if bits is None else find_algorithm("EC", bits)
                if alg is None:
                    raise CardNotSupportedError(msg('curve {name} has no PIV algorithm', name=public.curve.name))
                hash_alg: hashes.HashAlgorithm = hashes.SHA256() if bits == 256 else hashes.SHA384()
                h = hashes.Hash(hash_alg)
                h.update(message)
                signature = self.sign_test(slot, alg.code, h.finalize())
                public.verify(signature, message, ec.ECDSA(hash_alg))
            elif isinstance(public, ed25519.Ed25519PublicKey):
                alg = find_algorithm("Ed25519", 255, "yubikey-5.7")
                assert alg is not None
                public.verify(self.sign_test(slot, alg.code, message), message)
            elif isinstance(public, x25519.X25519PublicKey):
                alg = find_algorithm("X25519", 255, "yubikey-5.7")
                assert alg is not None
                ephemeral = x25519.X25519PrivateKey.generate()
                peer = ephemeral.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                shared = self.key_agreement(slot, alg.code, peer)
                if not hmac.compare_digest(shared, ephemeral.exchange(public)):
                    raise mismatch
            else:
                raise CardNotSupportedError(msg('no key test for {name} certificates', name=type(public).__name__))
        except InvalidSignature:
            raise mismatch from None

    # --- data objects ---

    def get_object(self, object_id: int) -> bytes | None:
        """GET DATA ``00 CB 3F FF 5C <id>``: the object's value (inside 53), or None if absent.

        Absent is ``6A82`` or, from some cards, ``9000`` with no data at all, twice (OpenSC reads
        both as "not found"); an empty ``53 00`` is an object with an empty value (``b""``).
        """
        data, sw = send_get_object(self.channel, object_id)
        if sw == SW_OK and not data:
            # Taken as absent only when the card says it twice. A lost answer looks just the same,
            # and the certificate read before a load decides whether anything is archived: one
            # glitch must never make the certificate about to be overwritten look absent (the fault
            # campaign lost one so). A second GET DATA is a read; it changes nothing on the card.
            data, sw = send_get_object(self.channel, object_id)
        if sw == SW_FILE_NOT_FOUND or (sw == SW_OK and not data):
            return None
        if sw != SW_OK:
            raise CardStatusError(
                msg('reading object {object_id:06X} failed: {sw:04X} ({describe_sw})', object_id=object_id, sw=sw, describe_sw=describe_sw(sw)), sw
            )
        expected = OBJECT_ID_DISCOVERY if object_id == OBJECT_ID_DISCOVERY else 0x53
        return tlv.unwrap(data, expected)

    def put_object(self, object_id: int, data: bytes) -> None:
        """PUT DATA ``00 DB 3F FF 5C <id> 53 L data``; empty ``data`` deletes the object."""
        body = object_id_tlv(object_id) + tlv.encode(0x53, data)
        self.channel.send(INS_PUT_DATA, 0x3F, 0xFF, body)

    def read_certificate(self, slot: int) -> bytes | None:
        """The DER certificate in ``slot`` (decompressed if stored gzip), or None."""
        body = self.get_object(slot_by_ref(slot).object_id)
        return None if body is None else parse_certificate_object(body)

    def write_certificate(self, slot: int, cert_der: bytes, compress: bool = False) -> None:
        self.put_object(slot_by_ref(slot).object_id, encode_certificate_object(cert_der, compress))

    def delete_certificate(self, slot: int) -> None:
        self.put_object(slot_by_ref(slot).object_id, b"")

    # --- slot names (project vendor object) ---

    def read_slot_names(self) -> dict[int, str] | None:
        """Slot names stored on the card; {} if none; None if the card refuses vendor objects."""
        try:
            body = self.get_object(SLOT_NAMES_OBJECT_ID)
        except CardStatusError as exc:
            if exc.sw in VENDOR_REFUSED_SW:
                return None
            raise
        return {} if body is None else parse_slot_names(body)

    def write_slot_name(
        self, slot: int, name: str | None, *, current: dict[int, str] | None = None
    ) -> SlotNameResult:
        """Set (or with None, remove) one slot's name; other slots' names are kept.

        Needs management-key authentication. A card that refuses the vendor object gives
        ``SlotNameResult(stored=False, sw=...)``: the name then lives only in the journal.
        ``current``: the names ``read_slot_names`` just returned in this transaction (saves the
        GET DATA); None reads them.
        """
        slot_by_ref(slot)
        if name is not None:
            size = len(name.encode("utf-8"))
            if not 1 <= size <= SLOT_NAME_MAX_BYTES:
                raise ValueError(f"a slot name must be 1 to {SLOT_NAME_MAX_BYTES} bytes of UTF-8")
        if current is not None:
            names = dict(current)
        else:
            try:
                body = self.get_object(SLOT_NAMES_OBJECT_ID)
            except CardStatusError as exc:
                if exc.sw in VENDOR_REFUSED_SW:
                    return SlotNameResult(stored=False, sw=exc.sw)
                raise
            names = {} if body is None else parse_slot_names(body)
        if name is None:
            names.pop(slot, None)
        else:
            names[slot] = name
        payload = encode_slot_names(names) if names else b""
        try:
            self.put_object(SLOT_NAMES_OBJECT_ID, payload)
        except CardStatusError as exc:
            if exc.sw in VENDOR_REFUSED_SW:
                return SlotNameResult(stored=False, sw=exc.sw)
            raise
        return SlotNameResult(stored=True)
