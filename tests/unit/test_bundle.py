"""provision.bundle against files from two independent producers: the openssl CLI and cryptography.

Every file is made at test time in memory or under pytest's tmp_path; no key is committed.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# tests/ is a package but tests/unit is not, so pytest does not put the repository root on sys.path.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: E402

from provision import bundle, fixtures  # noqa: E402
from provision.errors import BundleError  # noqa: E402
from provision.secrets import Secret  # noqa: E402
from tests.helpers.p12_openssl import (  # noqa: E402
    asn1parse,
    bmp,
    openssl_export,
    pbmac1_mac_data,
    pfx_parts,
    rfc7292_mac_data,
    with_mac_data,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PASSWORD = "correct horse 9"
UNICODE_PASSWORD = "pässwörd-香港"
NUMERIC_PASSWORD = "4929123456781234"


def inspect(data: bytes, password: str | bytes | None = PASSWORD, **kw: object) -> bundle.Inspection:
    secret = None if password is None else Secret(password)
    kw.setdefault("now", NOW)
    result, made = bundle.inspect_pkcs12(data, secret, **kw)  # type: ignore[arg-type]
    assert result.status in bundle.STATUSES
    assert (made is not None) == (result.status == "ok")
    if isinstance(password, str) and password:
        assert password not in result.message
    assert result.message.endswith(".") and result.message[0].isupper()
    return result


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Test Root CA")


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:  # RSA generation is slow: once per module
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def leaf(ca: fixtures.Issuer, rsa2048: rsa.RSAPrivateKey) -> tuple[object, object]:
    return fixtures.make_leaf(ca, "CHAN Tai Man", key=rsa2048, serial=0x1001)


@pytest.fixture(scope="module")
def good_p12(ca, leaf) -> bytes:  # type: ignore[no-untyped-def]
    key, cert = leaf
    return fixtures.pkcs12_bytes(key, cert, password=PASSWORD, chain=[ca.certificate], friendly_name="chan")


# ---------------------------------------------------------------------------------------------
# Formats from the openssl command line

OPENSSL_FORMATS = {
    "openssl3-default-aes-pbkdf2": [],
    "legacy-rc2-3des": ["-legacy"],
    "nomac": ["-nomac"],
    "mac-without-iteration-count": ["-nomaciter"],
    "macalg-sha1": ["-macalg", "sha1"],
    "macalg-sha512": ["-macalg", "sha512"],
    "keypbe-3des-certpbe-rc2-40": ["-legacy", "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-RC2-40"],
    "aes128": ["-keypbe", "AES-128-CBC", "-certpbe", "AES-128-CBC"],
    "unencrypted-certs": ["-certpbe", "NONE"],
    # What Windows' certificate export adds to the key's bag: the CSP name (1.3.6.1.4.1.311.17.1),
    # the machine key set (LMK) and the key usage (exchange): attributes a reader must pass over.
    "windows-csp-lmk-keyex": ["-CSP", "Microsoft Enhanced RSA and AES Cryptographic Provider", "-LMK", "-keyex"],
    "windows-legacy-3des-sha1": ["-legacy", "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1",
                                 "-CSP", "Microsoft Software Key Storage Provider", "-keysig"],
    "high-iteration-count": ["-iter", "100000", "-maciter"],
}


@pytest.mark.parametrize("options", OPENSSL_FORMATS.values(), ids=OPENSSL_FORMATS.keys())
def test_openssl_formats_open_and_reject_a_wrong_password(tmp_path, ca, leaf, options) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    data = openssl_export(
        tmp_path, password=PASSWORD, key=key, certs=[cert], certfile=[ca.certificate], options=options
    )
    if "-CSP" in options:  # the attribute really is in the file (szOID_MS_CSP_NAME, 1.3.6.1.4.1.311.17.1)
        assert bytes.fromhex("2b0601040182371101") in data
    result = inspect(data)
    assert result.status == "ok", result.message
    assert result.piv_algorithm == "RSA2048"
    assert result.info is not None and result.info.subject_cn == "CHAN Tai Man"
    assert inspect(data, "wrong password").status == "wrong-password"


def test_nomaciter_really_omits_the_iteration_count(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    data = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert], options=["-nomaciter"])
    *_, mac = pfx_parts(data)
    assert mac is not None and not mac.rstrip().endswith(b"\x02\x01\x01")
    last = asn1parse(tmp_path, mac).strip().splitlines()[-1]
    assert "OCTET STRING" in last  # the salt ends MacData: no INTEGER after it


def test_mac_without_iteration_count_built_by_hand(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    nomac = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert], options=["-nomac"])
    data = with_mac_data(nomac, rfc7292_mac_data(nomac, bmp(PASSWORD), hash_name="sha1", iterations=None))
    pkcs12.load_pkcs12(data, PASSWORD.encode())  # the independent check of our re-encoding
    assert inspect(data).status == "ok"
    assert inspect(data, "nope").status == "wrong-password"


@pytest.fixture(scope="module")
def p12_600k(tmp_path_factory, ca) -> bytes:  # type: ignore[no-untyped-def]
    key, cert = fixtures.make_leaf(ca, "Slow Holder", key_type="p256", seed=b"slow")
    return openssl_export(
        tmp_path_factory.mktemp("iter"), password=PASSWORD, key=key, certs=[cert], options=["-iter", "600000"]
    )


def test_600000_iterations(p12_600k: bytes) -> None:
    assert bundle._parse_pfx(p12_600k).mac.iterations == 600_000  # type: ignore[union-attr]
    assert inspect(p12_600k).status == "ok"
    assert inspect(p12_600k, "wrong").status == "wrong-password"


def test_hostile_iteration_count_is_refused_quickly(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    nomac = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert], options=["-nomac"])
    hostile = rfc7292_mac_data(nomac, bmp(PASSWORD), iterations=1, declared_iterations=2**31 - 1)
    result = inspect(with_mac_data(nomac, hostile))
    assert result.status == "corrupt" and "iterations" in result.message


# ---------------------------------------------------------------------------------------------
# Passwords


def test_empty_password_from_openssl(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    data = openssl_export(tmp_path, password="", key=key, certs=[cert])
    assert inspect(data, None).status == "ok"
    assert inspect(data, b"").status == "ok"
    assert inspect(data, "something").status == "wrong-password"


@pytest.mark.parametrize("empty_form", [b"\x00\x00", b""], ids=["empty-bmpstring", "zero-length"])
def test_empty_password_either_encoding(tmp_path, leaf, empty_form: bytes) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    # Unencrypted bags, so only the MAC depends on how the empty password was encoded.
    plain = openssl_export(
        tmp_path,
        password="",
        key=key,
        certs=[cert],
        options=["-nomac", "-keypbe", "NONE", "-certpbe", "NONE"],
    )
    data = with_mac_data(plain, rfc7292_mac_data(plain, empty_form))
    assert inspect(data, None).status == "ok"
    assert inspect(data, "x").status == "wrong-password"
    # Our own MAC check accepts both encodings (it is what separates wrong-password from corrupt).
    parsed = bundle._parse_pfx(data)
    assert bundle._mac_matches(parsed, b"") is True
    assert bundle._mac_matches(parsed, b"x") is False


@pytest.mark.parametrize("password", [UNICODE_PASSWORD, NUMERIC_PASSWORD], ids=["utf8", "16-digits"])
def test_openssl_passwords(tmp_path, leaf, password: str) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    for options in ([], ["-legacy"]):
        data = openssl_export(tmp_path, password=password, key=key, certs=[cert], options=options)
        assert inspect(data, password).status == "ok"
        assert inspect(data, password[:-1]).status == "wrong-password"


def test_legacy_byte_per_char_password_conversion(ca, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    # What OpenSSL < 1.1.0 wrote for a non-ASCII password: each UTF-8 byte as one BMP character.
    old_style = UNICODE_PASSWORD.encode().decode("latin-1").encode()
    data = fixtures.pkcs12_bytes(key, cert, password=old_style, encryption="legacy")
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, UNICODE_PASSWORD.encode())  # cryptography alone does not open it
    assert inspect(data, UNICODE_PASSWORD).status == "ok"
    assert bundle._mac_matches(bundle._parse_pfx(data), UNICODE_PASSWORD.encode()) is True
    assert inspect(data, "pässwörd").status == "wrong-password"


# ---------------------------------------------------------------------------------------------
# Chains, friendly names, where the certificate sits


def test_openssl_chain_leaf_not_first_and_friendly_name(tmp_path, ca, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    other_ca = fixtures.make_ca("Other CA")
    data = openssl_export(
        tmp_path,
        password=PASSWORD,
        key=key,
        certs=[ca.certificate, other_ca.certificate, cert],  # the leaf last in -in
        options=["-name", "CHAN Tai Man (signature)"],
    )
    result, made = bundle.inspect_pkcs12(data, Secret(PASSWORD), now=NOW)
    assert result.status == "ok" and made is not None
    assert made.certificate == cert
    assert set(made.chain) == {ca.certificate, other_ca.certificate}
    assert made.info.friendly_name == "CHAN Tai Man (signature)"


def test_certificate_found_when_cryptography_reports_cert_none(ca, leaf, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    data = fixtures.pkcs12_bytes(key, cert, password=PASSWORD, chain=[ca.certificate], leaf_with_key=False)
    loaded = pkcs12.load_pkcs12(data, PASSWORD.encode())
    # cryptography 50 pairs the key with its certificate itself; older versions (OpenSSL's
    # PKCS12_parse, by localKeyId) answered cert=None. Force that answer to prove we search.
    assert loaded.cert is None or loaded.cert.certificate == cert
    everything = ([loaded.cert] if loaded.cert else []) + list(loaded.additional_certs)
    forced = pkcs12.PKCS12KeyAndCertificates(
        loaded.key, None, sorted(everything, key=lambda c: c.certificate != ca.certificate)
    )
    monkeypatch.setattr(pkcs12, "load_pkcs12", lambda data, password: forced)
    made = bundle.load_bundle(data, Secret(PASSWORD), now=NOW)
    assert made.certificate == cert and made.chain == (ca.certificate,)


# ---------------------------------------------------------------------------------------------
# Status classes


def test_no_key(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    _, cert = leaf
    data = openssl_export(tmp_path, password=PASSWORD, certs=[cert])
    assert inspect(data).status == "no-key"


def test_no_cert(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, _ = leaf
    data = openssl_export(tmp_path, password=PASSWORD, key=key)
    assert inspect(data).status == "no-cert"


def test_key_cert_mismatch(ca, leaf) -> None:  # type: ignore[no-untyped-def]
    key, _ = leaf
    _, stranger = fixtures.make_leaf(ca, "Somebody Else", seed=b"else")
    data = fixtures.pkcs12_bytes(key, None, password=PASSWORD, chain=[ca.certificate, stranger])
    result = inspect(data)
    assert result.status == "key-cert-mismatch" and result.info is None
    assert "2 certificates" in result.message


@pytest.fixture(scope="module")
def big_rsa_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {
        "rsa3072": rsa.generate_private_key(public_exponent=65537, key_size=3072),
        "rsa4096": rsa.generate_private_key(public_exponent=65537, key_size=4096),
        "rsa1024": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "rsa2048-e3": rsa.generate_private_key(public_exponent=3, key_size=2048),
    }


@pytest.mark.parametrize(
    ("key_type", "standard", "yubikey"),
    [
        ("p256", "ECCP256", "ECCP256"),
        ("p384", "ECCP384", "ECCP384"),
        ("p521", None, None),
        ("ed25519", None, "ED25519"),
        ("rsa1024", "RSA1024", "RSA1024"),
        ("rsa3072", None, "RSA3072"),
        ("rsa4096", None, "RSA4096"),
        ("rsa2048-e3", None, None),
    ],
)
def test_key_types_against_targets(ca, big_rsa_keys, key_type: str, standard, yubikey) -> None:  # type: ignore[no-untyped-def]
    key = big_rsa_keys.get(key_type)
    leaf_key, cert = fixtures.make_leaf(ca, "Key Holder", key_type=key_type, key=key, seed=b"k")  # type: ignore[arg-type]
    data = fixtures.pkcs12_bytes(leaf_key, cert, password=PASSWORD)
    for target, expected in (("sp800-78-4", standard), ("yubikey-5.7", yubikey)):
        result = inspect(data, target=target)
        assert result.piv_algorithm == expected
        assert result.status == ("ok" if expected else "unsupported-key"), result.message
        assert result.info is not None  # the operator still sees what the certificate is
        if expected is None:
            assert "accepted:" in result.message and "P-256" in result.message
    if key_type == "rsa2048-e3":
        assert "exponent 3" in inspect(data).message


def test_x25519_is_unsupported_because_cryptography_cannot_load_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    signer = fixtures.make_ca("Ed CA", key=fixtures.generate_key("ed25519", seed=b"ed"))  # type: ignore[arg-type]
    key, cert = fixtures.make_leaf(signer, "X Holder", key_type="x25519", seed=b"x")
    assert bundle.cert_info(cert).key_type == "X25519"
    data = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert])
    # cryptography refuses X25519 keys in PKCS#12 (TypeError), even where a YubiKey 5.7 takes them.
    for target in ("sp800-78-4", "yubikey-5.7"):
        result = inspect(data, target=target)
        assert result.status == "unsupported-key" and "password is right" in result.message
    assert inspect(data, "wrong").status == "wrong-password"


def test_validity_window(ca, rsa2048) -> None:  # type: ignore[no-untyped-def]
    start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)
    key, cert = fixtures.make_leaf(ca, "Dated", key=rsa2048, not_before=start, not_after=end)
    data = fixtures.pkcs12_bytes(key, cert, password=PASSWORD)
    assert inspect(data, now=start - timedelta(seconds=1)).status == "not-yet-valid"
    assert inspect(data, now=start).status == "ok"
    assert inspect(data, now=end).status == "ok"
    expired = inspect(data, now=end + timedelta(seconds=1))
    assert expired.status == "expired" and expired.piv_algorithm == "RSA2048"
    assert expired.info is not None and expired.info.not_after == end
    assert "2021-01-01T00:00:00Z" in expired.message


def test_precedence(ca, leaf) -> None:  # type: ignore[no-untyped-def]
    old = datetime(2000, 1, 1, tzinfo=UTC)
    key, cert = fixtures.make_leaf(ca, "Old P-521", key_type="p521", seed=b"o", not_before=old, not_after=old)
    data = fixtures.pkcs12_bytes(key, cert, password=PASSWORD)
    assert inspect(data).status == "unsupported-key"  # before expired
    assert inspect(data, "bad").status == "wrong-password"  # before everything
    mismatch = fixtures.pkcs12_bytes(leaf[0], None, password=PASSWORD, chain=[cert])
    assert inspect(mismatch).status == "key-cert-mismatch"  # before unsupported/expired


# ---------------------------------------------------------------------------------------------
# Wrong password or damaged file?


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


@pytest.mark.parametrize("producer", ["openssl", "cryptography"])
def test_bit_flip_inside_the_mac_is_corrupt_not_wrong_password(tmp_path, leaf, producer: str) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    if producer == "openssl":
        data = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert])
    else:
        data = fixtures.pkcs12_bytes(key, cert, password=PASSWORD, encryption="legacy")
    digest = bundle._parse_pfx(data).mac.digest  # type: ignore[union-attr]
    damaged = _flip(data, data.rindex(digest) + 5)
    assert inspect(damaged).status == "corrupt"
    assert inspect(damaged, "wrong").status == "wrong-password"


@pytest.mark.parametrize("options", [[], ["-legacy"]], ids=["openssl3-default", "legacy"])
def test_single_bit_flips_with_the_right_password_are_never_wrong_password(tmp_path, ca, options) -> None:  # type: ignore[no-untyped-def]
    # Key and certificates are encrypted separately, so damage in one still lets the password
    # open the other: proof that the password is right and the file is damaged.
    key, cert = fixtures.make_leaf(ca, "Flip", seed=b"flip")
    data = openssl_export(
        tmp_path, password=PASSWORD, key=key, certs=[cert], options=[*options, "-iter", "16"]
    )
    statuses = {inspect(_flip(data, i, i % 8)).status for i in range(0, len(data), 3)}
    assert "wrong-password" not in statuses and statuses <= {"corrupt", "ok"}


def test_mac_right_but_contents_unreadable_is_corrupt(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    nomac = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert], options=["-nomac"])
    # Damage the contents, then MAC the damage with the right password: the first flip (from the
    # end) that cryptography cannot read makes the case.
    for offset in range(16, 400):
        damaged = _flip(nomac, len(nomac) - offset)
        data = with_mac_data(damaged, rfc7292_mac_data(damaged, bmp(PASSWORD)))
        try:
            pkcs12.load_pkcs12(data, PASSWORD.encode())
        except ValueError:
            break
    else:
        pytest.fail("no damaging flip found")
    result = inspect(data)
    assert result.status == "corrupt" and "password is right" in result.message


def test_truncation_random_bytes_and_other_formats_are_corrupt(good_p12: bytes) -> None:
    for cut in (1, 2, 10, len(good_p12) // 2, len(good_p12) - 1):
        assert inspect(good_p12[:cut]).status == "corrupt"
    assert inspect(b"").status == "corrupt"
    assert inspect(os.urandom(2000)).status == "corrupt"
    # cryptography ignores bytes after the PFX, and so do we: a padded file is not damaged.
    assert inspect(good_p12 + b"\x00").status == "ok"
    assert inspect(good_p12 + b"\x00", "wrong").status == "wrong-password"
    assert "PEM" in inspect(b"-----BEGIN CERTIFICATE-----\nMIIB\n").message
    assert inspect(b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * 50).status == "corrupt"  # huge length
    assert inspect(b"\x30\x80" + b"\x30\x80" * 200).status == "corrupt"  # deep indefinite nesting


def test_wrong_password(good_p12: bytes) -> None:
    result = inspect(good_p12, "Correct horse 9")
    assert result.status == "wrong-password" and result.info is None


def test_nomac_wrong_password_heuristic(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    data = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert], options=["-nomac"])
    assert inspect(data, "other").status == "wrong-password"
    assert inspect(data[:-3]).status == "corrupt"  # structure still decides what it can


def test_pbmac1(tmp_path, leaf) -> None:  # type: ignore[no-untyped-def]
    key, cert = leaf
    nomac = openssl_export(tmp_path, password=PASSWORD, key=key, certs=[cert], options=["-nomac"])
    data = with_mac_data(nomac, pbmac1_mac_data(nomac, PASSWORD.encode()))
    parsed = bundle._parse_pfx(data)
    assert bundle._mac_matches(parsed, PASSWORD.encode()) is True
    assert bundle._mac_matches(parsed, b"other") is False
    assert inspect(data).status == "ok"  # cryptography (OpenSSL >= 3.4) verifies PBMAC1 itself
    assert inspect(data, "other").status == "wrong-password"
    digest = parsed.mac.digest  # type: ignore[union-attr]
    assert inspect(_flip(data, data.rindex(digest))).status == "corrupt"


# ---------------------------------------------------------------------------------------------
# API surface


def test_json_document_and_load_bundle(good_p12: bytes, ca) -> None:  # type: ignore[no-untyped-def]
    result = inspect(good_p12)
    doc = result.to_json("chan.p12")
    assert list(doc) == ["file", "status", "message", "certificate", "piv_algorithm"]
    cert = doc["certificate"]
    assert isinstance(cert, dict)
    assert list(cert) == [
        "subject", "subject_cn", "issuer", "serial", "not_before", "not_after",
        "sha256", "key_type", "key_bits", "curve",
    ]  # fmt: skip
    assert cert["serial"] == "1001" and cert["key_type"] == "RSA" and cert["key_bits"] == 2048
    assert cert["not_before"] == "2024-01-01T00:00:00Z" and cert["not_after"] == "2049-12-31T23:59:59Z"
    assert cert["curve"] is None and len(str(cert["sha256"])) == 64
    assert doc["piv_algorithm"] == "RSA2048"
    assert inspect(good_p12, "x").to_json("f.p12")["certificate"] is None

    made = bundle.load_bundle(good_p12, Secret(PASSWORD), now=NOW)
    assert made.algorithm.name == "RSA2048" and made.info.friendly_name == "chan"
    assert made.chain == (ca.certificate,)
    assert "PRIVATE" not in repr(made) and PASSWORD not in repr(made)
    with pytest.raises(BundleError) as caught:
        bundle.load_bundle(good_p12, Secret("nope"), now=NOW)
    assert caught.value.status == "wrong-password"
    with pytest.raises(ValueError):
        bundle.inspect_pkcs12(good_p12, None, target="no-such-card")


def test_cert_info_of_a_lone_certificate(ca) -> None:  # type: ignore[no-untyped-def]
    info = bundle.cert_info(ca.certificate)
    assert info.subject == "CN=Test Root CA,O=Provision Demo"
    assert info.issuer_cn == "Test Root CA" and info.curve == "P-256" and info.key_type == "EC"
    assert info.not_before.tzinfo is not None and info.friendly_name is None


def test_fixtures_are_deterministic_for_seeded_keys(ca) -> None:  # type: ignore[no-untyped-def]
    assert fixtures.make_ca("Test Root CA").certificate == ca.certificate
    a = fixtures.make_leaf(ca, "Same", key_type="p384", seed=b"s")[1]
    b = fixtures.make_leaf(ca, "Same", key_type="p384", seed=b"s")[1]
    assert a == b
    demo = fixtures.holder_p12(ca, "Demo Holder", Secret("123456"), key_type="ed25519")
    assert inspect(demo, "123456", target="yubikey-5.7").status == "ok"


# ---------------------------------------------------------------------------------------------
# Mutations never escape as exceptions


@pytest.fixture(scope="module")
def fuzz_seeds(ca, tmp_path_factory) -> list[bytes]:  # type: ignore[no-untyped-def]
    key, cert = fixtures.make_leaf(ca, "Fuzz", key_type="p256", seed=b"fuzz")
    workdir = tmp_path_factory.mktemp("fuzz")
    return [
        fixtures.pkcs12_bytes(key, cert, password=PASSWORD, chain=[ca.certificate], iterations=64),
        fixtures.pkcs12_bytes(key, cert, password=PASSWORD, encryption="legacy", iterations=64),
        openssl_export(workdir, password=PASSWORD, key=key, certs=[cert], options=["-nomac", "-iter", "64"]),
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_give_one_of_the_nine_statuses(fuzz_seeds: list[bytes], data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(fuzz_seeds))
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] ^= 1 << data.draw(st.integers(0, 7))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    password = data.draw(st.sampled_from([PASSWORD, "wrong", None]))
    result = inspect(bytes(mutated), password)
    assert result.status in bundle.STATUSES
