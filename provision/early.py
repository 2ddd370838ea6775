"""The card's identity, read while ``provision run --unattended`` is still starting.

A run's first APDU used to leave about 250 ms after the process started: the imports, the job file
and the PKCS#12 decryption came first, although identifying a card (PC/SC context, the readers,
connect, SELECT PIV, GET SERIAL, the CHUID) needs none of them. So, for an unattended run on PC/SC
readers, ``start_early_read`` does that in a thread as soon as the arguments are parsed; pyscard
releases the GIL while it waits for pcscd and the card, so those APDUs travel while the main thread
imports. The runner's worker then takes the same connection (``readers.PcscSource.connect``) and
``PivCard.identify`` parses the recorded answers: the identity APDUs are not sent twice, and the
card is matched to its job exactly as before, by the same code, from the same bytes.

Read-only, and never in the way:

* Only SELECT, GET SERIAL and GET DATA of the CHUID are sent, inside the transaction the load goes
  on with (``SCardBeginTransaction``): nothing can reach the card between the early read and the
  load but a pull or a reset, and ``take`` asks PC/SC about those (``PcscTransport.unchanged``);
  a card pulled, swapped or reset since is read again normally.
* It applies only where the run could not turn out differently: unattended (nobody at a counter),
  real readers (not ``--sim``), exactly one card in the readers the run may use, and a job file that
  names no PKCS#11 token. Anything else, and any failure of the early read (no service, no card, a
  card that is not PIV), leaves it out silently: the runner connects and identifies as it always
  did, and any error is met and reported there, once.
* Nothing is recorded here: the audit records, journal and reports come from the runner as before;
  the report's APDU count is the connection's, the early APDUs included, as before.

``PROVISION_EARLY_READ=0`` turns it off (benchmarks and tests compare the two paths).
"""

from __future__ import annotations

import os
import stat
import threading

TYPE_CHECKING = False  # importing typing costs start-up time, before the first APDU; mypy honours this name
if TYPE_CHECKING:
    from typing import Any

# How long the runner waits for an early read still under way before it connects by itself (the
# read is three APDUs; only a card or service that hangs makes it wait at all).
TAKE_WAIT_SECONDS = 10.0

# What a job file that names a PKCS#11 token contains: the key itself, or a YAML escape that could
# spell one of its letters ("\x70kcs11") or join its halves (an escaped line break in double quotes).
# The key is lowercase (YAML keys are case-sensitive); a file in UTF-16 or UTF-32 (a BOM, NUL bytes)
# is not searched at all.
_TOKEN_SIGNS = (b"pkcs11", b"\\x", b"\\u", b"\\U", b"\\\n", b"\\\r", b"\x00")


def start_early_read(jobfile: str, readers: list[str] | None) -> EarlyRead | None:
    """Start reading the card's identity in the background (None: turned off by the environment)."""
    if os.environ.get("PROVISION_EARLY_READ", "1") == "0":
        return None
    try:
        return EarlyRead(jobfile, readers)
    except RuntimeError:  # no thread to be had: the run goes on without (never a failure of its own)
        return None


class _Wrapped:
    """A connection passed through: what the runner reads of a RawTransport besides its commands."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.reader: str = transport.reader

    @property
    def apdu_count(self) -> int:
        return int(self.transport.apdu_count)  # the early APDUs are counted when they are sent

    @apdu_count.setter
    def apdu_count(self, value: int) -> None:
        self.transport.apdu_count = value

    @property
    def atr(self) -> bytes:
        return bytes(self.transport.atr)

    @property
    def supports_extended(self) -> bool:
        return bool(self.transport.supports_extended)

    @property
    def protocol(self) -> str:
        return str(self.transport.protocol)


class _Recorder(_Wrapped):
    """The transport the early reads go through: each command and its answer, in order."""

    def __init__(self, transport: Any) -> None:
        super().__init__(transport)
        self.exchanges: list[tuple[bytes, bytes]] = []

    def transmit(self, apdu: bytes) -> bytes:
        answer = bytes(self.transport.transmit(apdu))
        self.exchanges.append((bytes(apdu), answer))
        return answer

    def begin_transaction(self) -> None:
        self.transport.begin_transaction()

    def end_transaction(self) -> None:
        self.transport.end_transaction()

    def close(self) -> None:
        self.transport.close()


class PrefetchedCard(_Wrapped):
    """The early connection, handed to the runner (a ``RawTransport``): the recorded answers are given
    back for the same commands, in the same order, without sending them again; the first command
    that differs, and every one after it, goes to the card. The transaction is already held."""

    def __init__(self, transport: Any, exchanges: list[tuple[bytes, bytes]]) -> None:
        super().__init__(transport)
        self._answers = list(exchanges)
        self._in_transaction = True

    @property
    def replayed(self) -> int:
        """Recorded answers not asked for yet."""
        return len(self._answers)

    def transmit(self, apdu: bytes) -> bytes:
        if self._answers and self._answers[0][0] == bytes(apdu):
            return self._answers.pop(0)[1]
        self._answers.clear()  # from here on, the card itself answers
        return bytes(self.transport.transmit(apdu))

    def begin_transaction(self) -> None:
        if self._in_transaction:
            return
        self.transport.begin_transaction()
        self._in_transaction = True

    def end_transaction(self) -> None:
        self._in_transaction = False
        self._answers.clear()
        self.transport.end_transaction()

    def close(self) -> None:
        self._in_transaction = False
        self._answers.clear()
        self.transport.close()


class EarlyRead:
    """One background read of the one card in the readers, taken once by the runner or closed."""

    def __init__(self, jobfile: str, readers: list[str] | None) -> None:
        self._jobfile = jobfile
        self._filter = [f.lower() for f in readers or []]
        self._lock = threading.Lock()
        self._card: PrefetchedCard | None = None
        self._done = False  # taken or closed: a read that ends later closes its own connection
        self._thread = threading.Thread(target=self._read, name="early-card", daemon=True)
        self._thread.start()

    def _wanted(self, name: str) -> bool:
        return not self._filter or any(f in name.lower() for f in self._filter)

    def _read(self) -> None:
        transport: Any = None
        try:
            if not _names_no_token(self._jobfile):
                return
            from provision.card import transport as pcsc
            from provision.card.apdu import ApduChannel
            from provision.piv.identity import send_identity_reads

            cards = [r for r in pcsc.list_readers() if r.card_present and not r.mute and self._wanted(r.name)]
            if len(cards) != 1:
                return  # no card yet, or several: the runner's events decide, as before
            transport = pcsc.connect(cards[0].name)
            transport.begin_transaction()
            recorder = _Recorder(transport)
            send_identity_reads(ApduChannel(recorder))
            card = PrefetchedCard(transport, recorder.exchanges)
        except Exception:  # noqa: BLE001 - any failure: the runner reads the card itself and reports it
            card = None
        if card is None:
            _quietly_close(transport)
            return
        with self._lock:
            if not self._done:
                self._card, transport = card, None
        _quietly_close(transport)

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait up to ``timeout`` seconds for the read to end: the reader whose card it holds, or None."""
        self._thread.join(timeout)
        with self._lock:
            return self._card.reader if self._card is not None else None

    def take(self, reader: str) -> PrefetchedCard | None:
        """The early connection to the card in ``reader``, if the read succeeded and the card was
        neither pulled nor reset since; None otherwise (then connect as usual). Once: a second call,
        or one for another reader after it was taken, gives None."""
        self._thread.join(TAKE_WAIT_SECONDS)
        with self._lock:
            card = self._card
            if card is None:
                self._done = True  # nothing read, or still reading: a read that ends now closes itself
                return None
            if card.reader != reader:
                return None  # kept for its own reader's worker
            self._card, self._done = None, True
        try:
            if card.transport.unchanged():
                return card
        except Exception:  # noqa: BLE001, S110 - cannot tell: read it again
            pass
        _quietly_close(card)
        return None

    def close(self) -> None:
        """Not taken (the run ended before it needed the card, or did not use PC/SC): let it go."""
        with self._lock:
            card, self._card, self._done = self._card, None, True
        _quietly_close(card)


def _names_no_token(jobfile: str) -> bool:
    """Whether the job file is a regular file that surely names no PKCS#11 token (a run with such
    jobs would not otherwise touch PC/SC for them; it is left alone). Read without blocking: a FIFO
    or a device is not read here. Plain byte searches: conservative (a Windows path with ``\\u`` in
    it also leaves the early read out), cheap, and ``re`` need not be imported on the way."""
    if jobfile == "-":
        return False
    try:
        from provision.limits import MAX_JOBFILE_BYTES

        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(jobfile, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JOBFILE_BYTES:
                return False
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(MAX_JOBFILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError:
        return False
    return _names_no_token_in(data)


def _names_no_token_in(data: bytes) -> bool:
    if data.startswith((b"\xfe\xff", b"\xff\xfe")):
        return False
    return not any(sign in data for sign in _TOKEN_SIGNS)


def _quietly_close(transport: Any) -> None:
    if transport is None:
        return
    try:
        transport.end_transaction()
    except Exception:  # noqa: BLE001, S110 - the card may be gone: nothing to undo on it
        pass
    try:
        transport.close()
    except Exception:  # noqa: BLE001, S110
        pass
