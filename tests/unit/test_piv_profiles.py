"""The card quirks of provision.piv.profiles, as data: Key History bytes, firmware gates, PIN-always."""

from __future__ import annotations

import pytest

from provision.piv import profiles as p


@pytest.mark.parametrize(
    ("current", "key_ref", "needed", "body"),
    [
        (None, 0x82, 1, "C10101 C20100 FE00"),
        (b"", 0x85, 4, "C10104 C20100 FE00"),
        (bytes.fromhex("C10105C20102F303616263FE00"), 0x83, 2, None),  # already covers 82, 83
        (bytes.fromhex("C10101C20102F303616263FE00"), 0x83, 2, "C10102 C20102 F303616263 FE00"),
        (bytes.fromhex("C105"), 0x82, 1, "C10101 C20100 FE00"),  # unreadable: rewritten whole
    ],
)
def test_key_history_update(current: bytes | None, key_ref: int, needed: int, body: str | None) -> None:
    got_needed, got_body = p.key_history_update(current, key_ref)
    assert got_needed == needed
    assert got_body == (None if body is None else bytes.fromhex(body))


@pytest.mark.parametrize(
    ("version", "algorithm", "extended"),
    [(None, 0x03, False), ((5, 4, 3), 0x03, False), ((5, 7, 0), 0x0A, True), ((5, 7, 2), 0x0A, True)],
)
def test_firmware_gates(version: tuple[int, int, int] | None, algorithm: int, extended: bool) -> None:
    assert p.default_management_key_algorithm(version) == algorithm
    assert p.holds_extended_algorithms(version) is extended


@pytest.mark.parametrize(
    ("key_ref", "job_policy", "card_policy", "always"),
    [
        (0x9C, "default", None, True),
        (0x9A, "default", None, False),
        (0x9A, "always", None, True),
        (0x9C, "once", None, False),
        (0x9C, "default", 0x02, False),  # the card's metadata decides
        (0x9A, "never", 0x03, True),
    ],
)
def test_pin_always(key_ref: int, job_policy: str, card_policy: int | None, always: bool) -> None:
    assert p.pin_always(key_ref, job_policy, card_policy) is always


@pytest.mark.parametrize(
    ("sw", "refused"),
    [(0x6D00, True), (0x6E00, True), (0x6A81, True), (0x6B00, True), (0x6A86, True), (0x6700, True),
     (0x6985, True), (0x9000, False), (0x6F00, False), (0x6581, False), (0x63C2, False), (0x6100, False)],
)  # fmt: skip
def test_refuses_vendor_instruction(sw: int, refused: bool) -> None:
    assert p.refuses_vendor_instruction(sw) is refused
