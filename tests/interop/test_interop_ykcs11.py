"""The PKCS#11 backend through Yubico's own module, ykcs11 (``libykcs11.so``), against our simulated
YubiKey, through the private pcscd + vpcd.

ykcs11 is what a YubiKey most likely sits behind when a site uses PKCS#11. It differs from SoftHSM2
and NSS where provision's judgement depends on it (yubico-piv-tool 2.2.0, ``ykcs11/``):

* it only takes readers whose name starts with "Yubico" (``utils.c: is_yubico_reader``), which is
  why this lives in the interop tier, whose readers 0 and 1 are named like a YubiKey's;
* the token is named from GET SERIAL (``token.c``: label "YubiKey PIV #<serial>", serialNumber the
  decimal serial), so our simulator's F8 answer is what identifies the card;
* PIN state comes from the card's counter (``C_GetTokenInfo``): 2 tries left is
  CKF_USER_PIN_COUNT_LOW, 1 is CKF_USER_PIN_FINAL_TRY, 0 is CKF_USER_PIN_LOCKED, 3 or more nothing;
* object ids are PIV slots (CKA_ID 1 = 9A, 2 = 9C, 3 = 9D, 4 = 9E, 5 … 24 = 82 … 95) and labels
  are the module's own ("Private key for Digital Signature");
* C_CreateObject needs CKU_SO (the management key, hex, as SO PIN), takes only a few attributes,
  and reads only the first byte of CKA_ID (``objects.c: check_create_*``).
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from provision import fixtures
from provision.sim.state import pad_pin
from tests.helpers.interop_peers import InteropPcscd, Peers, parse_pkcs11_objects
from tests.helpers.pcsc_harness import Cards, CardServer
from tests.helpers.product import product_env, provision_cmd
from tests.helpers.tiers import require

pytestmark = pytest.mark.interop

YKCS11 = "/usr/lib/x86_64-linux-gnu/libykcs11.so"
NOW = datetime.now(UTC)


def need_ykcs11() -> None:
    require(None if Path(YKCS11).exists() else f"{YKCS11} is missing (Debian: ykcs11)", "interop tier (ykcs11)")


def insert(pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp: Path, serial: int, **options: Any) -> tuple[CardServer, Peers]:
    """A simulated YubiKey in reader 0 (named like a YubiKey's), whose PIN and management key are
    the test's canaries."""
    server = cards.insert(0, kind="sim", mode="thread", options={"serial": serial, **options})
    state = server.card._state  # noqa: SLF001 - the card's EEPROM
    state.pin = pad_pin(canaries.pin.encode())
    state.mgmt_key = bytes.fromhex(canaries.management_key)
    server.card._commit()  # noqa: SLF001
    return server, Peers(pcscd, pcscd.reader_name(0), server.card, tmp)


def pkcs11_tool(peers: Peers, canaries: Any, *args: str) -> str:
    done = peers.run("pkcs11-tool ykcs11", ["pkcs11-tool", "--module", YKCS11, *args])
    canaries.outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def token_slots(peers: Peers, canaries: Any) -> list[dict[str, str]]:
    listing = pkcs11_tool(peers, canaries, "--list-token-slots")
    tokens = []
    for block in re.split(r"\nSlot \d+ ", listing):
        fields = dict(re.findall(r"^\s+([a-z/ ]+?)\s*: (.*)$", block, flags=re.M))
        if "token label" in fields:
            tokens.append(fields)
    return tokens


def write_job(tmp: Path, canaries: Any, card: str, *, key_type: str = "p256", name: str = "job.yaml",
              cn: str = "CHAN Tai Man", slot: str = "9c", extra: str = "") -> Path:  # fmt: skip
    p12 = tmp / f"{cn.replace(' ', '_')}-{key_type}.p12"
    if not p12.exists():
        ca = fixtures.make_ca("ykcs11 CA")
        data = fixtures.holder_p12(ca, cn, canaries.pkcs12_password, key_type=key_type,  # type: ignore[arg-type]
                                   not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
        p12.write_bytes(data)
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    if not (tmp / "card.pin").exists():
        canaries.write_secret_file(tmp / "card.pin", canaries.pin)
    canaries.write_secret_file(tmp / "mgmt.key", canaries.management_key)
    job = tmp / name
    job.write_text(
        "version: 1\nbatch: ykcs11-batch\ntimezone: Asia/Hong_Kong\ncards:\n"
        f"  - id: HK-1\n    holder: {cn}\n    card: {card}\n"
        f"    pkcs12: {{path: {p12.name}, password: {{file: p12.pass}}}}\n"
        f"    slot: {slot}\n    slot_name: \"e-Cert{{cert.not_before:%Y%m%d}}\"\n    pin: {{file: card.pin}}\n"
        f"{extra}"
    )
    return job


def provision(canaries: Any, env: dict[str, str], tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*provision_cmd(), *args], env=product_env(env), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=tmp)  # fmt: skip
    canaries.outputs += [done.stdout, done.stderr]
    return done


def run_job(canaries: Any, env: dict[str, str], tmp: Path, job: Path, logs: str, *extra: str) -> dict[str, Any]:
    done = provision(canaries, env, tmp, "run", str(job), "--unattended", "--json", "--no-progress",
                     "--logs", str(tmp / logs), *extra)  # fmt: skip
    assert done.stdout, done.stderr
    entry: dict[str, Any] = json.loads(done.stdout)["jobs"][0]
    entry["_exit"] = done.returncode
    return entry


def token_card(serial: int, object_id: str | None = "02") -> str:
    place = f", object_id: '{object_id}', so_pin: {{file: mgmt.key}}" if object_id else ""
    return f"{{pkcs11: {{module: {YKCS11}, token_serial: '{serial}'{place}}}}}"


def written(server: CardServer) -> int:
    """Commands that changed the simulated card's stored state (keys, objects, PIN, keys)."""
    return int(server.card.write_apdu_count)


def certificate_in(peers: Peers, slot: str) -> bytes:
    """The certificate in ``slot`` as yubico-piv-tool reads it (DER)."""
    path = peers.workdir / f"cert-{slot}.der"
    done = peers.piv_tool("read-certificate", "-a", "read-certificate", "-s", slot, "-K", "DER", "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path.read_bytes()


def p12_fingerprint(job: dict[str, Any]) -> str:
    return str(job["fingerprint_sha256"])


def audit_events(logs: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (logs / "audit.jsonl").read_text().splitlines()]


# A YubiKey before firmware 5.7 has a 3DES management key, the only kind ykcs11 2.2 can log in with.
FW_3DES = "5.4.3"


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("serial", "firmware"), [(23456789, "5.7.1"), (3_000_000_001, "5.4.3"), (23456788, "4.3.7")],
                         ids=["yk5", "serial-top-bit", "yk4-otp-serial"])  # fmt: skip
def test_ykcs11_names_the_token_from_the_serial_and_reports_pin_tries_by_flags(
        pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp_path: Path, serial: int, firmware: str) -> None:  # fmt: skip
    """Token discovery and identity: ykcs11 names our card from its serial as it names a YubiKey
    (GET SERIAL from firmware 5, the OTP application's serial request before), unsigned above 2^31;
    its PIN flags follow the card's counter (3: none, 2: COUNT_LOW, 1: FINAL_TRY); its mechanism
    list has hashed ECDSA and RSA, which provision prefers."""
    need_ykcs11()
    server, peers = insert(pcscd, cards, canaries, tmp_path, serial, firmware=firmware)
    tokens = token_slots(peers, canaries)
    assert len(tokens) == 1, tokens
    assert tokens[0]["token label"] == f"YubiKey PIV #{serial}"
    assert tokens[0]["serial num"] == str(serial)
    assert tokens[0]["token manufacturer"] == "Yubico (www.yubico.com)"
    assert "PIN count low" not in tokens[0]["token flags"] and "final" not in tokens[0]["token flags"]

    mechanisms = pkcs11_tool(peers, canaries, "--list-mechanisms")
    for name in ("ECDSA-SHA256", "SHA256-RSA-PKCS", "RSA-PKCS-PSS", "ECDSA,"):
        assert name in mechanisms, mechanisms
    assert "ECDSA-SHA512" not in mechanisms  # ykcs11 2.2: SHA-1/224/256/384 ECDSA only

    wrong = "0" * 6 if canaries.pin != "000000" else "111111"
    for flag in ("user PIN count low", "final user PIN try"):
        bad = peers.run("pkcs11-tool ykcs11 login", ["pkcs11-tool", "--module", YKCS11, "--login", "--pin", wrong, "-O"])
        assert bad.returncode != 0 and "CKR_PIN_INCORRECT" in bad.stdout + bad.stderr, bad
        assert flag in token_slots(peers, canaries)[0]["token flags"]
    assert server.card._state.pin_tries_left == 1  # noqa: SLF001


@pytest.mark.timeout(300)
def test_provision_loads_p256_and_rsa2048_through_ykcs11_replaces_with_archive_and_skips_a_rerun(
        pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """`plan` and `run` through ykcs11: the job names the place (object_id, ykcs11's slot id) and
    the SO PIN (the management key). P-256 into 9C, replaced by another certificate (the old one
    archived, nothing else deleted), RSA-2048 into 9A; a re-run is skipped with nothing written.
    yubico-piv-tool and pkcs11-tool through ykcs11 read back what provision wrote."""
    need_ykcs11()
    serial = 23456791
    server, peers = insert(pcscd, cards, canaries, tmp_path, serial, firmware=FW_3DES)
    env = peers.env

    first = write_job(tmp_path, canaries, token_card(serial, "02"), cn="CHAN Tai Man", name="first.yaml")
    planned = provision(canaries, env, tmp_path, "plan", str(first), "--unattended", "--logs", str(tmp_path / "logs"))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "Security Officer" in planned.stdout and "import the" in planned.stdout, planned.stdout

    old = run_job(canaries, env, tmp_path, first, "logs")
    assert old["status"] == "loaded" and old["_exit"] == 0, old
    assert "test signature verified with CKM_ECDSA_SHA256" in old["notes"], old
    assert old["slot_name_on_card"] is False
    assert any("'Private key for Digital Signature'" in n for n in old["notes"]), old
    assert hashes_of(certificate_in(peers, "9c")) == p12_fingerprint(old)

    second = write_job(tmp_path, canaries, token_card(serial, "02"), cn="CHAN Siu Ming", name="second.yaml")
    new = run_job(canaries, env, tmp_path, second, "logs")
    assert new["status"] == "loaded", new
    assert new["replaced_sha256"] == p12_fingerprint(old) and new["archived_to"], new
    archived = Path(new["archived_to"])
    assert archived.is_file() and "BEGIN CERTIFICATE" in archived.read_text()

    rsa = write_job(tmp_path, canaries, token_card(serial, "01"), key_type="rsa2048", slot="9a", name="rsa.yaml")
    loaded_rsa = run_job(canaries, env, tmp_path, rsa, "logs-rsa")
    assert loaded_rsa["status"] == "loaded", loaded_rsa
    assert "test signature verified with CKM_SHA256_RSA_PKCS" in loaded_rsa["notes"], loaded_rsa

    # Re-runs: skipped after a test signature, nothing written.
    before = written(server)
    for job, logs in ((second, "logs"), (rsa, "logs-rsa")):
        again = run_job(canaries, env, tmp_path, job, logs)
        assert again["status"] == "skipped" and again["_exit"] == 0, again
    assert written(server) == before

    # Peers read back what provision wrote.
    status = peers.piv_tool("status", "-a", "status")
    assert status.returncode == 0, status.stderr
    assert f"Fingerprint:\t{p12_fingerprint(new)}" in status.stdout, status.stdout
    assert f"Fingerprint:\t{p12_fingerprint(loaded_rsa)}" in status.stdout
    assert "Algorithm:\tECCP256" in status.stdout and "Algorithm:\tRSA2048" in status.stdout
    assert hashes_of(certificate_in(peers, "9c")) == p12_fingerprint(new)
    assert hashes_of(certificate_in(peers, "9a")) == p12_fingerprint(loaded_rsa)
    listed = parse_pkcs11_objects(pkcs11_tool(peers, canaries, "--list-objects", "--type", "cert"))
    assert {(o["label"], o["ID"]) for o in listed} == {("X.509 Certificate for PIV Authentication", "01"),
                                                       ("X.509 Certificate for Digital Signature", "02")}, listed  # fmt: skip
    events = [e["event"] for e in audit_events(tmp_path / "logs")]
    assert events.count("so_login") == 2 and events.count("archived") == 1, events


def hashes_of(der: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


@pytest.mark.timeout(240)
def test_a_wrong_pin_through_ykcs11_is_sent_once_and_the_flags_show_the_tries(
        pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """ykcs11 reports the card's counter as flags: after one wrong PIN (3 → 2) COUNT_LOW, after the
    second FINAL_TRY (1 left), which min_pin_retries 2 then keeps for the holder. One C_Login per
    run, a PIN hold in between, nothing written."""
    need_ykcs11()
    serial = 23456792
    server, peers = insert(pcscd, cards, canaries, tmp_path, serial, firmware=FW_3DES)
    state = server.card._state  # noqa: SLF001
    wrong = "0" * 8 if canaries.pin != "0" * 8 else "1" * 8
    canaries.write_secret_file(tmp_path / "card.pin", wrong)
    job = write_job(tmp_path, canaries, token_card(serial, "02"))
    before = written(server)

    first = run_job(canaries, peers.env, tmp_path, job, "logs")
    assert first["status"] == "failed" and first["_exit"] == 1, first
    assert "CKR_PIN_INCORRECT" in first["error"] and "CKF_USER_PIN_COUNT_LOW" in first["error"], first
    assert "now on PIN hold" in first["error"] and first["pin_tries_left"] is None
    assert state.pin_tries_left == 2  # one C_Login, one try
    held = re.search(r"clear-pin-hold ([0-9a-f]{32})", first["error"])
    assert held, first

    def clear_hold() -> None:
        cleared = provision(canaries, peers.env, tmp_path, "card", "clear-pin-hold", held.group(1), "--reason", "test",
                            "--logs", str(tmp_path / "logs"))  # fmt: skip
        assert cleared.returncode == 0, cleared.stderr

    held_run = run_job(canaries, peers.env, tmp_path, job, "logs")
    assert "on PIN hold; no PIN was sent" in held_run["error"] and state.pin_tries_left == 2, held_run

    clear_hold()
    second = run_job(canaries, peers.env, tmp_path, job, "logs")
    assert second["pin_tries_left"] == 1 and "one try is left (CKF_USER_PIN_FINAL_TRY)" in second["error"], second
    assert state.pin_tries_left == 1

    clear_hold()
    third = run_job(canaries, peers.env, tmp_path, job, "logs")
    assert third["status"] in ("failed", "refused") and "no PIN was tried" in third["error"], third
    assert third["pin_tries_left"] == 1 and state.pin_tries_left == 1  # the last try belongs to the holder
    assert written(server) == before
    pins = [e for e in audit_events(tmp_path / "logs") if e.get("event") == "pin_verify"]
    assert [e["outcome"] for e in pins] == ["wrong", "wrong"], pins


@pytest.mark.timeout(180)
def test_a_job_for_another_yubikey_is_never_written_through_ykcs11(
        pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    need_ykcs11()
    server, peers = insert(pcscd, cards, canaries, tmp_path, 23456793, firmware=FW_3DES)
    other = f"{{pkcs11: {{module: {YKCS11}, token_label: 'YubiKey PIV #23456793', token_serial: '23456794', object_id: '02', so_pin: {{file: mgmt.key}}}}}}"
    done = provision(canaries, peers.env, tmp_path, "run", str(write_job(tmp_path, canaries, other)), "--unattended",
                     "--json", "--no-progress", "--logs", str(tmp_path / "logs"))  # fmt: skip
    document = json.loads(done.stdout)
    assert document["jobs"][0]["status"] == "pending", document
    refused = document["refused_cards"]
    assert len(refused) == 1 and refused[0]["token_serial"] == "23456793", refused
    assert written(server) == 0 and server.card._state.pin_tries_left == 3  # noqa: SLF001 - no PIN was sent
    events = [e["event"] for e in audit_events(tmp_path / "logs")]
    assert "pin_verify" not in events and "so_login" not in events, events


@pytest.mark.timeout(180)
def test_ykcs11_2_2_cannot_write_with_an_aes_management_key_and_nothing_is_written(
        pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """A YubiKey 5.7 comes with an AES-192 management key; ykcs11 before 2.3 (Debian bookworm: 2.2.0)
    authenticates with 3DES only (lib/ykpiv.c ``_ykpiv_authenticate``: YKPIV_ALGO_3DES), so its SO
    login fails: the job says so, once, with nothing written. The PIV backend loads such a card."""
    need_ykcs11()
    server, peers = insert(pcscd, cards, canaries, tmp_path, 23456795)  # firmware 5.7.1: AES-192
    job = run_job(canaries, peers.env, tmp_path, write_job(tmp_path, canaries, token_card(23456795, "02")), "logs")
    assert job["status"] == "failed" and job["_exit"] == 1, job
    assert "refused the SO PIN" in job["error"] and "AES-192" in job["error"], job
    assert written(server) == 0
    assert [e["outcome"] for e in audit_events(tmp_path / "logs") if e.get("event") == "so_login"] == ["refused"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kill_at", ["so_login:end", "import_key:end", "write_certificate:end"])
def test_a_load_through_ykcs11_killed_between_writes_resumes_from_what_the_card_holds(
        pcscd: InteropPcscd, cards: Cards, canaries: Any, tmp_path: Path, kill_at: str) -> None:  # fmt: skip
    """In a fixed place the id says where, not which key: after a kill between the key and the
    certificate the place holds the new key beside the old certificate, and the resumed run writes
    what is missing (the key again where the certificate is not yet the job's), archives once and
    ends with the job's key and certificate, checked by a test signature."""
    need_ykcs11()
    serial = 23456797
    server, peers = insert(pcscd, cards, canaries, tmp_path, serial, firmware=FW_3DES)
    old = run_job(canaries, peers.env, tmp_path, write_job(tmp_path, canaries, token_card(serial, "02"), name="old.yaml"), "logs-old")
    assert old["status"] == "loaded", old
    job = write_job(tmp_path, canaries, token_card(serial, "02"), cn="CHAN Siu Ming", name="new.yaml")
    killed = provision(canaries, {**peers.env, "PROVISION_FAULT_KILL_AT": kill_at}, tmp_path, "run", str(job),
                       "--unattended", "--json", "--no-progress", "--logs", str(tmp_path / "logs"))  # fmt: skip
    assert killed.returncode < 0, killed.stderr  # SIGKILL
    resumed = run_job(canaries, peers.env, tmp_path, job, "logs")
    assert resumed["status"] == "loaded" and resumed["_exit"] == 0, resumed
    assert resumed["replaced_sha256"] == p12_fingerprint(old) and Path(resumed["archived_to"]).is_file(), resumed
    assert hashes_of(certificate_in(peers, "9c")) == p12_fingerprint(resumed)
    assert [e["event"] for e in audit_events(tmp_path / "logs")].count("archived") == 1
    again = run_job(canaries, peers.env, tmp_path, job, "logs")
    assert again["status"] == "skipped", again
