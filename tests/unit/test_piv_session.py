"""PivSession against a scripted card: exact APDUs, known-answer mutual auth, parsing, failures."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provision.card.apdu import ApduChannel
from provision.errors import (
    CardNotSupportedError,
    CardProtocolError,
    CardStatusError,
    KeyMismatchError,
    ManagementKeyError,
    PinError,
    PinFormatError,
)
from provision.piv import session as s
from provision.piv.session import PivSession, SlotNameResult, parse_application_properties
from provision.secrets import Secret
from tests.helpers.scripted_transport import ScriptedTransport, h


def fixed_rng(value: bytes) -> Callable[[int], bytes]:
    def rng(n: int) -> bytes:
        return (value * (n // len(value) + 1))[:n]

    return rng


def session(script: list[tuple[bytes | None, bytes | Callable[[bytes], bytes]]], rng: bytes = b"\xa5") -> tuple[
    PivSession, ScriptedTransport
]:
    t = ScriptedTransport(script)
    return PivSession(ApduChannel(t), rng=fixed_rng(rng)), t


OK = h("90 00")
DEFAULT_KEY = h("010203040506070801020304050607080102030405060708")
# A YubiKey 5 SELECT answer: APT with PIX and the coexistent tag allocation authority.
YUBIKEY_APT = h("61 11 4F 06 00 00 10 00 01 00 79 07 4F 05 A0 00 00 03 08")

# --- identity -------------------------------------------------------------------------------------


def test_select_full_aid_and_parse_apt() -> None:
    p, t = session([(h("00 A4 04 00 0B A0 00 00 03 08 00 00 10 00 01 00 00"), YUBIKEY_APT + OK)])
    props = p.select()
    assert props is not None
    assert props.aid == h("00 00 10 00 01 00") and props.authority == h("A0 00 00 03 08")
    assert props.algorithms == ()
    t.done()


def test_select_apt_with_label_and_algorithms() -> None:
    apt = h("61 18 4F 06 00 00 10 00 01 00 50 03") + b"PIV" + h("AC 09 80 01 11 80 01 14 06 01 00")
    p, _ = session([(None, apt + OK)])
    props = p.select()
    assert props is not None and props.label == "PIV" and props.algorithms == (0x11, 0x14)


@pytest.mark.parametrize(
    "answer",
    [h("6F 02 4F 00"), h("61 05 4F 06 00 00"), h("61 02 50 00")],  # wrong tag, truncated, no 4F
)
def test_select_answer_other_than_an_apt_still_selects(answer: bytes) -> None:
    """An FCI (6F) as older PIV cards send, or an APT we cannot read: SELECT of the full AID answered
    9000, so the application is selected; the card was refused before, though nothing decides on
    these properties. The parsing itself still refuses them."""
    p, _ = session([(None, answer + OK)])
    assert p.select() is None
    with pytest.raises(CardProtocolError):
        parse_application_properties(answer)


def test_select_without_piv() -> None:
    p, _ = session([(None, h("6A 82"))])
    with pytest.raises(CardStatusError) as info:
        p.select()
    assert info.value.sw == 0x6A82


def test_version_cached_and_unsupported() -> None:
    p, t = session([(h("00 FD 00 00 00"), h("05 07 02") + OK)])
    assert p.version() == (5, 7, 2)
    assert p.version() == (5, 7, 2)
    t.done()
    p, _ = session([(None, h("6D 00"))])
    assert p.version() is None


# What PIV cards without the YubiKey extensions were seen or are specified to answer to an
# instruction they do not have, besides 6D00: ISO 7816-4 checking errors. OpenSC (card-piv.c,
# piv_match_card_continued) takes any failed GET VERSION as "not a YubiKey"; yubico-piv-tool
# (ykpiv.c, _ykpiv_connect) goes on without a serial whatever GET SERIAL answered.
FOREIGN_REFUSALS = ["6A 86", "67 00", "69 85", "69 86", "6A 80", "68 81"]


@pytest.mark.parametrize("refusal", FOREIGN_REFUSALS)
def test_a_card_without_get_version_is_read_as_having_none(refusal: str) -> None:
    p, t = session([(h("00 FD 00 00 00"), h(refusal))])
    assert p.version() is None
    assert p.version() is None  # asked once
    t.done()


@pytest.mark.parametrize("refusal", FOREIGN_REFUSALS)
def test_a_card_without_get_serial_is_read_as_having_none(refusal: str) -> None:
    p, t = session([(h("00 F8 00 00 00"), h(refusal))])
    assert p.serial() is None
    t.done()


@pytest.mark.parametrize("sw", ["6F 00", "65 81", "64 00"])
def test_a_card_fault_on_get_version_or_serial_is_still_an_error(sw: str) -> None:
    p, _ = session([(None, h(sw))])
    with pytest.raises(CardStatusError):
        p.version()
    p, _ = session([(None, h(sw))])
    with pytest.raises(CardStatusError):
        p.serial()


def test_version_wrong_length() -> None:
    p, _ = session([(None, h("05 07") + OK)])
    with pytest.raises(CardProtocolError):
        p.version()


@pytest.mark.parametrize(
    ("answer", "serial"),
    [
        (h("00 BC 61 4E 90 00"), 12345678),
        (h("FF FF FF FE 90 00"), 0xFFFFFFFE),  # top bit set: unsigned (yubico-piv-tool prints signed)
    ],
)
def test_serial(answer: bytes, serial: int | None) -> None:
    p, t = session([(h("00 F8 00 00 00"), answer)])
    assert p.serial() == serial
    t.done()


@pytest.mark.parametrize("refused", [h("6D 00"), h("6A 81")])
@pytest.mark.parametrize("version", [h("6D 00"), h("05 04 03 90 00")], ids=["no-version", "firmware-5"])
def test_no_serial_and_not_a_yubikey_4_asks_nothing_outside_piv(refused: bytes, version: bytes) -> None:
    p, t = session([(h("00 F8 00 00 00"), refused), (h("00 FD 00 00 00"), version)])
    assert p.serial() is None
    t.done()


def test_a_yubikey_4_serial_through_otp_then_piv_again() -> None:
    """The exchange yubico-piv-tool's _ykpiv_get_serial has with a YubiKey 4 (with yubikit's AID)."""
    p, t = session([
        (h("00 F8 00 00 00"), h("6D 00")),
        (h("00 FD 00 00 00"), h("04 03 07 90 00")),
        (h("00 A4 04 00 07 A0 00 00 05 27 20 01 00"), h("04 03 07 00 00 00 90 00")),
        (h("00 01 10 00 00"), h("01 65 EC 15 90 00")),
        (h("00 A4 04 00 0B A0 00 00 03 08 00 00 10 00 01 00 00"), h("61 11 4F 06 00 00 10 00 01 00 79 07 4F 05 A0 00 00 03 08 90 00")),
    ])  # fmt: skip
    assert p.serial() == 0x0165EC15
    assert p.serial() == 0x0165EC15  # once per session
    t.done()


def test_a_yubikey_4_that_hides_its_serial_is_read_as_none_and_piv_is_selected_again() -> None:
    p, t = session([
        (h("00 F8 00 00 00"), h("6D 00")),
        (h("00 FD 00 00 00"), h("04 03 07 90 00")),
        (h("00 A4 04 00 07 A0 00 00 05 27 20 01 00"), h("04 03 07 00 00 00 90 00")),
        (h("00 01 10 00 00"), h("6A 82")),
        (h("00 A4 04 00 0B A0 00 00 03 08 00 00 10 00 01 00 00"), h("90 00")),
    ])  # fmt: skip
    assert p.serial() is None
    t.done()


def test_serial_wrong_length() -> None:
    p, _ = session([(None, h("00 BC 61 90 00"))])
    with pytest.raises(CardProtocolError):
        p.serial()


def test_read_chuid_guid() -> None:
    guid = bytes(range(16))
    chuid = h("30 19") + bytes(25) + h("34 10") + guid + h("35 08") + b"20301231" + h("3E 00 FE 00")
    body = h("53") + bytes([len(chuid)]) + chuid
    p, t = session([(h("00 CB 3F FF 05 5C 03 5F C1 02 00"), body + OK)])
    assert p.read_chuid() == guid.hex()
    t.done()
    p, _ = session([(None, h("6A 82"))])
    assert p.read_chuid() is None


# --- PIN ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sw", "tries"), [(h("90 00"), None), (h("63 C5"), 5), (h("63 C0"), 0), (h("69 83"), 0)])
def test_pin_tries(sw: bytes, tries: int | None) -> None:
    # SP 800-73-4 part 2 3.2.1: VERIFY without data is a status query (case 1).
    p, t = session([(h("00 20 00 80"), sw)])
    assert p.pin_tries() == tries
    t.done()


def test_pin_tries_unexpected_sw() -> None:
    p, _ = session([(None, h("6A 88"))])
    with pytest.raises(CardStatusError):
        p.pin_tries()


def test_verify_pin_pads_with_ff() -> None:
    p, t = session([(h("00 20 00 80 08 31 32 33 34 35 36 FF FF"), OK)])
    p.verify_pin(Secret("123456"))
    t.done()
    p, t = session([(h("00 20 00 80 08 31 32 33 34 35 36 37 38"), OK)])
    p.verify_pin(Secret("12345678"))


@pytest.mark.parametrize(("sw", "tries"), [(h("63 C2"), 2), (h("63 C0"), 0), (h("69 83"), 0), (h("63 00"), None)])
def test_verify_pin_refused(sw: bytes, tries: int | None) -> None:
    p, _ = session([(None, sw)])
    with pytest.raises(PinError) as info:
        p.verify_pin(Secret("654321"))
    assert info.value.tries_left == tries
    assert "654321" not in str(info.value)


@pytest.mark.parametrize("pin", ["12345", "123456789", ""])
def test_verify_pin_wrong_length_sends_nothing(pin: str) -> None:
    p, t = session([])
    with pytest.raises(PinFormatError) as info:
        p.verify_pin(Secret(pin))
    assert info.value.tries_left is None and t.sent == []


# --- management key -------------------------------------------------------------------------------


def _ecb(alg: object, data: bytes, encrypt: bool) -> bytes:
    c = Cipher(alg, modes.ECB())  # type: ignore[arg-type]
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def test_authenticate_3des_known_answer() -> None:
    """No F7 (YubiKey < 5.3), fw 5.2.7, 24-byte key → 3DES; the vector is computed here."""
    witness_plain = h("11 22 33 44 55 66 77 88")
    witness_enc = _ecb(TripleDES(DEFAULT_KEY), witness_plain, True)
    challenge = h("A5") * 8
    answer = _ecb(TripleDES(DEFAULT_KEY), challenge, True)
    p, t = session(
        [
            (h("00 F7 00 9B 00"), h("6D 00")),
            (h("00 FD 00 00 00"), h("05 02 07") + OK),
            # yubico-piv-tool _ykpiv_authenticate2 / yubikit authenticate step 1 (+ our Le 00)
            (h("00 87 03 9B 04 7C 02 80 00 00"), h("7C 0A 80 08") + witness_enc + OK),
            (
                h("00 87 03 9B 16 7C 14 80 08") + witness_plain + h("81 08") + challenge + h("00"),
                h("7C 0A 82 08") + answer + OK,
            ),
        ]
    )
    p.authenticate(Secret(DEFAULT_KEY))
    t.done()


def test_authenticate_aes128_from_metadata() -> None:
    key = bytes(range(16))
    witness_plain = bytes(range(100, 116))
    challenge = h("A5") * 16
    p, t = session(
        [
            # F7 9B: algorithm 08, policy (00, touch 01), default no.
            (h("00 F7 00 9B 00"), h("01 01 08 02 02 00 01 05 01 00") + OK),
            (h("00 87 08 9B 04 7C 02 80 00 00"), h("7C 12 80 10") + _ecb(algorithms.AES(key), witness_plain, True) + OK),
            (
                h("00 87 08 9B 26 7C 24 80 10") + witness_plain + h("81 10") + challenge + h("00"),
                h("7C 12 82 10") + _ecb(algorithms.AES(key), challenge, True) + OK,
            ),
        ]
    )
    p.authenticate(key)
    t.done()


def test_authenticate_default_key_on_57_without_f7_is_aes192() -> None:
    p, t = session([(None, h("6D 00")), (None, h("05 07 00") + OK), (h("00 87 0A 9B 04 7C 02 80 00 00"), h("6A 80"))])
    with pytest.raises(CardStatusError):
        p.authenticate(DEFAULT_KEY)
    t.done()


@pytest.mark.parametrize("refusal", ["67 00", "69 85", "6A 86", "6B 00"])
def test_authenticate_on_a_card_that_refuses_get_metadata_otherwise_than_6d00(refusal: str) -> None:
    """GET METADATA (F7) is a YubiKey instruction: whatever checking error a card answers for 9B,
    the key's algorithm is the default, as yubico-piv-tool (ykpiv.c, ykpiv_authenticate: 3DES
    unless F7 9B answers) decides; the authentication goes on."""
    witness_plain = h("11 22 33 44 55 66 77 88")
    p, t = session([
        (h("00 F7 00 9B 00"), h(refusal)),
        (h("00 FD 00 00 00"), h("6D 00")),
        (h("00 87 03 9B 04 7C 02 80 00 00"), h("7C 0A 80 08") + _ecb(TripleDES(DEFAULT_KEY), witness_plain, True) + OK),
        (None, h("7C 0A 82 08") + _ecb(TripleDES(DEFAULT_KEY), h("A5") * 8, True) + OK),
    ])  # fmt: skip
    p.authenticate(DEFAULT_KEY)
    t.done()


@pytest.mark.parametrize("ref", [0x80, 0x81, 0x9B])
def test_pin_puk_and_management_metadata_refused_otherwise_is_not_supported(ref: int) -> None:
    p, _ = session([(None, h("67 00"))])
    with pytest.raises(CardNotSupportedError):
        p.get_metadata(ref)


def test_a_key_slot_metadata_refusal_keeps_its_status_word() -> None:
    """For a key slot 6A86 says "no such slot" (PivApplet beyond 8C): the callers need the SW."""
    p, _ = session([(None, h("6A 86"))])
    with pytest.raises(CardStatusError) as info:
        p.get_metadata(0x8D)
    assert info.value.sw == 0x6A86 and not isinstance(info.value, CardNotSupportedError)


def test_authenticate_with_an_algorithm_the_card_key_is_not_says_so() -> None:
    """A card without GET METADATA whose management key is not 3DES answers the witness request
    with 6A86 (canokey-core piv.c: "P1 mismatches the key specified by P2"; PivApplet
    processGenAuthSym: symAlg != alg): name the setting that fixes it, not only the status word."""
    p, t = session([
        (h("00 F7 00 9B 00"), h("6D 00")),
        (h("00 FD 00 00 00"), h("6D 00")),
        (h("00 87 03 9B 04 7C 02 80 00 00"), h("6A 86")),
    ])  # fmt: skip
    with pytest.raises(ManagementKeyError, match="management_key_type") as info:
        p.authenticate(DEFAULT_KEY)
    assert "3des" in str(info.value)
    t.done()


def test_authenticate_wrong_key_is_not_retried() -> None:
    witness = _ecb(TripleDES(DEFAULT_KEY), bytes(8), True)
    p, t = session(
        [
            (None, h("01 01 03 02 02 00 01 05 01 01") + OK),
            (None, h("7C 0A 80 08") + witness + OK),
            (None, h("69 82")),
        ]
    )
    with pytest.raises(ManagementKeyError) as info:
        p.authenticate(Secret(bytes(24)))
    assert "wrong key" in str(info.value)
    t.done()


def test_authenticate_card_that_cannot_prove_the_key() -> None:
    witness = _ecb(TripleDES(DEFAULT_KEY), bytes(8), True)
    p, _ = session([(None, h("01 01 03") + OK), (None, h("7C 0A 80 08") + witness + OK), (None, h("7C 0A 82 08") + bytes(8) + OK)])
    with pytest.raises(ManagementKeyError, match="did not prove"):
        p.authenticate(DEFAULT_KEY, "3des")


def test_authenticate_type_conflict_sends_nothing_more() -> None:
    p, t = session([(None, h("01 01 0C") + OK)])
    with pytest.raises(ManagementKeyError):
        p.authenticate(bytes(24), "3des")
    t.done()


def test_authenticate_wrong_key_length() -> None:
    p, t = session([(None, h("01 01 08") + OK)])
    with pytest.raises(ManagementKeyError) as info:
        p.authenticate(bytes(24))
    assert "16" in str(info.value)
    t.done()


@pytest.mark.parametrize(
    "witness_answer",
    [h("7C 06 80 04 00 00 00 00"), h("7D 0A 80 08") + bytes(8), h("7C 0A 80 08 00")],
)
def test_authenticate_malformed_witness(witness_answer: bytes) -> None:
    p, _ = session([(None, h("01 01 03") + OK), (None, witness_answer + OK)])
    with pytest.raises(CardProtocolError):
        p.authenticate(DEFAULT_KEY)


# --- metadata -------------------------------------------------------------------------------------


def test_metadata_ec_p256() -> None:
    key = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    pub = h("86 41") + point
    data = h("01 01 11 02 02 02 01 03 01 02 04 43") + pub
    p, t = session([(h("00 F7 00 9A 00"), data + OK)])
    meta = p.get_metadata(0x9A)
    assert meta is not None
    assert (meta.algorithm, meta.pin_policy, meta.touch_policy, meta.origin) == (0x11, 2, 1, 2)
    assert isinstance(meta.public_key, ec.EllipticCurvePublicKey)
    assert meta.public_key.public_numbers() == key.public_key().public_numbers()
    t.done()


def test_metadata_rsa() -> None:
    key = rsa.generate_private_key(65537, 1024)
    n = key.public_key().public_numbers().n.to_bytes(128, "big")
    pub = h("81 81 80") + n + h("82 03 01 00 01")
    data = h("01 01 06 02 02 03 02 03 01 01 04 81") + bytes([len(pub)]) + pub
    p, _ = session([(None, data + OK)])
    meta = p.get_metadata(0x9C)
    assert meta is not None and meta.algorithm_info is not None and meta.algorithm_info.name == "RSA1024"
    assert isinstance(meta.public_key, rsa.RSAPublicKey)
    assert meta.public_key.public_numbers() == key.public_key().public_numbers()


def test_metadata_pin_retries() -> None:
    p, _ = session([(h("00 F7 00 80 00"), h("01 01 FF 05 01 01 06 02 05 04") + OK)])
    meta = p.get_metadata(0x80)
    assert meta is not None and (meta.is_default, meta.retries_total, meta.retries_left) == (True, 5, 4)


def test_metadata_empty_and_unsupported() -> None:
    p, _ = session([(None, h("6A 88"))])
    assert p.get_metadata(0x9D) is None
    p, _ = session([(None, h("6D 00"))])
    with pytest.raises(CardNotSupportedError):
        p.get_metadata(0x9D)


@pytest.mark.parametrize(
    "data",
    [
        h("01 01"),  # truncated TLV
        h("01 02 11 11"),  # algorithm of 2 bytes
        h("01 01 11 02 01 02"),  # policy of 1 byte
        h("01 01 11 04 03 86 01 04"),  # not a point
        h("01 01 07 04 04 81 01 01 82"),  # truncated inner TLV
        h("02 02 01 01 04 03 86 01 04"),  # a public key without its algorithm
    ],
)
def test_metadata_malformed(data: bytes) -> None:
    p, _ = session([(None, data + OK)])
    with pytest.raises(CardProtocolError):
        p.get_metadata(0x9A)


# --- import ---------------------------------------------------------------------------------------


def test_import_ec_p256_exact_bytes() -> None:
    scalar = 0x42
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    # yubico-piv-tool ykpiv_import_private_key: 06 20 <scalar left-padded to 32>, no policy tags at default
    expected = h("00 FE 11 9A 22 06 20") + scalar.to_bytes(32, "big")
    p, t = session([(expected, OK)])
    assert p.import_key(0x9A, key).code == 0x11
    t.done()


def test_import_ec_p384_with_policies() -> None:
    key = ec.derive_private_key(7, ec.SECP384R1())
    expected = h("00 FE 14 9C 38 06 30") + (7).to_bytes(48, "big") + h("AA 01 03 AB 01 02")
    p, t = session([(expected, OK)])
    p.import_key(0x9C, key, pin_policy="always", touch_policy="always")
    t.done()


def test_import_rsa2048_is_chained_crt() -> None:
    key = rsa.generate_private_key(65537, 2048)
    nums = key.private_numbers()
    body = b"".join(
        bytes([tag, 0x81, 0x80]) + v.to_bytes(128, "big")
        for tag, v in ((1, nums.p), (2, nums.q), (3, nums.dmp1), (4, nums.dmq1), (5, nums.iqmp))
    ) + h("AA 01 01 AB 01 03")
    assert len(body) == 661
    p, t = session(
        [
            (h("10 FE 07 9D FF") + body[:255], OK),
            (h("10 FE 07 9D FF") + body[255:510], OK),
            (h("00 FE 07 9D 97") + body[510:], OK),
        ]
    )
    p.import_key(0x9D, key, pin_policy="never", touch_policy="cached")
    t.done()


def test_import_ed25519_tag_07() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    p, t = session([(h("00 FE E0 82 22 07 20") + bytes(range(32)), OK)])
    p.import_key(0x82, key)
    t.done()


def test_import_refuses_unsupported_keys() -> None:
    p, t = session([])
    with pytest.raises(CardNotSupportedError):
        p.import_key(0x9A, ec.derive_private_key(5, ec.SECP521R1()))
    with pytest.raises(CardNotSupportedError):
        p.import_key(0x9A, rsa.generate_private_key(3, 1024))
    with pytest.raises(KeyError):
        p.import_key(0x9B, ec.derive_private_key(5, ec.SECP256R1()))
    assert t.sent == []


def test_an_all_zero_chuid_guid_is_no_guid() -> None:
    """A CHUID whose GUID is sixteen zero bytes names no card (cards that identify by FASC-N only
    carry it so; OpenSC's piv_get_serial_nr_from_CHUI skips it): it must not make every such card
    look like one and the same."""
    chuid = h("30 19") + bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB") + h("34 10") + bytes(16)
    chuid += h("35 08") + b"20301231" + h("3E 00 FE 00")
    p, _ = session([(None, h("53") + bytes([len(chuid)]) + chuid + OK)])
    assert p.read_chuid() is None


# --- objects and certificates ---------------------------------------------------------------------


def test_get_object_and_missing() -> None:
    p, _ = session([(h("00 CB 3F FF 05 5C 03 5F FF 50 00"), h("53 02 01 02") + OK)])
    assert p.get_object(0x5FFF50) == h("01 02")
    p, _ = session([(None, h("6A 82"))])
    assert p.get_object(0x5FC105) is None
    p, _ = session([(None, h("70 00") + OK)])
    with pytest.raises(CardProtocolError):
        p.get_object(0x5FC105)


def test_an_empty_answer_to_get_data_twice_is_an_absent_object() -> None:
    """9000 with no data at all, from a card that says it again: OpenSC (card-piv.c, piv_get_data
    and piv_get_cached_data) reads it as "file not found", as it reads 6A82 and an empty 53 00."""
    get_9a = h("00 CB 3F FF 05 5C 03 5F C1 05 00")
    p, t = session([(get_9a, OK), (get_9a, OK)])
    assert p.read_certificate(0x9A) is None
    t.done()
    p, _ = session([(None, OK), (None, OK)])
    assert p.read_chuid() is None
    p, _ = session([(None, OK), (None, OK)])
    assert p.read_slot_names() == {}
    p, _ = session([(None, OK), (None, OK)])
    assert p.get_object(0x7E) is None


def test_one_empty_answer_never_makes_a_certificate_look_absent() -> None:
    """The full fault campaign lost a certificate: one emptied answer to the read before a load made
    the slot look empty, so nothing was archived and the certificate was overwritten. One empty
    answer is now read again; the certificate that comes the second time is the one archived."""
    get_9a = h("00 CB 3F FF 05 5C 03 5F C1 05 00")
    cert = h("30 03 02 01 01")
    p, t = session([(get_9a, OK), (get_9a, h("53 0A 70 05") + cert + h("71 01 00") + OK)])
    assert p.get_object(0x5FC105) == h("70 05") + cert + h("71 01 00")
    t.done()


def test_discovery_object_uses_tag_7e() -> None:
    p, _ = session([(h("00 CB 3F FF 03 5C 01 7E 00"), h("7E 02 4F 00") + OK)])
    assert p.get_object(0x7E) == h("4F 00")


def test_write_certificate_exact_bytes() -> None:
    cert = h("30 03 02 01 01")
    # yubikit put_certificate / OpenSC piv_write_certificate: 53 { 70 cert, 71 01 00, FE 00 }
    p, t = session([(h("00 DB 3F FF 13 5C 03 5F C1 0A 53 0C 70 05") + cert + h("71 01 00 FE 00"), OK)])
    p.write_certificate(0x9C, cert)
    t.done()


def test_write_compressed_certificate_reads_back() -> None:
    cert = b"\x30\x82\x01\x00" + bytes(256)
    sent: list[bytes] = []

    def store(apdu: bytes) -> bytes:
        sent.append(apdu)
        return OK

    p, _ = session([(None, store)])
    p.write_certificate(0x9A, cert, compress=True)
    body = sent[0][5 + 5 :]  # header+Lc, then 5C 03 id
    p, _ = session([(None, body + OK)])
    assert p.read_certificate(0x9A) == cert


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (h("53 0C 70 05 30 03 02 01 01 71 01 00 FE 00"), h("30 03 02 01 01")),
        (h("53 0A 70 05 30 03 02 01 01 71 01 00"), h("30 03 02 01 01")),  # no FE: lenient
        (h("53 07 70 05 30 03 02 01 01"), h("30 03 02 01 01")),  # no 71: not compressed
        (h("53 00"), None),  # deleted
        (h("53 07 70 00 71 01 00 FE 00"), None),  # empty 70
    ],
)
def test_read_certificate_variants(body: bytes, expected: bytes | None) -> None:
    p, _ = session([(h("00 CB 3F FF 05 5C 03 5F C1 05 00"), body + OK)])
    assert p.read_certificate(0x9A) == expected


def test_read_gzip_certificate_written_by_ykman() -> None:
    cert = bytes(300)
    z = gzip.compress(cert)
    inner = h("70") + bytes([0x81, len(z)]) + z + h("71 01 01 FE 00")
    p, _ = session([(None, h("53 81") + bytes([len(inner)]) + inner + OK)])
    assert p.read_certificate(0x9A) == cert


@pytest.mark.parametrize(
    "body",
    [
        h("53 05 71 01 00 FE 00"),  # no 70
        h("53 08 70 05 30 03 02 01"),  # truncated
        h("53 0A 70 03 01 02 03 71 01 01 FE 00"),  # marked gzip, is not
        h("54 02 70 00"),  # wrong outer tag
    ],
)
def test_read_certificate_malformed(body: bytes) -> None:
    p, _ = session([(None, body + OK)])
    with pytest.raises(CardProtocolError):
        p.read_certificate(0x9A)


def test_delete_certificate() -> None:
    p, t = session([(h("00 DB 3F FF 07 5C 03 5F C1 0B 53 00"), OK)])
    p.delete_certificate(0x9D)
    t.done()


# --- test signature -------------------------------------------------------------------------------


def _card_signing_with(key: object, tag: int = 0x81) -> Callable[[bytes], bytes]:
    """A card that signs what it receives in 7C {82 00, 81 data} with ``key``."""

    def respond(apdu: bytes) -> bytes:
        body = apdu[5:-1]
        assert body[:4] == bytes([0x7C, body[1], 0x82, 0x00]) or body[0] == 0x7C
        data = s.tlv.parse_dict(s.tlv.unwrap(body, 0x7C))[tag]
        if isinstance(key, rsa.RSAPrivateKey):
            n = key.private_numbers().public_numbers.n
            sig = pow(int.from_bytes(data, "big"), key.private_numbers().d, n).to_bytes(128, "big")
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

            sig = key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256())))
        else:
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            sig = key.sign(data)
        out = s.tlv.encode(0x7C, s.tlv.encode(0x82, sig))
        return out + OK

    return respond


def _self_signed(key: object) -> object:
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo)  # type: ignore[arg-type]


def test_test_signature_ec() -> None:
    key = ec.derive_private_key(99, ec.SECP256R1())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(h("A5") * 32)
    expected_prefix = h("00 87 11 9C 26 7C 24 82 00 81 20") + digest.finalize()
    p, t = session([(None, _card_signing_with(key))])
    p.test_signature(0x9C, _self_signed(key))  # type: ignore[arg-type]
    assert t.sent[0] == expected_prefix + h("00")


def test_test_signature_rsa_block() -> None:
    key = rsa.generate_private_key(65537, 1024)
    p, t = session([(None, _card_signing_with(key))])
    p.test_signature(0x9A, _self_signed(key))  # type: ignore[arg-type]
    apdu = t.sent[0]
    block = s.tlv.parse_dict(s.tlv.unwrap(apdu[5:-1], 0x7C))[0x81]
    assert len(block) == 128 and block[:2] == h("00 01") and block[2:10] == h("FF") * 8
    assert apdu[:4] == h("00 87 06 9A")
    # the block is the PKCS#1 v1.5 encoding cryptography itself would verify
    key.public_key().verify(
        pow(int.from_bytes(block, "big"), key.private_numbers().d, key.public_key().public_numbers().n).to_bytes(128, "big"),
        h("A5") * 32,
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_test_signature_ed25519() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    p, t = session([(None, _card_signing_with(key))])
    p.test_signature(0x9A, _self_signed(key))  # type: ignore[arg-type]
    assert t.sent[0][:4] == h("00 87 E0 9A")


def test_test_signature_mismatch() -> None:
    key = ec.derive_private_key(99, ec.SECP256R1())
    other = ec.derive_private_key(100, ec.SECP256R1())
    p, _ = session([(None, _card_signing_with(other))])
    with pytest.raises(KeyMismatchError):
        p.test_signature(0x9C, _self_signed(key))  # type: ignore[arg-type]


def test_test_signature_pin_always_refusal_is_a_status_error() -> None:
    key = ec.derive_private_key(99, ec.SECP256R1())
    p, _ = session([(None, h("69 82"))])
    with pytest.raises(CardStatusError) as info:
        p.test_signature(0x9C, _self_signed(key))  # type: ignore[arg-type]
    assert info.value.sw == 0x6982


def test_sign_malformed_answer() -> None:
    p, _ = session([(None, h("7C 02 81 00") + OK)])
    with pytest.raises(CardProtocolError):
        p.sign_test(0x9A, 0x11, bytes(32))


# --- slot names -----------------------------------------------------------------------------------


def test_slot_name_object_is_not_a_peer_object() -> None:
    # yubikit: 5FFF00 PIVMAN, 5FFF01 attestation; yubico-piv-tool: + 5FFF10..15 (MS minidriver)
    assert s.SLOT_NAMES_OBJECT_ID not in {0x5FFF00, 0x5FFF01, *range(0x5FFF10, 0x5FFF20)}


def test_write_then_read_slot_names() -> None:
    stored = h("01 01 01 A0 0C 80 01 9A 81 07") + b"e-Cert1"
    new = h("01 01 01 A0 0C 80 01 9A 81 07") + b"e-Cert1" + h("A0 12 80 01 9C 81 0D") + b"e-Cert2006072"
    p, t = session(
        [
            (h("00 CB 3F FF 05 5C 03 5F FF 50 00"), h("53") + bytes([len(stored)]) + stored + OK),
            (h("00 DB 3F FF") + bytes([5 + 2 + len(new)]) + h("5C 03 5F FF 50 53") + bytes([len(new)]) + new, OK),
        ]
    )
    assert p.write_slot_name(0x9C, "e-Cert2006072") == SlotNameResult(stored=True)
    t.done()
    p, _ = session([(None, h("53") + bytes([len(new)]) + new + OK)])
    assert p.read_slot_names() == {0x9A: "e-Cert1", 0x9C: "e-Cert2006072"}


def test_slot_names_absent_and_refused() -> None:
    p, _ = session([(None, h("6A 82"))])
    assert p.read_slot_names() == {}
    p, _ = session([(None, h("6A 86"))])
    assert p.read_slot_names() is None
    p, _ = session([(None, h("6A 81"))])
    result = p.write_slot_name(0x9A, "x")
    assert result == SlotNameResult(stored=False, sw=0x6A81) and "vendor" in result.reason
    p, _ = session([(None, h("6A 82")), (None, h("6A 86"))])
    assert p.write_slot_name(0x9A, "x").stored is False


def test_slot_name_removal_deletes_the_object() -> None:
    stored = h("01 01 01 A0 06 80 01 9A 81 01") + b"x"
    p, t = session([(None, h("53 0B") + stored + OK), (h("00 DB 3F FF 07 5C 03 5F FF 50 53 00"), OK)])
    assert p.write_slot_name(0x9A, None).stored
    t.done()


@pytest.mark.parametrize(
    "body",
    [h("A0 06 80 01 9A 81 01 78"), h("01 01 02"), h("01 01 01 A0 03 80 01 9A"), h("01 01 01 A0 06 80 01 9A 81 01 FF")],
)
def test_slot_names_malformed(body: bytes) -> None:
    p, _ = session([(None, h("53") + bytes([len(body)]) + body + OK)])
    with pytest.raises(CardProtocolError):
        p.read_slot_names()


def test_slot_name_write_needs_auth_is_not_swallowed() -> None:
    p, _ = session([(None, h("6A 82")), (None, h("69 82"))])
    with pytest.raises(CardStatusError):
        p.write_slot_name(0x9A, "x")
