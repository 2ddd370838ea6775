"""provision/early.py without a PC/SC service: what the early read sends, what it hands the runner,
when it stands aside (tests/pcsc/test_early_read.py does the same through a real pcscd)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from provision import early as early_module
from provision.backend import PivCard
from provision.card import transport
from provision.card.transport import ReaderState
from provision.cli import _start_early_read, build_parser
from provision.early import PrefetchedCard, start_early_read
from provision.errors import CardStatusError
from provision.readers import PcscSource
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport

READER = "Test Reader 00"


class Connection(SimTransport):
    """A simulated card behind a PC/SC-like connection that can be told it was pulled or reset."""

    def __init__(self, card: SimCard) -> None:
        super().__init__(card, READER)
        card.power_on()
        self.changed = False
        self.transactions = 0
        self.closed = False

    def unchanged(self) -> bool:
        return not self.changed

    def begin_transaction(self) -> None:
        self.transactions += 1
        super().begin_transaction()

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text("version: 1\nbatch: b\ncards:\n  - id: A\n    card: {serial: 1}\n")
    return path


def early_with(monkeypatch: pytest.MonkeyPatch, job: Path, cards: list[SimCard], *,
               readers: list[str] | None = None) -> tuple[Any, list[Connection]]:  # fmt: skip
    made: list[Connection] = []
    names = [READER] if len(cards) == 1 else [f"Test Reader 0{i}" for i in range(len(cards))]
    monkeypatch.setattr(transport, "list_readers", lambda: [ReaderState(n, True, b"\x3b") for n in names])

    def connect(name: str) -> Connection:
        made.append(Connection(cards[names.index(name)]))
        return made[-1]

    monkeypatch.setattr(transport, "connect", connect)
    early = start_early_read(str(job), readers)
    assert early is not None
    return early, made


def test_the_identity_is_read_once_and_parsed_by_the_runner(monkeypatch: pytest.MonkeyPatch, job: Path) -> None:
    card = SimCard(SimOptions(serial=4242))
    early, made = early_with(monkeypatch, job, [card])
    assert early.wait(5) == READER
    assert made[0].apdu_count == 3 and made[0].transactions == 1  # SELECT, GET SERIAL, CHUID, in a transaction
    taken = PcscSource(None, early=early).connect(READER)
    assert isinstance(taken, PrefetchedCard)
    handle = PivCard(taken)
    seen = handle.identify()
    assert seen.serial == 4242 and seen.guid == card.options.guid.hex()
    assert made[0].apdu_count == 3 and handle.operations == 3 and made[0].transactions == 1  # nothing sent again
    handle.session.read_certificate(0x9C)  # from here on the card answers
    assert made[0].apdu_count == 4 and taken.replayed == 0
    assert early.take(READER) is None  # once


def test_a_card_pulled_or_reset_since_is_read_again(monkeypatch: pytest.MonkeyPatch, job: Path) -> None:
    early, made = early_with(monkeypatch, job, [SimCard(SimOptions(serial=1))])
    assert early.wait(5) == READER
    made[0].changed = True  # PC/SC: SCARD_W_REMOVED_CARD / SCARD_W_RESET_CARD on the early handle
    assert early.take(READER) is None
    assert made[0].closed and made[0]._in_transaction is False


def test_replay_stops_at_the_first_other_command() -> None:
    sent: list[bytes] = []

    class Inner:
        reader, apdu_count, atr, supports_extended = READER, 2, b"", False

        def transmit(self, apdu: bytes) -> bytes:
            sent.append(apdu)
            return b"\x90\x00"

    card = PrefetchedCard(Inner(), [(b"\x01", b"\x11\x90\x00"), (b"\x02", b"\x22\x90\x00")])
    assert card.transmit(b"\x01") == b"\x11\x90\x00" and sent == []
    assert card.transmit(b"\x03") == b"\x90\x00" and sent == [b"\x03"]
    assert card.transmit(b"\x02") == b"\x90\x00" and sent == [b"\x03", b"\x02"]  # not replayed out of order
    assert card.apdu_count == 2


def test_a_card_without_piv_is_asked_nothing_more_and_fails_as_before(monkeypatch: pytest.MonkeyPatch,
                                                                     job: Path) -> None:  # fmt: skip
    class NotPiv(SimCard):
        def process(self, apdu: bytes) -> bytes:
            return b"\x6a\x82"

    early, made = early_with(monkeypatch, job, [NotPiv(SimOptions())])
    assert early.wait(5) == READER and made[0].apdu_count == 1
    handle = PivCard(PcscSource(None, early=early).connect(READER))
    with pytest.raises(CardStatusError, match="no PIV application"):
        handle.identify()
    assert made[0].apdu_count == 1


def test_a_card_in_another_reader_is_kept_for_its_own(monkeypatch: pytest.MonkeyPatch, job: Path) -> None:
    early, made = early_with(monkeypatch, job, [SimCard(SimOptions())])
    assert early.wait(5) == READER
    assert early.take("Another Reader") is None and not made[0].closed
    early.close()  # never taken: let go
    assert made[0].closed and early.take(READER) is None


def test_two_cards_or_a_reader_filter_that_matches_none_leave_it_to_the_runner(monkeypatch: pytest.MonkeyPatch,
                                                                              job: Path) -> None:  # fmt: skip
    early, made = early_with(monkeypatch, job, [SimCard(SimOptions()), SimCard(SimOptions())])
    assert early.wait(5) is None and made == []
    early, made = early_with(monkeypatch, job, [SimCard(SimOptions())], readers=["elsewhere"])
    assert early.wait(5) is None and made == []


@pytest.mark.parametrize("text", ["    card: {pkcs11: {module: /x.so, token_label: A}}\n",
                                  '    "card": {"\\x70kcs11": {}}\n',  # an escape that spells a letter
                                  '    "card": {"pk\\\n  cs11": {}}\n',  # an escaped line break joins the halves
                                  "  # pkcs11 mentioned in a comment\n"])  # fmt: skip
def test_a_job_file_that_may_name_a_token_is_left_to_the_runner(monkeypatch: pytest.MonkeyPatch, job: Path,
                                                                text: str) -> None:  # fmt: skip
    job.write_text(job.read_text() + text)
    early, made = early_with(monkeypatch, job, [SimCard(SimOptions())])
    assert early.wait(5) is None and made == []


def test_other_backslashes_and_uppercase_words_do_not_matter(monkeypatch: pytest.MonkeyPatch, job: Path) -> None:
    job.write_text(job.read_text() + "  # PKCS11 is not the key; C:\\certs\\a.p12\n")
    early, made = early_with(monkeypatch, job, [SimCard(SimOptions())])
    assert early.wait(5) == READER
    early.close()


@pytest.mark.posix_only
def test_a_job_file_that_is_a_fifo_is_not_read_early(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fifo = tmp_path / "job.fifo"
    os.mkfifo(fifo)
    early, made = early_with(monkeypatch, fifo, [SimCard(SimOptions())])
    assert early.wait(5) is None and made == []


def test_only_an_unattended_run_on_readers_reads_early(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, Any]] = []
    monkeypatch.setattr(early_module, "start_early_read", lambda jobfile, readers: started.append((jobfile, readers)))
    parser = build_parser()
    for argv in (["run", "j.yaml"], ["run", "j.yaml", "--unattended", "--sim"], ["validate", "j.yaml", "--unattended"],
                 ["resume", "--unattended"], ["plan", "j.yaml", "--unattended"]):  # fmt: skip
        _start_early_read(parser.parse_args(argv))
    assert started == []
    _start_early_read(parser.parse_args(["run", "j.yaml", "--unattended", "--reader", "A", "--reader", "B"]))
    assert started == [("j.yaml", ["A", "B"])]


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch, job: Path) -> None:
    monkeypatch.setenv("PROVISION_EARLY_READ", "0")
    assert start_early_read(str(job), None) is None


def test_no_thread_to_be_had_is_no_failure(monkeypatch: pytest.MonkeyPatch, job: Path) -> None:
    def refuse(self: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(early_module.threading.Thread, "start", refuse)
    assert start_early_read(str(job), None) is None
