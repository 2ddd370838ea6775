"""The commands a person runs, against a real pcscd: `provision sim serve` puts a card in a vpcd
reader, and `provision readers` (another process) sees it come and go."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.helpers.pcsc_harness import PrivatePcscd, card_present, wait_for


def run_provision(pcscd: PrivatePcscd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provision", *args], env=pcscd.env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def test_sim_serve_and_readers(cards, pcscd: PrivatePcscd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reader = pcscd.reader_name(1)
    log = tmp_path / "apdu.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "provision", "sim", "serve", "--port", str(pcscd.port(1)), "--serial", "4000000001",
         "--state", str(tmp_path / "card.json"), "--apdu-log", str(log)],
        env=pcscd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: card_present(reader), 15, f"the simulated card in {reader}")
        listing = run_provision(pcscd, "readers", "--json")
        assert listing.returncode == 0, listing.stderr
        states = {r["name"]: r for r in json.loads(listing.stdout)["readers"]}
        assert states[reader]["card_present"] is True
        assert states[reader]["atr"].startswith("3BFD1300")
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


def test_readers_without_pcscd_is_an_environment_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PCSCLITE_CSOCK_NAME": str(tmp_path / "nobody-listens.comm"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "provision", "readers"], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 3
    assert "PC/SC service is not running" in done.stderr and "Traceback" not in done.stderr
