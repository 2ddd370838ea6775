"""The simulated PIV card, driven with raw APDU bytes built here by hand (never the project's client).

Management-key authentication, padding and signature checks are computed in the test with
cryptography, so the simulator is checked against the spec and not against our own PIV code.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import reduce
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provision.errors import CardRemovedError, CardVanished
from provision.piv.session import PivSession
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport

DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
PIV_AID = bytes.fromhex("A000000308000010000100")
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


# --- raw APDU helpers ------------------------------------------------------------------------


def tlv(tag: int, value: bytes) -> bytes:
    tag_b = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82]) + n.to_bytes(2, "big")
    return tag_b + length + value


def apdu(
    cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None, ext: bool = False
) -> bytes:
    out = bytes([cla, ins, p1, p2])
    if ext:
        if data:
            out += b"\x00" + len(data).to_bytes(2, "big") + data
            if le is not None:
                out += le.to_bytes(2, "big")
        elif le is not None:
            out += b"\x00" + le.to_bytes(2, "big")
        return out
    if data:
        assert len(data) <= 255
        out += bytes([len(data)]) + data
    if le is not None:
        out += bytes([le & 0xFF])
    return out


def tx(card: SimCard, raw: bytes) -> tuple[bytes, int]:
    resp = card.process(raw)
    assert len(resp) >= 2
    return resp[:-2], int.from_bytes(resp[-2:], "big")


def ok(card: SimCard, raw: bytes) -> bytes:
    data, sw = tx(card, raw)
    assert sw == 0x9000, f"{raw[:4].hex()} → {sw:04X}"
    return data


def select(card: SimCard, aid: bytes = PIV_AID[:10], le: int | None = 0) -> bytes:
    return ok(card, apdu(0, 0xA4, 0x04, 0x00, aid, le))


def pin_block(pin: bytes) -> bytes:
    return pin.ljust(8, b"\xff")


def verify(card: SimCard, pin: bytes = b"123456") -> int:
    return tx(card, apdu(0, 0x20, 0x00, 0x80, pin_block(pin)))[1]


def mgmt_cipher(alg: int, key: bytes) -> Cipher[modes.ECB]:
    if alg == 0x03:
        return Cipher(TripleDES(key), modes.ECB())
    return Cipher(algorithms.AES(key), modes.ECB())


def authenticate(card: SimCard, alg: int = 0x0A, key: bytes = DEFAULT_KEY, corrupt: bool = False) -> int:
    """Mutual authentication with the management key, computed here; returns the final SW."""
    block = 8 if alg == 0x03 else 16
    data = ok(card, apdu(0, 0x87, alg, 0x9B, tlv(0x7C, tlv(0x80, b"")), 0))
    assert data[:4] == bytes([0x7C, block + 2, 0x80, block])
    witness = data[4:]
    dec = mgmt_cipher(alg, key).decryptor()
    plain = dec.update(witness) + dec.finalize()
    if corrupt:
        plain = bytes([plain[0] ^ 1]) + plain[1:]
    challenge = os.urandom(block)
    body = tlv(0x7C, tlv(0x80, plain) + tlv(0x81, challenge))
    data, sw = tx(card, apdu(0, 0x87, alg, 0x9B, body, 0))
    if sw == 0x9000:
        enc = mgmt_cipher(alg, key).encryptor()
        assert data == tlv(0x7C, tlv(0x82, enc.update(challenge) + enc.finalize())), "card failed mutual auth"
    return sw


def send_chained(
    card: SimCard, ins: int, p1: int, p2: int, data: bytes, le: int | None = 0
) -> tuple[bytes, int]:
    """Command chaining: CLA 10 on all but the last block of 255 bytes."""
    blocks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    for block in blocks[:-1]:
        assert ok(card, apdu(0x10, ins, p1, p2, block)) == b""
    return receive_all(card, apdu(0, ins, p1, p2, blocks[-1], le))


def receive_all(card: SimCard, raw: bytes) -> tuple[bytes, int]:
    """Send, then follow 61xx with GET RESPONSE until the end."""
    data, sw = tx(card, raw)
    out = data
    while sw >> 8 == 0x61:
        data, sw = tx(card, apdu(0, 0xC0, 0, 0, le=sw & 0xFF))
        out += data
    return out, sw


def oid_bytes(oid: int) -> bytes:
    return oid.to_bytes(max(1, (oid.bit_length() + 7) // 8), "big")


def put_object(card: SimCard, oid: int, content: bytes, ext: bool = False) -> int:
    body = tlv(0x5C, oid_bytes(oid)) + tlv(0x53, content)
    if ext:
        return tx(card, apdu(0, 0xDB, 0x3F, 0xFF, body, ext=True))[1]
    return send_chained(card, 0xDB, 0x3F, 0xFF, body, le=None)[1]


def get_object(card: SimCard, oid: int, ext: bool = False) -> tuple[bytes, int]:
    body = tlv(0x5C, oid_bytes(oid))
    if ext:
        return tx(card, apdu(0, 0xCB, 0x3F, 0xFF, body, le=0, ext=True))
    return receive_all(card, apdu(0, 0xCB, 0x3F, 0xFF, body, le=0))


def import_rsa(card: SimCard, alg: int, slot: int, key: rsa.RSAPrivateKey, extra: bytes = b"") -> int:
    nums = key.private_numbers()
    half = key.key_size // 16
    body = b"".join(
        tlv(tag, value.to_bytes(half, "big"))
        for tag, value in ((1, nums.p), (2, nums.q), (3, nums.dmp1), (4, nums.dmq1), (5, nums.iqmp))
    )
    return send_chained(card, 0xFE, alg, slot, body + extra, le=None)[1]


def import_ec(card: SimCard, alg: int, slot: int, key: ec.EllipticCurvePrivateKey, extra: bytes = b"") -> int:
    size = 32 if alg == 0x11 else 48
    body = tlv(0x06, key.private_numbers().private_value.to_bytes(size, "big")) + extra
    return tx(card, apdu(0, 0xFE, alg, slot, body))[1]


def general_authenticate(card: SimCard, alg: int, slot: int, payload: bytes) -> tuple[bytes, int]:
    body = tlv(0x7C, tlv(0x82, b"") + tlv(0x81, payload))
    if len(body) > 255:
        data, sw = send_chained(card, 0x87, alg, slot, body)
    else:
        data, sw = receive_all(card, apdu(0, 0x87, alg, slot, body, 0))
    if sw != 0x9000:
        return b"", sw
    # 7C L 82 L sig
    assert data[0] == 0x7C
    inner = _skip_header(data)
    assert inner[0] == 0x82
    return _skip_header(inner), sw


def _skip_header(data: bytes) -> bytes:
    first = data[1]
    if first < 0x80:
        return data[2 : 2 + first]
    count = first & 0x7F
    length = int.from_bytes(data[2 : 2 + count], "big")
    return data[2 + count : 2 + count + length]


def pkcs1_block(message: bytes, size: int) -> bytes:
    t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@pytest.fixture
def card() -> SimCard:
    c = SimCard(SimOptions(serial=12345678), None)
    select(c)
    return c


# --- ATR, SELECT, version, serial ------------------------------------------------------------


def test_atr_is_a_yubikey5_atr_with_extended_length_and_a_valid_tck() -> None:
    atr = SimCard(SimOptions()).atr
    assert atr.hex().upper() == "3BFD1300008131FE158073C021C057597562694B657940"
    assert reduce(lambda a, b: a ^ b, atr[1:]) == 0  # TCK
    historical = atr[-14:-1]
    assert historical[:4] == bytes.fromhex("8073C021")
    assert historical[4] & 0x40  # card capabilities, 3rd byte: extended Lc and Le
    assert historical[-7:] == b"YubiKey"


def test_the_nfc_atr_is_a_yubikey5_nfc_atr_that_ykman_does_not_take_for_usb() -> None:
    from provision.card.transport import atr_supports_extended
    from provision.sim.card import YUBIKEY5_NFC_ATR

    atr = SimCard(SimOptions(atr=YUBIKEY5_NFC_ATR)).atr
    assert atr.hex().upper() == "3B8D80018073C021C057597562694B6579F9"  # yubico-piv-tool's YKPIV_ATR_YK5_NFC
    assert atr[1] & 0xF0 != 0xF0  # yubikit: T0 with high nibble F means USB (and a USB product id)
    assert reduce(lambda a, b: a ^ b, atr[1:]) == 0  # TCK
    assert atr[-14:-1] == SimCard(SimOptions()).atr[-14:-1]  # the same historical bytes as on USB
    assert atr_supports_extended(atr)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nfc", "3B8D80018073C021C057597562694B6579F9"),
        ("USB", "3BFD1300008131FE158073C021C057597562694B657940"),
        ("3B 02 14 50", "3B021450"),
        ("3f:00", "3F00"),
    ],
)
def test_sim_serve_atr_option(text: str, expected: str) -> None:
    from provision.sim.vpcd import sim_options

    assert sim_options({"atr": text}).atr.hex().upper() == expected


@pytest.mark.parametrize("text", ["", "usb-c", "3B", "00FD", "3B" * 34, "zz"])
def test_sim_serve_refuses_what_is_not_an_atr(text: str) -> None:
    from provision.errors import UsageError
    from provision.sim.vpcd import sim_options

    with pytest.raises(UsageError, match="--atr takes"):
        sim_options({"atr": text})


@pytest.mark.parametrize(
    "raw",
    [
        apdu(0, 0xA4, 4, 0, PIV_AID[:10], 0),  # without version, with Le
        apdu(0, 0xA4, 4, 0, PIV_AID[:10]),  # without Le
        apdu(0, 0xA4, 4, 0, PIV_AID, 0),  # full AID with version
        apdu(0, 0xA4, 4, 0, PIV_AID[:5], 0),  # partial: the RID only
        apdu(0, 0xA4, 4, 0, PIV_AID[:10], 0, ext=True),
    ],
)
def test_select_forms_answer_the_application_property_template(raw: bytes) -> None:
    c = SimCard(SimOptions())
    data = ok(c, raw)
    assert data[0] == 0x61
    assert bytes.fromhex("4F06000010000100") in data  # PIX with version, as YubiKeys answer
    assert bytes.fromhex("79074F05A000000308") in data
    assert b"\xac" in data


def test_commands_before_select_and_unknown_aids() -> None:
    c = SimCard(SimOptions())
    assert tx(c, apdu(0, 0xFD, 0, 0, le=0))[1] == 0x6D00
    assert tx(c, apdu(0, 0xA4, 4, 0, bytes.fromhex("A0000005271001"), 0))[1] == 0x6A82
    assert tx(c, apdu(0, 0xA4, 4, 0, bytes.fromhex("A0000003"), 0))[1] == 0x6A82  # too short
    select(c)
    assert ok(c, apdu(0, 0xFD, 0, 0, le=0)) == bytes([5, 7, 1])
    assert ok(c, apdu(0, 0xF8, 0, 0, le=0)) == (10_000_001).to_bytes(4, "big")


def test_status_words_for_bad_commands(card: SimCard) -> None:
    assert tx(card, apdu(0, 0x99, 0, 0))[1] == 0x6D00
    assert tx(card, apdu(0x80, 0xFD, 0, 0))[1] == 0x6E00
    assert tx(card, apdu(0, 0xFD, 1, 0))[1] == 0x6A86
    assert tx(card, apdu(0, 0xCB, 0x3F, 0xFE, tlv(0x5C, bytes.fromhex("5FC102")), 0))[1] == 0x6A86
    assert tx(card, b"\x00\xcb")[1] == 0x6700
    assert tx(card, b"")[1] == 0x6700
    assert tx(card, apdu(0, 0xCB, 0x3F, 0xFF) + b"\x05\x5c\x03")[1] == 0x6700  # Lc says 5, 2 follow
    assert tx(card, bytes.fromhex("00CB3FFF0000055C"))[1] == 0x6700  # extended Lc 5, 1 byte
    assert tx(card, bytes.fromhex("00CB3FFF0000"))[1] == 0x6700
    assert tx(card, apdu(0, 0xCB, 0x3F, 0xFF, b"\x5c\x05\x5f", 0))[1] == 0x6A80  # truncated TLV
    assert tx(card, apdu(0, 0xCB, 0x3F, 0xFF, b"\x53\x01\x00", 0))[1] == 0x6A80  # not 5C
    assert tx(card, apdu(0, 0xC0, 0, 0, le=0))[1] == 0x6985  # nothing to get


def test_process_takes_a_list_of_ints_as_pyscard_gives(card: SimCard) -> None:
    assert card.process(list(apdu(0, 0xFD, 0, 0, le=0))) == bytes([5, 7, 1, 0x90, 0x00])  # type: ignore[arg-type]


def test_random_garbage_never_raises(card: SimCard) -> None:
    rnd = __import__("random").Random(7)
    for _ in range(2000):
        raw = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
        if rnd.random() < 0.5 and len(raw) >= 2:
            raw = (
                bytes([0x00, rnd.choice([0x20, 0x24, 0x2C, 0x47, 0x87, 0xCB, 0xDB, 0xF7, 0xFE, 0xFF])])
                + raw[2:]
            )
        resp = card.process(raw)
        assert len(resp) >= 2


def test_internal_error_becomes_6f00(card: SimCard, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(cmd: object) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr(card, "_version", boom)
    assert tx(card, apdu(0, 0xFD, 0, 0, le=0))[1] == 0x6F00
    assert tx(card, apdu(0, 0xF8, 0, 0, le=0))[1] == 0x9000  # and the card goes on


# --- PIN, PUK --------------------------------------------------------------------------------


def test_pin_status_counter_block_and_puk_unblock(card: SimCard) -> None:
    status = apdu(0, 0x20, 0, 0x80)
    assert tx(card, status)[1] == 0x63C3
    assert verify(card, b"999999") == 0x63C2
    assert tx(card, status)[1] == 0x63C2  # the status costs no try
    assert verify(card) == 0x9000
    assert tx(card, status)[1] == 0x9000
    assert tx(card, apdu(0, 0x20, 0xFF, 0x80))[1] == 0x9000  # unverify
    assert tx(card, status)[1] == 0x63C3  # a good PIN restored the counter
    for left in (2, 1, 0):
        assert verify(card, b"000000") == 0x63C0 | left
    assert verify(card) == 0x6983
    assert tx(card, status)[1] == 0x6983
    assert tx(card, apdu(0, 0x20, 0, 0x80, b"123456"))[1] == 0x6A80  # not padded to 8
    # RESET RETRY with a wrong PUK costs a PUK try, the right one unblocks with a new PIN
    reset_retry = apdu(0, 0x2C, 0, 0x80, pin_block(b"87654321") + pin_block(b"654321"))
    assert tx(card, reset_retry)[1] == 0x63C2
    assert ok(card, apdu(0, 0x2C, 0, 0x80, pin_block(b"12345678") + pin_block(b"654321"))) == b""
    assert verify(card, b"654321") == 0x9000
    assert card.write_apdu_count == 2


def test_change_pin_and_puk(card: SimCard) -> None:
    assert tx(card, apdu(0, 0x24, 0, 0x80, pin_block(b"111111") + pin_block(b"222222")))[1] == 0x63C2
    assert tx(card, apdu(0, 0x24, 0, 0x80, pin_block(b"123456") + pin_block(b"12")))[1] == 0x6A80
    ok(card, apdu(0, 0x24, 0, 0x80, pin_block(b"123456") + pin_block(b"24681357")))
    assert verify(card, b"24681357") == 0x9000
    ok(card, apdu(0, 0x24, 0, 0x81, pin_block(b"12345678") + pin_block(b"11223344")))
    assert tx(card, apdu(0, 0x24, 0, 0x82, bytes(16)))[1] == 0x6A88


def test_puk_blocked_then_factory_reset(card: SimCard) -> None:
    assert tx(card, apdu(0, 0xFB, 0, 0))[1] == 0x6985  # not while PIN or PUK work
    for _ in range(3):
        verify(card, b"000000")
        tx(card, apdu(0, 0x2C, 0, 0x80, pin_block(b"00000000") + pin_block(b"000000")))
    assert tx(card, apdu(0, 0x2C, 0, 0x80, pin_block(b"12345678") + pin_block(b"000000")))[1] == 0x6983
    ok(card, apdu(0, 0xFB, 0, 0))
    assert verify(card) == 0x9000


# --- management key --------------------------------------------------------------------------


def test_mgmt_auth_aes192_default_on_57_and_failure(card: SimCard) -> None:
    assert authenticate(card, corrupt=True) == 0x6982
    assert authenticate(card, alg=0x0A) == 0x9000
    assert tx(card, apdu(0, 0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x80, b"")), 0))[1] == 0x6A80
    # a new attempt drops the authentication
    ok(card, apdu(0, 0x87, 0x0A, 0x9B, tlv(0x7C, tlv(0x80, b"")), 0))
    assert put_object(card, 0x5FC10B, b"\x70\x00") == 0x6982


def test_mgmt_auth_3des_on_527_and_no_metadata() -> None:
    c = SimCard(SimOptions(firmware=(5, 2, 7)))
    select(c)
    assert tx(c, apdu(0, 0xF7, 0, 0x9B, le=0))[1] == 0x6D00
    assert tx(c, apdu(0, 0x87, 0x0A, 0x9B, tlv(0x7C, tlv(0x80, b"")), 0))[1] == 0x6A80
    assert authenticate(c, alg=0x03) == 0x9000
    # AES management keys are not on 5.2 (5.4+)
    body = b"\x0a" + tlv(0x9B, bytes(24))
    assert tx(c, apdu(0, 0xFF, 0xFF, 0xFF, body))[1] == 0x6A80
    # ed25519 is a 5.7 algorithm
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert tx(c, apdu(0, 0xFE, 0xE0, 0x9A, tlv(0x07, raw)))[1] == 0x6A80


def test_set_management_key_and_one_way_auth(card: SimCard) -> None:
    assert tx(card, apdu(0, 0xFF, 0xFF, 0xFF, b"\x0c" + tlv(0x9B, bytes(32))))[1] == 0x6982
    assert authenticate(card) == 0x9000
    new_key = bytes(range(32))
    ok(card, apdu(0, 0xFF, 0xFF, 0xFF, b"\x0c" + tlv(0x9B, new_key)))
    assert card.write_apdu_count == 1
    assert authenticate(card, alg=0x0C, key=new_key) == 0x9000
    # one-way auth: the card gives a challenge, we return it encrypted
    data = ok(card, apdu(0, 0x87, 0x0C, 0x9B, tlv(0x7C, tlv(0x81, b"")), 0))
    challenge = data[4:]
    enc = mgmt_cipher(0x0C, new_key).encryptor()
    answer = enc.update(challenge) + enc.finalize()
    ok(card, apdu(0, 0x87, 0x0C, 0x9B, tlv(0x7C, tlv(0x82, answer))))
    meta = ok(card, apdu(0, 0xF7, 0, 0x9B, le=0))
    assert meta == tlv(1, b"\x0c") + tlv(2, b"\x00\x01") + tlv(5, b"\x00")


# --- keys and signatures ---------------------------------------------------------------------


@pytest.mark.parametrize("bits,alg", [(1024, 0x06), (2048, 0x07)])
def test_import_rsa_and_sign(card: SimCard, bits: int, alg: int, request: pytest.FixtureRequest) -> None:
    key: rsa.RSAPrivateKey = request.getfixturevalue(f"rsa{bits}")
    assert import_rsa(card, alg, 0x9A, key) == 0x6982  # needs the management key
    assert authenticate(card) == 0x9000
    assert import_rsa(card, alg, 0x9A, key) == 0x9000
    message = b"provision test"
    block = pkcs1_block(message, bits // 8)
    assert general_authenticate(card, alg, 0x9A, block)[1] == 0x6982  # PIN policy once
    assert verify(card) == 0x9000
    sig, sw = general_authenticate(card, alg, 0x9A, block)
    assert sw == 0x9000
    key.public_key().verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    assert general_authenticate(card, 0x11, 0x9A, block)[1] == 0x6A80  # wrong algorithm
    assert general_authenticate(card, alg, 0x9D, block)[1] == 0x6A80  # empty slot
    # metadata: imported, policies, public key
    meta, sw = receive_all(card, apdu(0, 0xF7, 0, 0x9A, le=0))  # RSA-2048 needs GET RESPONSE
    assert sw == 0x9000
    n = key.public_key().public_numbers().n
    expected_pub = tlv(0x81, n.to_bytes(bits // 8, "big")) + tlv(0x82, b"\x01\x00\x01")
    assert meta == tlv(1, bytes([alg])) + tlv(2, b"\x02\x01") + tlv(3, b"\x02") + tlv(4, expected_pub)


def test_import_rejects_bad_key_data(card: SimCard, rsa1024: rsa.RSAPrivateKey) -> None:
    assert authenticate(card) == 0x9000
    nums = rsa1024.private_numbers()
    bad = b"".join(
        tlv(t, v.to_bytes(64, "big")) for t, v in ((1, nums.p), (2, nums.q), (3, nums.dmp1), (4, nums.dmq1))
    )
    wrong_qinv = bad + tlv(5, (nums.iqmp ^ 1).to_bytes(64, "big"))
    assert tx(card, apdu(0, 0xFE, 0x06, 0x9A, wrong_qinv, ext=True))[1] == 0x6A80
    assert tx(card, apdu(0, 0xFE, 0x06, 0x9A, bad, ext=True))[1] == 0x6A80  # qInv missing
    assert tx(card, apdu(0, 0xFE, 0x11, 0x9A, tlv(0x06, b"\xff" * 32)))[1] == 0x6A80  # ≥ order
    assert tx(card, apdu(0, 0xFE, 0x11, 0x9A, tlv(0x06, b"\x01" * 33)))[1] == 0x6A80
    assert tx(card, apdu(0, 0xFE, 0x12, 0x9A, tlv(0x06, b"\x01" * 32)))[1] == 0x6A80  # unknown alg
    assert tx(card, apdu(0, 0xFE, 0x11, 0x9B, tlv(0x06, b"\x01" * 32)))[1] == 0x6A86  # not a key slot
    assert tx(card, apdu(0, 0xFE, 0x11, 0x9A, tlv(0x06, b"\x01" * 32) + tlv(0xAA, b"\x09")))[1] == 0x6A80
    assert card.write_apdu_count == 0
    assert tx(card, apdu(0, 0xF7, 0, 0x9A, le=0))[1] == 0x6A88


@pytest.mark.parametrize(
    "alg,curve,digest", [(0x11, ec.SECP256R1(), hashes.SHA256()), (0x14, ec.SECP384R1(), hashes.SHA384())]
)
def test_import_ec_and_sign(
    card: SimCard, alg: int, curve: ec.EllipticCurve, digest: hashes.HashAlgorithm
) -> None:
    key = ec.generate_private_key(curve)
    assert authenticate(card) == 0x9000
    assert import_ec(card, alg, 0x9D, key, tlv(0xAA, b"\x01")) == 0x9000  # PIN policy never
    h = hashes.Hash(digest)
    h.update(b"hello")
    prehash = h.finalize()
    sig, sw = general_authenticate(card, alg, 0x9D, prehash)
    assert sw == 0x9000
    key.public_key().verify(sig, prehash, ec.ECDSA(Prehashed(digest)))
    meta = ok(card, apdu(0, 0xF7, 0, 0x9D, le=0))
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert meta == tlv(1, bytes([alg])) + tlv(2, b"\x01\x01") + tlv(3, b"\x02") + tlv(4, tlv(0x86, point))


def test_ed25519_on_57(card: SimCard) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert authenticate(card) == 0x9000
    ok(card, apdu(0, 0xFE, 0xE0, 0x9E, tlv(0x07, raw)))  # 9E: PIN policy never by default
    sig, sw = general_authenticate(card, 0xE0, 0x9E, b"message")
    assert sw == 0x9000
    key.public_key().verify(sig, b"message")


def test_generate_ec_key(card: SimCard) -> None:
    assert authenticate(card) == 0x9000
    data = ok(card, apdu(0, 0x47, 0, 0x82, tlv(0xAC, tlv(0x80, b"\x11")), 0))
    assert data[:2] == b"\x7f\x49"
    point = data[5:]
    assert data[3:5] == b"\x86\x41" and len(point) == 65
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    assert verify(card) == 0x9000
    digest = hashlib.sha256(b"x").digest()
    sig, sw = general_authenticate(card, 0x11, 0x82, digest)
    assert sw == 0x9000
    pub.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert ok(card, apdu(0, 0xF7, 0, 0x82, le=0))[7:10] == tlv(3, b"\x01")


def test_pin_policy_always_on_9c(card: SimCard) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert authenticate(card) == 0x9000
    assert import_ec(card, 0x11, 0x9C, key) == 0x9000  # default policy on 9C: always
    digest = hashlib.sha256(b"doc").digest()
    assert verify(card) == 0x9000
    assert get_object(card, 0x5FC102)[1] == 0x9000  # any APDU in between ...
    assert general_authenticate(card, 0x11, 0x9C, digest)[1] == 0x6982  # ... spoils it
    assert verify(card) == 0x9000
    sig, sw = general_authenticate(card, 0x11, 0x9C, digest)
    assert sw == 0x9000
    key.public_key().verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert general_authenticate(card, 0x11, 0x9C, digest)[1] == 0x6982  # one VERIFY, one use
    for between in (apdu(0, 0xC0, 0, 0, le=0), b"\x00", apdu(0, 0x20, 0, 0x80)):
        assert verify(card) == 0x9000
        tx(card, between)  # GET RESPONSE, a malformed APDU, a PIN status query
        assert general_authenticate(card, 0x11, 0x9C, digest)[1] == 0x6982
    assert ok(card, apdu(0, 0xF7, 0, 0x9C, le=0))[5:7] == b"\x03\x01"  # always, never


def test_pin_policy_always_survives_chaining(card: SimCard, rsa2048: rsa.RSAPrivateKey) -> None:
    assert authenticate(card) == 0x9000
    assert import_rsa(card, 0x07, 0x9C, rsa2048) == 0x9000
    block = pkcs1_block(b"chained", 256)
    assert verify(card) == 0x9000
    sig, sw = general_authenticate(card, 0x07, 0x9C, block)  # 266 bytes: two chained APDUs
    assert sw == 0x9000
    rsa2048.public_key().verify(sig, b"chained", padding.PKCS1v15(), hashes.SHA256())


# --- data objects ----------------------------------------------------------------------------


def test_fresh_card_objects(card: SimCard) -> None:
    chuid, sw = get_object(card, 0x5FC102)
    assert sw == 0x9000 and chuid[:2] == b"\x53\x3b"
    assert bytes.fromhex("3019D4E739DA") in chuid and b"\x34\x10" in chuid and b"\x35\x0820451231" in chuid
    assert chuid.endswith(b"\x3e\x00\xfe\x00")
    assert get_object(card, 0x5FC107)[1] == 0x9000
    disc, _ = get_object(card, 0x7E)
    assert disc == bytes.fromhex("7E124F0BA0000003080000100001005F2F024000")
    assert get_object(card, 0x5FC105)[1] == 0x6A82
    assert get_object(card, 0x5FC10C)[1] == 0x6A82
    assert get_object(card, 0x5FC103)[1] == 0x6982  # fingerprints need the PIN
    assert get_object(card, 0x5FC201)[1] == 0x6A82
    # the GUID is stable for a serial, different across serials
    other = SimCard(SimOptions(serial=2))
    select(other)
    assert get_object(other, 0x5FC102)[0] != chuid
    same = SimCard(SimOptions(serial=12345678))
    select(same)
    assert get_object(same, 0x5FC102)[0] == chuid


@pytest.mark.parametrize("ext", [False, True])
def test_certificate_object_round_trip_1_5_kb(card: SimCard, ext: bool) -> None:
    cert_obj = tlv(0x70, os.urandom(1500)) + tlv(0x71, b"\x00") + tlv(0xFE, b"")
    assert put_object(card, 0x5FC105, cert_obj, ext=ext) == 0x6982
    assert authenticate(card) == 0x9000
    assert put_object(card, 0x5FC105, cert_obj, ext=ext) == 0x9000
    data, sw = get_object(card, 0x5FC105, ext=ext)
    assert sw == 0x9000
    assert data == tlv(0x53, cert_obj)
    assert card.write_apdu_count == 1


def test_short_get_data_gives_61xx_then_get_response(card: SimCard) -> None:
    assert authenticate(card) == 0x9000
    content = bytes(range(256)) * 3
    assert put_object(card, 0x5FC10A, content) == 0x9000
    first, sw = tx(card, apdu(0, 0xCB, 0x3F, 0xFF, tlv(0x5C, oid_bytes(0x5FC10A)), 0))
    assert sw == 0x6100 and len(first) == 256
    second, sw = tx(card, apdu(0, 0xC0, 0, 0, le=0))
    assert sw == 0x6100 and len(second) == 256
    third, sw = tx(card, apdu(0, 0xC0, 0, 0, le=0))
    assert sw == 0x6104 and len(third) == 256
    last, sw = tx(card, apdu(0, 0xC0, 0, 0, le=4))
    assert sw == 0x9000 and first + second + third + last == tlv(0x53, content)
    # another command discards what was left
    tx(card, apdu(0, 0xCB, 0x3F, 0xFF, tlv(0x5C, oid_bytes(0x5FC10A)), 0))
    tx(card, apdu(0, 0xFD, 0, 0, le=0))
    assert tx(card, apdu(0, 0xC0, 0, 0, le=0))[1] == 0x6985


def test_chaining_rules(card: SimCard) -> None:
    assert authenticate(card) == 0x9000
    ok(card, apdu(0x10, 0xDB, 0x3F, 0xFF, tlv(0x5C, oid_bytes(0x5FC10B))))
    assert tx(card, apdu(0, 0xFD, 0, 0, le=0))[1] == 0x6883  # chain broken by another command
    assert put_object(card, 0x5FC10B, b"\x00" * 3064) == 0x6A84  # larger than a YubiKey object
    assert put_object(card, 0x5FC10B, b"\x01\x02") == 0x9000
    assert put_object(card, 0x5FC10B, b"") == 0x9000  # empty deletes
    assert get_object(card, 0x5FC10B)[1] == 0x6A82


def test_vendor_objects_on_yubikey(card: SimCard) -> None:
    assert authenticate(card) == 0x9000
    assert put_object(card, 0x5FFF42, b"e-Cert20060729") == 0x9000
    assert get_object(card, 0x5FFF42)[0] == tlv(0x53, b"e-Cert20060729")


# --- metadata --------------------------------------------------------------------------------


def test_pin_puk_mgmt_metadata(card: SimCard) -> None:
    assert ok(card, apdu(0, 0xF7, 0, 0x80, le=0)) == tlv(1, b"\xff") + tlv(5, b"\x01") + tlv(6, b"\x03\x03")
    verify(card, b"000000")
    assert ok(card, apdu(0, 0xF7, 0, 0x80, le=0))[-2:] == b"\x03\x02"
    assert ok(card, apdu(0, 0xF7, 0, 0x81, le=0)) == tlv(1, b"\xff") + tlv(5, b"\x01") + tlv(6, b"\x03\x03")
    assert ok(card, apdu(0, 0xF7, 0, 0x9B, le=0)) == tlv(1, b"\x0a") + tlv(2, b"\x00\x01") + tlv(5, b"\x01")
    assert tx(card, apdu(0, 0xF7, 0, 0x9A, le=0))[1] == 0x6A88
    assert tx(card, apdu(0, 0xF7, 0, 0x42, le=0))[1] == 0x6A86


def test_set_pin_retries(card: SimCard) -> None:
    assert tx(card, apdu(0, 0xFA, 5, 6))[1] == 0x6982
    assert authenticate(card) == 0x9000
    assert tx(card, apdu(0, 0xFA, 5, 6))[1] == 0x6982  # needs the PIN as well
    assert verify(card) == 0x9000
    ok(card, apdu(0, 0xFA, 5, 6))
    assert tx(card, apdu(0, 0x20, 0, 0x80))[1] == 0x63C5
    assert ok(card, apdu(0, 0xF7, 0, 0x81, le=0))[-2:] == b"\x06\x06"


# --- persistence -----------------------------------------------------------------------------


def test_state_survives_a_new_simcard(tmp_path: Path, rsa2048: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "card.json"
    opts = SimOptions(serial=4242)
    c = SimCard(opts, path)
    select(c)
    assert authenticate(c) == 0x9000
    assert import_rsa(c, 0x07, 0x9A, rsa2048) == 0x9000
    assert put_object(c, 0x5FC105, b"\x70\x03abc") == 0x9000
    assert verify(c, b"000000") == 0x63C2
    # the process dies here: nothing is flushed later, the file already has everything
    again = SimCard(opts, path)
    select(again)
    assert tx(again, apdu(0, 0x20, 0, 0x80))[1] == 0x63C2
    assert get_object(again, 0x5FC105)[0] == tlv(0x53, b"\x70\x03abc")
    assert verify(again) == 0x9000
    sig, sw = general_authenticate(again, 0x07, 0x9A, pkcs1_block(b"m", 256))
    assert sw == 0x9000
    rsa2048.public_key().verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())
    assert not [p for p in tmp_path.iterdir() if p.name != "card.json"]  # no temp files left
    with pytest.raises(ValueError, match="serial"):
        SimCard(SimOptions(serial=1), path)


def test_new_card_writes_its_state_at_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "card.json"
    SimCard(SimOptions(serial=7), path)
    data = json.loads(path.read_text())
    assert data["serial"] == 7 and data["pin_tries_left"] == 3


# --- knobs -----------------------------------------------------------------------------------


def test_vanish_after() -> None:
    c = SimCard(SimOptions(vanish_after=2))
    select(c)
    ok(c, apdu(0, 0xFD, 0, 0, le=0))
    with pytest.raises(CardVanished):
        c.process(apdu(0, 0xFD, 0, 0, le=0))
    with pytest.raises(CardVanished):
        c.process(apdu(0, 0xFD, 0, 0, le=0))
    assert c.vanished


def test_in_process_transport_maps_vanish_to_card_removed() -> None:
    c = SimCard(SimOptions(vanish_after=1))
    t = SimTransport(c)
    assert t.reader == "Provision Sim 00" and t.supports_extended and t.atr == c.atr
    t.begin_transaction()
    assert t.transmit(apdu(0, 0xA4, 4, 0, PIV_AID[:10], 0))[-2:] == b"\x90\x00"
    with pytest.raises(CardRemovedError):
        t.transmit(apdu(0, 0xFD, 0, 0, le=0))
    t.end_transaction()
    assert t.apdu_count == 2
    t.close()


def test_fail_after() -> None:
    c = SimCard(SimOptions(fail_after=1))
    select(c)
    assert tx(c, apdu(0, 0xFD, 0, 0, le=0))[1] == 0x6F00
    assert tx(c, apdu(0, 0xA4, 4, 0, PIV_AID[:10], 0))[1] == 0x6F00


def test_stall_releases(card: SimCard) -> None:
    import threading

    card.stall(30)
    out: list[bytes] = []
    thread = threading.Thread(target=lambda: out.append(card.process(apdu(0, 0xFD, 0, 0, le=0))))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and not out
    card.release_stall()
    thread.join(5)
    assert out == [bytes([5, 7, 1, 0x90, 0x00])]


def test_power_on_clears_security_status(card: SimCard) -> None:
    assert verify(card) == 0x9000
    assert authenticate(card) == 0x9000
    card.power_on()
    assert tx(card, apdu(0, 0x20, 0, 0x80))[1] == 0x6D00  # not selected any more
    select(card)
    assert tx(card, apdu(0, 0x20, 0, 0x80))[1] == 0x63C3
    assert put_object(card, 0x5FC10B, b"\x70\x00") == 0x6982


def test_reselect_clears_security_status(card: SimCard) -> None:
    assert verify(card) == 0x9000
    select(card)
    assert tx(card, apdu(0, 0x20, 0, 0x80))[1] == 0x63C3


def test_apdu_log_has_headers_and_no_data(tmp_path: Path) -> None:
    log = tmp_path / "apdu.jsonl"
    c = SimCard(SimOptions(apdu_log=log))
    select(c)
    verify(c)
    tx(c, b"\x00")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 3
    assert {k: lines[1][k] for k in ("cla", "ins", "p1", "p2", "lc", "le", "sw")} == {
        "cla": "00",
        "ins": "20",
        "p1": "00",
        "p2": "80",
        "lc": 8,
        "le": None,
        "sw": "9000",
    }
    assert lines[0]["le"] == 256 and lines[2]["sw"] == "6700"
    assert "313233343536" not in log.read_text() and "ffff" not in log.read_text().lower()


def test_latency(card: SimCard) -> None:
    import time

    slow = SimCard(SimOptions(latency_ms=20))
    start = time.monotonic()
    slow.process(apdu(0, 0xA4, 4, 0, PIV_AID[:10], 0))
    assert time.monotonic() - start >= 0.019


# --- another kind of card --------------------------------------------------------------------


def test_pivapplet_like_profile() -> None:
    serial = 0x9234_5678  # top bit set
    c = SimCard(SimOptions(profile="pivapplet", serial=serial))
    data = select(c)
    assert tlv(0x4F, PIV_AID) in data
    assert ok(c, apdu(0, 0xF8, 0, 0, le=0)) == bytes.fromhex("92345678")
    assert tx(c, apdu(0, 0x20, 0, 0x80))[1] == 0x63C5
    assert authenticate(c) == 0x9000
    assert put_object(c, 0x5FFF42, b"name") == 0x6A86
    assert get_object(c, 0x5FFF42)[1] == 0x6A82
    key = ec.generate_private_key(ec.SECP256R1())
    assert import_ec(c, 0x11, 0x8D, key) == 0x6A86  # only 82-8C
    assert import_ec(c, 0x11, 0x8C, key) == 0x9000
    assert import_ec(c, 0x11, 0x9C, key, tlv(0xAB, b"\x02")) == 0x6A81  # touch always refused
    assert import_ec(c, 0x11, 0x9C, key, tlv(0xAB, b"\x01")) == 0x9000
    assert ok(c, apdu(0, 0xF7, 0, 0x9C, le=0))[5:7] == b"\x03\x01"  # 9C always
    no_serial = SimCard(SimOptions(profile="pivapplet", no_f8=True))
    select(no_serial)
    assert tx(no_serial, apdu(0, 0xF8, 0, 0, le=0))[1] == 0x6D00


def test_write_counters_for_the_wrong_card_check(card: SimCard) -> None:
    select(card)
    verify(card)
    get_object(card, 0x5FC102)
    tx(card, apdu(0, 0xF7, 0, 0x80, le=0))
    assert card.write_apdu_count == 0 and card.write_attempt_count == 0
    assert put_object(card, 0x5FC105, b"\x70\x00") == 0x6982
    assert card.write_apdu_count == 0 and card.write_attempt_count == 1
    assert card.apdu_count == 6


def test_change_puk_counts_tries_and_a_blocked_puk_answers_6983(card: SimCard) -> None:
    """CHANGE REFERENCE DATA on the PUK (00 24 00 81): a wrong PUK costs a try (63Cx), the last wrong
    one blocks it, and then even the right PUK is refused with 6983, for CHANGE and for RESET RETRY."""
    for left in (2, 1, 0):
        assert tx(card, apdu(0, 0x24, 0, 0x81, pin_block(b"00000000") + pin_block(b"11223344")))[1] == 0x63C0 | left
    assert tx(card, apdu(0, 0x24, 0, 0x81, pin_block(b"12345678") + pin_block(b"11223344")))[1] == 0x6983
    assert tx(card, apdu(0, 0x2C, 0, 0x80, pin_block(b"12345678") + pin_block(b"654321")))[1] == 0x6983
    assert ok(card, apdu(0, 0x20, 0, 0x80, pin_block(b"123456"))) == b""  # the PIN itself is untouched


@pytest.mark.parametrize("kept", [False, True])
def test_reselect_drops_the_pin_unless_the_card_keeps_it(kept: bool) -> None:
    """``pin_kept_on_select``: PivApplet keeps the PIN verified across a re-SELECT; a reset always drops it."""
    c = SimCard(SimOptions(pin_kept_on_select=kept))
    c.power_on()
    select(c)
    assert verify(c) == 0x9000
    select(c)
    assert tx(c, apdu(0, 0x20, 0x00, 0x80))[1] == (0x9000 if kept else 0x63C3)
    c.reset()
    select(c)
    assert tx(c, apdu(0, 0x20, 0x00, 0x80))[1] == 0x63C3


def test_absent_objects_answer_not_found_to_get_and_put() -> None:
    """``absent_objects``: CanoKey has no Key History object; GET and PUT DATA both answer 6A82."""
    c = SimCard(SimOptions(firmware=(5, 4, 3), absent_objects=(0x5FC10C,)))
    c.power_on()
    select(c)
    assert authenticate(c, alg=0x03) == 0x9000
    key_history = tlv(0x5C, bytes.fromhex("5FC10C"))
    assert tx(c, apdu(0, 0xDB, 0x3F, 0xFF, key_history + tlv(0x53, bytes.fromhex("C10101C20100FE00"))))[1] == 0x6A82
    assert tx(c, apdu(0, 0xCB, 0x3F, 0xFF, key_history, le=0))[1] == 0x6A82
    chuid = tlv(0x5C, bytes.fromhex("5FC102"))
    assert tx(c, apdu(0, 0xCB, 0x3F, 0xFF, chuid, le=0))[1] == 0x9000  # the others are there


@pytest.mark.parametrize("per_segment", [False, True])
def test_a_chained_put_data_is_stored_whole_or_segment_by_segment(per_segment: bool) -> None:
    """``chain_stored_per_segment``: CanoKey stores each segment of a chained PUT DATA as it comes,
    so a chain that never ends leaves a cut-short object; a YubiKey stores nothing until the end."""
    c = SimCard(SimOptions(firmware=(5, 4, 3), chain_stored_per_segment=per_segment))
    c.power_on()
    select(c)
    assert authenticate(c, alg=0x03) == 0x9000
    cert_object = tlv(0x5C, bytes.fromhex("5FC10A")) + tlv(0x53, tlv(0x70, bytes(400)) + tlv(0x71, b"\x00"))
    assert tx(c, apdu(0x10, 0xDB, 0x3F, 0xFF, cert_object[:255]))[1] == 0x9000
    c.reset()  # the card was pulled before the last segment
    stored = c.state.objects.get(0x5FC10A)
    if per_segment:
        assert stored is not None and stored.startswith(bytes.fromhex("708201900000")) and len(stored) == 255 - 9
    else:
        assert stored is None


def test_the_otp_application_answers_the_serial_as_yubico_piv_tool_asks_a_yubikey_4() -> None:
    """Below firmware 5 yubico-piv-tool and ykcs11 read the serial through the OTP application
    (lib/ykpiv.c _ykpiv_get_serial: SELECT A0000005272001 01, then 00 01 10 00, then SELECT PIV);
    a YubiKey answers there. Selecting it leaves PIV, and its security status, behind."""
    c = SimCard(SimOptions(serial=3_000_000_001, firmware=(4, 3, 7)))
    select(c)
    assert verify(c, b"123456") == 0x9000
    assert ok(c, apdu(0, 0xA4, 4, 0, bytes.fromhex("A000000527200101"))) == bytes([4, 3, 7, 0, 0, 0])
    assert ok(c, apdu(0, 0x01, 0x10, 0)) == (3_000_000_001).to_bytes(4, "big")
    assert tx(c, apdu(0, 0xFD, 0, 0, le=0))[1] == 0x6D00  # a PIV command goes to the OTP application
    select(c, PIV_AID[:5])
    assert tx(c, apdu(0, 0x20, 0, 0x80))[1] == 0x63C3  # the PIN is no longer verified
    assert ok(c, apdu(0, 0xFD, 0, 0, le=0)) == bytes([4, 3, 7])
    generic = SimCard(SimOptions(profile="pivapplet"))
    assert tx(generic, apdu(0, 0xA4, 4, 0, bytes.fromhex("A000000527200101")))[1] == 0x6A82
    five = SimCard(SimOptions())  # 5.x: GET SERIAL; the OTP application is not simulated there
    assert tx(five, apdu(0, 0xA4, 4, 0, bytes.fromhex("A000000527200101")))[1] == 0x6A82


class Logged(SimTransport):
    """A simulated card's connection that keeps the header of every command sent."""

    def __init__(self, card: SimCard) -> None:
        super().__init__(card)
        self.sent: list[str] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu[:4].hex())
        return super().transmit(apdu)


def _session(card: SimCard) -> tuple[Logged, PivSession]:
    from provision.card.apdu import ApduChannel

    t = Logged(card)
    session = PivSession(ApduChannel(t))
    session.select()
    t.sent.clear()
    return t, session


def test_a_yubikey_4_gives_its_serial_through_the_otp_application_and_piv_is_selected_again() -> None:
    """A YubiKey NEO or 4 has no GET SERIAL in PIV (6D00): its serial comes from the OTP application,
    as yubico-piv-tool and ykcs11 read it, once per session; PIV answers again afterwards."""
    t, session = _session(SimCard(SimOptions(serial=3_000_000_001, firmware=(4, 3, 7))))
    assert session.serial() == 3_000_000_001
    assert t.sent == ["00f80000", "00fd0000", "00a40400", "00011000", "00a40400"]
    assert session.read_chuid() is not None  # PIV is selected again
    assert session.version() == (4, 3, 7)
    before = len(t.sent)
    assert session.serial() == 3_000_000_001 and len(t.sent) == before  # read once per session: nothing sent


def test_the_otp_detour_is_only_for_a_yubikey_before_firmware_5() -> None:
    five_t, five = _session(SimCard(SimOptions(serial=12345678)))
    assert five.serial() == 12345678 and five_t.sent == ["00f80000"]
    other_t, other = _session(SimCard(SimOptions(profile="pivapplet", no_f8=True)))
    assert other.serial() is None
    assert "00a40400" not in other_t.sent  # nothing outside the PIV application is selected
    assert other_t.sent[0] == "00f80000"


def test_a_job_naming_a_yubikey_4_by_serial_finds_it() -> None:
    """End to end in process: the serial read through OTP identifies the card for its job."""
    from provision.backend import PivCard

    card = PivCard(SimTransport(SimCard(SimOptions(serial=23456788, firmware=(4, 3, 7)))))
    seen = card.identify()
    assert seen.serial == 23456788


def test_pulling_a_served_card_closes_its_connection_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A card served to vpcd looked at its stop event only between waits (every 200 ms), so a pulled
    card stayed in the reader that long. With a PullEvent the blocked receive wakes when the card is
    pulled. The wait between looks is made a minute here: a plain Event would still be waiting."""
    import socket
    import threading

    from provision.sim import vpcd

    monkeypatch.setattr(vpcd, "_POLL_S", 60.0)
    ours, theirs = socket.socketpair()
    pulled = vpcd.PullEvent()
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(vpcd._Peer(ours).recv_exact(2, pulled)), daemon=True)
    reader.start()
    pulled.set()
    reader.join(10)
    assert not reader.is_alive() and got == [None]
    pulled.close()
    ours.close()
    theirs.close()
