"""provision.bundle against PKCS#12 files written by other producers than OpenSSL and cryptography.

Certificate authorities and holders hand in files from many writers. Each writer below is a real,
independent implementation, installed by the Makefile from Debian:

- NSS ``pk12util`` (libnss3-tools): what Firefox and Thunderbird export. It imports our file into an
  NSS database and writes its own, with its defaults and with the old 3DES/RC2 ciphers it still offers.
- GnuTLS ``certtool`` (gnutls-bin): PBES2 with AES by default, and the PKCS#12 3DES / RC2-40 schemes.
- Java ``keytool`` (openjdk-17-jre-headless): a Java keystore converted to PKCS#12, as the Java tools
  of many CAs write it (PBES2 AES-256 with an HMAC-SHA256 MAC in Java 17, and the legacy format on
  request), with its trusted-certificate attribute and its own friendly names.

Each file must open with the right password, name the right key and certificate, and refuse a
wrong password as ``wrong-password`` (not ``corrupt``). Every key is made at test time under
pytest's tmp_path; passwords travel in files, never in argv, where the tool allows it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from provision import bundle, fixtures  # noqa: E402
from provision.secrets import Secret  # noqa: E402
from tests.helpers.p12_openssl import openssl_export  # noqa: E402
from tests.helpers.tiers import require  # noqa: E402

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PASSWORD = "4929123456781234"  # the 16 digits of a PIN envelope
KEY_TYPES = ("rsa2048", "p256")


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Producers Test CA")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module", params=KEY_TYPES)
def holder(request, ca, rsa_key):  # type: ignore[no-untyped-def]
    if request.param == "rsa2048":
        key, cert = fixtures.make_leaf(ca, "CHAN Tai Man", key=rsa_key, serial=0x2001)
        return request.param, key, cert, "RSA2048"
    key, cert = fixtures.make_leaf(ca, "陳大文", key_type="p256", seed=b"producers", serial=0x2002)
    return request.param, key, cert, "ECCP256"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    require(None if found else f"{name} is not installed (Debian: {package})", "PKCS#12 producers")
    assert found is not None
    return found


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, capture_output=True, check=False, timeout=120, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv[0]} failed: {done.stderr.decode(errors='replace')}"
    return done  # type: ignore[no-any-return]


def _schemes(workdir: Path, data: bytes) -> str:
    """What `openssl pkcs12 -info` says of the encryption and MAC (an independent reader)."""
    path = workdir / "info.p12"
    path.write_bytes(data)
    done = _run(
        ["openssl", "pkcs12", "-info", "-noout", "-legacy", "-in", str(path), "-passin", "env:P12_INFO"],
        env={"P12_INFO": PASSWORD, "PATH": "/usr/bin:/bin"},
    )
    return (done.stdout + done.stderr).decode()


def _check(data: bytes, cert, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    result, made = bundle.inspect_pkcs12(data, Secret(PASSWORD), now=NOW)
    assert result.status == "ok", result.message
    assert result.piv_algorithm == algorithm
    assert made is not None
    assert made.certificate.fingerprint(hashes.SHA256()) == cert.fingerprint(hashes.SHA256())
    assert made.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    wrong, _ = bundle.inspect_pkcs12(data, Secret("4929123456781235"), now=NOW)
    assert wrong.status == "wrong-password", wrong.message


# ---------------------------------------------------------------------------------------------
# NSS pk12util

NSS_CIPHERS = {  # options, then what `openssl pkcs12 -info` must see (key bag; MAC)
    "nss-default": ([], "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC", "MAC: sha256"),
    "nss-3des-rc2": (
        ["-c", "PKCS #12 V2 PBE With SHA-1 And 3KEY Triple DES-CBC",
         "-C", "PKCS #12 V2 PBE With SHA-1 And 40 Bit RC2 CBC", "-M", "SHA-1"],
        "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC", "MAC: sha1",
    ),
    "nss-aes128-sha512-mac": (
        ["-c", "AES-128-CBC", "-C", "AES-256-CBC", "-M", "SHA-512"],
        "Shrouded Keybag: PBES2, PBKDF2, AES-128-CBC", "MAC: sha512",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("options", "key_scheme", "mac"), NSS_CIPHERS.values(), ids=NSS_CIPHERS.keys())
def test_nss_pk12util(tmp_path, ca, holder, options, key_scheme, mac) -> None:  # type: ignore[no-untyped-def]
    pk12util = _tool("pk12util", "libnss3-tools")
    certutil = _tool("certutil", "libnss3-tools")
    _, key, cert, algorithm = holder
    db = tmp_path / "nssdb"
    db.mkdir()
    (tmp_path / "pw").write_text(PASSWORD)
    (tmp_path / "dbpw").write_text("db password 1\n")
    _run([certutil, "-N", "-d", f"sql:{db}", "-f", str(tmp_path / "dbpw")])
    source = tmp_path / "source.p12"
    source.write_bytes(
        openssl_export(
            tmp_path / "openssl", password=PASSWORD, key=key, certs=[cert], certfile=[ca.certificate]
        )
    )
    _run(
        [
            pk12util,
            "-i",
            str(source),
            "-d",
            f"sql:{db}",
            "-k",
            str(tmp_path / "dbpw"),
            "-w",
            str(tmp_path / "pw"),
        ]
    )
    listed = _run([certutil, "-L", "-d", f"sql:{db}"]).stdout.decode()
    nick = next(line.rsplit(None, 1)[0].strip() for line in listed.splitlines() if line.endswith("u,u,u"))
    out = tmp_path / "nss.p12"
    _run(
        [pk12util, "-o", str(out), "-n", nick, "-d", f"sql:{db}", "-k", str(tmp_path / "dbpw"),
         "-w", str(tmp_path / "pw"), *options]
    )  # fmt: skip
    data = out.read_bytes()
    assert data != source.read_bytes()  # NSS wrote its own file, not a copy
    info = _schemes(tmp_path, data)
    assert key_scheme in info and mac in info, info
    _check(data, cert, algorithm)


# ---------------------------------------------------------------------------------------------
# GnuTLS certtool

GNUTLS_CIPHERS = {
    "gnutls-default": [],
    "gnutls-aes-256": ["--pkcs-cipher", "aes-256"],
    "gnutls-3des-pkcs12": ["--pkcs-cipher", "3des-pkcs12"],
    "gnutls-rc2-40": ["--pkcs-cipher", "rc2-40"],
}


@pytest.mark.parametrize("options", GNUTLS_CIPHERS.values(), ids=GNUTLS_CIPHERS.keys())
def test_gnutls_certtool(tmp_path, ca, holder, options) -> None:  # type: ignore[no-untyped-def]
    certtool = _tool("certtool", "gnutls-bin")
    _, key, cert, algorithm = holder
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "certs.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca.certificate.public_bytes(serialization.Encoding.PEM)
    )
    out = tmp_path / "gnutls.p12"
    # certtool takes the password only on its command line; a test password, never a holder's.
    _run(
        [certtool, "--to-p12", "--load-privkey", str(tmp_path / "key.pem"),
         "--load-certificate", str(tmp_path / "certs.pem"), "--outder", "--outfile", str(out),
         "--password", PASSWORD, "--p12-name", "e-Cert", *options]
    )  # fmt: skip
    (tmp_path / "key.pem").unlink()
    data = out.read_bytes()
    if options:
        scheme = {"aes-256": "AES-256-CBC", "3des-pkcs12": "pbeWithSHA1And3-KeyTripleDES-CBC",
                  "rc2-40": "pbeWithSHA1And40BitRC2-CBC"}[options[1]]  # fmt: skip
        assert f"Shrouded Keybag: {scheme}" in _schemes(tmp_path, data) or f"PBKDF2, {scheme}" in _schemes(
            tmp_path, data
        )  # the producer really used the scheme asked for
    _check(data, cert, algorithm)


# ---------------------------------------------------------------------------------------------
# Java keytool

JAVA_FORMATS = {
    "java-default": [],
    "java-legacy": ["-J-Dkeystore.pkcs12.legacy"],
}


@pytest.mark.parametrize("options", JAVA_FORMATS.values(), ids=JAVA_FORMATS.keys())
def test_java_keytool(tmp_path, ca, holder, options) -> None:  # type: ignore[no-untyped-def]
    keytool = _tool("keytool", "openjdk-17-jre-headless")
    _, key, cert, algorithm = holder
    source = tmp_path / "source.p12"
    source.write_bytes(
        openssl_export(
            tmp_path / "openssl", password=PASSWORD, key=key, certs=[cert], certfile=[ca.certificate]
        )
    )
    (tmp_path / "pw").write_text(PASSWORD)
    out = tmp_path / "java.p12"
    _run(
        [keytool, *options, "-importkeystore", "-noprompt", "-srckeystore", str(source), "-srcstoretype", "PKCS12",
         "-srcstorepass:file", str(tmp_path / "pw"), "-destkeystore", str(out), "-deststoretype", "PKCS12",
         "-deststorepass:file", str(tmp_path / "pw")]
    )  # fmt: skip
    data = out.read_bytes()
    parsed = _schemes(tmp_path, data)
    if options:
        assert "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC" in parsed, parsed
    else:
        assert "AES-256-CBC" in parsed and "sha256" in parsed.lower(), parsed
    _check(data, cert, algorithm)
