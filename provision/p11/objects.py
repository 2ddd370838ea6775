"""Pure PKCS#11 object material: the common CKA_ID, and the attribute templates of what we create.

CKA_ID. Middleware finds a certificate's private key by a CKA_ID they share; what the ID is, is
convention. We follow the one NSS applies when it imports a key (``PK11_MakeIDFromPubKey``), which
OpenSC's ``pkcs15-init`` also uses for RSA (id-style "mozilla"):

* RSA: SHA-1 of the modulus, unsigned big-endian without leading zero bytes;
* EC: SHA-1 of the public point in uncompressed X9.62 form (04 || X || Y), the value inside
  CKA_EC_POINT. (OpenSC's "mozilla" style hashes only X for EC keys, after PKCS#15 v1.1; the key,
  public key and certificate we write share one ID whichever rule, which is what NSS, OpenSC,
  Firefox and pkcs11-tool need to pair them.)
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provision.i18n import msg

# DER of the named-curve OIDs (CKA_EC_PARAMS)
EC_PARAMS = {
    "secp256r1": bytes.fromhex("06082a8648ce3d030107"),
    "secp384r1": bytes.fromhex("06052b81040022"),
    "secp521r1": bytes.fromhex("06052b81040023"),
}


def supported(private_key: Any) -> str | None:
    """None when the key can be loaded through PKCS#11 here, else why not."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        return None
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if private_key.curve.name in EC_PARAMS:
            return None
        return msg('the curve {name} is not supported for PKCS#11 tokens (P-256, P-384, P-521 are)', name=private_key.curve.name)
    return msg('a {kind} key cannot be loaded through PKCS#11 by provision yet (RSA and EC can)', kind=type(private_key).__name__.replace('PrivateKey', ''))


def _unsigned(n: int) -> bytes:
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = _unsigned(n)
    return bytes([0x80 | len(body)]) + body


def der_octet_string(data: bytes) -> bytes:
    return b"\x04" + _der_length(len(data)) + data


def der_integer(n: int) -> bytes:
    body = n.to_bytes((n.bit_length() + 8) // 8, "big")  # room for the sign bit
    return b"\x02" + _der_length(len(body)) + body


def ec_point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def key_id(public_key: Any) -> bytes:
    if isinstance(public_key, rsa.RSAPublicKey):
        return hashlib.sha1(_unsigned(public_key.public_numbers().n), usedforsecurity=False).digest()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return hashlib.sha1(ec_point(public_key), usedforsecurity=False).digest()
    raise ValueError(f"no CKA_ID rule for {type(public_key).__name__}")


def private_key_template(private_key: Any, label: str, cka_id: bytes, subject: bytes, *,
                         minimal: bool = False) -> dict[Any, Any]:  # fmt: skip
    """The private key object. ``minimal``: only what a module needs to make the key (no usage
    flags, RSA by its CRT parts without the modulus and private exponent), for modules that refuse
    attributes they do not know (Yubico's ykcs11 2.2: ``objects.c`` ``check_create_rsa_key``)."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    common: dict[Any, Any] = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.TOKEN: True, Attribute.SENSITIVE: True,
        Attribute.LABEL: label, Attribute.ID: cka_id, Attribute.SUBJECT: subject,
    }  # fmt: skip
    if not minimal:
        common.update({Attribute.PRIVATE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True})
    if isinstance(private_key, rsa.RSAPrivateKey):
        n = private_key.private_numbers()
        if minimal:
            return {**common, Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.PUBLIC_EXPONENT: _unsigned(n.public_numbers.e), Attribute.PRIME_1: _unsigned(n.p),
                    Attribute.PRIME_2: _unsigned(n.q), Attribute.EXPONENT_1: _unsigned(n.dmp1),
                    Attribute.EXPONENT_2: _unsigned(n.dmq1), Attribute.COEFFICIENT: _unsigned(n.iqmp)}  # fmt: skip
        return {**common, Attribute.KEY_TYPE: KeyType.RSA, Attribute.DECRYPT: True, Attribute.UNWRAP: True,
                Attribute.MODULUS: _unsigned(n.public_numbers.n),
                Attribute.PUBLIC_EXPONENT: _unsigned(n.public_numbers.e),
                Attribute.PRIVATE_EXPONENT: _unsigned(n.d), Attribute.PRIME_1: _unsigned(n.p),
                Attribute.PRIME_2: _unsigned(n.q), Attribute.EXPONENT_1: _unsigned(n.dmp1),
                Attribute.EXPONENT_2: _unsigned(n.dmq1), Attribute.COEFFICIENT: _unsigned(n.iqmp)}  # fmt: skip
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    size = (private_key.curve.key_size + 7) // 8
    if not minimal:
        common[Attribute.DERIVE] = True
    return {**common, Attribute.KEY_TYPE: KeyType.EC,
            Attribute.EC_PARAMS: EC_PARAMS[private_key.curve.name],
            Attribute.VALUE: private_key.private_numbers().private_value.to_bytes(size, "big")}  # fmt: skip


def public_key_template(public_key: Any, label: str, cka_id: bytes, subject: bytes) -> dict[Any, Any]:
    from pkcs11 import Attribute, KeyType, ObjectClass

    common: dict[Any, Any] = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.TOKEN: True, Attribute.PRIVATE: False,
        Attribute.VERIFY: True, Attribute.LABEL: label, Attribute.ID: cka_id, Attribute.SUBJECT: subject,
    }  # fmt: skip
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {**common, Attribute.KEY_TYPE: KeyType.RSA, Attribute.ENCRYPT: True, Attribute.WRAP: True,
                Attribute.MODULUS: _unsigned(numbers.n), Attribute.PUBLIC_EXPONENT: _unsigned(numbers.e)}  # fmt: skip
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return {**common, Attribute.KEY_TYPE: KeyType.EC, Attribute.EC_PARAMS: EC_PARAMS[public_key.curve.name],
            Attribute.EC_POINT: der_octet_string(ec_point(public_key))}  # fmt: skip


def certificate_template(certificate: x509.Certificate, label: str, cka_id: bytes) -> dict[Any, Any]:
    from pkcs11 import Attribute, CertificateType, ObjectClass

    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.LABEL: label, Attribute.ID: cka_id,
        Attribute.VALUE: certificate.public_bytes(Encoding.DER),
        Attribute.SUBJECT: certificate.subject.public_bytes(), Attribute.ISSUER: certificate.issuer.public_bytes(),
        Attribute.SERIAL_NUMBER: der_integer(certificate.serial_number),
    }  # fmt: skip
