"""PIN service (issue 16): unblock with the PUK, change PIN and PUK, on the in-process simulated card
through the product's own PivSession: tries read before each attempt without spending one, the last
PUK try never spent without a person's yes, nothing retried, every attempt audited without a value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provision.card.apdu import ApduChannel, TraceRecord
from provision.errors import PinError, PukError, SecretError
from provision.pinservice import PinService
from provision.piv.session import PivSession
from provision.secrets import Secret, SecretSource
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport


@dataclass
class FakeUI:
    typed: list[str] = field(default_factory=list)
    last_try_yes: bool = False
    said: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    last_try_asked: int = 0

    def say(self, text: str) -> None:
        self.said.append(text)

    def ask_secret(self, prompt: str) -> Secret:
        self.asked.append(prompt)
        if not self.typed:
            raise SecretError(f"cannot ask for the {prompt}: there is no terminal")
        return Secret(self.typed.pop(0))

    def confirm_last_try(self, what: str) -> bool:
        self.last_try_asked += 1
        return self.last_try_yes


def rig(ui: FakeUI, **options: Any) -> tuple[SimCard, PinService, list[dict[str, Any]], list[TraceRecord]]:
    card = SimCard(SimOptions(**options))
    trace: list[TraceRecord] = []
    session = PivSession(ApduChannel(SimTransport(card), trace=trace.append))
    session.select()
    records: list[dict[str, Any]] = []
    service = PinService(session, ui, record=lambda event, **f: records.append({"event": event, **f}))
    service.identify()
    return card, service, records, trace


def block_pin(service: PinService) -> None:
    for _ in range(3):
        with pytest.raises(PinError):
            service.session.verify_pin(Secret("000000"))


def test_unblock_a_blocked_pin_with_the_puk_typed_twice_new_pin() -> None:
    ui = FakeUI(typed=["12345678", "24681357", "24681357"])
    card, service, records, _ = rig(ui, serial=30000001)
    block_pin(service)
    assert service.pin_tries() == 0
    result = service.unblock_pin()
    assert ui.said == ["PUK tries left: 3"] and ui.asked == ["PUK", "New PIN (6 to 8 characters)", "New PIN again"]
    assert result.pin_tries_left == 3 and result.puk_tries_left == 3 and result.card_serial == 30000001
    service.session.verify_pin(Secret("24681357"))  # the new PIN works
    assert records[-1]["event"] == "pin_unblock" and records[-1]["outcome"] == "ok"
    assert "24681357" not in repr(records) and "12345678" not in repr(records)


def test_new_pins_that_differ_send_nothing() -> None:
    ui = FakeUI(typed=["12345678", "24681357", "24681358"])
    _, service, _, trace = rig(ui)
    before = len(trace)
    with pytest.raises(SecretError, match="differ"):
        service.unblock_pin()
    assert not [t for t in trace[before:] if t.header[1] == 0x2C]


def test_wrong_puk_counts_is_not_retried_and_last_try_needs_a_yes() -> None:
    ui = FakeUI(typed=["87654321", "24681357", "24681357"])
    card, service, records, trace = rig(ui)
    with pytest.raises(PukError, match="2 tries left"):
        service.unblock_pin()
    assert [t.header[1] for t in trace].count(0x2C) == 1  # never retried
    assert records[-1] == {"event": "pin_unblock", "outcome": "wrong", "puk_tries_left": 2,
                           "card_serial": service.card_serial, "chuid_guid": service.chuid_guid}  # fmt: skip
    ui.typed = ["87654321", "24681357", "24681357"]
    with pytest.raises(PukError):
        service.unblock_pin()
    # One PUK try left: options alone (an env source) never spend it.
    with pytest.raises(PukError, match="1 PUK try left"):
        service.unblock_pin(puk=SecretSource("value", "12345678"), new_pin=SecretSource("value", "24681357"))
    assert [t.header[1] for t in trace].count(0x2C) == 2
    assert service.puk_tries() == 1
    # A person's explicit yes spends it.
    ui.last_try_yes = True
    ui.typed = ["12345678", "24681357", "24681357"]
    result = service.unblock_pin()
    assert ui.last_try_asked == 2 and result.puk_tries_left == 3


def test_blocked_puk_is_never_tried() -> None:
    ui = FakeUI(typed=[], last_try_yes=True)
    _, service, records, trace = rig(ui, puk_tries=1)
    ui.typed = ["87654321", "24681357", "24681357"]
    with pytest.raises(PukError):
        service.unblock_pin()
    assert service.puk_tries() == 0
    ui.typed = ["12345678", "24681357", "24681357"]
    with pytest.raises(PukError, match="blocked"):
        service.unblock_pin()
    assert [t.header[1] for t in trace].count(0x2C) == 1
    assert records[-1]["outcome"] == "refused"


def test_unknown_puk_count_without_metadata() -> None:
    ui = FakeUI(typed=["12345678", "24681357", "24681357"])
    _, service, _, _ = rig(ui, firmware=(5, 2, 7))
    service.unblock_pin()
    assert ui.said[0].startswith("PUK tries left: unknown")


def test_change_pin_and_puk() -> None:
    ui = FakeUI(typed=["123456", "654321", "654321"])
    _, service, records, _ = rig(ui)
    result = service.change_pin()
    assert ui.said == ["PIN tries left: 3"] and result.pin_tries_left == 3
    service.session.verify_pin(Secret("654321"))
    ui.typed = ["111111", "222222", "222222"]
    with pytest.raises(PinError, match="2 tries left"):
        service.change_pin()
    ui.typed = ["12345678", "87654321", "87654321"]
    result = service.change_puk()
    assert result.puk_tries_left == 3
    ui.typed = ["12345678", "11223344", "11223344"]
    with pytest.raises(PukError, match="wrong PUK; 2 tries left"):
        service.change_puk()
    assert [r["event"] for r in records] == ["pin_change", "pin_change", "puk_change", "puk_change"]


def test_unblock_lifts_a_pin_hold(tmp_path: Path) -> None:
    from provision import journal as jn

    journal = jn.Journal(tmp_path / "journal.sqlite3")
    holds = jn.PinHolds(journal)
    ui = FakeUI(typed=["12345678", "24681357", "24681357"])
    _, service, records, _ = rig(ui, serial=30000009)
    holds.hold(30000009, None, tries_left=2, run_id="r1", batch="b", job_id="J1")
    service.holds = holds
    assert service.unblock_pin().pin_hold_cleared
    assert holds.get(30000009, None) is None
    assert records[-1]["event"] == "pin_hold_cleared" and records[-1]["by"] == "unblock"
    journal.close()


class RecordingCard(SimCard):
    def __init__(self, options: SimOptions) -> None:
        super().__init__(options)
        self.apdus: list[bytes] = []

    def process(self, apdu: bytes) -> bytes:
        self.apdus.append(bytes(apdu))
        return super().process(apdu)


@pytest.mark.parametrize(("call", "expected"), [
    (lambda s: s.unblock_pin(Secret("12345678"), Secret("654321")),
     "002C008010" + b"12345678".hex() + b"654321".hex() + "FFFF"),
    (lambda s: s.change_reference(0x80, Secret("123456"), Secret("24681357")),
     "0024008010" + b"123456".hex() + "FFFF" + b"24681357".hex()),
    (lambda s: s.change_reference(0x81, Secret("12345678"), Secret("876543")),
     "0024008110" + b"12345678".hex() + b"876543".hex() + "FFFF"),
])  # fmt: skip
def test_the_apdus_are_the_standard_ones(call: Any, expected: str) -> None:
    """RESET RETRY COUNTER and CHANGE REFERENCE DATA as SP 800-73-4 writes them: each value padded
    with FF to 8 bytes; and the PUK count read from F7 slot 81, which spends nothing."""
    card = RecordingCard(SimOptions())
    session = PivSession(ApduChannel(SimTransport(card)))
    session.select()
    assert session.puk_tries() == 3
    call(session)
    assert card.apdus[-1].hex().upper() == expected.upper()
    assert bytes.fromhex("00F70081") in [a[:4] for a in card.apdus]
    assert session.puk_tries() == 3  # nothing spent


def test_a_new_pin_of_the_wrong_length_sends_nothing() -> None:
    from provision.errors import PinFormatError

    card = RecordingCard(SimOptions())
    session = PivSession(ApduChannel(SimTransport(card)))
    session.select()
    before = len(card.apdus)
    with pytest.raises(PinFormatError, match="nothing was sent"):
        session.unblock_pin(Secret("12345678"), Secret("123"))
    assert len(card.apdus) == before
