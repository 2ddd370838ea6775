"""The commands a person runs, against a real pcscd: `provision sim serve` puts a card in a vpcd
reader, and `provision readers` (another process) sees it come and go."""

from __future__ import annotations

import json
import signal
import subprocess

from provision.sim.card import YUBIKEY5_ATR, YUBIKEY5_NFC_ATR
from tests.helpers.pcsc_harness import PrivatePcscd, card_present, wait_for
from tests.helpers.product import provision_cmd


def run_provision(pcscd: PrivatePcscd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*provision_cmd(), *args], env=pcscd.env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def test_sim_serve_and_readers(cards, pcscd: PrivatePcscd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reader = pcscd.reader_name(1)
    log = tmp_path / "apdu.jsonl"
    server = subprocess.Popen(
        [*provision_cmd(), "sim", "serve", "--port", str(pcscd.port(1)), "--serial", "4000000001",
         "--state", str(tmp_path / "card.json"), "--apdu-log", str(log)],
        env=pcscd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: card_present(reader), 15, f"the simulated card in {reader}")
        listing = run_provision(pcscd, "readers", "--json")
        assert listing.returncode == 0, listing.stderr
        states = {r["name"]: r for r in json.loads(listing.stdout)["readers"]}
        assert states[reader]["card_present"] is True
        # A plain vpcd reader is a generic reader: by default the card answers like a YubiKey 5 NFC
        # in a contactless reader (T0 = 8D), which ykman accepts there; the USB ATR is --atr usb.
        assert states[reader]["atr"] == YUBIKEY5_NFC_ATR.hex().upper()
        assert states[pcscd.reader_name(2)]["card_present"] is False
        text = run_provision(pcscd, "readers").stdout
        assert f"{reader}: card present" in text
        info = run_provision(pcscd, "card", "info", "--reader", reader, "--json")
        assert info.returncode == 0, info.stderr
        doc = json.loads(info.stdout)
        assert doc["serial"] == 4000000001 and doc["version"] == "5.7.1"  # unsigned, top bit set
        assert doc["pin"]["tries_left"] == 3 and not any(slot["certificate"] for slot in doc["slots"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    assert server.returncode == 0
    wait_for(lambda: not card_present(reader), 10, f"{reader} empty after the card was pulled")
    assert (tmp_path / "card.json").exists()  # the card's state outlives the process


def test_sim_serve_gives_the_atr_it_is_told(cards, pcscd: PrivatePcscd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reader = pcscd.reader_name(2)
    for option, atr in (("usb", YUBIKEY5_ATR), ("3B 02 14 50", bytes.fromhex("3B021450"))):
        server = subprocess.Popen(
            [*provision_cmd(), "sim", "serve", "--port", str(pcscd.port(2)), "--atr", option],
            env=pcscd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: card_present(reader), 15, f"the simulated card in {reader}")
            listing = run_provision(pcscd, "readers", "--json")
            states = {r["name"]: r for r in json.loads(listing.stdout)["readers"]}
            assert states[reader]["atr"] == atr.hex().upper(), option
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
        wait_for(lambda: not card_present(reader), 10, f"{reader} empty")
    refused = run_provision(pcscd, "sim", "serve", "--port", str(pcscd.port(2)), "--atr", "usb-c")
    assert refused.returncode == 2 and "--atr takes nfc, usb or an ATR in hex" in refused.stderr


def test_readers_without_pcscd_is_an_environment_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PCSCLITE_CSOCK_NAME": str(tmp_path / "nobody-listens.comm"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*provision_cmd(), "readers"], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 3
    assert "PC/SC service is not running" in done.stderr and "Traceback" not in done.stderr


def test_served_card_is_loaded_and_read_back_through_pcscd(cards, pcscd: PrivatePcscd, canaries, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What an installer tries first: `sim serve` in one process, `run`, `card info` and `audit verify`
    in others, all through pcscd. Under the installed-artifact tier every one is the installed command."""
    from datetime import UTC, datetime, timedelta

    from provision import fixtures

    reader = pcscd.reader_name(1)
    now = datetime.now(UTC)
    ca = fixtures.make_ca("Served Card CA")
    (tmp_path / "lee.p12").write_bytes(fixtures.holder_p12(
        ca, "LEE Siu Ming", canaries.pkcs12_password, key_type="p256",
        not_before=now - timedelta(days=1), not_after=now + timedelta(days=365)))  # fmt: skip
    canaries.write_secret_file(tmp_path / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp_path / "card.pin", "123456")
    job = tmp_path / "job.yaml"
    job.write_text(
        "version: 1\nbatch: served\ntimezone: Asia/Hong_Kong\ncards:\n"
        "  - id: HK-S1\n    holder: LEE Siu Ming\n    card: {serial: 4000000002}\n"
        "    pkcs12: {path: lee.p12, password: {file: p12.pass}}\n"
        "    slot: 9a\n    slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n    pin: {file: card.pin}\n"
    )
    logs = str(tmp_path / "logs")
    server = subprocess.Popen(
        [*provision_cmd(), "sim", "serve", "--port", str(pcscd.port(1)), "--serial", "4000000002",
         "--state", str(tmp_path / "card.json")],
        env=pcscd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: card_present(reader), 15, f"the simulated card in {reader}")
        done = run_provision(pcscd, "run", str(job), "--unattended", "--json", "--no-progress", "--logs", logs,
                             "--reader", reader)  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)["jobs"][0]
        assert result["status"] == "loaded" and result["card_serial"] == 4000000002
        info = json.loads(run_provision(pcscd, "card", "info", "--reader", reader, "--json").stdout)
        slot = next(s for s in info["slots"] if s["slot"].lower() == "9a")
        assert slot["certificate"]["sha256"] == result["fingerprint_sha256"]
        assert slot["slot_name"] == result["slot_name"] and result["slot_name"].startswith("e-Cert")
        assert run_provision(pcscd, "audit", "verify", "--logs", logs).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    wait_for(lambda: not card_present(reader), 10, f"{reader} empty after the card was pulled")
