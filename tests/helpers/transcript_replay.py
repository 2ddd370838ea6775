"""Replay a recorded APDU conversation with a PIV card that is not ours (tests/unit/data/*.apdu).

A transcript has ``> command`` and ``< answer`` lines (hex) and ``#`` comment lines. The replay
answers each command as the real card did, in whatever order it comes: a command's answer and the
GET RESPONSE answers that followed it belong together. A command the real card never saw is
answered ``6D00`` and remembered in ``unknown``, so a test can require that there were none.
"""

from __future__ import annotations

from pathlib import Path

from provision.card.apdu import ApduChannel
from provision.piv.session import PivSession
from tests.helpers.scripted_transport import ScriptedTransport, h


def exchanges(transcript: Path) -> list[tuple[bytes, bytes]]:
    pairs: list[tuple[bytes, bytes]] = []
    command: bytes | None = None
    for line in transcript.read_text().splitlines():
        if line.startswith("> "):
            command = bytes.fromhex(line[2:])
        elif line.startswith("< "):
            assert command is not None
            pairs.append((command, bytes.fromhex(line[2:])))
            command = None
    return pairs


class TranscriptReplay:
    def __init__(self, transcript: Path) -> None:
        self.answers: dict[bytes, list[bytes]] = {}
        self.pending: list[bytes] = []
        self.unknown: list[bytes] = []
        last: list[bytes] | None = None
        for command, response in exchanges(transcript):
            if command[1] == 0xC0 and last is not None:
                last.append(response)
                continue
            last = [response]
            self.answers[command] = last

    def __call__(self, apdu: bytes) -> bytes:
        if apdu[1] == 0xC0:
            return self.pending.pop(0) if self.pending else h("6F 00")
        chain = self.answers.get(apdu)
        if chain is None:
            self.unknown.append(apdu)
            return h("6D 00")
        self.pending = list(chain[1:])
        return chain[0]


def replay_session(transcript: Path, apdus: int = 400) -> tuple[PivSession, TranscriptReplay]:
    replay = TranscriptReplay(transcript)
    transport = ScriptedTransport([(None, replay) for _ in range(apdus)])
    return PivSession(ApduChannel(transport)), replay
