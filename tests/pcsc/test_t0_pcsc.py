"""A card that offers T=0 only, behind a real pcscd: PC/SC negotiates T=0, and what reaches the card
is what ISO/IEC 7816-3 12.2 allows there (tests/sim/test_t0_card.py runs a whole load in-process)."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from provision import fixtures
from provision.card.apdu import ApduChannel
from provision.card.transport import connect
from provision.piv.session import PivSession
from provision.sim.card import SimCard, SimOptions
from tests.helpers.pcsc_harness import Cards, PrivatePcscd

# A YubiKey 5's historical bytes (extended Lc/Le offered) behind a T0 byte without interface bytes.
T0_ATR = bytes.fromhex("3B0D8073C021C057597562694B6579")
DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")


def test_a_t0_card_through_pcscd_gets_t0_commands(pcscd: PrivatePcscd, cards: Cards, tmp_path: Path) -> None:
    log = tmp_path / "apdu.jsonl"
    cards.insert(0, card=SimCard(SimOptions(serial=12345678, atr=T0_ATR, apdu_log=log)))
    ca = fixtures.make_ca("T=0 Test CA")
    _key, leaf = fixtures.make_leaf(ca, "T0 Holder", key_type="rsa2048")
    der = leaf.public_bytes(Encoding.DER)
    assert len(der) > 255  # goes as a chain
    with connect(pcscd.reader_name(0)) as transport:
        assert transport.protocol == "T=0" and not transport.supports_extended
        session = PivSession(ApduChannel(transport))
        session.select()
        assert session.serial() == 12345678
        assert session.pin_tries() == 3
        session.authenticate(DEFAULT_KEY)
        session.write_certificate(0x9A, der)
        assert session.read_certificate(0x9A) == der
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and not [r for r in records if r["ext"]]
    assert any(r["cla"] == "10" for r in records)
    assert not [r for r in records if r["lc"] is not None and r["le"] is not None]  # no case 4 under T=0
