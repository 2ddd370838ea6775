"""``read_card_info`` against the simulated card: what a load leaves is what card info shows,
nothing is written, and whatever a card answers ends up as text, not as a crash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provision.card.apdu import ApduChannel
from provision.cardinfo import CardInfo, read_card_info
from provision.errors import CardRemovedError
from provision.fixtures import Issuer, generate_key, make_ca, make_leaf
from provision.piv.session import PivSession
from provision.secrets import Secret
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport

PIN = Secret("123456")
DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
SLOT_NAME = "e-Cert20060729"

Answer = Callable[[bytes], bytes | None]


class TamperingTransport(SimTransport):
    """The simulated card, except that ``answer`` may replace the card's response to an APDU.

    Models what real cards do that ours does not: commands they lack, malformed answers.
    """

    def __init__(self, card: SimCard, answer: Answer | None = None) -> None:
        super().__init__(card)
        self.answer = answer
        self.sent: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(bytes(apdu))
        replaced = self.answer(apdu) if self.answer is not None else None
        if replaced is not None:
            self.apdu_count += 1
            return replaced
        return super().transmit(apdu)


def open_card(
    options: SimOptions | None = None, answer: Answer | None = None
) -> tuple[SimCard, TamperingTransport, PivSession]:
    card = SimCard(options or SimOptions())
    transport = TamperingTransport(card, answer)
    session = PivSession(ApduChannel(transport))
    session.select()
    return card, transport, session


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def get_data_for(object_id: int) -> Callable[[bytes], bool]:
    tag = object_id.to_bytes(3, "big")
    return lambda apdu: apdu[1] == 0xCB and tag in apdu


@pytest.fixture(scope="session")
def ca() -> Issuer:
    return make_ca("Provision Card Info CA")


@pytest.fixture(scope="session")
def rsa2048() -> rsa.RSAPrivateKey:
    key = generate_key("rsa2048")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="session")
def leaf(ca: Issuer, rsa2048: rsa.RSAPrivateKey) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    _, cert = make_leaf(ca, "CHAN Tai Man", key=rsa2048)
    return rsa2048, cert


def load(
    session: PivSession,
    slot: int,
    key: object,
    cert: x509.Certificate,
    *,
    compress: bool = False,
    name: str | None = SLOT_NAME,
) -> None:
    """What a batch does to one slot, through our own session."""
    session.verify_pin(PIN)
    session.authenticate(DEFAULT_KEY)
    session.import_key(slot, key)  # type: ignore[arg-type]
    session.write_certificate(slot, der(cert), compress=compress)
    if name is not None:
        session.write_slot_name(slot, name)
    session.select()  # a new conversation: the PIN and management key are forgotten


def read(card: SimCard, session: PivSession) -> CardInfo:
    writes, attempts, tries = card.write_apdu_count, card.write_attempt_count, card.state.pin_tries_left
    info = read_card_info(session)
    assert (card.write_apdu_count, card.write_attempt_count) == (writes, attempts), "card info wrote"
    assert card.state.pin_tries_left == tries, "card info spent a PIN try"
    json.dumps(info.to_json())  # always serialisable
    assert info.info_lines()
    return info


# --- what a load leaves ---------------------------------------------------------------------------


def test_fresh_card() -> None:
    card, _, session = open_card(SimOptions(serial=4242))
    info = read(card, session)
    assert info.serial == 4242
    assert info.version == (5, 7, 1)
    assert info.chuid_guid == card.options.guid.hex()
    assert (info.pin_verified, info.pin_tries_left, info.pin_tries_total, info.pin_is_default) == (
        False,
        3,
        3,
        True,
    )
    assert (info.puk_tries_left, info.puk_tries_total, info.puk_is_default) == (3, 3, True)
    assert (info.management_key_type, info.management_key_is_default) == ("aes192", True)
    assert info.metadata_supported
    assert info.slot_names == "none"
    assert [s.slot.hex for s in info.slots] == [
        "9a",
        "9c",
        "9d",
        "9e",
        *(f"{r:02x}" for r in range(0x82, 0x96)),
    ]
    assert not any(s.occupied for s in info.slots)
    assert all(s.supported for s in info.slots)
    assert info.errors == ()
    assert card.write_apdu_count == 0


def test_a_loaded_card_shows_exactly_what_was_loaded(
    leaf: tuple[rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    key, cert = leaf
    card, _, session = open_card()
    load(session, 0x9C, key, cert)
    info = read(card, session)

    occupied = [s for s in info.slots if s.occupied]
    assert [s.key_ref for s in occupied] == [0x9C]
    slot = info.slot(0x9C)
    assert slot.certificate is not None
    assert slot.certificate.sha256 == hashlib.sha256(der(cert)).hexdigest()
    assert slot.certificate.subject_cn == "CHAN Tai Man"
    assert slot.compressed is False
    assert slot.key is not None
    assert (slot.key.algorithm, slot.key.origin, slot.key.pin_policy, slot.key.touch_policy) == (
        "RSA2048",
        "imported",
        "always",
        "never",
    )
    assert slot.key_matches_certificate is True
    assert slot.slot_name == SLOT_NAME
    assert slot.error is None
    assert info.slot_names == "stored"
    assert info.errors == ()

    document = info.to_json()
    slots = document["slots"]
    assert isinstance(slots, list)
    entry = next(s for s in slots if s["slot"] == "9c")
    assert entry["slot_name"] == SLOT_NAME
    assert entry["certificate"]["sha256"] == slot.certificate.sha256
    assert entry["key"] == {
        "algorithm": "RSA2048",
        "pin_policy": "always",
        "touch_policy": "never",
        "origin": "imported",
    }

    text = "\n".join(info.info_lines())
    assert f'Slot 9C (Digital Signature): "{SLOT_NAME}"' in text
    assert slot.certificate.sha256 in text
    assert "Empty slots:     9A 9D 9E 82" in text


def test_card_info_in_chinese_keeps_its_values_in_one_column(
    leaf: tuple[rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    """--lang zh_Hant: every label and value sentence of `card info` from the catalog, the values in
    the same terminal column as in English (the labels are double-width), the JSON unchanged."""
    from provision import i18n
    from provision.display import cell_width

    key, cert = leaf
    card, _, session = open_card()
    load(session, 0x9C, key, cert)
    info = read(card, session)
    english = info.info_lines()
    i18n.set_language(i18n.CHINESE)
    try:
        chinese = info.info_lines()
        document = info.to_json()
    finally:
        i18n.set_language(i18n.ENGLISH)
    assert document == info.to_json()  # machine output stays neutral
    text = "\n".join(chinese)
    for word in ("序號：", "韌體：", "PIN 碼：", "尚餘嘗試次數 3 次", "槽位名稱：", "在卡上（物件 5FFF50）",
                 f"槽位 9C（數碼簽署）：「{SLOT_NAME}」", "證書：", "簽發者：", "有效期：", "密碼匙：", "空槽位："):  # fmt: skip
        assert word in text, (word, text)
    for english_word in ("Serial", "Firmware", "tries left", "Slot names", "Certificate", "Empty slots"):
        assert english_word not in text, (english_word, text)
    assert len(chinese) == len(english)

    def value_column(line: str, label_end: str) -> int:
        return cell_width(line[: line.index(label_end) + 1]) + (len(line[line.index(label_end) + 1 :]) -
                                                               len(line[line.index(label_end) + 1 :].lstrip()))  # fmt: skip

    top = [line for line in chinese if not line.startswith(("槽位 ", "  "))]
    assert {value_column(line, "：") for line in top} == {17}, top
    inner = [line for line in chinese if line.startswith("  ") and "：" in line]
    assert inner and {value_column(line, "：") for line in inner} == {17}, inner


def test_gzip_certificate_written_by_the_session_is_reported(ca: Issuer) -> None:
    card, _, session = open_card()
    key, cert = make_leaf(ca, "Gzip Holder", key_type="p384", seed=b"gzip")
    load(session, 0x9A, key, cert, compress=True, name=None)
    other_key, other = make_leaf(ca, "Plain Holder", key_type="p256", seed=b"plain")
    load(session, 0x82, other_key, other, name="plain one")
    info = read(card, session)
    gz, plain = info.slot(0x9A), info.slot(0x82)
    assert gz.compressed is True and plain.compressed is False
    assert gz.certificate is not None and gz.certificate.sha256 == hashlib.sha256(der(cert)).hexdigest()
    assert gz.slot_name is None and plain.slot_name == "plain one"
    assert gz.key is not None and gz.key.algorithm == "ECCP384" and gz.key.pin_policy == "once"
    assert gz.key_matches_certificate and plain.key_matches_certificate
    assert "gzip-compressed" in "\n".join(info.info_lines())
    assert info.to_json()["slots"][0]["compressed"] is True  # type: ignore[index]


def test_a_key_that_does_not_match_its_certificate_is_flagged(ca: Issuer) -> None:
    card, _, session = open_card()
    key, _ = make_leaf(ca, "Key Holder", seed=b"k1")
    _, cert = make_leaf(ca, "Other Holder", seed=b"k2")
    load(session, 0x9D, key, cert, name=None)
    info = read(card, session)
    assert info.slot(0x9D).key_matches_certificate is False
    assert "does not match" in "\n".join(info.info_lines())


def test_a_certificate_without_a_key_and_a_key_without_a_certificate(ca: Issuer) -> None:
    card, _, session = open_card()
    key, cert = make_leaf(ca, "Half", seed=b"half")
    session.authenticate(DEFAULT_KEY)
    session.write_certificate(0x9E, der(cert))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    session.import_key(0x9D, key)
    session.select()
    info = read(card, session)
    assert info.slot(0x9E).certificate is not None and info.slot(0x9E).key is None
    assert info.slot(0x9D).certificate is None and info.slot(0x9D).key is not None
    assert info.slot(0x9E).key_matches_certificate is None


def test_pin_already_verified_and_pin_used() -> None:
    card, _, session = open_card()
    with pytest.raises(Exception, match="wrong PIN"):
        session.verify_pin(Secret("999999"))
    info = read(card, session)
    assert (info.pin_verified, info.pin_tries_left, info.pin_tries_total) == (False, 2, 3)
    session.verify_pin(PIN)
    info = read(card, session)
    assert info.pin_verified and info.pin_tries_left is None
    assert "verified in this session" in "\n".join(info.info_lines())


# --- other cards ---------------------------------------------------------------------------------


def test_pivapplet_profile(ca: Issuer) -> None:
    card, transport, session = open_card(SimOptions(profile="pivapplet", serial=0xF000_0001))
    key, cert = make_leaf(ca, "Applet Holder", seed=b"applet")
    load(session, 0x8C, key, cert)  # the slot name is refused: the load goes on without it
    sent_before = len(transport.sent)
    info = read(card, session)

    assert info.serial == 0xF000_0001  # unsigned
    assert info.pin_tries_left == 5 and info.puk_tries_left == 5
    assert info.slot_names in ("none", "refused")  # this card answers 6A82 to GET DATA 5FFF50
    assert "not on the card" in "\n".join(info.info_lines())
    assert info.slot(0x8C).certificate is not None and info.slot(0x8C).slot_name is None
    assert [s.key_ref for s in info.slots if not s.supported] == list(range(0x8D, 0x96))
    assert "Not on this card: 8D 8E 8F 90 91 92 93 94 95" in info.info_lines()
    assert info.errors == () and all(s.error is None for s in info.slots)
    # Stopped at the first refused retired slot: nothing at all was sent for 8E-95.
    asked = transport.sent[sent_before:]
    for ref in range(0x8E, 0x96):
        assert not any(a[1] == 0xF7 and a[3] == ref for a in asked)
        assert not any(a[1] == 0xCB and (0x5FC10C + ref - 0x81).to_bytes(3, "big") in a for a in asked)


def test_firmware_527_has_no_metadata(leaf: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    key, cert = leaf
    card, _, session = open_card(SimOptions(firmware=(5, 2, 7)))
    load(session, 0x9A, key, cert, compress=True)
    info = read(card, session)
    assert info.version == (5, 2, 7)
    assert not info.metadata_supported
    assert info.management_key_type is None and info.puk_tries_left is None
    assert info.pin_tries_left == 3 and info.pin_tries_total is None
    slot = info.slot(0x9A)
    assert slot.certificate is not None and slot.compressed is True and slot.slot_name == SLOT_NAME
    assert slot.key is None and slot.key_matches_certificate is None
    assert all(s.supported for s in info.slots)
    assert info.errors == ()
    assert any("no GET METADATA" in line for line in info.info_lines())


# --- whatever a card answers ------------------------------------------------------------------------


def sw(value: int) -> bytes:
    return value.to_bytes(2, "big")


def test_a_card_without_yubico_commands() -> None:
    missing = {0xF7, 0xF8, 0xFD}
    card, _, session = open_card(answer=lambda apdu: sw(0x6D00) if apdu[1] in missing else None)
    info = read(card, session)
    assert info.serial is None and info.version is None
    assert not info.metadata_supported
    assert info.errors == ()
    assert "not available (no GET SERIAL)" in info.info_lines()[0]


def test_garbage_in_one_slot_is_recorded_for_that_slot(
    leaf: tuple[rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    key, cert = leaf
    is_9c = get_data_for(0x5FC10A)
    card, transport, session = open_card()
    load(session, 0x9A, key, cert)
    transport.answer = lambda apdu: bytes.fromhex("53 08 70 10 01 02") + sw(0x9000) if is_9c(apdu) else None
    info = read(card, session)
    assert info.slot(0x9C).error is not None and "certificate" in info.slot(0x9C).error  # type: ignore[operator]
    assert info.slot(0x9A).certificate is not None and info.slot(0x9A).error is None
    assert info.errors == ()
    assert any("Could not read" in line for line in info.info_lines())


def test_an_object_that_is_not_a_certificate() -> None:
    is_9d = get_data_for(0x5FC10B)
    card, _, session = open_card(
        answer=lambda apdu: (
            bytes.fromhex("53 0A 70 03 30 01 00 71 01 00 FE 00") + sw(0x9000) if is_9d(apdu) else None
        )
    )
    info = read(card, session)
    error = info.slot(0x9D).error
    assert error is not None and "no valid X.509 certificate" in error
    assert info.slot(0x9D).certificate is None


def test_garbage_metadata_and_chuid_and_slot_names() -> None:
    def answer(apdu: bytes) -> bytes | None:
        if apdu[1] == 0xF7 and apdu[3] == 0x9A:
            return bytes.fromhex("01 05 11") + sw(0x9000)  # truncated TLV
        if get_data_for(0x5FC102)(apdu):
            return bytes.fromhex("53 04 34 02 AB CD") + sw(0x9000)  # GUID of 2 bytes
        if get_data_for(0x5FFF50)(apdu):
            return bytes.fromhex("53 03 01 01 07") + sw(0x9000)  # a format we do not read
        return None

    card, _, session = open_card(answer=answer)
    info = read(card, session)
    assert info.slot(0x9A).error is not None and "metadata" in info.slot(0x9A).error  # type: ignore[operator]
    assert info.chuid_guid is None
    assert info.slot_names == "unreadable"
    assert any(e.startswith("CHUID") for e in info.errors)
    assert any("5FFF50" in e for e in info.errors)
    assert info.slot(0x9C).error is None


def test_pin_status_refused() -> None:
    card, _, session = open_card(answer=lambda apdu: sw(0x6A88) if apdu[1] == 0x20 else None)
    info = read(card, session)
    assert info.pin_tries_left is None and not info.pin_verified
    assert any(e.startswith("PIN status") for e in info.errors)


def test_a_card_that_fails_every_command_is_described_not_crashed() -> None:
    card, _, session = open_card()
    card.options = dataclasses.replace(card.options, fail_after=card.apdu_count)
    info = read_card_info(session)
    assert info.errors and all(s.error is not None for s in info.slots)
    json.dumps(info.to_json())


def test_a_card_pulled_while_reading_ends_the_reading() -> None:
    card, _, session = open_card()
    card.options = dataclasses.replace(card.options, vanish_after=card.apdu_count + 10)
    with pytest.raises(CardRemovedError):
        read_card_info(session)


@pytest.mark.parametrize("transport_extended", [True, False])
def test_short_apdu_reader_reads_the_same(
    leaf: tuple[rsa.RSAPrivateKey, x509.Certificate], transport_extended: bool
) -> None:
    key, cert = leaf

    class Short(TamperingTransport):
        @property
        def supports_extended(self) -> bool:
            return transport_extended

    card = SimCard()
    session = PivSession(ApduChannel(Short(card)))
    session.select()
    load(session, 0x9C, key, cert)
    info = read(card, session)
    assert info.slot(0x9C).certificate is not None
    assert info.slot(0x9C).key_matches_certificate is True


def test_a_standard_slot_without_metadata_still_shows_its_certificate(
    leaf: tuple[rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    key, cert = leaf
    card, transport, session = open_card()
    load(session, 0x9A, key, cert)
    transport.answer = lambda apdu: sw(0x6A86) if apdu[1] == 0xF7 and apdu[3] == 0x9A else None
    info = read(card, session)
    slot = info.slot(0x9A)
    assert slot.supported and slot.certificate is not None and slot.key is None
    assert slot.error is not None and "6A86" in slot.error
    assert all(s.supported for s in info.slots)
