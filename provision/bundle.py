"""PKCS#12 bytes → a usable key and certificate, or exactly one status class of CLI.md.

``cryptography`` does the real opening. It answers a wrong password and a damaged file with the
same ``ValueError``, but an operator acts differently on each (ask for the envelope again vs ask for
a new file), so when it fails we look at the file ourselves: a small strict reader for the outer
PFX structure (RFC 7292 section 4) and our own MAC check (RFC 7292 appendix B, RFC 9579 PBMAC1).
Nothing here prints; failures are ``Inspection`` values or ``BundleError``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from provision import limits
from provision.errors import BundleError
from provision.i18n import msg
from provision.piv.slots import ALGORITHMS, TARGETS, Algorithm, find_algorithm
from provision.secrets import Secret

STATUSES = (
    "ok",
    "wrong-password",
    "corrupt",
    "key-cert-mismatch",
    "no-key",
    "no-cert",
    "unsupported-key",
    "expired",
    "not-yet-valid",
)
DEFAULT_TARGET = "sp800-78-4"

# A hostile or damaged file can announce any iteration count; above this we refuse to spend the
# CPU (600,000, today's recommendation for PBKDF2-SHA256, fits comfortably).
MAX_ITERATIONS = 10_000_000
_MAX_DEPTH = 32
_RSA_EXPONENT = 65537  # the only public exponent PIV cards (and YubiKeys) accept

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp224r1": "P-224"}


# --------------------------------------------------------------------------------------------
# What an operator confirms


@dataclass(frozen=True)
class CertInfo:
    """Everything an operator confirms before loading (workflow step 8)."""

    subject: str
    subject_cn: str | None
    issuer: str
    issuer_cn: str | None
    serial: str  # lowercase hex, format(serial, "x")
    not_before: datetime  # timezone-aware UTC
    not_after: datetime
    sha256: str  # lowercase hex of the DER
    key_type: str  # "RSA", "EC", "Ed25519", "X25519" (others named as found: "DSA", "Ed448"...)
    key_bits: int  # RSA modulus bits, curve size; 255 for Ed25519/X25519 as in piv/slots.py
    curve: str | None  # "P-256", "P-384", "P-521", ...
    friendly_name: str | None

    def to_json(self) -> dict[str, object]:
        """The ``certificate`` object of CLI.md's ``inspect --json``."""
        return {
            "subject": self.subject,
            "subject_cn": self.subject_cn,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": _rfc3339(self.not_before),
            "not_after": _rfc3339(self.not_after),
            "sha256": self.sha256,
            "key_type": self.key_type,
            "key_bits": self.key_bits,
            "curve": self.curve,
        }


@dataclass(frozen=True)
class Inspection:
    status: str  # one of STATUSES
    message: str  # one sentence: what is wrong and what to do
    info: CertInfo | None  # whenever a certificate was identified, whatever the status
    piv_algorithm: str | None  # "RSA2048", "ECCP256"... when the key fits the target

    def to_json(self, file: str) -> dict[str, object]:
        """Exactly the ``inspect --json`` document of CLI.md."""
        return {
            "file": file,
            "status": self.status,
            "message": self.message,
            "certificate": None if self.info is None else self.info.to_json(),
            "piv_algorithm": self.piv_algorithm,
        }


@dataclass(frozen=True)
class Bundle:
    """A usable private key and the certificate that belongs to it."""

    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the other certificates of the file, in file order
    info: CertInfo
    algorithm: Algorithm

    def __repr__(self) -> str:  # never show key material in logs or tracebacks
        return f"Bundle(subject={self.info.subject!r}, sha256={self.info.sha256!r})"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_cn(name: x509.Name) -> str | None:
    for attribute in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _describe_name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:  # an attribute cryptography cannot render; still show something
        return "<unreadable name>"


def _key_shape(public_key: object) -> tuple[str, int, str | None]:
    """(key_type, bits, curve) of a public or private key."""
    if isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA", public_key.key_size, None
    if isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curve = public_key.curve
        return "EC", curve.key_size, _CURVE_NAMES.get(curve.name, curve.name)
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519", 255, None
    if isinstance(public_key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return "X25519", 255, None
    if isinstance(public_key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448", 448, None
    if isinstance(public_key, x448.X448PublicKey | x448.X448PrivateKey):
        return "X448", 448, None
    key_size = getattr(public_key, "key_size", 0)
    name = type(public_key).__name__.replace("PublicKey", "").replace("PrivateKey", "").lstrip("_")
    return name or "unknown", key_size if isinstance(key_size, int) else 0, None


def cert_info(cert: x509.Certificate, friendly_name: str | None = None) -> CertInfo:
    """What an operator confirms about ``cert``; also used for certificates read from a card."""
    try:
        key_type, key_bits, curve = _key_shape(cert.public_key())
    except Exception:  # noqa: BLE001 - unknown key algorithms must still be shown, not crash
        key_type, key_bits, curve = cert.public_key_algorithm_oid.dotted_string, 0, None
    return CertInfo(
        subject=_describe_name(cert.subject),
        subject_cn=_first_cn(cert.subject),
        issuer=_describe_name(cert.issuer),
        issuer_cn=_first_cn(cert.issuer),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        key_type=key_type,
        key_bits=key_bits,
        curve=curve,
        friendly_name=friendly_name,
    )


# --------------------------------------------------------------------------------------------
# A strict reader for the outer PFX structure


class _Malformed(Exception):
    """The bytes are not a PFX; ``reason`` completes 'the file is damaged: …'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TooCostly(_Malformed):
    """An iteration count no issuer uses: refused before anything spends CPU on it."""


_TRUNCATED = "it ends before the data it announces (truncated?)"

_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OCTET_STRING_CONSTRUCTED = 0x24
_TAG_NULL = 0x05
_TAG_OID = 0x06
_TAG_SEQUENCE = 0x30
_TAG_CONTEXT_0 = 0xA0


@dataclass(frozen=True)
class _Tlv:
    tag: int  # the identifier octet; PKCS#12's outer layers only use low tag numbers
    offset: int  # first byte of the identifier
    start: int  # first content byte
    end: int  # one past the last content byte
    next: int  # first byte after the element (after 00 00 for an indefinite length)


def _read_tlv(data: bytes, pos: int, limit: int, depth: int) -> _Tlv:
    if depth > _MAX_DEPTH:
        raise _Malformed("its structure is nested implausibly deep")
    if pos >= limit:
        raise _Malformed(_TRUNCATED)
    offset = pos
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _Malformed("it holds an element type that has no place in a PKCS#12 file")
    pos += 1
    if pos >= limit:
        raise _Malformed(_TRUNCATED)
    first = data[pos]
    pos += 1
    if first == 0x80:
        # Indefinite length (BER): older issuers (Netscape, Java, Windows) wrote it; DER forbids it
        # but we still must open their files. The content runs to an end-of-contents 00 00.
        if not tag & 0x20:
            raise _Malformed("a primitive element has an indefinite length")
        start = pos
        while True:
            if pos + 2 <= limit and data[pos] == 0 and data[pos + 1] == 0:
                return _Tlv(tag, offset, start, pos, pos + 2)
            pos = _read_tlv(data, pos, limit, depth + 1).next
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count > 4:
            raise _Malformed("a length field is implausibly large")
        if pos + count > limit:
            raise _Malformed(_TRUNCATED)
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if length > limit - pos:
        raise _Malformed(_TRUNCATED)
    return _Tlv(tag, offset, pos, pos + length, pos + length)


def _children(data: bytes, parent: _Tlv, depth: int) -> list[_Tlv]:
    out: list[_Tlv] = []
    pos = parent.start
    while pos < parent.end:
        child = _read_tlv(data, pos, parent.end, depth + 1)
        out.append(child)
        pos = child.next
    return out


def _expect(tlv: _Tlv, tag: int, what: str) -> _Tlv:
    if tlv.tag != tag:
        raise _Malformed(f"{what} is not where the PKCS#12 structure puts it")
    return tlv


def _sequence(data: bytes, tlv: _Tlv, what: str, depth: int, minimum: int, maximum: int) -> list[_Tlv]:
    items = _children(data, _expect(tlv, _TAG_SEQUENCE, what), depth)
    if not minimum <= len(items) <= maximum:
        raise _Malformed(f"{what} has {len(items)} parts instead of {minimum}-{maximum}")
    return items


def _integer(data: bytes, tlv: _Tlv, what: str) -> int:
    _expect(tlv, _TAG_INTEGER, what)
    if tlv.end == tlv.start:
        raise _Malformed(f"{what} is empty")
    return int.from_bytes(data[tlv.start : tlv.end], "big", signed=True)


def _octets(data: bytes, tlv: _Tlv, what: str, depth: int) -> bytes:
    if tlv.tag == _TAG_OCTET_STRING:
        return data[tlv.start : tlv.end]
    if tlv.tag == _TAG_OCTET_STRING_CONSTRUCTED:  # BER: the value in pieces
        return b"".join(_octets(data, c, what, depth + 1) for c in _children(data, tlv, depth))
    raise _Malformed(f"{what} is not where the PKCS#12 structure puts it")


def _oid_bytes(dotted: str) -> bytes:
    """DER content octets of an OBJECT IDENTIFIER, so we compare bytes instead of decoding."""
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray()
    for n in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def _oid(data: bytes, tlv: _Tlv, what: str) -> bytes:
    _expect(tlv, _TAG_OID, what)
    if tlv.end == tlv.start:
        raise _Malformed(f"{what} is empty")
    return data[tlv.start : tlv.end]


_OID_DATA = _oid_bytes("1.2.840.113549.1.7.1")
_OID_ENCRYPTED_DATA = _oid_bytes("1.2.840.113549.1.7.6")
_OID_ENVELOPED_DATA = _oid_bytes("1.2.840.113549.1.7.3")
_OID_PBMAC1 = _oid_bytes("1.2.840.113549.1.5.14")
_OID_PBKDF2 = _oid_bytes("1.2.840.113549.1.5.12")

# RFC 7292 MACs: digest OID → (hashlib name, block size v in bytes). u is the digest size.
_PKCS12_MAC_HASHES: dict[bytes, tuple[str, int]] = {
    _oid_bytes("1.2.840.113549.2.5"): ("md5", 64),
    _oid_bytes("1.3.14.3.2.26"): ("sha1", 64),
    _oid_bytes("2.16.840.1.101.3.4.2.4"): ("sha224", 64),
    _oid_bytes("2.16.840.1.101.3.4.2.1"): ("sha256", 64),
    _oid_bytes("2.16.840.1.101.3.4.2.2"): ("sha384", 128),
    _oid_bytes("2.16.840.1.101.3.4.2.3"): ("sha512", 128),
    _oid_bytes("2.16.840.1.101.3.4.2.5"): ("sha512_224", 128),
    _oid_bytes("2.16.840.1.101.3.4.2.6"): ("sha512_256", 128),
}
# PBMAC1 (RFC 9579) names HMACs, not digests.
_HMAC_HASHES: dict[bytes, str] = {
    _oid_bytes("1.2.840.113549.2.7"): "sha1",
    _oid_bytes("1.2.840.113549.2.8"): "sha224",
    _oid_bytes("1.2.840.113549.2.9"): "sha256",
    _oid_bytes("1.2.840.113549.2.10"): "sha384",
    _oid_bytes("1.2.840.113549.2.11"): "sha512",
}


@dataclass(frozen=True)
class _Pbkdf2:
    salt: bytes
    iterations: int
    key_length: int
    prf: str  # hashlib name


@dataclass(frozen=True)
class _MacData:
    hash_name: str | None  # hashlib name of the RFC 7292 MAC or of PBMAC1's HMAC; None: unknown
    block_size: int  # v of the RFC 7292 KDF (unused for PBMAC1)
    pbkdf2: _Pbkdf2 | None  # set for PBMAC1
    digest: bytes
    salt: bytes
    iterations: int


@dataclass(frozen=True)
class _Pfx:
    auth_safe: bytes  # the content octets the MAC covers
    mac: _MacData | None
    without_mac: bytes  # the same PFX with MacData removed, to tell a damaged MAC from a wrong password
    pieces: tuple[bytes, ...]  # the encoded ContentInfos of the AuthenticatedSafe, in order


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _pfx_of(piece: bytes) -> bytes:
    """A MAC-less PFX around one ContentInfo: lets us try a single part of a damaged file."""
    auth_safe = _der(_TAG_SEQUENCE, piece)
    content = _der(
        _TAG_SEQUENCE, _der(_TAG_OID, _OID_DATA) + _der(_TAG_CONTEXT_0, _der(_TAG_OCTET_STRING, auth_safe))
    )
    return _der(_TAG_SEQUENCE, b"\x02\x01\x03" + content)


def _algorithm(data: bytes, tlv: _Tlv, what: str, depth: int) -> tuple[bytes, _Tlv | None]:
    parts = _sequence(data, tlv, what, depth, 1, 2)
    return _oid(data, parts[0], what), (parts[1] if len(parts) == 2 else None)


def _iterations(count: int, what: str) -> int:
    if not 1 <= count <= MAX_ITERATIONS:
        raise _TooCostly(f"{what} announces {count} iterations, which no issuer uses")
    return count


def _parse_pbmac1(data: bytes, params: _Tlv | None, depth: int) -> tuple[str | None, _Pbkdf2]:
    if params is None:
        raise _Malformed("its PBMAC1 integrity parameters are missing")
    kdf, scheme = _sequence(data, params, "the PBMAC1 parameters", depth, 2, 2)
    kdf_oid, kdf_params = _algorithm(data, kdf, "the PBMAC1 key derivation", depth + 1)
    if kdf_oid != _OID_PBKDF2 or kdf_params is None:
        raise _Malformed("its PBMAC1 integrity check uses a key derivation other than PBKDF2")
    fields = _sequence(data, kdf_params, "the PBKDF2 parameters", depth + 1, 2, 4)
    salt = _octets(data, fields[0], "the PBKDF2 salt", depth + 2)
    iterations = _iterations(_integer(data, fields[1], "the PBKDF2 iteration count"), "its PBMAC1")
    key_length: int | None = None
    prf = "sha1"  # PBKDF2's DEFAULT algid-hmacWithSHA1
    for field in fields[2:]:
        if field.tag == _TAG_INTEGER and key_length is None:
            key_length = _integer(data, field, "the PBKDF2 key length")
            if not 1 <= key_length <= 1024:
                raise _Malformed("its PBKDF2 key length is implausible")
        else:
            prf_oid, _ = _algorithm(data, field, "the PBKDF2 pseudo-random function", depth + 2)
            if prf_oid not in _HMAC_HASHES:
                raise _Malformed("its PBKDF2 uses an unknown pseudo-random function")
            prf = _HMAC_HASHES[prf_oid]
    mac_oid, _ = _algorithm(data, scheme, "the PBMAC1 message authentication scheme", depth + 1)
    mac_hash = _HMAC_HASHES.get(mac_oid)
    if key_length is None:  # RFC 9579 requires it; if absent, the HMAC's natural key size
        key_length = hashlib.new(mac_hash).digest_size if mac_hash else 32
    return mac_hash, _Pbkdf2(salt, iterations, key_length, prf)


def _parse_mac_data(data: bytes, tlv: _Tlv, depth: int) -> _MacData:
    parts = _sequence(data, tlv, "the integrity check (MacData)", depth, 2, 3)
    digest_info = _sequence(data, parts[0], "the MAC value (DigestInfo)", depth + 1, 2, 2)
    algorithm_oid, params = _algorithm(data, digest_info[0], "the MAC algorithm", depth + 2)
    digest = _octets(data, digest_info[1], "the MAC value", depth + 2)
    salt = _octets(data, parts[1], "the MAC salt", depth + 1)
    # iterations INTEGER DEFAULT 1: old files (and `openssl pkcs12 -nomaciter`) leave it out.
    iterations = 1
    if len(parts) == 3:
        iterations = _iterations(_integer(data, parts[2], "the MAC iteration count"), "its MAC")
    if algorithm_oid == _OID_PBMAC1:
        mac_hash, pbkdf2 = _parse_pbmac1(data, params, depth + 2)
        return _MacData(mac_hash, 0, pbkdf2, digest, salt, iterations)
    if params is not None and params.tag != _TAG_NULL:
        raise _Malformed("its MAC algorithm carries unexpected parameters")
    hash_name, block_size = _PKCS12_MAC_HASHES.get(algorithm_oid, (None, 0))
    return _MacData(hash_name, block_size, None, digest, salt, iterations)


def _parse_auth_safe(data: bytes) -> tuple[bytes, ...]:
    """AuthenticatedSafe ::= SEQUENCE OF ContentInfo (data, encryptedData or envelopedData).

    Returns each ContentInfo's encoding, so that each can be tried on its own.
    """
    outer = _read_tlv(data, 0, len(data), 0)
    if outer.next != len(data):
        raise _Malformed("its contents have unexpected bytes after their end")
    pieces = []
    for info in _sequence(data, outer, "the list of contents (AuthenticatedSafe)", 0, 0, 1 << 16):
        parts = _sequence(data, info, "a content block (ContentInfo)", 1, 1, 2)
        if _oid(data, parts[0], "a content type") not in (
            _OID_DATA,
            _OID_ENCRYPTED_DATA,
            _OID_ENVELOPED_DATA,
        ):
            raise _Malformed("a content block has a type PKCS#12 does not use")
        if len(parts) == 2:
            _expect(parts[1], _TAG_CONTEXT_0, "a content block's value")
        pieces.append(data[info.offset : info.next])
    return tuple(pieces)


def _parse_pfx(data: bytes) -> _Pfx:
    """PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo (data), macData MacData OPTIONAL }."""
    if data.lstrip().startswith(b"-----BEGIN"):
        raise _Malformed("it is PEM text, not a binary PKCS#12 file")
    if data[0] != _TAG_SEQUENCE:
        raise _Malformed("it does not start like a PKCS#12 file (is it another format, or base64 text?)")
    # Bytes after the PFX are ignored, as cryptography ignores them: some transfers pad files.
    outer = _read_tlv(data, 0, len(data), 0)
    parts = _sequence(data, outer, "the file", 0, 2, 3)
    version = _integer(data, parts[0], "the version number")
    if version != 3:
        raise _Malformed(f"it says PKCS#12 version {version}, and only version 3 exists")
    content_info = _sequence(data, parts[1], "the content (authSafe)", 1, 2, 2)
    content_type = _oid(data, content_info[0], "the content type")
    if content_type != _OID_DATA:
        # signedData (public-key integrity mode) is legal but no issuer we know ships it.
        raise _Malformed("its content is not password-protected data (public-key integrity mode?)")
    wrapper = _children(data, _expect(content_info[1], _TAG_CONTEXT_0, "the content"), 2)
    if len(wrapper) != 1:
        raise _Malformed("the content holds more than one value")
    auth_safe = _octets(data, wrapper[0], "the content", 3)
    pieces = _parse_auth_safe(auth_safe)
    mac = _parse_mac_data(data, parts[2], 1) if len(parts) == 3 else None
    body = data[parts[0].offset : parts[1].next]
    return _Pfx(auth_safe, mac, _der(_TAG_SEQUENCE, body), pieces)


# --------------------------------------------------------------------------------------------
# Passwords and MACs


def _cryptography_passwords(password: bytes) -> list[bytes | None]:
    """What to hand cryptography (which turns UTF-8 into a BMPString itself)."""
    if not password:
        # Writers disagree on the empty password: 00 00 (an empty BMPString) or no bytes at all.
        # OpenSSL maps b"" and None to those two; try both rather than trust one mapping.
        return [b"", None]
    candidates: list[bytes | None] = [password]
    if any(b >= 0x80 for b in password):
        # OpenSSL before 1.1.0 turned each byte into one BMP character (00 xx). Re-encoding the
        # bytes as Latin-1 characters makes today's UTF-8 conversion reproduce that.
        candidates.append(password.decode("latin-1").encode("utf-8"))
    return candidates


def _bmp_passwords(password: bytes) -> list[bytes]:
    """The BMPString forms (RFC 7292 B.1) a writer may have used for this password."""
    if not password:
        return [b"\x00\x00", b""]
    candidates = []
    try:
        candidates.append(password.decode("utf-8").encode("utf-16-be") + b"\x00\x00")
    except UnicodeDecodeError:
        pass
    if any(b >= 0x80 for b in password):
        candidates.append(b"".join(b"\x00" + bytes([b]) for b in password) + b"\x00\x00")
    return candidates


def _pkcs12_kdf_mac_key(hash_name: str, block_size: int, password: bytes, salt: bytes, count: int) -> bytes:
    """RFC 7292 appendix B.2 with ID=3 (MAC key), for a key as long as the digest (one block)."""
    # The named constructor (hashlib.sha256) is several times faster than hashlib.new in the loop.
    digest: Callable[[bytes], Any] = getattr(hashlib, hash_name, None) or functools.partial(
        hashlib.new, hash_name
    )

    def fill(text: bytes) -> bytes:  # copies of text up to a multiple of v bytes (B.2 steps 2-3)
        if not text:
            return b""
        total = block_size * ((len(text) + block_size - 1) // block_size)
        return (text * (total // len(text) + 1))[:total]

    value: bytes = digest(bytes([3]) * block_size + fill(salt) + fill(password)).digest()
    for _ in range(count - 1):
        value = digest(value).digest()
    return value


def _mac_matches(pfx: _Pfx, password: bytes) -> bool | None:
    """Whether some encoding of ``password`` reproduces the MAC; None if we cannot compute it."""
    mac = pfx.mac
    assert mac is not None
    if mac.hash_name is None:
        return None
    if mac.pbkdf2 is not None:
        # RFC 9579: PBKDF2 takes the password as UTF-8 bytes, not as a BMPString.
        kdf = mac.pbkdf2
        key = hashlib.pbkdf2_hmac(kdf.prf, password, kdf.salt, kdf.iterations, kdf.key_length)
        expected = hmac.new(key, pfx.auth_safe, mac.hash_name).digest()
        return hmac.compare_digest(expected, mac.digest)
    for bmp in _bmp_passwords(password):
        key = _pkcs12_kdf_mac_key(mac.hash_name, mac.block_size, bmp, mac.salt, mac.iterations)
        if hmac.compare_digest(hmac.new(key, pfx.auth_safe, mac.hash_name).digest(), mac.digest):
            return True
    return False


@dataclass(frozen=True)
class _Attempt:
    loaded: pkcs12.PKCS12KeyAndCertificates | None
    # cryptography decrypted the file but refused the key's type (it has no PKCS#12 support for
    # X25519, for one): the password was right, the key is what we cannot use.
    key_type_refused: bool = False


def _try_load(data: bytes, candidates: list[bytes | None]) -> _Attempt:
    refused = False
    for candidate in candidates:
        try:
            with warnings.catch_warnings():
                # cryptography warns when it falls back to BER; old issuers' files are like that.
                warnings.simplefilter("ignore", UserWarning)
                return _Attempt(pkcs12.load_pkcs12(data, candidate))
        except TypeError as exc:
            refused = refused or "Key must be" in str(exc)
        except Exception:  # noqa: BLE001, S112 - any failure of cryptography is a status, never a traceback
            continue
    return _Attempt(None, refused)


def _password_opens(data: bytes, password: bytes) -> bool:
    """The password decrypts ``data``, and a random one does not (so it really is encrypted)."""
    if _try_load(data, _cryptography_passwords(password)).loaded is None:
        return False
    canary = os.urandom(16).hex().encode()
    return _try_load(data, [canary]).loaded is None


def _password_opens_a_part(pfx: _Pfx, password: bytes) -> bool:
    """Whether the password is provably right although the whole file does not open.

    Set the MAC aside: if the contents then open, only the MAC was damaged. Otherwise try each
    encrypted part alone (the key and the certificates are usually encrypted separately): if one
    opens, the password is right and another part is damaged. Unencrypted parts prove nothing,
    since any password "opens" them.
    """
    if pfx.mac is not None and _password_opens(pfx.without_mac, password):
        return True
    if len(pfx.pieces) < 2:
        return False
    return any(_password_opens(_pfx_of(piece), password) for piece in pfx.pieces)


def _diagnose(pfx: _Pfx | None, problem: _Malformed | None, password: bytes) -> Inspection:
    """cryptography could not open the file: wrong password, or damaged?"""
    if pfx is None:
        assert problem is not None
        return _failure("corrupt", msg('The file is damaged: {reason}; ask the issuer for a new copy.', reason=problem.reason))
    if pfx.mac is not None and _mac_matches(pfx, password):
        return _failure(
            "corrupt",
            msg("The password is right but the file's contents cannot be read (damaged, or an encryption this tool does not support); ask the issuer for a new copy."),
        )
    if _password_opens_a_part(pfx, password):
        return _failure(
            "corrupt",
            msg('The password is right but part of the file is damaged; ask the issuer for a new copy.'),
        )
    if pfx.mac is None:
        # No MAC (`openssl pkcs12 -nomac`) and no part opens: nothing tells a wrong password from
        # damaged encrypted bytes. The structure is sound, so a wrong password is the likelier cause.
        return _wrong_password("it has no integrity check, so a damaged file would look the same")
    if pfx.mac.hash_name is None:
        return _failure(
            "corrupt",
            msg('The file uses an integrity check algorithm this tool does not know, so it cannot be opened; ask the issuer for a file made with current software.'),
        )
    return _wrong_password(None)


def _wrong_password(note: str | None) -> Inspection:
    extra = f" ({note})" if note else ""
    return _failure(
        "wrong-password",
        msg('The password does not open this file{extra}; check the password from the issuer and try again.', extra=extra),
    )


def _failure(status: str, message: str, info: CertInfo | None = None) -> Inspection:
    return Inspection(status, message, info, None)


# --------------------------------------------------------------------------------------------
# Classification of what cryptography opened


def _spki(key: object) -> bytes | None:
    try:
        return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except Exception:  # noqa: BLE001 - a key type we cannot serialise matches nothing
        return None


def _accepted(target: str) -> str:
    names = []
    for alg in ALGORITHMS:
        if not alg.standard and target == DEFAULT_TARGET:
            continue
        if alg.key_type == "RSA":
            names.append(f"RSA-{alg.bits}")
        elif alg.key_type == "EC":
            names.append(f"P-{alg.bits}")
        else:
            names.append(alg.key_type)
    return ", ".join(names) + " (RSA only with public exponent 65537)"


def _describe_key(info: CertInfo, exponent: int | None) -> str:
    if info.key_type == "RSA":
        shown = f"RSA-{info.key_bits}"
        return shown if exponent in (None, _RSA_EXPONENT) else f"{shown} with public exponent {exponent}"
    if info.key_type == "EC":
        return info.curve or f"an EC key of {info.key_bits} bits"
    return info.key_type


def _classify(
    loaded: pkcs12.PKCS12KeyAndCertificates, target: str, now: datetime
) -> tuple[Inspection, Bundle | None]:
    key = loaded.key
    entries = ([loaded.cert] if loaded.cert is not None else []) + list(loaded.additional_certs)
    if key is None:
        return _failure(
            "no-key",
            msg('The file holds no private key; ask the issuer for a PKCS#12 file that includes the key.'),
        ), None
    if not entries:
        return _failure(
            "no-cert",
            msg('The file holds a private key but no certificate; ask the issuer for a file that includes the certificate.'),
        ), None
    key_spki = _spki(key.public_key())
    match = None
    for entry in entries:
        try:
            cert_spki = _spki(entry.certificate.public_key())
        except Exception:  # noqa: BLE001, S112 - an unreadable certificate key cannot be the match
            continue
        if key_spki is not None and cert_spki == key_spki:
            match = entry
            break
    if match is None:
        count = len(entries)
        return _failure(
            "key-cert-mismatch",
            msg('None of the {count} certificate{s} in the file belongs to its private key; ask the issuer for a file with the matching certificate.', count=count, s='s' if count != 1 else ''),
        ), None
    name = match.friendly_name.decode("utf-8", "replace") if match.friendly_name else None
    info = cert_info(match.certificate, name)
    exponent = key.public_key().public_numbers().e if isinstance(key, rsa.RSAPrivateKey) else None
    algorithm = find_algorithm(info.key_type, info.key_bits, target)
    if info.key_type == "EC" and info.curve not in ("P-256", "P-384"):
        algorithm = None  # another curve of the same size (brainpool, secp256k1) is not P-256
    if algorithm is None or exponent not in (None, _RSA_EXPONENT):
        return _failure(
            "unsupported-key",
            msg('The key is {describe_key}, which a card under {target} cannot hold (accepted: {accepted}); ask the issuer for a key of an accepted type.', describe_key=_describe_key(info, exponent), target=target, accepted=_accepted(target)),
            info,
        ), None
    if now < info.not_before:
        return Inspection(
            "not-yet-valid",
            msg('The certificate is valid only from {rfc3339}; wait until then or ask the issuer why it was dated ahead.', rfc3339=_rfc3339(info.not_before)),
            info,
            algorithm.name,
        ), None
    if now > info.not_after:
        return Inspection(
            "expired",
            msg('The certificate expired at {rfc3339}; ask the issuer for a renewed one.', rfc3339=_rfc3339(info.not_after)),
            info,
            algorithm.name,
        ), None
    chain = tuple(e.certificate for e in entries if e is not match)
    who = info.subject_cn or info.subject
    inspection = Inspection(
        "ok",
        msg('The file holds an {name} key and its certificate for {who}, valid until {rfc3339}.', name=algorithm.name, who=who, rfc3339=_rfc3339(info.not_after)),
        info,
        algorithm.name,
    )
    return inspection, Bundle(key, match.certificate, chain, info, algorithm)


# --------------------------------------------------------------------------------------------
# Entry points


def read_pkcs12(path: Path) -> bytes:
    """A PKCS#12 file's bytes, read with its bound (limits.MAX_PKCS12_BYTES), whatever the file is:
    ``/dev/zero`` or a FIFO ends with InputTooLargeError, not an endless read. OSError is the caller's."""
    return limits.read_bounded(path, limits.MAX_PKCS12_BYTES, "PKCS#12 file")


def inspect_pkcs12(
    data: bytes,
    password: Secret | None,
    *,
    target: str = DEFAULT_TARGET,
    now: datetime | None = None,
) -> tuple[Inspection, Bundle | None]:
    """Classify a PKCS#12 file into one status of CLI.md; the Bundle only when the status is ok."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    data = bytes(data)
    if not data:
        return _failure("corrupt", msg('The file is empty; ask the issuer for a new copy.')), None
    pfx: _Pfx | None = None
    problem: _Malformed | None = None
    try:
        pfx = _parse_pfx(data)
    except _Malformed as exc:
        problem = exc
    if isinstance(problem, _TooCostly):
        # Refuse before cryptography spends minutes on a hostile iteration count.
        return _diagnose(None, problem, b""), None
    revealed = password.reveal() if password is not None else b""
    try:
        attempt = _try_load(data, _cryptography_passwords(revealed))
        if attempt.key_type_refused:
            return _failure(
                "unsupported-key",
                msg('The password is right but the key is of a type this tool cannot read from a PKCS#12 file (accepted: {accepted}); ask the issuer for a key of an accepted type.', accepted=_accepted(target)),
            ), None
        if attempt.loaded is None:
            return _diagnose(pfx, problem, revealed), None
        loaded = attempt.loaded
    finally:
        del revealed
    try:
        return _classify(loaded, target, moment)
    except Exception:  # noqa: BLE001 - odd content must still end as a status, never a traceback
        return _failure(
            "corrupt",
            msg('The file opens but its contents cannot be understood; ask the issuer for a new copy.'),
        ), None


def load_bundle(
    data: bytes,
    password: Secret | None,
    *,
    target: str = DEFAULT_TARGET,
    now: datetime | None = None,
) -> Bundle:
    """The usable key and certificate, or ``BundleError(status, message)``."""
    inspection, bundle = inspect_pkcs12(data, password, target=target, now=now)
    if bundle is None:
        raise BundleError(inspection.status, inspection.message)
    return bundle
