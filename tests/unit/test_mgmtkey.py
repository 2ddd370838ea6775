"""Derived and PIN-protected management keys (piv/mgmtkey.py): the bytes an auditor, ykman and
yubico-piv-tool rely on."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from provision.piv import mgmtkey


def sp800_108_counter_hmac_sha256(master: bytes, label: str, serial: int, length: int = 24) -> bytes:
    """The recipe in docs/batch.md, written out by hand: K(i) = HMAC(master, [i]_4 || label || 00 || serial_4 || [L]_4)."""
    fixed = label.encode() + b"\x00" + serial.to_bytes(4, "big") + (length * 8).to_bytes(4, "big")
    out = b""
    for i in range(1, 1 + (length + 31) // 32):
        out += hmac.new(master, i.to_bytes(4, "big") + fixed, hashlib.sha256).digest()
    return out[:length]


@pytest.mark.parametrize("serial", [0, 12345678, 0x80000001, 0xFFFFFFFF])
def test_derived_key_is_the_documented_kdf(serial: int) -> None:
    master = bytes(range(32))
    got = mgmtkey.derive_management_key(master, "HK e-Cert 2026", serial)
    assert bytes(got) == sp800_108_counter_hmac_sha256(master, "HK e-Cert 2026", serial)
    assert len(got) == 24


def test_derived_key_known_answer() -> None:
    """Pinned: a change of encoding (label, context, counter or length width) breaks every card."""
    key = mgmtkey.derive_management_key(bytes.fromhex("00112233445566778899aabbccddeeff"), "provision", 12345678)
    assert bytes(key).hex() == sp800_108_counter_hmac_sha256(
        bytes.fromhex("00112233445566778899aabbccddeeff"), "provision", 12345678).hex()  # fmt: skip
    assert bytes(key).hex() == KNOWN


KNOWN = "b54276038b4304684fa762f5124c0e506a08b249de55994e"


def test_each_card_and_label_gets_its_own_key() -> None:
    master = b"\x42" * 32
    keys = {bytes(mgmtkey.derive_management_key(master, label, serial))
            for label in ("a", "b") for serial in (1, 2, 3)}  # fmt: skip
    assert len(keys) == 6


def test_serial_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        mgmtkey.derive_management_key(b"x" * 16, "l", 1 << 32)


def test_protected_data_is_ykmans_layout() -> None:
    key = bytes(range(24))
    assert bytes(mgmtkey.protected_data(key)) == bytes([0x88, 26, 0x89, 24]) + key
    assert mgmtkey.stored_key(bytes(mgmtkey.protected_data(key))) == key
    assert mgmtkey.stored_key(None) is None and mgmtkey.stored_key(b"\x88\x00") is None


def test_admin_data_sets_the_protected_flag_and_keeps_the_rest() -> None:
    assert mgmtkey.admin_data_with_flags(None, 0x02) == bytes.fromhex("8003810102")
    # PUK-blocked flag and PIN timestamp kept; a PIN-derived key's salt dropped.
    body = bytes.fromhex("800f" "810101" "8204aabbccdd" "830400000001")
    out = mgmtkey.admin_data_with_flags(body, mgmtkey.FLAG_MGM_KEY_PROTECTED)
    assert out == bytes.fromhex("8009" "810103" "830400000001")
    assert mgmtkey.admin_data_flags(out) == 0x03
    assert mgmtkey.admin_data_flags(None) == 0 and mgmtkey.admin_data_flags(b"\x01") == 0
