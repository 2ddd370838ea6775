"""The counter screen, used as a clerk would: `provision run` in tmux (a real terminal), keys sent
with send-keys, the screen read with capture-pane, cards served through a real pcscd."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, card_present, wait_for
from tests.helpers.product import checkout_pythonpath, provision_cmd

pytestmark = pytest.mark.timeout(120)
NOW = datetime.now(UTC)


class Tmux:
    """A terminal. ``wait_for(text)`` waits for the *next* appearance of ``text``: the screen keeps
    its history, so each call consumes one more occurrence."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumed: dict[str, int] = {}

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "110", "-y", "60",
                        f"env {exports} {command}; echo EXITED $?; sleep 600"], check=True)  # fmt: skip
        subprocess.run(["tmux", "set-option", "-t", self.name, "history-limit", "50000"], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", self.name], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        wanted = self.consumed.get(text, 0) + 1
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(text) >= wanted:
                self.consumed[text] = wanted
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


def _two_holders(tmp_path: Path, canaries: Any, batch: str, first: str, second: str) -> Path:
    """A counter job file for two holders (any card, the PIN and the envelope number asked)."""
    ca = fixtures.make_ca("Counter CA")
    for cn, name in ((first, "chan"), (second, "lee")):
        (tmp_path / f"{name}.p12").write_bytes(fixtures.holder_p12(
            ca, cn, canaries.pkcs12_password, key_type="p256", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=1000)))  # fmt: skip
    job = tmp_path / "counter.yaml"
    job.write_text(
        f"version: 1\nbatch: {batch}\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {prompt: "Card PIN"}\n  card: {any: true}\ncards:\n'
        f"  - id: HK-1\n    holder: {first}\n"
        '    pkcs12: {path: chan.p12, password: {prompt: "16-digit number on the PIN envelope"}}\n'
        f"  - id: HK-2\n    holder: {second}\n"
        '    pkcs12: {path: lee.p12, password: {prompt: "16-digit number on the PIN envelope"}}\n',
        encoding="utf-8",
    )
    return job


def test_a_day_at_the_counter(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:
    job = _two_holders(tmp_path, canaries, "counter-day", "CHAN Tai Man", "LEE Siu Ming")
    reader = pcscd.reader_name(3)
    tmux.start(f"{shlex.join(provision_cmd())} run {job} --logs {tmp_path / 'logs'} --reader {shlex.quote(reader)}",
               {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], **checkout_pythonpath()})  # fmt: skip
    tmux.wait_for("Operator (your name")  # asked once per counter session (BR §5.4.1)
    tmux.keys("Clerk Wong", "Enter")
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
    records = [json.loads(line) for line in (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()]
    assert records and {r["operator"] for r in records} == {"Clerk Wong"}  # the person, in every record


def test_five_holders_wrong_card_wrong_pin_skipped_and_resumed(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards,
                                                                canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """The issue's counter day: five holders; one hands over somebody else's card first, one mistypes
    the PIN, one has no envelope (skipped), one card is pulled mid-load and comes back (resumed)."""
    ca = fixtures.make_ca("Counter CA")
    holders = [("HK-1", "CHAN Tai Man", 21000001), ("HK-2", "LEE Siu Ming", 21000002),
               ("HK-3", "WONG Mei Ling", 21000003), ("HK-4", "CHEUNG Ka Yan", 21000004),
               ("HK-5", "HO Wing Sze", 21000005)]  # fmt: skip
    body = ""
    for job_id, cn, serial in holders:
        (tmp_path / f"{job_id}.p12").write_bytes(fixtures.holder_p12(
            ca, cn, canaries.pkcs12_password, key_type="p256", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=1000)))  # fmt: skip
        body += (f"  - id: {job_id}\n    holder: {cn}\n    card: {{serial: {serial}}}\n"
                 f'    pkcs12: {{path: {job_id}.p12, password: {{prompt: "16-digit number on the PIN envelope"}}}}\n')  # fmt: skip
    job = tmp_path / "counter.yaml"
    job.write_text("version: 1\nbatch: counter-five\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
                   '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {prompt: "Card PIN"}\ncards:\n' + body)  # fmt: skip
    reader, index = pcscd.reader_name(2), 2
    logs = tmp_path / "logs"
    tmux.start(f"{shlex.join(provision_cmd())} run {job} --logs {logs} --reader {shlex.quote(reader)} "
               "--operator 'Clerk Lee'",
               {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], **checkout_pythonpath()})  # fmt: skip

    def envelope(holder: str) -> None:
        tmux.wait_for(f"{holder}: type the 16-digit number on the PIN envelope")
        tmux.keys(canaries.pkcs12_password, "Enter")
        tmux.wait_for(f"Insert the card of {holder}")

    def load(server: Any, pins: list[str], holder: str) -> str:
        tmux.wait_for("Load this certificate onto the card?")
        tmux.keys("y", "Enter")
        screen = ""
        for pin in pins:
            screen = tmux.wait_for("Card PIN:")
            tmux.keys(pin, "Enter")
            time.sleep(0.5)
        screen = tmux.wait_for(f"{holder}: done")  # the result panel, one per holder
        server.remove()
        wait_for(lambda: not card_present(reader), 10, "the card to leave the reader")
        return screen

    # 1. CHAN Tai Man: an ordinary load.
    envelope("CHAN Tai Man")
    load(cards.insert(index, kind="sim", options={"serial": 21000001}), ["123456"], "CHAN Tai Man")
    # 2. LEE Siu Ming hands over HO Wing Sze's card first: refused before any write.
    envelope("LEE Siu Ming")
    stranger_log = tmp_path / "stranger.jsonl"
    wrong = cards.insert(index, kind="sim", options={"serial": 21000005, "apdu_log": str(stranger_log)})
    screen = tmux.wait_for("the counter called LEE Siu Ming")
    assert "this is the card of HO Wing Sze" in screen
    wrong.remove()
    wait_for(lambda: not card_present(reader), 10, "the wrong card to leave the reader")
    assert not [e for e in map(json.loads, stranger_log.read_text().splitlines()) if e["ins"].lower() in ("db", "fe")]
    tmux.wait_for("Insert the card of LEE Siu Ming")  # still LEE's turn; the envelope is open already
    load(cards.insert(index, kind="sim", options={"serial": 21000002}), ["123456"], "LEE Siu Ming")
    # 3. WONG Mei Ling mistypes the PIN once: asked again while tries stay above the floor.
    envelope("WONG Mei Ling")
    screen = load(cards.insert(index, kind="sim", options={"serial": 21000003}), ["999999", "123456"], "WONG Mei Ling")
    assert "Tries left: 2" in screen, screen
    # 4. CHEUNG Ka Yan has no envelope today: skipped.
    tmux.wait_for("CHEUNG Ka Yan: type the 16-digit number")
    tmux.keys("", "Enter")
    # 5. HO Wing Sze's card is pulled in the middle of the load, then comes back: resumed.
    envelope("HO Wing Sze")
    state = tmp_path / "ho.json"
    pulled = cards.insert(index, kind="sim", mode="process", options={"serial": 21000005, "vanish_after": 14},
                          state=state)  # fmt: skip
    tmux.wait_for("Load this certificate onto the card?")
    tmux.keys("y", "Enter")
    tmux.wait_for("Card PIN:")
    tmux.keys("123456", "Enter")
    tmux.wait_for("HO Wing Sze: not loaded yet")
    wait_for(lambda: not pulled.alive and not card_present(reader), 15, "the pulled card to be gone")
    tmux.wait_for("Insert the card of HO Wing Sze")  # still HO's turn: put the card back
    back = cards.insert(index, kind="sim", mode="process", options={"serial": 21000005}, state=state)
    tmux.wait_for("Card PIN:")  # the load resumes: the certificate was confirmed before the pull
    tmux.keys("123456", "Enter")
    tmux.wait_for("HO Wing Sze: done")
    back.remove()
    wait_for(lambda: not card_present(reader), 10, "the card to leave the reader")
    tmux.keys("q", "Enter")
    screen = tmux.wait_for("EXITED")
    assert "4 loaded, 1 pending" in screen and "EXITED 1" in screen, screen[-3000:]
    canaries.outputs.append(screen)
    report = json.loads(next((logs / "reports").glob("*.json")).read_text())
    statuses = {j["id"]: j["status"] for j in report["jobs"]}
    assert statuses == {"HK-1": "loaded", "HK-2": "loaded", "HK-3": "loaded", "HK-4": "pending", "HK-5": "loaded"}


def _counter_job(tmp_path: Path, canaries: Any, holders: list[tuple[str, str, int]], batch: str,
                 floor: int | None = None) -> Path:  # fmt: skip
    ca = fixtures.make_ca("Counter CA")
    body = ""
    for job_id, cn, serial in holders:
        (tmp_path / f"{job_id}.p12").write_bytes(fixtures.holder_p12(
            ca, cn, canaries.pkcs12_password, key_type="p256", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=1000)))  # fmt: skip
        body += (f"  - id: {job_id}\n    holder: {cn}\n    card: {{serial: {serial}}}\n"
                 f'    pkcs12: {{path: {job_id}.p12, password: {{prompt: "16-digit number on the PIN envelope"}}}}\n')  # fmt: skip
    job = tmp_path / f"{batch}.yaml"
    extra = f"  min_pin_retries: {floor}\n" if floor is not None else ""
    job.write_text(f"version: 1\nbatch: {batch}\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
                   '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {prompt: "Card PIN"}\n' + extra
                   + "cards:\n" + body)  # fmt: skip
    return job


def _hand_over(term: Tmux, cards: Cards, index: int, password: str, options: dict[str, Any]) -> Any:
    """The clerk types the holder's envelope number, the holder's card goes in, and the clerk
    accepts the certificate: the PIN prompt is on the screen. The card served, to take out later."""
    term.keys(password, "Enter")
    card = cards.insert(index, kind="sim", options=options)
    term.wait_for("Load this certificate onto the card?")
    term.keys("y", "Enter")
    term.wait_for("Card PIN:")
    return card


def _take_out(card: Any, reader: str) -> None:
    card.remove()
    wait_for(lambda: not card_present(reader), 10, "the card to leave the reader")


def test_counter_day_fixes(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards, canaries: Any, tmp_path: Path) -> None:
    """Issue 16: every refused PIN says "wrong PIN, N tries left" (never "no PIN was tried"); a card
    below the PIN floor is refused before the certificate is shown; `q` at the envelope prompt is not a
    password but stops the day; the job file opened again does not queue the holders already loaded."""
    holders = [("HK-1", "CHAN Tai Man", 22000001), ("HK-2", "LEE Siu Ming", 22000002),
               ("HK-3", "WONG Mei Ling", 22000003)]  # fmt: skip
    job = _counter_job(tmp_path, canaries, holders, "counter-fixes")
    reader, index, logs = pcscd.reader_name(1), 1, tmp_path / "logs"
    env = {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], **checkout_pythonpath()}
    command = f"{shlex.join(provision_cmd())} run {job} --logs {logs} --reader {shlex.quote(reader)} --operator 'Clerk Ho'"
    tmux.start(command, env)
    # 1. CHAN Tai Man: loaded.
    tmux.wait_for("CHAN Tai Man: type the 16-digit number on the PIN envelope")
    first = _hand_over(tmux, cards, index, canaries.pkcs12_password, {"serial": 22000001})
    tmux.keys("123456", "Enter")
    tmux.wait_for("CHAN Tai Man: done")
    _take_out(first, reader)
    # 2. LEE Siu Ming mistypes twice: both refusals say "wrong PIN" with the tries the card counted.
    tmux.wait_for("LEE Siu Ming: type the 16-digit number on the PIN envelope")
    second = _hand_over(tmux, cards, index, canaries.pkcs12_password, {"serial": 22000002})
    tmux.keys("999999", "Enter")
    screen = tmux.wait_for("Wrong PIN, 2 tries left.")
    tmux.wait_for("Card PIN:")  # the second prompt
    tmux.keys("888888", "Enter")
    screen = tmux.wait_for("Unblock now?")  # below the floor now: unblocking is offered
    assert "Wrong PIN, 1 try left." in screen and "LEE Siu Ming has 1 PIN try left" in " ".join(screen.split())
    tmux.keys("", "Enter")  # not now
    screen = tmux.wait_for("LEE Siu Ming: FAILED")
    assert "wrong PIN, 1 try left" in " ".join(screen.split()), screen[-2500:]
    assert "no PIN was tried" not in screen
    _take_out(second, reader)
    # 3. `q` at WONG Mei Ling's envelope prompt stops the day; it is not taken as a password.
    tmux.wait_for("WONG Mei Ling: type the 16-digit number on the PIN envelope")
    tmux.keys("q", "Enter")
    screen = tmux.wait_for("EXITED")
    assert "Stopping for today" in screen and "wrong-password" not in screen.lower(), screen[-2500:]
    canaries.outputs.append(screen)
    # 4. The same job file opened again: CHAN Tai Man is done (from the journal), not asked for.
    tmux.kill()
    again = Tmux(f"provision-again-{time.monotonic_ns()}")
    try:
        again.start(command, env)
        screen = again.wait_for("type the 16-digit number on the PIN envelope")
        assert "done (earlier run)" in screen and "CHAN Tai Man: type" not in screen, screen
        assert "LEE Siu Ming: type the 16-digit number" in screen
        # 5. q at the PIN prompt leaves it: nothing is sent, LEE Siu Ming is not loaded yet and stays next.
        lee = _hand_over(again, cards, index, canaries.pkcs12_password, {"serial": 22000002})
        again.keys("q", "Enter")
        again.wait_for("LEE Siu Ming: not loaded yet")
        _take_out(lee, reader)
        again.wait_for("Insert the card of LEE Siu Ming")
        again.keys("s", "Enter")  # skipped for today
        # 6. WONG Mei Ling's card has 1 PIN try left (< floor 2): refused before the certificate is shown.
        again.wait_for("WONG Mei Ling: type the 16-digit number on the PIN envelope")
        again.keys(canaries.pkcs12_password, "Enter")
        low = cards.insert(index, kind="sim", options={"serial": 22000003, "pin_tries": 1})
        again.wait_for("Unblock now?")
        again.keys("", "Enter")  # not now
        screen = again.wait_for("WONG Mei Ling: FAILED")
        words = " ".join(screen.split())
        wong = screen.split("loading WONG Mei Ling")[-1]
        assert "fewer than min_pin_retries" in words and "Load this certificate onto the card?" not in wong, screen
        _take_out(low, reader)
        again.keys("q", "Enter")
        again.wait_for("EXITED")
    finally:
        again.kill()


def test_a_blocked_card_is_unblocked_and_loaded_in_one_visit(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards,
                                                             canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """Issue 16: the citizen's card is blocked; the counter offers `u`, the citizen types the PUK and
    a new PIN (the PUK tries are shown first), and the load goes on in the same visit."""
    from provision.sim.card import SimCard, SimOptions

    job = _counter_job(tmp_path, canaries, [("HK-1", "CHAN Tai Man", 23000001)], "counter-unblock")
    reader, index, logs = pcscd.reader_name(1), 1, tmp_path / "logs"
    blocked = SimCard(SimOptions(serial=23000001))
    blocked.process(bytes.fromhex("00A4040009A00000030800001000"))
    for _ in range(3):
        blocked.process(bytes.fromhex("0020008008") + b"000000\xff\xff")
    assert blocked.process(bytes.fromhex("00200080"))[-2:] == b"\x69\x83"
    tmux.start(f"{shlex.join(provision_cmd())} run {job} --logs {logs} --reader {shlex.quote(reader)} --operator 'Clerk Yip'",
               {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], **checkout_pythonpath()})  # fmt: skip
    tmux.wait_for("CHAN Tai Man: type the 16-digit number on the PIN envelope")
    tmux.keys(canaries.pkcs12_password, "Enter")
    tmux.wait_for("Insert the card of CHAN Tai Man")
    server = cards.insert(index, card=blocked)
    screen = tmux.wait_for("Unblock now?")
    assert "The card of CHAN Tai Man is blocked." in screen
    assert "Load this certificate onto the card?" not in screen  # the floor comes before the certificate
    tmux.keys("u", "Enter")
    screen = tmux.wait_for("PUK (q: leave):")
    assert "PUK tries left: 3" in screen
    tmux.keys("12345678", "Enter")
    tmux.wait_for("New PIN (6 to 8 characters) (q: leave):")
    tmux.keys(canaries.pin, "Enter")
    tmux.wait_for("New PIN again (q: leave):")
    tmux.keys(canaries.pin, "Enter")
    screen = tmux.wait_for("Load this certificate onto the card?")
    assert "PIN unblocked: PIN tries left 3, PUK tries left 3" in " ".join(screen.split())
    tmux.keys("y", "Enter")
    tmux.wait_for("Card PIN:")
    tmux.keys(canaries.pin, "Enter")
    screen = tmux.wait_for("CHAN Tai Man: done")
    tmux.wait_for("Take the card out of the reader.")
    time.sleep(2)  # the day does not end with the last card still in the reader
    assert "EXITED" not in tmux.screen()
    _take_out(server, reader)
    screen = tmux.wait_for("EXITED")
    assert "EXITED 0" in screen, screen[-2000:]
    canaries.outputs.append(screen)
    records = [json.loads(line) for line in (logs / "audit.jsonl").read_text().splitlines()]
    events = [(r["event"], r.get("outcome")) for r in records if r.get("job_id") == "HK-1"]
    assert ("pin_unblock", "ok") in events and ("pin_verify", "ok") in events and ("job_loaded", None) in [
        (e, None) for e, _ in events]  # fmt: skip
    assert events.index(("pin_unblock", "ok")) < events.index(("pin_verify", "ok"))
    unblock = next(r for r in records if r["event"] == "pin_unblock")
    assert unblock["operator"] == "Clerk Yip" and unblock["card_serial"] == 23000001 and unblock["puk_tries_left"] == 3


def test_two_wrong_pins_then_unblock_and_load(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                              tmp_path: Path) -> None:  # fmt: skip
    """The citizen mistypes twice (each refusal said with the tries the card counted), is offered
    `u`, unblocks with the PUK, and types the new PIN: loaded in the same visit."""
    job = _counter_job(tmp_path, canaries, [("HK-1", "LEE Siu Ming", 24000001)], "counter-wrong-unblock")
    reader, index, logs = pcscd.reader_name(1), 1, tmp_path / "logs"
    tmux.start(f"{shlex.join(provision_cmd())} run {job} --logs {logs} --reader {shlex.quote(reader)} --operator 'Clerk Yip'",
               {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], **checkout_pythonpath()})  # fmt: skip
    tmux.wait_for("LEE Siu Ming: type the 16-digit number on the PIN envelope")
    server = _hand_over(tmux, cards, index, canaries.pkcs12_password, {"serial": 24000001})
    tmux.keys("999999", "Enter")
    tmux.wait_for("Wrong PIN, 2 tries left.")
    tmux.wait_for("Card PIN:")  # the second prompt
    tmux.keys("888888", "Enter")
    tmux.wait_for("Wrong PIN, 1 try left.")
    tmux.wait_for("Unblock now?")
    tmux.keys("u", "Enter")
    screen = tmux.wait_for("PUK (q: leave):")
    assert "PUK tries left: 3" in screen
    tmux.keys("12345678", "Enter")
    tmux.wait_for("New PIN (6 to 8 characters) (q: leave):")
    tmux.keys(canaries.pin, "Enter")
    tmux.wait_for("New PIN again (q: leave):")
    tmux.keys(canaries.pin, "Enter")
    tmux.wait_for("PIN unblocked")
    tmux.wait_for("Card PIN:")  # the third prompt: the new PIN
    tmux.keys(canaries.pin, "Enter")
    screen = tmux.wait_for("LEE Siu Ming: done")
    assert "Wrong PIN, 3 tries left" not in screen and "no PIN was tried" not in screen
    _take_out(server, reader)
    screen = tmux.wait_for("EXITED")
    assert "EXITED 0" in screen, screen[-2000:]
    canaries.outputs.append(screen)


def _cells(line: str) -> list[int]:
    """The terminal column of each character of a captured line (a wide character takes two)."""
    from provision.display import cell_width

    columns, at = [], 0
    for char in line:
        columns.append(at)
        at += cell_width(char)
    return columns


def border_columns(line: str) -> list[int]:
    """Where the vertical strokes of box drawing are (corners, crossings, bars; not the horizontal lines)."""
    cells = _cells(line)
    return [cells[i] for i, char in enumerate(line) if 0x2500 <= ord(char) <= 0x257F and char not in "─━═┄┅┈┉╌╍"]


def test_the_counter_in_chinese_keeps_its_table_and_panels_aligned(tmux: Tmux, pcscd: PrivatePcscd, cards: Cards,
                                                                   canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    """--lang zh_Hant: every word of the counter in Traditional Chinese, the holders' names in Chinese,
    and the double-width characters keep the queue table's column borders and the panels' right
    edges in the same terminal columns on every row."""
    job = _two_holders(tmp_path, canaries, "counter-zh", "陳大文", "李小明")
    reader = pcscd.reader_name(1)
    tmux.start(f"{shlex.join(provision_cmd())} run {job} --lang zh_Hant --logs {tmp_path / 'logs'} "
               f"--reader {shlex.quote(reader)} --operator 'Clerk Wong'",
               {"PCSCLITE_CSOCK_NAME": pcscd.env["PCSCLITE_CSOCK_NAME"], "LANG": "C.UTF-8", **checkout_pythonpath()})  # fmt: skip
    screen = tmux.wait_for("陳大文：請輸入密碼信封上的 16 位數字")
    assert "批次 counter-zh" in screen and "持證人" in screen and "下一位" in screen and "等候中" in screen
    # The queue table: every row has its column borders in the same terminal columns as the header's.
    lines = screen.splitlines()
    top = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┏"))
    bottom = next(i for i in range(top, len(lines)) if lines[i].lstrip().startswith("└"))
    table = lines[top : bottom + 1]
    assert any("陳大文" in row for row in table) and any("李小明" in row for row in table)
    expected = border_columns(table[0])
    assert len(expected) == 5, table  # four columns
    for row in table[1:]:
        assert border_columns(row) == expected, "\n".join(table)
    tmux.keys(canaries.pkcs12_password, "Enter")
    tmux.wait_for("請插入 陳大文 的卡")
    card = cards.insert(1, kind="sim", options={"serial": 20000011})
    screen = tmux.wait_for("把此證書載入卡中？")
    assert "載入前請核對證書" in screen and "CN=陳大文" in screen
    tmux.keys("y", "Enter")
    screen = tmux.wait_for("卡的 PIN 碼：")
    assert "尚餘嘗試次數：3" in screen
    tmux.keys("123456", "Enter")
    screen = tmux.wait_for("請從讀卡器取出卡。")
    assert "陳大文：已完成" in screen and "新證書已在卡上：槽位 9c" in screen
    # The result panel: its right edge is in the same column on every line, Chinese or not.
    lines = screen.splitlines()
    done = max(i for i, line in enumerate(lines) if "陳大文：已完成" in line)
    first = max(i for i in range(done) if lines[i].lstrip().startswith("╭"))
    last = next(i for i in range(done, len(lines)) if lines[i].lstrip().startswith("╰"))
    right = border_columns(lines[first])[-1]
    for line in lines[first : last + 1]:
        assert border_columns(line)[-1] == right, "\n".join(lines[first : last + 1])
    card.remove()
    wait_for(lambda: not card_present(reader), 10, "the card to leave the reader")
    tmux.wait_for("李小明：請輸入密碼信封上的 16 位數字")
    tmux.keys("", "Enter")  # no envelope today: skip
    screen = tmux.wait_for("EXITED")
    assert "今天已略過" in screen and "已載入" in screen
    assert "1 loaded, 1 pending" in screen and "EXITED 1" in screen  # status names stay as recorded
    report = json.loads(next((tmp_path / "logs" / "reports").glob("*.json")).read_text(encoding="utf-8"))
    assert report["language"] == "zh_Hant" and report["jobs"][0]["status"] == "loaded"
    html = next((tmp_path / "logs" / "reports").glob("*.html")).read_text(encoding="utf-8")
    assert "智能卡證書載入報告" in html and "陳大文" in html
    canaries.outputs.append(screen)
    assert "123456" not in screen


def test_the_alignment_check_sees_a_misaligned_row() -> None:
    """A table laid out as if a Chinese character took one cell (the bug rich's cell widths avoid):
    the check above would catch it."""
    header = "┃ # ┃ 持證人 ┃"
    good = "│ 1 │ 陳大文 │"
    narrow = "│ 1 │ 陳大文    │"  # padded for 3 cells instead of 6
    assert border_columns(good) == border_columns(header)
    assert border_columns(narrow) != border_columns(header)
