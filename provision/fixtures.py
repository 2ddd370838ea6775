"""Generated certificates and PKCS#12 files for tests, the demo and training. Never for production.

Everything stays in memory; callers decide where bytes go. EC and Ed25519 keys can be derived from
a seed so a demo batch is the same every time; RSA keys cannot (cryptography has no seeded RSA
generation), so callers that need many RSA files generate one key and pass it in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12

from provision.secrets import Secret

KeyType = Literal["rsa1024", "rsa2048", "rsa3072", "rsa4096", "p256", "p384", "p521", "ed25519", "x25519"]
KEY_TYPES: tuple[KeyType, ...] = (
    "rsa1024", "rsa2048", "rsa3072", "rsa4096", "p256", "p384", "p521", "ed25519", "x25519",
)  # fmt: skip
Encryption = Literal["aes", "legacy", "none"]

_CURVES: dict[str, ec.EllipticCurve] = {
    "p256": ec.SECP256R1(),
    "p384": ec.SECP384R1(),
    "p521": ec.SECP521R1(),
}
# A fixed moment, so certificates made without explicit dates are the same on every run.
DEFAULT_NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
DEFAULT_NOT_AFTER = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)


def generate_key(
    key_type: KeyType, *, seed: bytes | None = None, public_exponent: int = 65537
) -> PrivateKeyTypes:
    """A new private key. ``seed`` makes EC, Ed25519 and X25519 keys reproducible (not RSA)."""
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=public_exponent, key_size=int(key_type[3:]))
    if key_type in _CURVES:
        curve = _CURVES[key_type]
        if seed is None:
            return ec.generate_private_key(curve)
        stream = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(3))
        # Below 2**(bits-1), which is under the group order of every NIST curve: always valid.
        scalar = int.from_bytes(stream, "big") % (2 ** (curve.key_size - 1) - 1) + 1
        return ec.derive_private_key(scalar, curve)
    raw = hashlib.sha256(seed).digest() if seed is not None else None
    if key_type == "ed25519":
        return (
            ed25519.Ed25519PrivateKey.from_private_bytes(raw) if raw else ed25519.Ed25519PrivateKey.generate()
        )
    if key_type == "x25519":
        return x25519.X25519PrivateKey.from_private_bytes(raw) if raw else x25519.X25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


@dataclass(frozen=True)
class Issuer:
    """A certificate authority that can sign holders' certificates."""

    key: CertificateIssuerPrivateKeyTypes
    certificate: x509.Certificate

    def __repr__(self) -> str:
        return f"Issuer({self.certificate.subject.rfc4514_string()!r})"


def _name(cn: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]
    if organization:
        attributes.insert(0, x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate hash; everything else uses SHA-256.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _sign(builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    # Deterministic ECDSA (RFC 6979) keeps seeded certificates byte-identical across runs.
    deterministic = True if isinstance(key, ec.EllipticCurvePrivateKey) else None
    return builder.sign(key, _signing_hash(key), ecdsa_deterministic=deterministic)


def make_ca(
    cn: str = "Provision Demo CA",
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    organization: str | None = "Provision Demo",
    serial: int = 1,
    not_before: datetime = DEFAULT_NOT_BEFORE,
    not_after: datetime = DEFAULT_NOT_AFTER,
) -> Issuer:
    """A self-signed CA (P-256 from a seed of ``cn`` unless ``key`` is given)."""
    if key is None:
        derived = generate_key("p256", seed=cn.encode("utf-8"))
        assert isinstance(derived, ec.EllipticCurvePrivateKey)
        key = derived
    name = _name(cn, organization)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return Issuer(key, _sign(builder, key))


def make_leaf(
    ca: Issuer,
    cn: str,
    *,
    key_type: KeyType = "p256",
    key: PrivateKeyTypes | None = None,
    seed: bytes | None = None,
    serial: int = 0x1001,
    not_before: datetime = DEFAULT_NOT_BEFORE,
    not_after: datetime = DEFAULT_NOT_AFTER,
    organization: str | None = "Provision Demo",
) -> tuple[PrivateKeyTypes, x509.Certificate]:
    """A holder's key and certificate signed by ``ca``. Pass ``key`` to reuse a (slow) RSA key."""
    if key is None:
        key = generate_key(key_type, seed=seed)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, organization))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    return key, _sign(builder, ca.key)


def _password_bytes(password: Secret | str | bytes | None) -> bytes:
    if isinstance(password, Secret):
        return password.reveal()
    if isinstance(password, str):
        return password.encode("utf-8")
    return password or b""


def pkcs12_bytes(
    key: PrivateKeyTypes | None,
    cert: x509.Certificate | None,
    *,
    password: Secret | str | bytes | None,
    chain: Sequence[x509.Certificate] = (),
    friendly_name: str | None = None,
    encryption: Encryption = "aes",
    leaf_with_key: bool = True,
    iterations: int | None = None,
    mac_hash: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A PKCS#12 file as cryptography writes it.

    ``encryption``: ``aes`` (PBES2, PBKDF2, AES-256-CBC: OpenSSL 3's default), ``legacy``
    (PBES1 3DES with a SHA-1 MAC, what older Windows and OpenSSL wrote) or ``none``.
    ``leaf_with_key=False`` puts the certificate among the CA certificates, after them, with no
    link to the key: readers then report ``cert=None`` and must find it by its public key.
    """
    secret = _password_bytes(password)
    if encryption == "none" or not secret:
        # cryptography refuses an empty password with BestAvailableEncryption.
        algorithm: serialization.KeySerializationEncryption = serialization.NoEncryption()
    else:
        builder = serialization.PrivateFormat.PKCS12.encryption_builder()
        if encryption == "legacy":
            builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(
                hashes.SHA1()  # noqa: S303 - the legacy format is SHA-1 by definition
            )
        else:
            builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        if iterations is not None:
            builder = builder.kdf_rounds(iterations)
        if mac_hash is not None:
            builder = builder.hmac_hash(mac_hash)
        algorithm = builder.build(secret)
    del secret
    cas = list(chain)
    if cert is not None and not leaf_with_key:
        cas.append(cert)
        cert = None
    name = friendly_name.encode("utf-8") if friendly_name is not None else None
    return pkcs12.serialize_key_and_certificates(name, key, cert, cas or None, algorithm)  # type: ignore[arg-type]


def holder_p12(
    ca: Issuer,
    cn: str,
    password: Secret | str | bytes,
    *,
    key_type: KeyType = "p256",
    key: PrivateKeyTypes | None = None,
    serial: int = 0x1001,
    not_before: datetime = DEFAULT_NOT_BEFORE,
    not_after: datetime = DEFAULT_NOT_AFTER,
    encryption: Encryption = "aes",
) -> bytes:
    """One holder's PKCS#12 (key, certificate, CA), as the demo makes a batch of them."""
    leaf_key, cert = make_leaf(
        ca,
        cn,
        key_type=key_type,
        key=key,
        seed=None if key_type.startswith("rsa") else f"{cn}/{serial}".encode(),
        serial=serial,
        not_before=not_before,
        not_after=not_after,
    )
    return pkcs12_bytes(
        leaf_key, cert, password=password, chain=[ca.certificate], friendly_name=cn, encryption=encryption
    )
