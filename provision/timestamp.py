"""RFC 3161 time-stamps of audit seals: a time-stamp authority (TSA) signs "this seal existed then".

``request_stamp`` sends a TimeStampReq (SHA-256 imprint: the seal's 32 bytes themselves, a nonce,
the TSA's certificate asked for) over HTTP POST and returns the token after checking it;
``check_stamp`` checks a token: it is CMS SignedData over a TSTInfo whose imprint is the seal, the
signed attributes' message digest is the TSTInfo's, and the signature verifies with the signer's
certificate carried in the token, which, when ``trusted`` certificates are given (the TSA's, as
the auditor obtained them), must be one of them. Without ``trusted`` a token proves only that
*some* key signed it: the TSA's certificate is named so that a person can judge it.
"""

from __future__ import annotations

import hashlib
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provision.errors import AuditError, EnvironmentProblem
from provision.i18n import msg

QUERY_TYPE = "application/timestamp-query"
_HASHES = {"sha256", "sha384", "sha512"}


@dataclass(frozen=True)
class Stamp:
    """A checked token: when the TSA says the seal existed, and who the TSA is."""

    gen_time: datetime
    tsa: str  # the signer certificate's subject, in words
    token: bytes


def request_stamp(url: str, seal: str, *, timeout: float = 10.0) -> Stamp:
    """A time-stamp of ``seal`` (64 hex digits) from the TSA at ``url``; EnvironmentProblem if it
    does not answer or refuses, AuditError if what it answers does not check."""
    from asn1crypto import tsp

    nonce = secrets.randbits(63)
    query = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": bytes.fromhex(seal)},
            "nonce": nonce,
            "cert_req": True,
        }
    )
    if not url.startswith(("http://", "https://")):
        raise EnvironmentProblem(msg('the time-stamp authority {url} is not an http:// or https:// URL', url=url))
    request = urllib.request.Request(url, data=query.dump(), headers={"Content-Type": QUERY_TYPE}, method="POST")  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - scheme checked above
            body = answer.read(1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise EnvironmentProblem(msg('the time-stamp authority {url} did not answer ({reason})', url=url, reason=reason)) from None
    not_a_response = f"the time-stamp authority {url} answered something that is not a time-stamp response"
    try:
        response = _response_type().load(body)
        status = response["status"]["status"].native
    except Exception:  # noqa: BLE001 - any parse failure of foreign bytes is one answer: not a response
        raise AuditError(not_a_response) from None
    if status not in ("granted", "granted_with_mods"):
        raise EnvironmentProblem(msg('the time-stamp authority {url} refused the request ({status})', url=url, status=status))
    try:
        token_bytes = response["time_stamp_token"].dump()
    except Exception:  # noqa: BLE001
        raise AuditError(not_a_response) from None
    stamp, tst = _check(token_bytes, seal, ())
    if tst["nonce"].native != nonce:
        raise AuditError(msg('the time-stamp authority {url} answered another request (the nonce differs)', url=url))
    return stamp


def check_stamp(token: bytes, seal: str, trusted: Sequence[bytes] = ()) -> Stamp:
    """The token's time and TSA when it is a valid time-stamp of ``seal``; AuditError otherwise.

    ``trusted``: DER certificates of the TSAs the auditor accepts (none: any signer, named)."""
    return _check(token, seal, trusted)[0]


def _check(token: bytes, seal: str, trusted: Sequence[bytes]) -> tuple[Stamp, Any]:
    from asn1crypto import cms, tsp

    try:
        info = cms.ContentInfo.load(token)
        if info["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        signed = info["content"]
        encap = signed["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise ValueError("not a TSTInfo")
        tst_bytes = encap["content"].contents
        tst = tsp.TSTInfo.load(tst_bytes)
        imprint = tst["message_imprint"]
        imprint_alg = imprint["hash_algorithm"]["algorithm"].native
        hashed = imprint["hashed_message"].native
        gen_time = tst["gen_time"].native
        signer = signed["signer_infos"][0]
        digest_alg = signer["digest_algorithm"]["algorithm"].native
        attrs = signer["signed_attrs"]
        digests = [a["values"][0].native for a in attrs if a["type"].native == "message_digest"]
        signed_bytes = b"\x31" + attrs.dump()[1:]  # signed over as a SET, not as the [0] it is stored as
        signature = signer["signature"].native
        sig_alg = signer["signature_algorithm"].signature_algo
        sid = signer["sid"]
        certs = [c.chosen.dump() for c in signed["certificates"] if c.name == "certificate"]
    except Exception as exc:  # noqa: BLE001 - foreign bytes: any failure is "not a token"
        raise AuditError(msg('the time-stamp token is not an RFC 3161 token ({exc})', exc=exc)) from None
    if imprint_alg != "sha256" or hashed != bytes.fromhex(seal):
        raise AuditError(msg('the time-stamp token is of another seal (its message imprint differs)'))
    if digest_alg not in _HASHES or digests != [hashlib.new(digest_alg, tst_bytes).digest()]:
        raise AuditError(msg("the time-stamp token's signed digest does not match its content (it was changed)"))
    cert = _signer_certificate(certs, sid)
    if trusted and cert.public_bytes(_der()) not in set(trusted):
        raise AuditError(msg('the time-stamp token is signed by {rfc4514_string}, not by a trusted TSA', rfc4514_string=cert.subject.rfc4514_string()))
    _verify_signature(cert, sig_alg, digest_alg, signature, signed_bytes)
    return Stamp(gen_time=gen_time, tsa=cert.subject.rfc4514_string(), token=token), tst


def _response_type() -> Any:
    """TimeStampResp with its token optional, as RFC 3161 has it (asn1crypto requires it)."""
    from asn1crypto import cms, core, tsp

    class TimeStampResp(core.Sequence):  # type: ignore[misc]  # asn1crypto has no type hints
        _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", cms.ContentInfo, {"optional": True})]

    return TimeStampResp


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _signer_certificate(certs: list[bytes], sid: Any) -> Any:
    from cryptography import x509

    if sid.name != "issuer_and_serial_number":
        raise AuditError(msg('the time-stamp token names its signer by key identifier, which is not supported'))
    serial = sid.chosen["serial_number"].native
    issuer = sid.chosen["issuer"].dump()
    for der in certs:
        cert = x509.load_der_x509_certificate(der)
        if cert.serial_number == serial and cert.issuer.public_bytes() == issuer:
            return cert
    raise AuditError(msg("the time-stamp token does not carry its signer's certificate"))


def _verify_signature(cert: Any, sig_alg: str, digest_alg: str, signature: bytes, data: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[digest_alg]
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and sig_alg == "rsassa_pkcs1v15":
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and sig_alg == "ecdsa":
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise AuditError(msg("the time-stamp token's signature ({sig_alg}) is of a kind not supported here", sig_alg=sig_alg))
    except InvalidSignature:
        raise AuditError(msg("the time-stamp token's signature does not verify (it was changed or forged)")) from None
