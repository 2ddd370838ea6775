"""The bridge between a simulated card and vpcd, the virtual reader driver of pcscd.

vpcd (package ``vsmartcard-vpcd``) listens on TCP (35963 for "Virtual PCD 00 00", 35964 for
"... 00 01"); the card side connects to it. Each message is a 2-byte big-endian length and a
payload. A 1-byte payload is a control: 0 power off, 1 power on, 2 reset, 4 "send your ATR" (the
only control that is answered; vpcd also uses it to poll whether the card is still there). A longer
payload is a command APDU, answered with the response APDU. Closing the socket pulls the card.

Two socket options matter: ``TCP_NODELAY`` and ``TCP_QUICKACK`` (set again before every receive,
since Linux clears it), or each APDU waits ~40 ms for a delayed acknowledgement.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from provision.errors import CardVanished, EnvironmentProblem, UsageError
from provision.i18n import msg
from provision.sim.card import ATR_NAMES, SimCard, SimOptions

log = logging.getLogger(__name__)

DEFAULT_PORT = 35963
CTRL_POWER_OFF = 0
CTRL_POWER_ON = 1
CTRL_RESET = 2
CTRL_ATR = 4
SW_UNKNOWN_ERROR = b"\x6f\x00"

_POLL_S = 0.2  # how often a blocked receive looks at the stop event
_CONNECT_RETRY_S = 0.1

ServeOutcome = Literal["stopped", "vanished", "closed"]


class BridgedCard(Protocol):
    """What the bridge needs from a card (``provision.sim.card.SimCard`` has it)."""

    @property
    def atr(self) -> bytes: ...

    def process(self, apdu: bytes) -> bytes: ...

    def power_on(self) -> None: ...

    def reset(self) -> None: ...


class PullEvent(threading.Event):
    """A stop event that also wakes a receive blocked in ``select`` at once: pulling the card then
    closes its connection right away, as a real reader reports a removal at once, instead of at
    the receive's next look at the event (up to ``_POLL_S`` later). ``close`` frees its sockets."""

    def __init__(self) -> None:
        super().__init__()
        self._wake, self._waker = socket.socketpair()

    def set(self) -> None:
        super().set()
        try:
            self._waker.send(b"!")
        except OSError:
            pass  # closed already: nobody waits on it

    def fileno(self) -> int:
        return self._wake.fileno()

    def close(self) -> None:
        self._wake.close()
        self._waker.close()


def _card_vanished_type() -> type[BaseException]:
    """The exception a card raises to leave the reader (stand-in cards in tests raise it too)."""
    return CardVanished


@dataclass
class _Peer:
    sock: socket.socket

    def quickack(self) -> None:
        # Linux only (the option is missing elsewhere); it is reset by the kernel after use.
        if hasattr(socket, "TCP_QUICKACK"):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def recv_exact(self, size: int, stop_event: threading.Event | None) -> bytes | None:
        """``size`` bytes, or None when vpcd closed the connection or ``stop_event`` was set."""
        chunks = bytearray()
        while len(chunks) < size:
            if stop_event is not None:
                if stop_event.is_set():
                    return None
                watched: list[Any] = [self.sock, stop_event] if isinstance(stop_event, PullEvent) else [self.sock]
                ready, _, _ = select.select(watched, [], [], _POLL_S)
                if self.sock not in ready:
                    continue
            self.quickack()
            try:
                chunk = self.sock.recv(size - len(chunks))
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def send_frame(self, payload: bytes) -> bool:
        try:
            self.sock.sendall(struct.pack(">H", len(payload)) + payload)
        except (ConnectionResetError, BrokenPipeError):
            return False
        return True


def _connect(
    host: str, port: int, timeout: float, stop_event: threading.Event | None
) -> socket.socket | None:
    """A connection to vpcd, retried while it is not listening yet. None if stopped meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if stop_event is not None and stop_event.is_set():
            return None
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise EnvironmentProblem(
                    msg('vpcd does not answer on {host}:{port} ({reason}); start pcscd with the vsmartcard-vpcd driver (package vsmartcard-vpcd) and try again', host=host, port=port, reason=exc.strerror or exc)
                ) from exc
            time.sleep(_CONNECT_RETRY_S)
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _answer(card: BridgedCard, apdu: bytes, vanished: type[BaseException]) -> bytes:
    try:
        response = card.process(apdu)
    except vanished:
        raise
    except Exception:  # noqa: BLE001 - a card never goes silent: any fault is 6F00, and logged
        log.exception("the simulated card failed on an APDU; answering 6F00")
        return SW_UNKNOWN_ERROR
    if len(response) < 2 or len(response) > 0xFFFF:
        log.error("the simulated card gave a %d-byte answer; answering 6F00", len(response))
        return SW_UNKNOWN_ERROR
    return response


def serve(
    card: BridgedCard,
    host: str = "localhost",
    port: int = DEFAULT_PORT,
    *,
    stop_event: threading.Event | None = None,
    reconnect: bool = True,
    connect_timeout: float = 30.0,
) -> ServeOutcome:
    """Put ``card`` into the vpcd reader on ``host:port`` and answer pcscd until something ends it.

    Returns ``"stopped"`` when ``stop_event`` is set (the card is pulled), ``"vanished"`` when the
    card raised ``CardVanished`` (socket closed: pcscd sees a removal), ``"closed"`` when vpcd
    closed the connection and ``reconnect`` is False. With ``reconnect`` (the default) a closed
    connection is opened again, as when pcscd restarts. Calling ``serve`` again re-inserts the card.
    Raises EnvironmentProblem when vpcd is not listening within ``connect_timeout`` seconds.
    """
    vanished = _card_vanished_type()
    while True:
        sock = _connect(host, port, connect_timeout, stop_event)
        if sock is None:
            return "stopped"
        peer = _Peer(sock)
        try:
            outcome = _serve_connection(card, peer, stop_event, vanished)
        finally:
            sock.close()
        if outcome != "closed" or not reconnect:
            return outcome
        log.info("vpcd closed the connection on port %d; connecting again", port)


def _serve_connection(
    card: BridgedCard, peer: _Peer, stop_event: threading.Event | None, vanished: type[BaseException]
) -> ServeOutcome:
    while True:
        header = peer.recv_exact(2, stop_event)
        if header is None:
            return "stopped" if stop_event is not None and stop_event.is_set() else "closed"
        (length,) = struct.unpack(">H", header)
        payload = peer.recv_exact(length, stop_event) if length else b""
        if payload is None:
            return "stopped" if stop_event is not None and stop_event.is_set() else "closed"
        if length == 1:
            control = payload[0]
            try:
                if control == CTRL_ATR:
                    if not peer.send_frame(card.atr):
                        return "closed"
                elif control == CTRL_POWER_ON:
                    card.power_on()
                elif control in (CTRL_POWER_OFF, CTRL_RESET):
                    card.reset()  # power off loses the same volatile state as a reset
                else:
                    log.warning("unknown vpcd control %d ignored", control)
            except vanished:
                return "vanished"
            continue
        if length == 0:
            continue
        try:
            response = _answer(card, payload, vanished)
        except vanished:
            return "vanished"
        if not peer.send_frame(response):
            return "closed"


# --- `provision sim serve` ---------------------------------------------------------------------


def parse_firmware(text: str) -> tuple[int, int, int]:
    """``"5.2.7"`` -> ``(5, 2, 7)``; a UsageError for anything else."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise UsageError(msg('--firmware takes three numbers like 5.2.7, not {given!r}', given=text))
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_atr(text: str) -> bytes:
    """``--atr``: ``nfc`` (a YubiKey 5 NFC in a contactless reader), ``usb`` (a YubiKey 5 on USB) or
    the ATR in hex (spaces and colons allowed); a UsageError for anything else."""
    named = ATR_NAMES.get(text.strip().lower())
    if named is not None:
        return named
    digits = text.replace(" ", "").replace(":", "")
    try:
        atr = bytes.fromhex(digits)
    except ValueError:
        atr = b""
    if not 2 <= len(atr) <= 33 or atr[0] not in (0x3B, 0x3F):
        raise UsageError(msg('--atr takes nfc, usb or an ATR in hex starting with 3B or 3F (2-33 bytes), not {given!r}', given=text))
    return atr


def sim_options(values: dict[str, Any]) -> SimOptions:
    """``SimOptions`` from command-line values (None: the default); bad values are a UsageError."""
    chosen = {k: v for k, v in values.items() if v is not None}
    known = {f.name for f in fields(SimOptions)}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise UsageError(msg('the simulated card has no option {unknown}', unknown=', '.join(unknown)))
    if isinstance(chosen.get("firmware"), str):
        chosen["firmware"] = parse_firmware(chosen["firmware"])
    if isinstance(chosen.get("atr"), str):
        chosen["atr"] = parse_atr(chosen["atr"])
    if "apdu_log" in chosen:
        chosen["apdu_log"] = Path(chosen["apdu_log"])
    try:
        return SimOptions(**chosen)
    except (TypeError, ValueError) as exc:
        raise UsageError(msg('simulated card: {exc}', exc=exc)) from exc


def run_sim_server(
    port: int = DEFAULT_PORT,
    serial: int | None = None,
    state: Path | None = None,
    firmware: str | tuple[int, int, int] | None = None,
    latency_ms: float | None = None,
    vanish_after: int | None = None,
    fail_after: int | None = None,
    apdu_log: Path | None = None,
    profile: str | None = None,
    atr: str | bytes | None = None,
    *,
    host: str = "localhost",
    stop_event: threading.Event | None = None,
    connect_timeout: float = 30.0,
    **more_options: Any,
) -> int:
    """``provision sim serve``: one simulated card in the vpcd reader until stopped. Returns 0.

    SIGTERM and SIGINT pull the card and return 0. A card that vanishes (``--vanish-after``) ends
    the server too: killing or ending the process is pulling the card. ``more_options`` are further
    ``SimOptions`` fields (``pin_tries``, ``no_f7`` ...). Bad options raise UsageError (exit 2);
    vpcd not listening within ``connect_timeout`` seconds raises EnvironmentProblem (exit 3).
    """
    options = sim_options(
        {
            "serial": serial,
            "firmware": firmware,
            "latency_ms": latency_ms,
            "vanish_after": vanish_after,
            "fail_after": fail_after,
            "apdu_log": apdu_log,
            "profile": profile,
            "atr": atr,
            **more_options,
        }
    )
    try:
        card = SimCard(options, state)
    except ValueError as exc:  # a state file of another card
        raise UsageError(str(exc)) from exc
    stop = stop_event or threading.Event()
    restore: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            restore[signum] = signal.signal(signum, lambda _n, _f: stop.set())
    try:
        outcome = serve(card, host, port, stop_event=stop, reconnect=True, connect_timeout=connect_timeout)
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)
    log.info("simulated card %d on port %d: %s", options.serial, port, outcome)
    return 0
