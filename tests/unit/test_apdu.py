"""APDU codec and channel: exact bytes, chaining, GET RESPONSE, 6Cxx, status words, redaction."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from provision.card.apdu import ApduChannel, TraceRecord, describe_sw, encode_apdu, split_response
from provision.errors import CardProtocolError, CardStatusError
from tests.helpers.scripted_transport import ScriptedTransport, h

AID5 = h("A0 00 00 03 08")
AID11 = h("A0 00 00 03 08 00 00 10 00 01 00")
CERT_OBJ_HEAD = h("5C 03 5F C1 05 53 0A 70 03 30 01 00 71 01 00 FE 00")

# (cla, ins, p1, p2, data, le, extended) → bytes, with where the vector comes from.
ENCODE_TABLE = [
    # yubikit SmartCardProtocol.select → ShortApduFormatter: data, no Le.
    ((0x00, 0xA4, 0x04, 0x00, AID5, None, False), h("00 A4 04 00 05 A0 00 00 03 08")),
    # yubico-piv-tool _ykpiv_transfer_data under T=1 appends Le=00 after the data.
    ((0x00, 0xA4, 0x04, 0x00, AID5, 0, False), h("00 A4 04 00 05 A0 00 00 03 08 00")),
    # SP 800-73-4 part 2 3.1.1 SELECT with the full PIV AID, Le=00 (what PivSession.select sends).
    ((0x00, 0xA4, 0x04, 0x00, AID11, 0, False), h("00 A4 04 00 0B A0 00 00 03 08 00 00 10 00 01 00 00")),
    # SP 800-73-4 part 2 3.2.1 VERIFY status query: case 1, no Lc, no Le.
    ((0x00, 0x20, 0x00, 0x80, b"", None, False), h("00 20 00 80")),
    # yubikit get_pin_attempts: send_apdu(0, 0x20, 0, 0x80) → short formatter adds "00".
    ((0x00, 0x20, 0x00, 0x80, b"", 0, False), h("00 20 00 80 00")),
    # yubikit verify_pin("123456"): PIN padded with FF to 8, no Le.
    (
        (0x00, 0x20, 0x00, 0x80, h("31 32 33 34 35 36 FF FF"), None, False),
        h("00 20 00 80 08 31 32 33 34 35 36 FF FF"),
    ),
    # yubico-piv-tool _ykpiv_authenticate2 step 1 (3DES): 7C 02 80 00.
    ((0x00, 0x87, 0x03, 0x9B, h("7C 02 80 00"), None, False), h("00 87 03 9B 04 7C 02 80 00")),
    # yubico-piv-tool ykpiv_get_serial (YK5): templ 00 F8 00 00 + Le 00.
    ((0x00, 0xF8, 0x00, 0x00, b"", 0, False), h("00 F8 00 00 00")),
    # GET DATA for 9A's certificate (PIV.md table; yubikit get_object).
    ((0x00, 0xCB, 0x3F, 0xFF, h("5C 03 5F C1 05"), 0, False), h("00 CB 3F FF 05 5C 03 5F C1 05 00")),
    # PUT DATA of a certificate object (yubikit put_certificate: 70 cert 71 01 00 FE 00 in 53).
    ((0x00, 0xDB, 0x3F, 0xFF, CERT_OBJ_HEAD, None, False), h("00 DB 3F FF 11") + CERT_OBJ_HEAD),
    # Chained block: CLA 10 (ISO 7816-4 5.3.3, yubikit CommandChainingProcessor).
    ((0x10, 0xDB, 0x3F, 0xFF, b"\x01" * 255, None, False), h("10 DB 3F FF FF") + b"\x01" * 255),
    # Le 256 is encoded as 00.
    ((0x00, 0xC0, 0x00, 0x00, b"", 256, False), h("00 C0 00 00 00")),
    # yubikit ExtendedApduFormatter: Lc 00 HH LL, Le HH LL after data.
    ((0x00, 0xDB, 0x3F, 0xFF, b"\x02" * 300, None, True), h("00 DB 3F FF 00 01 2C") + b"\x02" * 300),
    ((0x00, 0xCB, 0x3F, 0xFF, h("5C 01 7E"), 0, True), h("00 CB 3F FF 00 00 03 5C 01 7E 00 00")),
    # Extended case 2: Le 00 HH LL.
    ((0x00, 0xCB, 0x3F, 0xFF, b"", 0x1234, True), h("00 CB 3F FF 00 12 34")),
    ((0x00, 0xCB, 0x3F, 0xFF, b"", 65536, True), h("00 CB 3F FF 00 00 00")),
]


@pytest.mark.parametrize(("args", "expected"), ENCODE_TABLE)
def test_encode_apdu(args: tuple[int, int, int, int, bytes, int | None, bool], expected: bytes) -> None:
    assert encode_apdu(*args) == expected


@pytest.mark.parametrize(
    "args",
    [
        (0x00, 0xDB, 0x3F, 0xFF, b"\x00" * 256, None, False),
        (0x00, 0xCB, 0x3F, 0xFF, b"", 257, False),
        (0x00, 0xCB, 0x3F, 0xFF, b"", -1, False),
        (0x100, 0xCB, 0x3F, 0xFF, b"", None, False),
        (0x00, 0xCB, 0x3F, 0xFF, b"\x00" * 65536, None, True),
    ],
)
def test_encode_apdu_rejects(args: tuple[int, int, int, int, bytes, int | None, bool]) -> None:
    with pytest.raises(ValueError):
        encode_apdu(*args)


def test_split_response() -> None:
    assert split_response(h("01 02 90 00")) == (h("01 02"), 0x9000)
    with pytest.raises(CardProtocolError):
        split_response(h("90"))


def test_send_returns_data_on_9000() -> None:
    t = ScriptedTransport([(h("00 FD 00 00 00"), h("05 07 01 90 00"))])
    assert ApduChannel(t).send(0xFD, 0, 0, le=0) == h("05 07 01")
    t.done()


def test_send_raises_status_error_with_sw() -> None:
    t = ScriptedTransport([(h("00 CB 3F FF 05 5C 03 5F C1 05 00"), h("6A 82"))])
    with pytest.raises(CardStatusError) as info:
        ApduChannel(t).send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 05"), le=0)
    assert info.value.sw == 0x6A82
    assert "6A82" in str(info.value) and "GET DATA" in str(info.value)


def test_send_raw_sw_does_not_raise() -> None:
    t = ScriptedTransport([(h("00 20 00 80"), h("63 C3"))])
    assert ApduChannel(t).send_raw_sw(0x20, 0, 0x80) == (b"", 0x63C3)


def test_a_card_that_refuses_a_chain_says_so_in_words() -> None:
    """ISO 7816-4 table 6: 6883 "last command of the chain expected", 6884 "command chaining not
    supported": a card without chaining (and without extended length) cannot take a certificate;
    the operator must read that, not "unexpected status"."""
    t = ScriptedTransport([(None, h("68 84"))])
    with pytest.raises(CardStatusError, match="command chaining not supported") as info:
        ApduChannel(t).send(0xDB, 0x3F, 0xFF, bytes(300))
    assert info.value.sw == 0x6884
    assert "chain" in describe_sw(0x6883)


def test_command_chaining_without_extended() -> None:
    data = bytes(range(256)) * 2 + bytes(88)  # 600 bytes → 255 + 255 + 90
    t = ScriptedTransport(
        [
            (h("10 DB 3F FF FF") + data[:255], h("90 00")),
            (h("10 DB 3F FF FF") + data[255:510], h("90 00")),
            (h("00 DB 3F FF 5A") + data[510:], h("90 00")),
        ]
    )
    assert ApduChannel(t).send(0xDB, 0x3F, 0xFF, data) == b""
    t.done()


def test_chaining_stops_when_the_card_refuses_a_block() -> None:
    data = bytes(300)
    t = ScriptedTransport([(h("10 DB 3F FF FF") + data[:255], h("6A 84"))])
    with pytest.raises(CardStatusError) as info:
        ApduChannel(t).send(0xDB, 0x3F, 0xFF, data)
    assert info.value.sw == 0x6A84
    t.done()


def test_exactly_255_bytes_is_not_chained() -> None:
    data = bytes(255)
    t = ScriptedTransport([(h("00 DB 3F FF FF") + data, h("90 00"))])
    ApduChannel(t).send(0xDB, 0x3F, 0xFF, data)
    t.done()


def test_extended_lc_when_supported() -> None:
    data = bytes(600)
    t = ScriptedTransport([(h("00 DB 3F FF 00 02 58") + data, h("90 00"))], extended=True)
    ApduChannel(t).send(0xDB, 0x3F, 0xFF, data)
    t.done()


def test_extended_le_for_whole_object_reads() -> None:
    body = bytes(1000)
    t = ScriptedTransport(
        [(h("00 CB 3F FF 00 00 05 5C 03 5F C1 05 00 00"), body + h("90 00"))], extended=True
    )
    assert ApduChannel(t).send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 05"), le=0) == body
    t.done()


def test_small_commands_stay_short_on_an_extended_card() -> None:
    """SELECT, GET VERSION/SERIAL and management-key authentication stay short APDUs (le=0 → Le 00)."""
    aid = h("A0 00 00 03 08 00 00 10 00 01 00")
    t = ScriptedTransport(
        [
            (h("00 A4 04 00 0B") + aid + h("00"), h("61 11 4F 06 00 00 10 00 01 00 90 00")),
            (h("00 FD 00 00 00"), h("05 04 03 90 00")),
            (h("00 87 03 9B 04 7C 02 80 00 00"), h("7C 0A 80 08") + bytes(8) + h("90 00")),
        ],
        extended=True,
    )
    channel = ApduChannel(t)
    channel.send(0xA4, 0x04, 0x00, aid, le=0)
    channel.send(0xFD, 0, 0, le=0)
    channel.send(0x87, 0x03, 0x9B, h("7C 02 80 00"), le=0)
    t.done()


def test_long_answers_are_asked_for_extended() -> None:
    """GET METADATA and a key slot's GENERAL AUTHENTICATE may answer > 256 bytes (RSA-2048)."""
    t = ScriptedTransport(
        [
            (h("00 F7 00 9C 00 00 00"), bytes(300) + h("90 00")),
            (h("00 87 07 9C 00 00 04 7C 02 82 00 00 00"), bytes(270) + h("90 00")),
        ],
        extended=True,
    )
    channel = ApduChannel(t)
    assert len(channel.send(0xF7, 0x00, 0x9C, le=0)) == 300
    assert len(channel.send(0x87, 0x07, 0x9C, h("7C 02 82 00"), le=0)) == 270
    t.done()


# --- T=0 (ISO/IEC 7816-3 12.2: how an APDU maps to a T=0 command) ----------------------------------
# What the peers put on the wire under T=0: OpenSC (src/libopensc/apdu.c, sc_apdu2bytes: case 1 gets
# P3 = 00, case 4 short has no Le, no extended APDUs; sc_get_max_send_size: 255 under T=0) and
# yubico-piv-tool (lib/ykpiv.c, _ykpiv_transfer_data: "Add Le for T=1" only).


def test_t0_case_4_goes_without_le_and_the_answer_comes_by_get_response() -> None:
    t = ScriptedTransport(
        [
            (h("00 CB 3F FF 05 5C 03 5F C1 02"), h("61 05")),
            (h("00 C0 00 00 05"), h("53 03 34 01 00 90 00")),
        ],
        protocol="T=0",
    )
    assert ApduChannel(t).send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 02"), le=0) == h("53 03 34 01 00")
    t.done()


def test_t0_case_1_carries_p3_00_and_case_2_and_3_are_unchanged() -> None:
    t = ScriptedTransport(
        [
            (h("00 20 00 80 00"), h("63 C3")),
            (h("00 FD 00 00 00"), h("05 07 01 90 00")),
            (h("00 20 00 80 08 31 32 33 34 35 36 FF FF"), h("90 00")),
        ],
        protocol="T=0",
    )
    channel = ApduChannel(t)
    assert channel.send_raw_sw(0x20, 0, 0x80) == (b"", 0x63C3)
    assert channel.send(0xFD, 0, 0, le=0) == h("05 07 01")
    channel.send(0x20, 0, 0x80, h("31 32 33 34 35 36 FF FF"))
    t.done()


def test_t0_never_sends_extended_apdus_even_if_the_atr_offers_them() -> None:
    data = bytes(300)
    t = ScriptedTransport(
        [
            (h("10 DB 3F FF FF") + data[:255], h("90 00")),
            (h("00 DB 3F FF 2D") + data[255:], h("90 00")),
            (h("00 CB 3F FF 05 5C 03 5F C1 05"), h("61 00")),
            (h("00 C0 00 00 00"), bytes(256) + h("61 10")),
            (h("00 C0 00 00 10"), bytes(16) + h("90 00")),
        ],
        extended=True,
        protocol="T=0",
    )
    channel = ApduChannel(t)
    channel.send(0xDB, 0x3F, 0xFF, data)
    assert len(channel.send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 05"), le=0)) == 272
    t.done()


def test_get_response_loop() -> None:
    first, second, third = bytes([1]) * 256, bytes([2]) * 256, bytes([3]) * 16
    t = ScriptedTransport(
        [
            (h("00 CB 3F FF 05 5C 03 5F C1 05 00"), first + h("61 00")),
            (h("00 C0 00 00 00"), second + h("61 10")),
            (h("00 C0 00 00 10"), third + h("90 00")),
        ]
    )
    out = ApduChannel(t).send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 05"), le=0)
    assert out == first + second + third
    t.done()


def test_get_response_error_is_reported() -> None:
    t = ScriptedTransport(
        [(h("00 CB 3F FF 05 5C 03 5F C1 05 00"), bytes(256) + h("61 20")), (h("00 C0 00 00 20"), h("6F 00"))]
    )
    with pytest.raises(CardStatusError) as info:
        ApduChannel(t).send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 05"), le=0)
    assert info.value.sw == 0x6F00


def test_wrong_le_resends_with_the_cards_length() -> None:
    t = ScriptedTransport([(h("00 F8 00 00 00"), h("6C 04")), (h("00 F8 00 00 04"), h("00 BC 61 4E 90 00"))])
    assert ApduChannel(t).send(0xF8, 0, 0, le=0) == h("00 BC 61 4E")
    t.done()


def test_wrong_le_to_an_extended_command_is_resent_extended() -> None:
    """A long command sent extended and answered 6Cxx goes again whole, extended, with Le = xx (it
    used to be re-encoded short, which cannot hold its data: a ValueError, exit 70)."""
    data = h("7C 82 01 06 82 00 81 82 01 00") + bytes(256)
    t = ScriptedTransport(
        [
            (h("00 87 07 9C 00 01 0A") + data + h("00 00"), h("6C 80")),
            (h("00 87 07 9C 00 01 0A") + data + h("00 80"), bytes(128) + h("90 00")),
        ],
        extended=True,
    )
    assert ApduChannel(t).send(0x87, 0x07, 0x9C, data, le=0) == bytes(128)
    t.done()


def test_wrong_le_twice_is_a_protocol_error() -> None:
    t = ScriptedTransport([(None, h("6C 04")), (None, h("6C 05"))])
    with pytest.raises(CardProtocolError):
        ApduChannel(t).send(0xF8, 0, 0, le=0)


def test_response_without_status_is_a_protocol_error() -> None:
    t = ScriptedTransport([(None, h("90"))])
    with pytest.raises(CardProtocolError):
        ApduChannel(t).send(0xFD, 0, 0, le=0)


def _traced(script: list[tuple[bytes | None, bytes]], send: Callable[[ApduChannel], object]) -> list[TraceRecord]:
    records: list[TraceRecord] = []
    channel = ApduChannel(ScriptedTransport(list(script)), trace=records.append)
    send(channel)
    return records


def test_trace_redacts_verify_data() -> None:
    pin = h("31 32 33 34 35 36 FF FF")
    records = _traced([(None, h("63 C2"))], lambda c: c.send_raw_sw(0x20, 0, 0x80, pin))
    (rec,) = records
    assert rec.body is None and rec.body_length == 9 and rec.sw == 0x63C2
    assert "31 32" not in str(rec) and "redacted" in str(rec)


def test_trace_keeps_empty_verify() -> None:
    (rec,) = _traced([(None, h("63 C3"))], lambda c: c.send_raw_sw(0x20, 0, 0x80))
    assert rec.body == b"" and str(rec) == "> 00 20 00 80\n< 63C3"


def test_trace_redacts_management_key_auth_both_ways() -> None:
    records = _traced(
        [(None, h("7C 0A 80 08 11 22 33 44 55 66 77 88 90 00"))],
        lambda c: c.send(0x87, 0x03, 0x9B, h("7C 02 80 00")),
    )
    (rec,) = records
    assert rec.body is None and rec.response is None and rec.response_length == 12
    assert "11 22" not in str(rec)


def test_trace_keeps_signature_auth() -> None:
    (rec,) = _traced([(None, h("7C 04 82 02 AB CD 90 00"))], lambda c: c.send(0x87, 0x11, 0x9A, h("7C 02 82 00")))
    assert rec.body is not None and rec.response == h("7C 04 82 02 AB CD")


def test_trace_redacts_every_import_key_block() -> None:
    key = bytes([0x5A]) * 400
    records = _traced([(None, h("90 00")), (None, h("90 00"))], lambda c: c.send(0xFE, 0x07, 0x9A, key))
    assert [r.header for r in records] == [h("10 FE 07 9A"), h("00 FE 07 9A")]
    assert all(r.body is None for r in records)
    assert [r.body_length for r in records] == [256, 146]
    assert all("5A 5A" not in str(r) for r in records)


def test_trace_redacts_get_response_after_management_auth() -> None:
    records = _traced(
        [(None, h("7C 0A") + h("61 04")), (None, h("80 08 01 02 90 00"))],
        lambda c: c.send(0x87, 0x03, 0x9B, h("7C 02 80 00")),
    )
    assert [r.response for r in records] == [None, None]


def test_trace_shows_plain_get_data() -> None:
    (rec,) = _traced([(None, h("53 00 90 00"))], lambda c: c.send(0xCB, 0x3F, 0xFF, h("5C 03 5F C1 02"), le=0))
    assert str(rec) == "> 00 CB 3F FF 05 5C 03 5F C1 02 00\n< 53 00 9000"
