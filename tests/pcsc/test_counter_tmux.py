"""The counter screen, used as a clerk would: `provision run` in tmux (a real terminal), keys sent
with send-keys, the screen read with capture-pane, cards served through a real pcscd."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, card_present, wait_for

pytestmark = pytest.mark.timeout(120)
NOW = datetime.now(UTC)


class Tmux:
    def __init__(self, name: str) -> None:
        self.name = name

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "110", "-y", "60",
                        f"env {exports} {command}; echo EXITED $?; sleep 600"], check=True)  # fmt: skip

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-200", "-t", self.name], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared on the screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is part of the test harness (make test installs it)")
    session = Tmux(f"provision-{time.monotonic_ns()}")
    yield session
    session.kill()


def test_a_day_at_the_counter(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:
    ca = fixtures.make_ca("Counter CA")
    for cn, name in (("CHAN Tai Man", "chan"), ("LEE Siu Ming", "lee")):
        (tmp_path / f"{name}.p12").write_bytes(fixtures.holder_p12(
            ca, cn, canaries.pkcs12_password, key_type="p256", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=1000)))  # fmt: skip
    job = tmp_path / "counter.yaml"
    job.write_text(
        "version: 1\nbatch: counter-day\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {prompt: "Card PIN"}\n  card: {any: true}\ncards:\n'
        "  - id: HK-1\n    holder: CHAN Tai Man\n"
        '    pkcs12: {path: chan.p12, password: {prompt: "16-digit number on the PIN envelope"}}\n'
        "  - id: HK-2\n    holder: LEE Siu Ming\n"
        '    pkcs12: {path: lee.p12, password: {prompt: "16-digit number on the PIN envelope"}}\n'
    )
    reader = pcscd.reader_name(3)
    tmux.start(f"{sys.executable} -m provision run {job} --logs {tmp_path / 'logs'} --reader {shlex.quote(reader)}",
               {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], "PYTHONPATH": str(Path.cwd())})  # fmt: skip
    screen = tmux.wait_for("type the 16-digit number on the PIN envelope")
    assert "CHAN Tai Man" in screen and "NEXT" in screen
    tmux.keys(canaries.pkcs12_password, "Enter")
    tmux.wait_for("Insert the card of CHAN Tai Man")
    card = cards.insert(3, kind="sim", options={"serial": 20000001})
    screen = tmux.wait_for("Load this certificate onto the card?")
    assert "Check the certificate before it is loaded" in screen and "CN=CHAN Tai Man" in screen
    tmux.keys("y", "Enter")
    screen = tmux.wait_for("Card PIN:")
    assert "Tries left: 3" in screen
    tmux.keys("123456", "Enter")
    screen = tmux.wait_for("Take the card out of the reader.")
    assert "New certificate On Card: slot 9c 'e-Cert" in screen
    card.remove()
    wait_for(lambda: not card_present(reader), 10, "the card to leave the reader")
    screen = tmux.wait_for("LEE Siu Ming: type the 16-digit number")
    tmux.keys("", "Enter")  # no envelope today: skip LEE Siu Ming
    screen = tmux.wait_for("EXITED")
    assert "1 loaded, 1 pending" in screen
    assert "EXITED 1" in screen  # not everything asked for was done
    canaries.outputs.append(screen)  # the envelope number was typed without echo: not on the screen
    assert "123456" not in screen  # nor the PIN
