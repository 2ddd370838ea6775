"""The peers write, we read.

ykman (``piv keys import`` + ``piv certificates import``, once with ``--compress``) and
yubico-piv-tool (``-a import-key -a import-certificate`` from PEM and from ``-K PKCS12``) load keys
and certificates onto the simulated card; then PivSession.read_certificate must return exactly the
certificate, get_metadata the imported public key, and read_card_info must report both.
"""

from __future__ import annotations

import hashlib

import pytest

from provision.cardinfo import read_card_info
from provision.fixtures import pkcs12_bytes
from provision.piv import tlv
from provision.piv.slots import slot_by_ref
from tests.helpers.interop_peers import (
    APDU_COUNTS,
    DEFAULT_MANAGEMENT_KEY,
    YUBICO_ALGORITHM_NAMES,
    InsertCard,
    Material,
    Peers,
    der,
    open_session,
    pem,
    private_pem,
    spki,
)

pytestmark = pytest.mark.interop

P12_PASSWORD = "interop-p12"
ORIGIN_IMPORTED = 2

YKMAN_CASES = [
    pytest.param("rsa2048", 0x9A, True, id="rsa2048-9a-compressed"),
    pytest.param("rsa1024", 0x9C, False, id="rsa1024-9c"),
    pytest.param("p256", 0x9E, False, id="p256-9e"),
    pytest.param("p384", 0x82, False, id="p384-82"),
    pytest.param("p256", 0x9D, True, id="p256-9d-compressed"),
]
PIV_TOOL_CASES = [
    pytest.param("rsa2048", 0x9C, "PEM", id="rsa2048-9c-pem"),
    pytest.param("rsa1024", 0x9D, "PKCS12", id="rsa1024-9d-pkcs12"),
    pytest.param("p256", 0x82, "PKCS12", id="p256-82-pkcs12"),
    pytest.param("p384", 0x9A, "PEM", id="p384-9a-pem"),
    pytest.param("rsa2048", 0x9E, "PKCS12", id="rsa2048-9e-pkcs12"),
]


def _assert_we_read_exactly(peers: Peers, material: Material, alg: str, slot: int, writer: str,
                            compressed: bool) -> None:
    key, cert = material.key(alg), material.cert(alg, slot, writer)
    transport, session = open_session(peers.reader)
    try:
        assert session.read_certificate(slot) == der(cert)
        body = session.get_object(slot_by_ref(slot).object_id)
        assert body is not None
        assert tlv.parse_dict(body)[0x71] == (b"\x01" if compressed else b"\x00")
        meta = session.get_metadata(slot)
        assert meta is not None and meta.public_key is not None
        assert spki(meta.public_key) == spki(key.public_key())
        assert meta.origin == ORIGIN_IMPORTED
        before = peers.card.apdu_count
        info = read_card_info(session)
        APDU_COUNTS.setdefault("provision read_card_info", []).append(peers.card.apdu_count - before)
    finally:
        transport.close()
    entry = info.slot(slot)
    assert entry.error is None, entry.error
    assert entry.certificate is not None
    assert entry.certificate.sha256 == hashlib.sha256(der(cert)).hexdigest()
    assert entry.certificate.serial == format(cert.serial_number, "x")
    assert entry.compressed is compressed
    assert entry.key is not None
    assert entry.key.algorithm == YUBICO_ALGORITHM_NAMES[alg]
    assert entry.key.origin == "imported"
    assert entry.key_matches_certificate is True
    others = [s for s in info.slots if s.key_ref != slot]
    assert not any(s.certificate or s.key for s in others), "only the slot the peer wrote is occupied"


@pytest.mark.parametrize(("alg", "slot", "compress"), YKMAN_CASES)
def test_we_read_what_ykman_imported(insert_card: InsertCard, material: Material, alg: str, slot: int, compress: bool) -> None:
    _, peers = insert_card()
    key, cert = material.key(alg), material.cert(alg, slot, "ykman")
    key_file = peers.file("key.pem", private_pem(key))
    cert_file = peers.file("cert.pem", pem(cert))
    mgmt = ("--management-key", DEFAULT_MANAGEMENT_KEY)
    peers.ykman("piv keys import", "piv", "keys", "import", *mgmt, f"{slot:02x}", str(key_file)).check()
    peers.ykman(
        "piv certificates import" + (" --compress" if compress else ""),
        "piv", "certificates", "import", *mgmt, *(["--compress"] if compress else []), f"{slot:02x}",
        str(cert_file),
    ).check()
    _assert_we_read_exactly(peers, material, alg, slot, "ykman", compress)


@pytest.mark.parametrize(("alg", "slot", "key_format"), PIV_TOOL_CASES)
def test_we_read_what_yubico_piv_tool_imported(
    insert_card: InsertCard, material: Material, alg: str, slot: int, key_format: str
) -> None:
    # yubico-piv-tool 2.2 knows only 3DES management keys: a card from before 5.7 (3DES default).
    _, peers = insert_card(firmware="5.4.3")
    key, cert = material.key(alg), material.cert(alg, slot, "yubico-piv-tool")
    if key_format == "PEM":
        source = peers.file("bundle.pem", private_pem(key) + pem(cert))
        extra: tuple[str, ...] = ()
    else:
        source = peers.file("bundle.p12", pkcs12_bytes(key, cert, password=P12_PASSWORD))
        extra = ("-K", "PKCS12", "-p", P12_PASSWORD)
    peers.piv_tool(
        f"import-key+import-certificate {key_format}", "-a", "import-key", "-a", "import-certificate",
        "-s", f"{slot:02x}", "-i", str(source), *extra,
    ).check()
    _assert_we_read_exactly(peers, material, alg, slot, "yubico-piv-tool", False)


def test_yubico_piv_tool_cannot_authenticate_to_a_57_default_key(insert_card: InsertCard, material: Material) -> None:
    """A YubiKey 5.7 ships an AES-192 management key; yubico-piv-tool 2.2 tries 3DES and must stop."""
    server, peers = insert_card()
    key_file = peers.file("key.pem", private_pem(material.key("p256")))
    refused = peers.piv_tool("import-key (refused)", "-a", "import-key", "-s", "9a", "-i", str(key_file))
    assert refused.returncode != 0
    assert "authentication" in (refused.stdout + refused.stderr).lower()
    assert server.card.write_apdu_count == 0
