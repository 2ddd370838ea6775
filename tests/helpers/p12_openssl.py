"""PKCS#12 files made by an independent producer (the `openssl` command line), plus small DER
tools to re-encode the MacData of a file the way other writers do (MAC without iteration count,
a MAC keyed with a zero-length empty password, PBMAC1 of RFC 9579).

Everything is written under a caller-given temporary directory; nothing lands in the repository.
The MAC code here is written independently of provision.bundle (full RFC 7292 B.2, any length), and
cryptography verifies what it makes, so the tests do not grade our MAC check with itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

PASSWORD_ENV = "P12_TEST_PASSWORD"


def write_key(path: Path, key: PrivateKeyTypes) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def write_certs(path: Path, certs: Sequence[x509.Certificate]) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def openssl_export(
    workdir: Path,
    *,
    password: str,
    key: PrivateKeyTypes | None = None,
    certs: Sequence[x509.Certificate] = (),
    certfile: Sequence[x509.Certificate] = (),
    options: Sequence[str] = (),
) -> bytes:
    """`openssl pkcs12 -export`: ``certs`` go to -in (in that order), ``certfile`` to -certfile.

    The password travels in an environment variable, never on the command line.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out.p12"
    argv = ["openssl", "pkcs12", "-export", "-out", str(out), "-passout", f"env:{PASSWORD_ENV}"]
    if key is not None:
        argv += ["-inkey", str(write_key(workdir / "key.pem", key))]
    else:
        argv += ["-nokeys"]
    if certs:
        argv += ["-in", str(write_certs(workdir / "in.pem", certs))]
    else:
        argv += ["-nocerts"]
    if certfile:
        argv += ["-certfile", str(write_certs(workdir / "chain.pem", certfile))]
    argv += list(options)
    env = dict(os.environ, **{PASSWORD_ENV: password}, LC_ALL="C.UTF-8")
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl failed: {done.stderr.decode(errors='replace')}")
    data = out.read_bytes()
    for name in ("key.pem", "out.p12"):  # keys do not outlive the call, even in tmp
        (workdir / name).unlink(missing_ok=True)
    return data


def asn1parse(workdir: Path, data: bytes) -> str:
    path = workdir / "parse.der"
    path.write_bytes(data)
    done = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)], capture_output=True, check=True
    )
    return done.stdout.decode()


# ---------------------------------------------------------------------------------------------
# Minimal DER, only what MacData needs


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(body)]) + body
    return bytes([tag]) + length + content


def der_int(value: int) -> bytes:
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray()
    for n in [parts[0] * 40 + parts[1], *parts[2:]]:
        septets = [n & 0x7F]
        n >>= 7
        while n:
            septets.append(0x80 | (n & 0x7F))
            n >>= 7
        out += bytes(reversed(septets))
    return der(0x06, bytes(out))


def seq(*items: bytes) -> bytes:
    return der(0x30, b"".join(items))


def _split(data: bytes, pos: int) -> tuple[int, int, int]:
    """(content start, content end, element end) of the DER element at pos."""
    first = data[pos + 1]
    if first < 0x80:
        return pos + 2, pos + 2 + first, pos + 2 + first
    n = first & 0x7F
    length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
    start = pos + 2 + n
    return start, start + length, start + length


def pfx_parts(p12: bytes) -> tuple[bytes, bytes, bytes, bytes | None]:
    """(version TLV, authSafe TLV, authSafe content octets, MacData TLV or None) of a DER PFX."""
    start, end, _ = _split(p12, 0)
    version_end = _split(p12, start)[2]
    auth_safe_end = _split(p12, version_end)[2]
    version, auth_safe = p12[start:version_end], p12[version_end:auth_safe_end]
    mac = p12[auth_safe_end:end] or None
    # authSafe = SEQUENCE { OID data, [0] { OCTET STRING content } }
    s, _, _ = _split(auth_safe, 0)
    oid_end = _split(auth_safe, s)[2]
    explicit_start, _, _ = _split(auth_safe, oid_end)
    c0, c1, _ = _split(auth_safe, explicit_start)
    return version, auth_safe, auth_safe[c0:c1], mac


def with_mac_data(p12: bytes, mac_data: bytes | None) -> bytes:
    version, auth_safe, _, _ = pfx_parts(p12)
    return seq(version, auth_safe, mac_data or b"")


_HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_HMAC_OIDS = {"sha1": "1.2.840.113549.2.7", "sha256": "1.2.840.113549.2.9", "sha512": "1.2.840.113549.2.11"}


def pkcs12_kdf(
    hash_name: str, password_bmp: bytes, salt: bytes, iterations: int, key_id: int, size: int
) -> bytes:
    """RFC 7292 appendix B.2 in full (any output length), written from the RFC's steps."""
    u = hashlib.new(hash_name).digest_size
    v = hashlib.new(hash_name).block_size
    d = bytes([key_id]) * v

    def extend(text: bytes) -> bytes:
        if not text:
            return b""
        length = v * -(-len(text) // v)
        return (text * (length // len(text) + 1))[:length]

    i = bytearray(extend(salt) + extend(password_bmp))
    out = b""
    while len(out) < size:
        a = d + bytes(i)
        for _ in range(iterations):
            a = hashlib.new(hash_name, a).digest()
        out += a
        b = int.from_bytes((a * (v // u + 1))[:v], "big")
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j : j + v], "big") + b + 1) % (1 << (8 * v))
            i[j : j + v] = block.to_bytes(v, "big")
    return out[:size]


def rfc7292_mac_data(
    p12: bytes,
    password_bmp: bytes,
    *,
    hash_name: str = "sha256",
    iterations: int | None = 2048,
    salt: bytes = b"saltsalt",
    declared_iterations: int | None = None,
) -> bytes:
    """MacData for p12's content; ``iterations=None`` leaves the field out (DEFAULT 1).

    ``declared_iterations`` writes another count than the one used, as a hostile file would.
    """
    _, _, content, _ = pfx_parts(p12)
    size = hashlib.new(hash_name).digest_size
    key = pkcs12_kdf(hash_name, password_bmp, salt, iterations or 1, 3, size)
    digest = hmac.new(key, content, hash_name).digest()
    algorithm = seq(der_oid(_HASH_OIDS[hash_name]), der(0x05, b""))
    fields = [seq(algorithm, der(0x04, digest)), der(0x04, salt)]
    if declared_iterations is not None or iterations is not None:
        fields.append(der_int(declared_iterations or iterations or 1))
    return seq(*fields)


def pbmac1_mac_data(
    p12: bytes, password: bytes, *, iterations: int = 2048, salt: bytes = b"0123456789abcdef"
) -> bytes:
    """RFC 9579 MacData: PBKDF2-HMAC-SHA256 (UTF-8 password) keying HMAC-SHA256."""
    _, _, content, _ = pfx_parts(p12)
    key = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 32)
    digest = hmac.new(key, content, "sha256").digest()
    pbkdf2 = seq(
        der_oid("1.2.840.113549.1.5.12"),
        seq(
            der(0x04, salt),
            der_int(iterations),
            der_int(32),
            seq(der_oid(_HMAC_OIDS["sha256"]), der(0x05, b"")),
        ),
    )
    params = seq(pbkdf2, seq(der_oid(_HMAC_OIDS["sha256"]), der(0x05, b"")))
    algorithm = seq(der_oid("1.2.840.113549.1.5.14"), params)
    # RFC 9579: macSalt and iterations are ignored; "NOT USED" is its example salt, and DER leaves
    # out iterations = 1 (the DEFAULT).
    return seq(seq(algorithm, der(0x04, digest)), der(0x04, b"NOT USED"))


def bmp(password: str) -> bytes:
    return password.encode("utf-16-be") + b"\x00\x00"
