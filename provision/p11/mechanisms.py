"""The test signature's mechanism: chosen from what the token offers, checked with ``cryptography``.

Middleware differ in what ``C_Sign`` accepts: SoftHSM2 2.6 signs EC keys only with raw
``CKM_ECDSA``, a vendor's card module may offer only hashed ECDSA (``CKM_ECDSA_SHA256`` …), an RSA
token may offer PKCS#1 v1.5 or only PSS. The candidates below are tried in a fixed order of
preference (SHA-256 first, the token hashing before provision hashing, SHA-1 last), each only when
``C_GetMechanismList`` lists it and ``C_GetMechanismInfo`` says ``CKF_SIGN``. Codes are the
PKCS#11 ``CKM_`` values, so this module needs python-pkcs11 only where it talks to a slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from provision.errors import CardError
from provision.i18n import msg
from provision.p11.module import REMOVED, p11_errors

CKF_SIGN = 0x800

# DigestInfo prefixes (RFC 8017 §9.2, note 1) for raw CKM_RSA_PKCS
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}  # fmt: skip
# CKM_SHA_1, CKM_SHA256 …, and CKG_MGF1_SHA1 … for CK_RSA_PKCS_PSS_PARAMS
_CKM_HASH = {"sha1": 0x220, "sha256": 0x250, "sha384": 0x260, "sha512": 0x270}
_CKG_MGF1 = {"sha1": 0x1, "sha256": 0x2, "sha384": 0x3, "sha512": 0x4}


@dataclass(frozen=True)
class SignMechanism:
    name: str  # as the PKCS#11 specification spells it
    code: int  # the CKM_ value
    scheme: Literal["ecdsa", "pkcs1", "pss"]
    hash: str  # "sha256" …
    raw: bool  # provision hashes (and for CKM_RSA_PKCS wraps the digest in a DigestInfo)

    def data(self, message: bytes) -> bytes:
        """What goes into ``C_Sign`` for ``message``."""
        if not self.raw:
            return message
        digest = hashlib.new(self.hash, message).digest()
        return _DIGEST_INFO[self.hash] + digest if self.scheme == "pkcs1" else digest

    def parameter(self) -> tuple[int, int, int] | None:
        """CK_RSA_PKCS_PSS_PARAMS as python-pkcs11 takes them: (hash, MGF1 of the hash, salt length)."""
        if self.scheme != "pss":
            return None
        return _CKM_HASH[self.hash], _CKG_MGF1[self.hash], _HASHES[self.hash]().digest_size

    def verify(self, public_key: Any, signature: bytes, message: bytes) -> None:
        """Raises (cryptography's ``InvalidSignature`` or ``ValueError``) unless ``signature`` is
        ``message`` signed by the key of ``public_key`` under this mechanism."""
        algorithm = _HASHES[self.hash]()
        if self.scheme == "ecdsa":
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or not signature or len(signature) % 2:
                raise ValueError("not an ECDSA signature of this key")
            half = len(signature) // 2  # PKCS#11 returns r || s
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
            public_key.verify(der, message, ec.ECDSA(algorithm))
            return
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ValueError("not an RSA signature of this key")
        if self.scheme == "pkcs1":
            public_key.verify(signature, message, padding.PKCS1v15(), algorithm)
        else:
            public_key.verify(signature, message, padding.PSS(padding.MGF1(algorithm), algorithm.digest_size), algorithm)


def _m(name: str, code: int, scheme: Literal["ecdsa", "pkcs1", "pss"], hash: str, raw: bool = False) -> SignMechanism:
    return SignMechanism(name, code, scheme, hash, raw)


EC_ORDER = (
    _m("CKM_ECDSA_SHA256", 0x1044, "ecdsa", "sha256"),
    _m("CKM_ECDSA", 0x1041, "ecdsa", "sha256", raw=True),
    _m("CKM_ECDSA_SHA384", 0x1045, "ecdsa", "sha384"),
    _m("CKM_ECDSA_SHA512", 0x1046, "ecdsa", "sha512"),
    _m("CKM_ECDSA_SHA1", 0x1042, "ecdsa", "sha1"),
)
RSA_ORDER = (
    _m("CKM_SHA256_RSA_PKCS", 0x40, "pkcs1", "sha256"),
    _m("CKM_RSA_PKCS", 0x1, "pkcs1", "sha256", raw=True),
    _m("CKM_SHA256_RSA_PKCS_PSS", 0x43, "pss", "sha256"),
    _m("CKM_RSA_PKCS_PSS", 0xD, "pss", "sha256", raw=True),
    _m("CKM_SHA384_RSA_PKCS", 0x41, "pkcs1", "sha384"),
    _m("CKM_SHA512_RSA_PKCS", 0x42, "pkcs1", "sha512"),
    _m("CKM_SHA384_RSA_PKCS_PSS", 0x44, "pss", "sha384"),
    _m("CKM_SHA512_RSA_PKCS_PSS", 0x45, "pss", "sha512"),
    _m("CKM_SHA1_RSA_PKCS", 0x6, "pkcs1", "sha1"),
)


def preference(public_key: Any) -> tuple[SignMechanism, ...]:
    """Every mechanism provision can check for this key, most preferred first."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return EC_ORDER
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSA_ORDER
    return ()


def usable(public_key: Any, signing: Iterable[int]) -> list[SignMechanism]:
    """The candidates for this key among the mechanisms the token signs with, in preference order."""
    offered = set(signing)
    return [m for m in preference(public_key) if m.code in offered]


def mechanism_name(code: int) -> str:
    """``CKM_ECDSA_SHA256`` for 0x1044; vendor-defined and unknown codes in hex."""
    try:
        from pkcs11 import Mechanism

        return "CKM_" + Mechanism(code).name
    except (ImportError, ValueError):
        return f"CKM_0x{code:08X}"


def signing_mechanisms(slot: Any) -> list[int]:
    """``C_GetMechanismList`` of the slot, kept to those whose ``C_GetMechanismInfo`` says ``CKF_SIGN``.
    PKCS#11 errors pass through (the caller names them)."""
    import pkcs11

    out = []
    for mechanism in slot.get_mechanisms():
        try:
            info = slot.get_mechanism_info(mechanism)
        except pkcs11.PKCS11Error as exc:
            if type(exc).__name__ in REMOVED:
                raise
            continue  # listed but not described: not a mechanism provision relies on
        if int(info.flags) & CKF_SIGN:
            out.append(int(mechanism))
    return sorted(out)


def _declined() -> tuple[type[Exception], ...]:
    import pkcs11

    # C_Sign refusing this mechanism for this key (not the token failing): the next candidate is tried
    return (pkcs11.MechanismInvalid, pkcs11.MechanismParamInvalid, pkcs11.KeyTypeInconsistent,
            pkcs11.KeySizeRange, pkcs11.DataLenRange, pkcs11.DataInvalid, pkcs11.FunctionNotSupported)  # fmt: skip


def offered_for_signing(slot: Any) -> list[int] | None:
    """``signing_mechanisms`` of the slot, or None when the module keeps no mechanism list
    (``CKR_FUNCTION_NOT_SUPPORTED``: then every candidate is tried). Other errors are named."""
    import pkcs11

    with p11_errors(msg("reading the token's mechanism list")):
        try:
            return signing_mechanisms(slot)
        except pkcs11.FunctionNotSupported:
            return None


def _nothing_usable(offered: list[int] | None, declined: list[str]) -> str:
    listed = ", ".join(mechanism_name(code) for code in offered) if offered is not None else msg("no list")
    refused = msg("; C_Sign refused {mechanisms}", mechanisms=", ".join(declined)) if declined else ""
    return msg("the token offers no signing mechanism provision can check for this key (offered: {listed}{refused})",
               listed=listed or msg("none"), refused=refused)  # fmt: skip


def _a_module_that_can(public_key: Any) -> str:
    return msg("A module that signs with one of {mechanisms} can check it",
               mechanisms=", ".join(m.name for m in preference(public_key)))  # fmt: skip


def cannot_check(slot: Any, public_key: Any) -> str | None:
    """Why a key like ``public_key`` loaded on this token could not be verified, judged from the
    mechanism list alone, before anything is written (None: a candidate is offered, or the module
    keeps no list). A token may accept key objects of a type it has no mechanism for (opencryptoki's
    software token stores EC keys and signs with RSA only): such a key would be written, fail its
    test signature and, on a replacement, have taken the place of a key that worked."""
    offered = offered_for_signing(slot)
    if offered is None or usable(public_key, offered):
        return None
    return (msg('{nothing_usable}, so a key loaded there could not be verified; nothing was written and no PIN was sent. {a_module_that_can}', nothing_usable=_nothing_usable(offered, []), a_module_that_can=_a_module_that_can(public_key)))  # fmt: skip


def check_key(slot: Any, key: Any, public_key: Any, message: bytes, *, label: str, pin: str | None) -> str:
    """Sign ``message`` with the private key object ``key`` (python-pkcs11) on the token in ``slot``
    and verify the signature with ``public_key`` (the certificate's): the first usable mechanism of
    ``preference`` the token signs with. Returns its name; a ``CardError`` when the signature does
    not verify or no mechanism provision can check is offered. ``pin``: for CKA_ALWAYS_AUTHENTICATE."""
    import pkcs11

    offered = offered_for_signing(slot)
    candidates = usable(public_key, offered) if offered is not None else list(preference(public_key))
    declined: list[str] = []
    for mechanism in candidates:
        with p11_errors(msg('signing the test message ({name})', name=mechanism.name)):
            try:
                signature = key.sign(mechanism.data(message), mechanism=pkcs11.Mechanism(mechanism.code),
                                     mechanism_param=mechanism.parameter(), pin=pin)  # fmt: skip
            except _declined() as exc:
                declined.append(f"{mechanism.name} ({type(exc).__name__})")
                continue
        try:
            mechanism.verify(public_key, bytes(signature), message)
        except Exception:  # noqa: BLE001 - cryptography's InvalidSignature and malformed signatures alike
            raise CardError(msg('the test signature ({name}) of the key labelled {label!r} does not verify with the certificate', name=mechanism.name, label=label)) from None  # fmt: skip
        return mechanism.name
    raise CardError(msg('{nothing_usable}; the key labelled {label!r} is not verified, so the job is not done. {a_module_that_can}', nothing_usable=_nothing_usable(offered, declined), label=label, a_module_that_can=_a_module_that_can(public_key)))  # fmt: skip
