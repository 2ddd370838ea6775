"""Management keys, judged by the peers: ``provision run`` loads a served card and rotates its
management key (``management_key_rotate``); then yubico-piv-tool and ykman must find the card
where docs/batch.md says it is.

- derive: the test computes the card's key itself from the KDF in docs/batch.md (not through the product's
  code), and yubico-piv-tool 2.2 (3DES only: the card is served as firmware 5.4.3) performs an admin
  operation with it, and fails with the factory default;
- pin_protected: ``ykman piv info`` reports the key as stored PIN-protected, and ykman performs an
  admin operation (a new CHUID) with the PIN alone.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import pytest

from tests.helpers.interop_peers import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    InsertCard,
    Material,
    Peers,
    provision_run_job,
    run_provision,
)

pytestmark = pytest.mark.interop

SERIAL = 0x80001234  # top bit set: the serial is unsigned in the KDF's context
LABEL = "HK e-Cert interop"


def readme_kdf(master: bytes, label: str, serial: int) -> bytes:
    """docs/batch.md, "Management keys: derived and rotated": SP 800-108 counter mode, HMAC-SHA256."""
    fixed = label.encode() + b"\x00" + serial.to_bytes(4, "big") + (24 * 8).to_bytes(4, "big")
    return hmac.new(master, (1).to_bytes(4, "big") + fixed, hashlib.sha256).digest()[:24]


def load_and_rotate(peers: Peers, material: Material, rotate: str, *, serial: int) -> dict[str, object]:
    key, cert = material.key("p256"), material.cert("p256", 0x9A)
    job = provision_run_job(peers.workdir / "jobs", serial=serial, slot=0x9A, key=key, cert=cert, job_id="rotate-1")
    job.write_text(job.read_text() + f"    management_key_rotate: {rotate}\n")
    return run_provision(peers.pcscd.env, job, peers.reader, peers.workdir / "logs")


def test_yubico_piv_tool_uses_the_derived_key_after_rotation(insert_card: InsertCard, material: Material,
                                                             tmp_path: Path) -> None:  # fmt: skip
    _, peers = insert_card(firmware="5.4.3", serial=SERIAL)
    master = secrets.token_bytes(32)
    master_file = peers.workdir / "jobs" / "master.key"
    master_file.parent.mkdir(parents=True, exist_ok=True)
    master_file.write_text(master.hex() + "\n")
    master_file.chmod(0o600)
    entry = load_and_rotate(peers, material, f'{{derive: {{master: {{file: master.key}}, label: "{LABEL}"}}}}',
                            serial=SERIAL)  # fmt: skip
    assert entry["management_key"] == "derived", entry
    derived = readme_kdf(master, LABEL, SERIAL).hex()
    refused = peers.piv_tool("set-chuid (default key)", f"--key={DEFAULT_MANAGEMENT_KEY}", "-a", "set-chuid")
    assert refused.returncode != 0, refused
    peers.piv_tool("set-chuid (derived key)", f"--key={derived}", "-a", "set-chuid").check()


def test_ykman_sees_a_pin_protected_key_and_works_with_the_pin(insert_card: InsertCard, material: Material) -> None:
    _, peers = insert_card(serial=SERIAL)
    entry = load_and_rotate(peers, material, "{pin_protected: true}", serial=SERIAL)
    assert entry["management_key"] == "pin-protected", entry
    info = peers.ykman("piv info", "piv", "info").check().stdout
    assert "Management key is stored on the YubiKey, protected by PIN." in info, info
    assert "Using default Management key" not in info, info
    peers.ykman("piv objects generate chuid (PIN only)", "piv", "objects", "generate", "chuid",
                "-P", DEFAULT_PIN).check()  # fmt: skip
    refused = peers.ykman("piv objects generate chuid (default key)", "piv", "objects", "generate", "chuid",
                          "-m", DEFAULT_MANAGEMENT_KEY)  # fmt: skip
    assert refused.returncode != 0, refused
