"""A card that PC/SC runs with T=0: what goes on the wire (ISO/IEC 7816-3 12.2).

Many contact PIV cards offer T=0 only, or T=0 first; PC/SC takes T=1 only when the ATR offers it.
T=0 carries no extended APDU and no Le in a case-4 command (the answer comes by GET RESPONSE
after 61xx); OpenSC (apdu.c, sc_apdu2bytes) and yubico-piv-tool (ykpiv.c, _ykpiv_transfer_data)
send exactly that. Our channel used to send extended APDUs whenever the ATR's card capabilities
offered them, and case-4 commands with Le = 00, whatever the protocol.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.card.transport import atr_offers_t1, atr_supports_extended
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport
from tests.sim.test_runner import Batch

# A YubiKey 5's historical bytes (card capabilities: chaining and extended Lc/Le) behind a T0 byte
# without interface bytes: the card offers T=0 only.
T0_ATR = bytes.fromhex("3B0D8073C021C057597562694B6579")


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("T=0 Test CA")


def test_the_atr_is_what_this_test_is_about() -> None:
    assert atr_supports_extended(T0_ATR) and not atr_offers_t1(T0_ATR)
    transport = SimTransport(SimCard(SimOptions(atr=T0_ATR)))
    assert transport.protocol == "T=0" and not transport.supports_extended


def test_a_load_over_t0_sends_no_extended_apdu_and_no_le_in_case_4(
    tmp_path: Path, canaries: Any, ca: fixtures.Issuer
) -> None:
    batch = Batch(tmp_path, canaries, ca, fixtures.generate_key("rsa2048"))
    batch.holder("HK-1", "CHAN Tai Man", 12345678, key_type="rsa2048")
    log = tmp_path / "apdu.jsonl"
    card = SimCard(SimOptions(serial=12345678, atr=T0_ATR, apdu_log=log))
    result = batch.run([card])
    job = result.document["jobs"][0]
    assert job["status"] == "loaded", job
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and not [r for r in records if r["ext"]]
    # RSA-2048: the key import, certificate and test signature are long, so chains were needed.
    assert any(r["cla"] == "10" for r in records)
    assert not [r for r in records if r["lc"] is not None and r["le"] is not None]  # no case 4
    assert not [r for r in records if r["lc"] is None and r["le"] is None]  # case 1 carries P3 = 00
