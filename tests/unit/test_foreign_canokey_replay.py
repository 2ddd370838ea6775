"""What a second PIV implementation written apart from ours answers, replayed: CanoKey.

``data/canokey-card-info.apdu`` is a real conversation (its header says how it was recorded) of
``provision card info`` with canokey-core's PIV applet. It shows what neither our simulator nor
PivApplet said: long answers to GET DATA and GET METADATA in 61xx pieces although the card's ATR
offers nothing else, PIN and PUK metadata with algorithm FF, GET SERIAL and GET VERSION (5.7.0 with
a 3DES-only management key), "empty" (6A88) for retired slots 84-95 it does not have, and slot 82
holding the truncated certificate object that a load killed in the middle of its chained PUT DATA
left (CanoKey stores the segments as they come).
"""

from __future__ import annotations

from pathlib import Path

from provision.cardinfo import read_card_info
from tests.helpers.transcript_replay import exchanges, replay_session

TRANSCRIPT = Path(__file__).parent / "data" / "canokey-card-info.apdu"


def test_the_recorded_conversation_has_what_this_test_is_about() -> None:
    answers = dict(exchanges(TRANSCRIPT))
    assert any(r[-2] == 0x61 for r in answers.values())  # 61xx pieces: GET RESPONSE reassembles them
    assert answers[bytes.fromhex("00f8000000")] == bytes.fromhex("1c0ffee59000")
    assert answers[bytes.fromhex("00f7008400")] == bytes.fromhex("6a88")  # a slot it does not have


def test_card_info_reads_the_recorded_canokey() -> None:
    session, replay = replay_session(TRANSCRIPT)
    session.select()
    info = read_card_info(session)
    assert replay.unknown == []  # every command was one the real card answered
    assert (info.serial, info.version) == (0x1C0FFEE5, (5, 7, 0))
    assert (info.pin_tries_left, info.pin_tries_total, info.pin_is_default) == (3, 3, True)
    assert (info.puk_tries_left, info.puk_tries_total, info.puk_is_default) == (3, 3, True)
    assert info.management_key_type == "3des" and info.management_key_is_default is True
    for ref in (0x9A, 0x9C, 0x9D, 0x9E, 0x83):  # reassembled from 61xx pieces, key and certificate agree
        slot = info.slot(ref)
        assert slot.certificate is not None and slot.key is not None, hex(ref)
        assert slot.key_matches_certificate is True and slot.error is None, hex(ref)
    assert info.slot(0x83).key is not None and info.slot(0x83).key.pin_policy == "always"
    # 82: a key, and a certificate object cut short by the interrupted write: unreadable, not "none".
    torn = info.slot(0x82)
    assert torn.key is not None and torn.certificate is None and torn.certificate_unreadable
    assert torn.error is not None and "truncated TLV" in torn.error
    text = "\n".join(info.info_lines())
    block = text.split("Slot 82 (Retired Key Management 1):")[1].split("Slot 83")[0]
    assert "Certificate:   unknown" in block and "Certificate:   none" not in block
    assert "Could not read:" in block
    # 84-95 answered 6A88 like empty slots: nothing tells them from empty ones before a write.
    assert all(info.slot(ref).supported and not info.slot(ref).occupied for ref in range(0x84, 0x96))
