"""What a PIV implementation written apart from ours answers, replayed: PivApplet.

``data/pivapplet-card-info.apdu`` is a real conversation (its header says how it was recorded) of
``provision card info`` with PivApplet 0.9.0 in jCardSim. It showed two things our own simulator
never said: GET METADATA answers without tag 01 (PIN, PUK and empty key slots answer 9000 with
only the policies, where a YubiKey answers 6A88 for an empty slot) and ``6F00`` for a slot whose
key was imported (PivApplet is never given the public half, so it cannot describe the key).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.card.apdu import ApduChannel
from provision.cardinfo import read_card_info
from provision.errors import CardStatusError, MetadataUnavailableError
from provision.piv.session import PivSession, parse_metadata
from tests.helpers.scripted_transport import ScriptedTransport, h
from tests.helpers.transcript_replay import TranscriptReplay, replay_session

TRANSCRIPT = Path(__file__).parent / "data" / "pivapplet-card-info.apdu"


def _session() -> tuple[PivSession, TranscriptReplay]:
    return replay_session(TRANSCRIPT)


def test_card_info_reads_every_slot_of_the_recorded_pivapplet() -> None:
    session, replay = _session()
    session.select()
    info = read_card_info(session)
    assert replay.unknown == []  # every command was one the real card answered
    assert info.metadata_supported is True
    # PIN and PUK metadata without tag 01 are read, not refused as malformed.
    assert (info.pin_tries_left, info.pin_tries_total) == (5, 5)
    assert (info.puk_tries_left, info.puk_tries_total, info.puk_is_default) == (2, 3, True)
    assert info.management_key_type == "3des" and info.management_key_is_default is True
    for ref in (0x9A, 0x9C, 0x9D, 0x9E, 0x82):
        slot = info.slot(ref)
        assert slot.certificate is not None, hex(ref)
        assert slot.key is None and slot.key_matches_certificate is None
        assert slot.error is not None and "6F00" in slot.error  # unknown, said so; never "empty"
    for ref in range(0x83, 0x8D):  # 9000 without an algorithm: an empty slot, not an error
        slot = info.slot(ref)
        assert slot.supported and slot.error is None and slot.key is None and slot.certificate is None
    assert [s.key_ref for s in info.slots if not s.supported] == list(range(0x8D, 0x96))
    text = "\n".join(info.info_lines())
    assert "Key:           unknown" in text and "Key:           none" not in text


@pytest.mark.parametrize(
    ("slot", "answer", "expected"),
    [
        # PIN and PUK: 05 default, 06 retries (total, left); no 01 where a YubiKey sends 01 01 FF.
        (0x80, "05 01 01 06 02 05 05", (0xFF, True, 5, 5)),
        (0x81, "05 01 01 06 02 03 02", (0xFF, True, 3, 2)),
        # 9B: 01 03 (3DES), 05 default, policies.
        (0x9B, "01 01 03 05 01 01 02 02 01 01 03 01 00", (0x03, True, None, None)),
    ],
)
def test_pivapplet_metadata_without_algorithm(slot: int, answer: str, expected: tuple[object, ...]) -> None:
    meta = parse_metadata(slot, h(answer))
    assert meta is not None
    assert (meta.algorithm, meta.is_default, meta.retries_total, meta.retries_left) == expected


def test_pivapplet_empty_key_slot_is_empty() -> None:
    """An empty key slot: 9000 with PIN policy 02 (once), touch 01 and origin 00, nothing else."""
    assert parse_metadata(0x9A, h("02 02 02 01 03 01 00")) is None


def test_6f00_for_one_key_slot_is_unavailable_metadata_not_a_card_fault() -> None:
    session = PivSession(ApduChannel(ScriptedTransport([(h("00 F7 00 9A 00"), h("6F 00"))])))
    with pytest.raises(MetadataUnavailableError, match="slot 9A"):
        session.get_metadata(0x9A)
    # For the management key, the PIN and the PUK, 6F00 stays what it is: the card failed.
    for ref in (0x9B, 0x80, 0x81):
        session = PivSession(ApduChannel(ScriptedTransport([(None, h("6F 00"))])))
        with pytest.raises(CardStatusError) as caught:
            session.get_metadata(ref)
        assert not isinstance(caught.value, MetadataUnavailableError)
