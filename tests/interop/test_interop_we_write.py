"""The product writes, the peers judge.

Every card here is loaded by ``provision run`` itself (``Peers.load``: a job file with a PKCS#12
per algorithm x slot, the real CLI in its own process, through the same private pcscd + vpcd as the
peers): it checks the PIN counter, verifies the PIN, authenticates with the card's default
management key, imports the key, writes the certificate (gzipped when large), keeps the Key
History and the slot name, and reads everything back. Then yubico-piv-tool, OpenSC (pkcs15-tool,
pkcs11-tool with opensc-pkcs11.so) and ykman must see exactly that key and certificate.

yubico-piv-tool (read-certificate, test-signature) and OpenSC (read-certificate, list-objects) run on
the whole algorithm x slot matrix; ykman reads one card per algorithm with all five slots loaded;
PKCS#11 signing, decryption and key agreement run on a subset that still has every algorithm and
slot. OpenSC lists a retired slot only as far as the Key History counts it: the product's count is
what makes it list (tested by taking it away).
"""

from __future__ import annotations

import gzip

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from provision.piv import tlv
from provision.piv.slots import slot_by_ref
from provision.secrets import Secret
from tests.helpers.interop_peers import (
    ALGORITHMS,
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    OBJECT_ID_KEY_HISTORY,
    PIV_TOOL_INFLATES_FROM,
    SLOTS,
    YUBICO_ALGORITHM_NAMES,
    InsertCard,
    Material,
    der,
    large_certificate,
    open_session,
    opensc_key_id,
    parse_pkcs11_objects,
    parse_ykman_info,
    pem,
    sign_input,
    spki,
    verify_pkcs11_signature,
    ykman_slot_header,
    yubico_piv_tool_version,
)

pytestmark = pytest.mark.interop

MATRIX = [pytest.param(alg, slot, id=f"{alg}-{slot:02x}") for alg in ALGORITHMS for slot in SLOTS]
# OpenSC gives signing keys to 9A, 9C and 9E only; 9D and the retired slots are key management
# (RSA decrypt, EC derive). 9C (PIN policy "always") is signed with RSA and EC.
SIGN_SUBSET = [
    pytest.param("rsa2048", 0x9C, id="rsa2048-9c"),
    pytest.param("rsa1024", 0x9A, id="rsa1024-9a"),
    pytest.param("p256", 0x9E, id="p256-9e"),
    pytest.param("p384", 0x9C, id="p384-9c"),
]
KEY_MANAGEMENT_SUBSET = [
    pytest.param("rsa2048", 0x9D, id="rsa2048-9d"),
    pytest.param("p384", 0x9D, id="p384-9d"),
    pytest.param("rsa1024", 0x82, id="rsa1024-82"),
    pytest.param("p256", 0x82, id="p256-82"),
]


@pytest.mark.parametrize(("alg", "slot"), MATRIX)
def test_yubico_piv_tool_and_opensc_read_what_we_wrote(insert_card: InsertCard, material: Material, alg: str, slot: int) -> None:
    server, peers = insert_card()
    key, cert = material.key(alg), material.cert(alg, slot)
    peers.load(slot, key, cert)
    cert_pem = peers.file("cert.pem", pem(cert))

    # yubico-piv-tool: the certificate byte for byte, and a signature with the key in the slot.
    out = peers.workdir / "read.der"
    peers.piv_tool("read-certificate", "-a", "read-certificate", "-s", f"{slot:02x}", "-K", "DER",
                   "-o", str(out)).check()
    assert out.read_bytes() == der(cert)
    signed = peers.piv_tool("verify-pin+test-signature", "-a", "verify-pin", "-P", DEFAULT_PIN,
                            "-a", "test-signature", "-s", f"{slot:02x}", "-i", str(cert_pem)).check()
    assert "Successful" in signed.stdout + signed.stderr

    # OpenSC: the PKCS#15 emulation gives the same certificate under the slot's ID ...
    key_id = opensc_key_id(slot)
    read = peers.pkcs15_tool("read-certificate", "--read-certificate", key_id).check()
    assert x509.load_pem_x509_certificate(read.stdout.encode()) == cert
    # ... and the PKCS#11 module lists it with its public key.
    listing = peers.pkcs11_tool("list-objects", "--list-objects").check()
    objects = {(o["kind"].split(";")[0], o.get("ID")): o for o in parse_pkcs11_objects(listing.stdout)}
    assert ("Certificate Object", key_id) in objects, listing.stdout
    common_name = str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    assert common_name in objects[("Certificate Object", key_id)]["subject"]
    assert ("Public Key Object", key_id) in objects, listing.stdout
    assert server.card.apdu_count > 0


def test_opensc_lists_a_retired_certificate_because_our_key_history_counts_it(
    insert_card: InsertCard, material: Material
) -> None:
    """OpenSC's PIV driver trusts the Key History object (5FC10C, tag C1) for retired slots."""
    _, peers = insert_card()
    cert = material.cert("p256", 0x82)
    peers.load(0x82, material.key("p256"), cert)

    def listed() -> set[str | None]:
        listing = peers.pkcs11_tool("list-objects", "--list-objects").check()
        return {o.get("ID") for o in parse_pkcs11_objects(listing.stdout) if o["kind"].startswith("Certificate")}

    assert opensc_key_id(0x82) in listed()
    # Take the product's count away: OpenSC no longer lists the certificate, which is still there for
    # peers that read the slot directly. So the listing above came from the product's Key History.
    transport, session = open_session(peers.reader)
    try:
        history = session.get_object(OBJECT_ID_KEY_HISTORY)
        assert history is not None and history[:3] == bytes([0xC1, 0x01, 0x01]), history
        session.verify_pin(Secret(DEFAULT_PIN.encode()))
        session.authenticate(bytes.fromhex(DEFAULT_MANAGEMENT_KEY))
        session.put_object(OBJECT_ID_KEY_HISTORY, bytes([0xC1, 0x01, 0x00, 0xC2, 0x01, 0x00, 0xFE, 0x00]))
    finally:
        transport.close()
    assert opensc_key_id(0x82) not in listed()
    out = peers.workdir / "read.der"
    peers.piv_tool("read-certificate", "-a", "read-certificate", "-s", "82", "-K", "DER", "-o", str(out)).check()
    assert out.read_bytes() == der(cert)


def test_every_peer_reads_a_large_certificate_the_product_stored_compressed(
    insert_card: InsertCard, material: Material
) -> None:
    """CertInfo 01 (gzip), as ykman writes large certificates: each peer must inflate ours."""
    _, peers = insert_card()
    cert = large_certificate(material, "rsa2048")
    assert len(der(cert)) > 2900
    peers.load(0x9D, material.key("rsa2048"), cert)
    transport, session = open_session(peers.reader)
    try:
        body = session.get_object(slot_by_ref(0x9D).object_id)
    finally:
        transport.close()
    assert body is not None and tlv.parse_dict(body)[0x71] == b"\x01", "the product stored it gzipped"
    out = peers.workdir / "read.der"
    peers.piv_tool("read-certificate", "-a", "read-certificate", "-s", "9d", "-K", "DER", "-o", str(out)).check()
    if yubico_piv_tool_version() >= PIV_TOOL_INFLATES_FROM:
        assert out.read_bytes() == der(cert)
    else:
        assert gzip.decompress(out.read_bytes()) == der(cert)
    read = peers.pkcs15_tool("read-certificate", "--read-certificate", opensc_key_id(0x9D)).check()
    assert x509.load_pem_x509_certificate(read.stdout.encode()) == cert
    exported = peers.workdir / "exported.der"
    peers.ykman("piv certificates export", "piv", "certificates", "export", "-F", "DER", "9d",
                str(exported)).check()
    assert exported.read_bytes() == der(cert)


@pytest.mark.parametrize(("alg", "slot"), SIGN_SUBSET)
def test_pkcs11_signature_with_our_key_verifies_against_the_certificate(
    insert_card: InsertCard, material: Material, alg: str, slot: int
) -> None:
    _, peers = insert_card()
    key, cert = material.key(alg), material.cert(alg, slot)
    peers.load(slot, key, cert)
    message = f"interop {alg} {slot:02x}".encode()
    mechanism, data = sign_input(cert.public_key(), message)
    source = peers.file("to-sign.bin", data)
    signature = peers.workdir / "signature.bin"
    peers.pkcs11_tool(
        f"sign {mechanism}", "--login", "--pin", DEFAULT_PIN, "--sign", "-m", mechanism,
        "--id", opensc_key_id(slot), "-i", str(source), "-o", str(signature),
    ).check()
    verify_pkcs11_signature(cert.public_key(), message, signature.read_bytes())


@pytest.mark.parametrize(("alg", "slot"), KEY_MANAGEMENT_SUBSET)
def test_pkcs11_decrypt_or_derive_with_our_key_matches_the_certificate(
    insert_card: InsertCard, material: Material, alg: str, slot: int
) -> None:
    _, peers = insert_card()
    key, cert = material.key(alg), material.cert(alg, slot)
    peers.load(slot, key, cert)
    public = cert.public_key()
    login = ("--login", "--pin", DEFAULT_PIN, "--id", opensc_key_id(slot))
    result = peers.workdir / "result.bin"
    if isinstance(public, rsa.RSAPublicKey):
        secret = f"session key for {slot:02x}".encode()
        source = peers.file("ciphertext.bin", public.encrypt(secret, padding.PKCS1v15()))
        peers.pkcs11_tool("decrypt RSA-PKCS", *login, "--decrypt", "-m", "RSA-PKCS",
                          "-i", str(source), "-o", str(result)).check()
        assert result.read_bytes() == secret
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        ephemeral = ec.generate_private_key(public.curve)
        source = peers.file("peer.der", spki(ephemeral.public_key()))
        peers.pkcs11_tool("derive ECDH1-DERIVE", *login, "--derive", "-m", "ECDH1-DERIVE",
                          "-i", str(source), "-o", str(result)).check()
        assert result.read_bytes() == ephemeral.exchange(ec.ECDH(), public)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_ykman_sees_every_slot_we_loaded(insert_card: InsertCard, material: Material, alg: str) -> None:
    _, peers = insert_card()
    key = material.key(alg)
    for slot in SLOTS:
        peers.load(slot, key, material.cert(alg, slot))
    info = peers.ykman("piv info", "piv", "info").check()
    slots = parse_ykman_info(info.stdout)
    for slot in SLOTS:
        entry = slots.get(ykman_slot_header(slot))
        assert entry is not None, info.stdout
        assert entry["Private key type"] == YUBICO_ALGORITHM_NAMES[alg]
        assert entry["Public key type"] == YUBICO_ALGORITHM_NAMES[alg]
        assert entry["Fingerprint"] == material.cert(alg, slot).fingerprint(hashes.SHA256()).hex()
    # The public key ykman reads from the slot's metadata is the one we imported.
    slot = SLOTS[ALGORITHMS.index(alg)]
    out = peers.workdir / "public.der"
    peers.ykman("piv keys export", "piv", "keys", "export", "-F", "DER", f"{slot:02x}", str(out)).check()
    assert out.read_bytes() == spki(key.public_key())
    cert_out = peers.workdir / "cert.der"
    peers.ykman("piv certificates export", "piv", "certificates", "export", "-F", "DER", f"{slot:02x}",
                str(cert_out)).check()
    assert cert_out.read_bytes() == der(material.cert(alg, slot))


def test_ykman_reads_the_simulated_card_state(insert_card: InsertCard) -> None:
    """PIN/PUK counters and the management-key type (AES-192 on 5.7) as ykman reads them."""
    _, peers = insert_card()
    info = peers.ykman("piv info", "piv", "info").check()
    assert "Management key algorithm: AES192" in info.stdout
    assert "PIN tries remaining:      3/3" in info.stdout
    assert DEFAULT_MANAGEMENT_KEY not in info.stdout
