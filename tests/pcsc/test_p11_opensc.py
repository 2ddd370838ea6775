"""The PKCS#11 backend through OpenSC's module, over pcscd + vpcd, against our simulated PIV card.

OpenSC's PIV driver does not create objects (its PKCS#11 token is write-protected for C_CreateObject
of keys and certificates), so the same job cannot *load* a PIV card through OpenSC. What it shows:
after the PIV backend loaded the card, a job that names the card as an OpenSC token is judged by
that backend too (identity, PIN, the certificate found by its bytes, a test signature through
OpenSC's C_Sign), and a fresh card is refused through OpenSC with nothing written."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.interop_peers import OPENSC_PKCS11, parse_pkcs11_objects
from tests.helpers.pcsc_harness import Cards, PrivatePcscd
from tests.helpers.product import provision_cmd
from tests.helpers.tiers import require

NOW = datetime.now(UTC)


def env_for(pcscd: PrivatePcscd, tmp: Path) -> dict[str, str]:
    conf = tmp / "opensc.conf"
    conf.write_text("app default {\n\tframework pkcs15 {\n\t\tuse_file_caching = no;\n\t}\n}\n")
    return {**pcscd.env, "OPENSC_CONF": str(conf), "HOME": str(tmp)}


def write_job(tmp: Path, canaries: Any, card: str, name: str = "job.yaml", key_type: str = "p256") -> Path:
    if not (tmp / "chan.p12").exists():
        ca = fixtures.make_ca("OpenSC PKCS#11 CA")
        data = fixtures.holder_p12(ca, "CHAN Tai Man", canaries.pkcs12_password, key_type=key_type,  # type: ignore[arg-type]
                                   not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
        (tmp / "chan.p12").write_bytes(data)
        canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
        canaries.write_secret_file(tmp / "card.pin", "123456")
    job = tmp / name
    job.write_text(
        "version: 1\nbatch: opensc-batch\ntimezone: Asia/Hong_Kong\ncards:\n"
        f"  - id: HK-1\n    holder: CHAN Tai Man\n    card: {card}\n"
        "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n"
        "    slot: 9a\n    slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n    pin: {file: card.pin}\n"
    )
    return job


def run(env: dict[str, str], tmp: Path, job: Path, logs: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*provision_cmd(), "run", str(job), "--unattended", "--json", "--no-progress",
         "--logs", str(tmp / logs), *extra],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def opensc_token(env: dict[str, str]) -> tuple[str, str]:
    listed = subprocess.run(["pkcs11-tool", "--module", OPENSC_PKCS11, "--list-token-slots"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    label = re.search(r"token label\s*:\s*(.+)", listed.stdout)
    serial = re.search(r"serial num\s*:\s*(\S+)", listed.stdout)
    assert label and serial, listed.stdout
    return label.group(1).strip(), serial.group(1)


# OpenSC's mechanism list differs from SoftHSM2 2.6's: it signs EC keys with hashed ECDSA too (it
# hashes in software and has the card sign the digest, as vendors' middleware do), which provision
# prefers; SoftHSM2 2.6 only with raw CKM_ECDSA. The mechanism used is recorded.
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("key_type", "expected"), [("p256", {"CKM_ECDSA_SHA256"}),
                                                    ("rsa2048", {"CKM_SHA256_RSA_PKCS"})])  # fmt: skip
def test_the_same_job_through_piv_and_through_opensc_pkcs11(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                            tmp_path: Path, key_type: str, expected: set[str]) -> None:  # fmt: skip
    require(None if Path(OPENSC_PKCS11).exists() else f"{OPENSC_PKCS11} is missing (Debian: opensc-pkcs11)",
            "OpenSC PKCS#11 case")  # fmt: skip
    env = env_for(pcscd, tmp_path)
    server = cards.insert(0, kind="sim", options={"serial": 23456789})
    label, serial = opensc_token(env)
    token_card = f"{{pkcs11: {{module: {OPENSC_PKCS11}, token_serial: '{serial}'}}}}"

    # A fresh card through OpenSC: refused before any write (the token is read-only there).
    fresh = run(env, tmp_path, write_job(tmp_path, canaries, token_card, "p11.yaml", key_type), "logs-p11-fresh")
    document = json.loads(fresh.stdout)
    job = document["jobs"][0]
    assert job["status"] in ("refused", "failed"), job
    assert "write-protected" in job["error"] or "refused" in job["error"], job

    # The PIV backend loads the card …
    piv = run(env, tmp_path, write_job(tmp_path, canaries, "{serial: 23456789}"), "logs-piv", "--reader", server.reader)
    assert piv.returncode == 0, piv.stderr
    loaded = json.loads(piv.stdout)["jobs"][0]
    assert loaded["status"] == "loaded"

    # … and the same job, naming the card as an OpenSC token, finds it there and signs through OpenSC.
    again = run(env, tmp_path, write_job(tmp_path, canaries, token_card, "p11.yaml", key_type), "logs-p11")
    assert again.returncode == 0, again.stdout + again.stderr
    job = json.loads(again.stdout)["jobs"][0]
    assert job["status"] == "skipped" and job["fingerprint_sha256"] == loaded["fingerprint_sha256"], job
    assert any("labels" in note for note in job["notes"]), job
    audit = [json.loads(line) for line in (tmp_path / "logs-p11" / "audit.jsonl").read_text().splitlines()]
    verified = [e for e in audit if e.get("event") == "verified" and e.get("token_serial") == serial]
    assert len(verified) == 1 and verified[0]["mechanism"] in expected, verified
    assert f"test signature verified with {verified[0]['mechanism']}" in job["notes"], job

    # pkcs11-tool through OpenSC: the PIV driver names objects itself, not with the slot name.
    objects = subprocess.run(["pkcs11-tool", "--module", OPENSC_PKCS11, "--list-objects", "--type", "cert"],
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert objects.returncode == 0
    assert [o["label"] for o in parse_pkcs11_objects(objects.stdout)] == ["Certificate for PIV Authentication"]
    assert label


def pin_tries(env: dict[str, str], reader: str, tmp: Path) -> int:
    info = subprocess.run([*provision_cmd(), "card", "info", "--json", "--reader", reader, "--logs", str(tmp / "logs-info")],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert info.returncode == 0, info.stderr
    return int(json.loads(info.stdout)["pin"]["tries_left"])


@pytest.mark.timeout(180)
def test_a_wrong_pin_through_opensc_is_tried_once_and_the_last_try_is_left_to_the_holder(
        pcscd: PrivatePcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """OpenSC's PIV token sets no PIN flag after the first wrong PIN (3 → 2 tries), then
    CKF_USER_PIN_FINAL_TRY: a job says the PIN may be blocked when the token tells nothing, sends
    one PIN, puts the token on PIN hold (no PIN from the file again until an operator clears it),
    and with min_pin_retries 2 never sends the last one."""
    require(None if Path(OPENSC_PKCS11).exists() else f"{OPENSC_PKCS11} is missing (Debian: opensc-pkcs11)",
            "OpenSC PKCS#11 case")  # fmt: skip
    env = env_for(pcscd, tmp_path)
    server = cards.insert(0, kind="sim", options={"serial": 23456790})
    _, serial = opensc_token(env)
    token_card = f"{{pkcs11: {{module: {OPENSC_PKCS11}, token_serial: '{serial}'}}}}"
    piv = run(env, tmp_path, write_job(tmp_path, canaries, "{serial: 23456790}"), "logs-piv", "--reader", server.reader)
    assert piv.returncode == 0, piv.stderr
    assert pin_tries(env, server.reader, tmp_path) == 3
    canaries.write_secret_file(tmp_path / "card.pin", "654321")
    job_file = write_job(tmp_path, canaries, token_card, "p11.yaml")

    first = json.loads(run(env, tmp_path, job_file, "logs-p11").stdout)["jobs"][0]
    assert first["status"] == "failed" and first["pin_tries_left"] is None, first
    assert "CKR_PIN_INCORRECT" in first["error"] and "the token does not report PIN tries left" in first["error"]
    assert "may already be blocked" in first["error"] and "--list-token-slots" in first["error"]
    assert pin_tries(env, server.reader, tmp_path) == 2  # one C_Login, one try
    held = re.search(r"clear-pin-hold ([0-9a-f]{32})", first["error"])
    assert held and "now on PIN hold" in first["error"], first

    # The same PIN file again: the token is on PIN hold, no PIN is sent.
    second = json.loads(run(env, tmp_path, job_file, "logs-p11").stdout)["jobs"][0]
    assert second["status"] == "failed" and "on PIN hold; no PIN was sent" in second["error"], second
    assert pin_tries(env, server.reader, tmp_path) == 2

    def clear_hold() -> None:
        cleared = subprocess.run([*provision_cmd(), "card", "clear-pin-hold", held.group(1), "--reason", "test",
                                  "--logs", str(tmp_path / "logs-p11"), "--json"],
                                 env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert cleared.returncode == 0, cleared.stderr

    clear_hold()
    third = json.loads(run(env, tmp_path, job_file, "logs-p11").stdout)["jobs"][0]
    assert third["status"] == "failed" and third["pin_tries_left"] == 1, third
    assert "one try is left (CKF_USER_PIN_FINAL_TRY)" in third["error"]
    assert pin_tries(env, server.reader, tmp_path) == 1

    clear_hold()
    fourth = json.loads(run(env, tmp_path, job_file, "logs-p11").stdout)["jobs"][0]
    assert fourth["status"] in ("failed", "refused") and "no PIN was tried" in fourth["error"], fourth
    assert pin_tries(env, server.reader, tmp_path) == 1  # the last try belongs to the holder
