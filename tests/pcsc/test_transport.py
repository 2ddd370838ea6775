"""provision.card.transport against a real pcscd with vpcd readers and simulated cards."""

from __future__ import annotations

import threading
import time

import pytest

from provision.card.transport import ReaderEvent, connect, list_readers, watch
from provision.errors import CardError, CardRemovedError, ReaderGoneError, ServiceDownError
from tests.helpers.pcsc_harness import (
    STUB_INS_ECHO_LENGTH,
    STUB_INS_VANISH,
    YUBIKEY_ATR,
    Cards,
    PrivatePcscd,
    card_present,
    wait_for,
)

pytestmark = pytest.mark.pcsc

SELECT_PIV = bytes.fromhex("00A4040009A00000030800001000" "00")


def _events_until(stop: threading.Event, out: list[ReaderEvent], timeout: float) -> None:
    for event in watch(timeout=timeout):
        out.append(event)
        if stop.is_set():
            return


def test_list_readers_shows_virtual_readers_with_and_without_card(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(1)
    readers = {r.name: r for r in list_readers()}
    assert set(pcscd.reader_names) <= set(readers)
    assert readers[pcscd.reader_name(1)].card_present
    assert readers[pcscd.reader_name(1)].atr == YUBIKEY_ATR
    assert not readers[pcscd.reader_name(0)].card_present
    assert readers[pcscd.reader_name(0)].atr == b""


def test_insertion_and_removal_are_seen(pcscd: PrivatePcscd, cards: Cards) -> None:
    baseline = list_readers()
    reader = pcscd.reader_name(2)
    events = watch(baseline, timeout=10)
    server = cards.insert(2, wait=False)
    inserted = next(e for e in events if e.reader == reader)
    assert inserted == ReaderEvent("inserted", reader, YUBIKEY_ATR)
    server.remove()
    removed = next(e for e in events if e.reader == reader)
    assert removed == ReaderEvent("removed", reader)


def test_known_state_differences_are_reported_at_once(pcscd: PrivatePcscd, cards: Cards) -> None:
    stale = list_readers()  # all empty
    cards.insert(3)
    first = next(iter(watch(stale, timeout=5)))
    assert first == ReaderEvent("inserted", pcscd.reader_name(3), YUBIKEY_ATR)


def test_watch_ends_at_its_timeout(pcscd: PrivatePcscd, cards: Cards) -> None:
    start = time.monotonic()
    assert list(watch(timeout=0.5)) == []
    assert time.monotonic() - start < 3


def test_select_reaches_the_card_and_the_answer_comes_back(pcscd: PrivatePcscd, cards: Cards) -> None:
    server = cards.insert(0)
    with connect(pcscd.reader_name(0)) as card:
        response = card.transmit(SELECT_PIV)
        assert response[-2:] == b"\x90\x00"
        assert response[:1] == b"\x61"
        assert card.apdu_count == 1
        assert card.protocol == "T=1"
        assert card.supports_extended
    assert server.card.apdus == [SELECT_PIV]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_select_on_the_simulated_piv_card(pcscd: PrivatePcscd, cards: Cards, tmp_path, mode: str) -> None:
    cards.insert(0, kind="sim", mode=mode, options={"serial": 12345678}, state=tmp_path / "card.json")
    with connect(pcscd.reader_name(0)) as card:
        assert card.supports_extended
        response = card.transmit(SELECT_PIV)
        assert response[-2:] == b"\x90\x00"
        assert response[0] == 0x61
        serial = card.transmit(bytes.fromhex("00F80000"))
        assert serial == (12345678).to_bytes(4, "big") + b"\x90\x00"


def test_extended_length_answer(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0)
    with connect("Virtual PCD 00 00") as card:
        for size in (256, 4096, 65000):
            apdu = bytes([0x00, STUB_INS_ECHO_LENGTH, size >> 8, size & 0xFF, 0x00, 0x00, 0x00])
            response = card.transmit(apdu)
            assert len(response) == size + 2
            assert response[-2:] == b"\x90\x00"
            assert response[:-2] == bytes(i & 0xFF for i in range(size))


def test_connect_by_unique_part_of_the_name(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(3)
    with connect("pcd b 00 01") as card:
        assert card.reader == pcscd.reader_name(3)


def test_closing_leaves_the_card_usable_by_other_handles(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0)
    first = connect(pcscd.reader_name(0))
    second = connect(pcscd.reader_name(0))
    first.transmit(SELECT_PIV)
    first.close()
    first.close()  # twice is fine
    assert second.transmit(SELECT_PIV)[-2:] == b"\x90\x00"  # no SCARD_W_RESET_CARD
    second.close()


def test_transaction(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0)
    with connect(pcscd.reader_name(0)) as card:
        card.begin_transaction()
        assert card.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        card.end_transaction()
        card.end_transaction()  # not in one: nothing happens


def test_empty_reader_is_card_removed(pcscd: PrivatePcscd, cards: Cards) -> None:
    start = time.monotonic()
    with pytest.raises(CardRemovedError):
        connect(pcscd.reader_name(1))
    assert time.monotonic() - start < 3  # one re-insertion grace period, no more


def test_unknown_reader_is_reader_gone(pcscd: PrivatePcscd, cards: Cards) -> None:
    with pytest.raises(ReaderGoneError):
        connect("No Such Reader 99")


def test_card_vanishing_mid_session_is_card_removed(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0)
    card = connect(pcscd.reader_name(0))
    try:
        card.transmit(SELECT_PIV)
        with pytest.raises(CardRemovedError) as caught:
            card.transmit(bytes([0x00, STUB_INS_VANISH, 0, 0]))
            card.transmit(SELECT_PIV)  # in case the vanish surfaced only on the next command
        assert "SCARD_" in str(caught.value)
        wait_for(lambda: not any(r.card_present for r in list_readers()), 5, "the removal")
        with pytest.raises(CardRemovedError):
            card.transmit(SELECT_PIV)
    finally:
        card.close()


def test_killed_card_process_is_card_removed(pcscd: PrivatePcscd, cards: Cards) -> None:
    server = cards.insert(1, mode="process")
    card = connect(pcscd.reader_name(1))
    try:
        assert card.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        server.kill()
        wait_for(lambda: not any(r.card_present for r in list_readers()), 5, "the removal")
        with pytest.raises(CardRemovedError):
            card.transmit(SELECT_PIV)
    finally:
        card.close()


def test_reinserted_card_can_be_connected_again(pcscd: PrivatePcscd, cards: Cards) -> None:
    server = cards.insert(0)
    with connect(pcscd.reader_name(0)) as card:
        card.transmit(SELECT_PIV)
    server.remove()
    wait_for(lambda: not card_present(pcscd.reader_name(0)), 5, "the removal")
    cards.insert(0, wait=False)
    # Right after re-insertion the connect may miss once: the transport waits one poll period.
    with connect(pcscd.reader_name(0)) as card:
        assert card.transmit(SELECT_PIV)[-2:] == b"\x90\x00"


def test_pcscd_killed_is_service_down(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0)
    card = connect(pcscd.reader_name(0))
    try:
        card.transmit(SELECT_PIV)
        pcscd.kill()
        with pytest.raises(ServiceDownError):
            card.transmit(SELECT_PIV)
        with pytest.raises(ServiceDownError):
            list_readers()
        with pytest.raises(ServiceDownError):
            connect(pcscd.reader_name(0))
    finally:
        card.close()


def test_no_library_exception_escapes(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0)
    card = connect(pcscd.reader_name(0))
    card.close()
    with pytest.raises(CardError):
        card.transmit(SELECT_PIV)


def test_simulated_card_vanishing_after_n_apdus_is_card_removed(
    pcscd: PrivatePcscd, cards: Cards, tmp_path
) -> None:
    server = cards.insert(2, kind="sim", mode="process", options={"serial": 4242, "vanish_after": 2},
                          state=tmp_path / "card.json")
    with connect(pcscd.reader_name(2)) as card:
        assert card.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        assert card.transmit(bytes.fromhex("00F80000"))[:4] == (4242).to_bytes(4, "big")
        with pytest.raises(CardRemovedError):
            card.transmit(bytes.fromhex("00F80000"))
    wait_for(lambda: not server.alive, 5, "the card server to end")
    assert server.proc is not None and server.proc.returncode == 0


def test_simulated_card_answers_large_objects_with_extended_le(pcscd: PrivatePcscd, cards: Cards) -> None:
    cards.insert(0, kind="sim")
    with connect(pcscd.reader_name(0)) as card:
        card.transmit(SELECT_PIV)
        # GET DATA of the CHUID with extended Le: the whole object in one answer
        answer = card.transmit(bytes.fromhex("00CB3FFF" "000005" "5C035FC102" "0000"))
        assert answer[-2:] == b"\x90\x00"
        assert answer[0] == 0x53
