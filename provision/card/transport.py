"""PC/SC through pyscard: the only module of the product that imports ``smartcard``.

It speaks the low-level ``smartcard.scard`` API (a thin wrapper over WinSCard on Windows,
PCSC.framework on macOS and pcsc-lite on Linux) so that every PC/SC return code passes through
one place, :func:`error_for`, and leaves as one of our typed errors, never as a pyscard exception.

``smartcard`` is imported lazily: ``provision --help`` stays fast, and a machine without pyscard or
without a PC/SC library gets an :class:`EnvironmentProblem` with one clear sentence (exit 3).

Handles and contexts of pcsc-lite are not for two threads at once: use a transport, and a
:func:`watch` iterator, from one thread at a time (``provision.early`` hands a connection over to
the runner's worker only after its own thread has finished with it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Literal

from provision.errors import (
    CardError,
    CardProtocolError,
    CardRemovedError,
    EnvironmentProblem,
    ProvisionError,
    ReaderGoneError,
    ServiceDownError,
    TransientCardError,
)
from provision.i18n import msg

# PC/SC return codes. They are the same numbers on WinSCard, macOS and pcsc-lite, so they live here
# as data (and the unit tests check them against pyscard's own constants).
PCSC_CODES: dict[int, str] = {
    0x00000000: "SCARD_S_SUCCESS",
    0x80100001: "SCARD_F_INTERNAL_ERROR",
    0x80100002: "SCARD_E_CANCELLED",
    0x80100003: "SCARD_E_INVALID_HANDLE",
    0x80100004: "SCARD_E_INVALID_PARAMETER",
    0x80100005: "SCARD_E_INVALID_TARGET",
    0x80100006: "SCARD_E_NO_MEMORY",
    0x80100007: "SCARD_F_WAITED_TOO_LONG",
    0x80100008: "SCARD_E_INSUFFICIENT_BUFFER",
    0x80100009: "SCARD_E_UNKNOWN_READER",
    0x8010000A: "SCARD_E_TIMEOUT",
    0x8010000B: "SCARD_E_SHARING_VIOLATION",
    0x8010000C: "SCARD_E_NO_SMARTCARD",
    0x8010000D: "SCARD_E_UNKNOWN_CARD",
    0x8010000E: "SCARD_E_CANT_DISPOSE",
    0x8010000F: "SCARD_E_PROTO_MISMATCH",
    0x80100010: "SCARD_E_NOT_READY",
    0x80100011: "SCARD_E_INVALID_VALUE",
    0x80100012: "SCARD_E_SYSTEM_CANCELLED",
    0x80100013: "SCARD_F_COMM_ERROR",
    0x80100014: "SCARD_F_UNKNOWN_ERROR",
    0x80100015: "SCARD_E_INVALID_ATR",
    0x80100016: "SCARD_E_NOT_TRANSACTED",
    0x80100017: "SCARD_E_READER_UNAVAILABLE",
    0x80100018: "SCARD_P_SHUTDOWN",
    0x80100019: "SCARD_E_PCI_TOO_SMALL",
    0x8010001A: "SCARD_E_READER_UNSUPPORTED",
    0x8010001B: "SCARD_E_DUPLICATE_READER",
    0x8010001C: "SCARD_E_CARD_UNSUPPORTED",
    0x8010001D: "SCARD_E_NO_SERVICE",
    0x8010001E: "SCARD_E_SERVICE_STOPPED",
    0x8010001F: "SCARD_E_UNEXPECTED",
    0x80100020: "SCARD_E_ICC_INSTALLATION",
    0x80100021: "SCARD_E_ICC_CREATEORDER",
    0x80100022: "SCARD_E_UNSUPPORTED_FEATURE",
    0x80100023: "SCARD_E_DIR_NOT_FOUND",
    0x80100024: "SCARD_E_FILE_NOT_FOUND",
    0x80100025: "SCARD_E_NO_DIR",
    0x80100026: "SCARD_E_NO_FILE",
    0x80100027: "SCARD_E_NO_ACCESS",
    0x80100028: "SCARD_E_WRITE_TOO_MANY",
    0x80100029: "SCARD_E_BAD_SEEK",
    0x8010002A: "SCARD_E_INVALID_CHV",
    0x8010002B: "SCARD_E_UNKNOWN_RES_MNG",
    0x8010002C: "SCARD_E_NO_SUCH_CERTIFICATE",
    0x8010002D: "SCARD_E_CERTIFICATE_UNAVAILABLE",
    0x8010002E: "SCARD_E_NO_READERS_AVAILABLE",
    0x8010002F: "SCARD_E_COMM_DATA_LOST",
    0x80100030: "SCARD_E_NO_KEY_CONTAINER",
    0x80100031: "SCARD_E_SERVER_TOO_BUSY",
    0x80100065: "SCARD_W_UNSUPPORTED_CARD",
    0x80100066: "SCARD_W_UNRESPONSIVE_CARD",
    0x80100067: "SCARD_W_UNPOWERED_CARD",
    0x80100068: "SCARD_W_RESET_CARD",
    0x80100069: "SCARD_W_REMOVED_CARD",
    0x8010006A: "SCARD_W_SECURITY_VIOLATION",
    0x8010006B: "SCARD_W_WRONG_CHV",
    0x8010006C: "SCARD_W_CHV_BLOCKED",
    0x8010006D: "SCARD_W_EOF",
    0x8010006E: "SCARD_W_CANCELLED_BY_USER",
    0x8010006F: "SCARD_W_CARD_NOT_AUTHENTICATED",
}
_CODE = {name: code for code, name in PCSC_CODES.items()}

# What each PC/SC code means for us, in one table for every platform (pcsc-lite, WinSCard, macOS):
#   card-gone     the card left (or never was there, or stopped answering): the operator re-inserts it
#   reader-gone   the reader was unplugged or its driver went away
#   service-down  the service is not there: pcsc-lite answers SCARD_E_NO_SERVICE when its socket is
#                 gone and SCARD_F_COMM_ERROR to a call under way when the daemon died; Windows says
#                 SCARD_E_SERVICE_STOPPED when the service stops under an open context
#   transient     another program reset the card or took the reader for a moment: worth a reconnect
# A code in none of them is asked about (see ``_service_gone``): a pcsc-lite daemon that is shutting
# down may answer a call with a code that names something else (SCARD_W_SECURITY_VIOLATION to
# SCardGetStatusChange, seen in tests/pcsc/test_run_ends.py), so such a code means "the service
# went away" only when a fresh context then finds no service; with a live service it keeps its
# own meaning (a polkit refusal is SCARD_W_SECURITY_VIOLATION too).
CODE_KINDS: dict[str, tuple[str, ...]] = {
    "card-gone": ("SCARD_W_REMOVED_CARD", "SCARD_E_NO_SMARTCARD", "SCARD_W_UNPOWERED_CARD",
                  "SCARD_W_UNRESPONSIVE_CARD"),
    "reader-gone": ("SCARD_E_READER_UNAVAILABLE", "SCARD_E_UNKNOWN_READER"),
    "service-down": ("SCARD_E_NO_SERVICE", "SCARD_E_SERVICE_STOPPED", "SCARD_F_COMM_ERROR"),
    "transient": ("SCARD_W_RESET_CARD", "SCARD_E_NOT_TRANSACTED", "SCARD_E_SHARING_VIOLATION"),
}  # fmt: skip
_CARD_GONE = frozenset(_CODE[n] for n in CODE_KINDS["card-gone"])
_READER_GONE = frozenset(_CODE[n] for n in CODE_KINDS["reader-gone"])
_SERVICE_DOWN = frozenset(_CODE[n] for n in CODE_KINDS["service-down"])
_TRANSIENT = frozenset(_CODE[n] for n in CODE_KINDS["transient"])
_NO_READERS = _CODE["SCARD_E_NO_READERS_AVAILABLE"]
_TIMEOUT = _CODE["SCARD_E_TIMEOUT"]
_NOT_TRANSACTED = _CODE["SCARD_E_NOT_TRANSACTED"]
_COMM_ERROR = _CODE["SCARD_F_COMM_ERROR"]

# Reader-state bits of SCARD_READERSTATE (identical on all three platforms).
STATE_UNAWARE = 0x0000
STATE_CHANGED = 0x0002
STATE_UNKNOWN = 0x0004
STATE_UNAVAILABLE = 0x0008
STATE_EMPTY = 0x0010
STATE_PRESENT = 0x0020
STATE_MUTE = 0x0200

PNP_NOTIFICATION = "\\\\?PnP?\\Notification"

# pcsc-lite's daemon polls the vpcd driver every 400 ms; a real reader reports within about as long.
_REINSERT_GRACE_S = 0.5
_WATCH_SLICE_MS = 1000  # wake up at least this often so that Ctrl-C is seen
# How long a code outside the table is checked against a fresh context. pcsc-lite's daemon takes
# about a second between SIGTERM and closing its socket; a live service answers at once.
_SERVICE_PROBE_S = 3.0
# pcsc-lite refuses a wait on more states than it has reader slots (PCSCLITE_MAX_READERS_CONTEXTS,
# 16 in Debian's build: SCARD_E_INVALID_PARAMETER): with every slot used by a reader there is no
# room for the PnP pseudo-reader, and new readers are found by listing instead.
_MAX_WAIT_STATES = 16


def code_name(code: int) -> str:
    """``SCARD_E_NO_SERVICE`` for 0x8010001D; a hex number for a code we do not know."""
    code &= 0xFFFFFFFF
    return PCSC_CODES.get(code, f"0x{code:08X}")


def error_for(code: int, action: str, reader: str | None = None) -> ProvisionError:
    """The typed error for a failed PC/SC call. ``action`` says what we tried, in words."""
    code &= 0xFFFFFFFF  # WinSCard's LONG is signed: 0x80100069 may arrive as a negative number
    name = code_name(code)
    # A fragment translated where the sentence is shown (localize() translates a Msg parameter).
    where = msg(" in reader '{reader}'", reader=reader) if reader else ""
    if code in _CARD_GONE:
        return CardRemovedError(
            msg('{action}: the card{where} was removed or stopped answering ({name}); re-insert it and run again', action=action, where=where, name=name)
        )
    if code in _READER_GONE:
        return ReaderGoneError(
            msg('{action}: the reader{named} is gone ({name}); reconnect it, then check `provision readers`', action=action, named=' ' + repr(reader) if reader else '', name=name)
        )
    if code in _SERVICE_DOWN:
        return ServiceDownError(
            msg("{action}: the PC/SC service is not running ({name}); start it (pcscd on Linux, the 'Smart Card' service on Windows) and run again", action=action, name=name)
        )
    if code in _TRANSIENT:
        return TransientCardError(msg('{action}{where} was interrupted ({name}); reconnecting', action=action, where=where, name=name))
    if code == _NO_READERS:
        return EnvironmentProblem(
            msg('{action}: no smart-card reader is connected ({name}); connect one and run again', action=action, name=name)
        )
    return CardError(msg('{action}{where} failed: {name}', action=action, where=where, name=name))


# --- ATR --------------------------------------------------------------------------------------


def historical_bytes(atr: bytes) -> bytes:
    """The historical bytes of an ATR (ISO/IEC 7816-3 8.2); empty for a malformed ATR."""
    if len(atr) < 2:
        return b""
    count = atr[1] & 0x0F
    y = atr[1] >> 4
    i = 2
    while True:
        i += bin(y & 0x0F).count("1")  # TAi, TBi, TCi, TDi present?
        if not y & 0x8:  # no TDi: interface bytes end here
            break
        if i - 1 >= len(atr):
            return b""
        y = atr[i - 1] >> 4  # high nibble of TDi announces the next group
    if i + count > len(atr):
        return b""
    return atr[i : i + count]


def atr_supports_extended(atr: bytes) -> bool:
    """Whether the ATR announces extended Lc/Le (ISO/IEC 7816-4 8.1.1.2.7, third software table b7).

    The card capabilities are the COMPACT-TLV object with tag 7 in the historical bytes (category
    indicator ``00`` or ``80``); its third byte's bit 7 means "extended Lc and Le fields".
    """
    hist = historical_bytes(atr)
    if not hist or hist[0] not in (0x00, 0x80):
        return False
    body = hist[1:-3] if hist[0] == 0x00 else hist[1:]  # category 00 ends with 3 status bytes
    i = 0
    while i < len(body):
        tag, length = body[i] >> 4, body[i] & 0x0F
        value = body[i + 1 : i + 1 + length]
        if len(value) < length:
            return False
        if tag == 0x7:
            return len(value) >= 3 and bool(value[2] & 0x40)
        i += 1 + length
    return False


def atr_offers_t1(atr: bytes) -> bool:
    """Whether the ATR offers T=1 (a TDi byte with protocol 1, ISO/IEC 7816-3 8.2.3). PC/SC takes
    T=1 whenever the card offers it and T=0 otherwise (pcsc-lite's PHSetProtocol)."""
    if len(atr) < 2:
        return False
    y, i = atr[1] >> 4, 2
    while y & 0x8:
        i += bin(y & 0x07).count("1")  # TAi, TBi, TCi before TDi
        if i >= len(atr):
            return False
        if atr[i] & 0x0F == 1:
            return True
        y, i = atr[i] >> 4, i + 1
    return False


# --- pyscard access ----------------------------------------------------------------------------


def _scard() -> ModuleType:
    """``smartcard.scard``, or an EnvironmentProblem saying what to install."""
    try:
        import smartcard.scard as scard
    except ImportError as exc:
        raise EnvironmentProblem(
            msg('pyscard cannot be loaded ({exc}); install pyscard and the PC/SC library (Debian: pcscd libpcsclite1; Windows and macOS have PC/SC built in)', exc=exc)
        ) from exc
    except OSError as exc:
        raise EnvironmentProblem(
            msg('the PC/SC library cannot be loaded ({exc}); install it (Debian: libpcsclite1)', exc=exc)
        ) from exc
    module: ModuleType = scard
    return module


def _check(code: int, action: str, reader: str | None = None) -> None:
    code &= 0xFFFFFFFF
    if not code:
        return
    if not _classified(code) and _service_gone():
        raise ServiceDownError(msg(
            "{action}: the PC/SC service went away ({code}, then SCARD_E_NO_SERVICE); start it (pcscd on "
            "Linux, the 'Smart Card' service on Windows) and run again", action=action, code=code_name(code)))
    raise error_for(code, action, reader)


def _classified(code: int) -> bool:
    """Whether the table above (or a code the callers handle themselves) says what ``code`` means."""
    return (code in _CARD_GONE or code in _READER_GONE or code in _SERVICE_DOWN or code in _TRANSIENT
            or code in (_NO_READERS, _TIMEOUT))  # fmt: skip


def _service_gone() -> bool:
    """Whether the PC/SC service is gone, as a fresh context finds it: True when establishing one or
    listing the readers through it answers a service-down code; False as soon as both succeed (the
    service is alive: the odd code was about the call, not the service). A service that keeps
    answering something else for ``_SERVICE_PROBE_S`` seconds is not called gone (False): never
    a claim the probe did not see. Bounded: never a hang."""
    scard = _scard()
    deadline = time.monotonic() + _SERVICE_PROBE_S
    while True:
        code, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        code &= 0xFFFFFFFF
        if not code:
            try:
                code = scard.SCardListReaders(ctx, [])[0] & 0xFFFFFFFF
            finally:
                scard.SCardReleaseContext(ctx)
            if code in (0, _NO_READERS):
                return False
        if code in _SERVICE_DOWN:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class _Context:
    """An SCARDCONTEXT that is released exactly once."""

    def __init__(self) -> None:
        self.scard = _scard()
        code, handle = self.scard.SCardEstablishContext(self.scard.SCARD_SCOPE_USER)
        _check(code, msg("connecting to the PC/SC service"))
        self.handle: Any = handle

    def release(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self.scard.SCardReleaseContext(handle)  # nothing useful to do if this fails

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _reader_names(ctx: _Context) -> list[str]:
    code, names = ctx.scard.SCardListReaders(ctx.handle, [])
    if code & 0xFFFFFFFF == _NO_READERS:
        return []
    _check(code, msg("listing the readers"))
    return list(names)


def _status(ctx: _Context, names: Sequence[str]) -> list[tuple[str, int, bytes]]:
    """Each reader's (name, event state, ATR) right now."""
    if not names:
        return []
    code, states = ctx.scard.SCardGetStatusChange(
        ctx.handle, 0, [(name, STATE_UNAWARE) for name in names]
    )
    if code & 0xFFFFFFFF == _TIMEOUT:
        return []
    _check(code, msg("reading the readers' state"))
    return [(name, int(state), bytes(atr)) for name, state, atr in states]


# --- readers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderState:
    """One reader as PC/SC sees it. ``atr`` is empty when no card is in it."""

    name: str
    card_present: bool
    atr: bytes = b""
    mute: bool = False  # a card is in, but it did not answer the reset

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "card_present": self.card_present, "atr": self.atr.hex().upper(),
                "mute": self.mute}


def _reader_state(name: str, state: int, atr: bytes) -> ReaderState:
    present = bool(state & STATE_PRESENT)
    return ReaderState(name, present, atr if present else b"", mute=bool(state & STATE_MUTE))


def list_readers() -> list[ReaderState]:
    """The readers now connected, with the ATR of the card in each. No reader: an empty list."""
    with _Context() as ctx:
        return [_reader_state(*s) for s in _status(ctx, _reader_names(ctx))]


@dataclass(frozen=True)
class ReaderEvent:
    """Something changed: a card came or went, a reader appeared or disappeared."""

    kind: Literal["inserted", "removed", "reader-added", "reader-removed"]
    reader: str
    atr: bytes = b""  # of the inserted card


def watch(
    known: Sequence[ReaderState] | None = None, timeout: float | None = None
) -> Iterator[ReaderEvent]:
    """Insertion and removal events on every reader, new readers included, until ``timeout``.

    ``known`` is what the caller already believes (say, from :func:`list_readers`); anything that
    differs from it is reported at once, so nothing falls between a listing and the watch. Without
    it, the state at the start is the baseline. ``timeout`` is the total time in seconds (None:
    until the caller stops iterating). Readers that appear are found through the PnP pseudo-reader
    ``\\\\?PnP?\\Notification`` where the platform has it, and by listing once a second otherwise.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with _Context() as ctx:
        # name -> (event state as last seen, ATR)
        seen: dict[str, tuple[int, bytes]] = {}
        if known is None:
            for name, state, atr in _status(ctx, _reader_names(ctx)):
                seen[name] = (state & ~STATE_CHANGED, atr)
        else:
            for r in known:
                seen[r.name] = (STATE_PRESENT if r.card_present else STATE_EMPTY, r.atr)
            yield from _diff_readers(ctx, seen)
        pnp_state: int | None = 0  # None: the platform has no PnP notification
        while True:
            wait_ms = _WATCH_SLICE_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                wait_ms = max(0, min(wait_ms, int(left * 1000)))
            query = [(name, state) for name, (state, _) in seen.items()]
            pnp_now = pnp_state is not None and len(query) < _MAX_WAIT_STATES
            if pnp_state is not None and pnp_now:
                query.append((PNP_NOTIFICATION, pnp_state))
            if not query:  # pcsc-lite cannot wait on nothing: no readers and no PnP
                time.sleep(wait_ms / 1000)
                yield from _diff_readers(ctx, seen)
                continue
            code, states = ctx.scard.SCardGetStatusChange(ctx.handle, wait_ms, query)
            code &= 0xFFFFFFFF
            if code == _TIMEOUT:
                if not pnp_now:
                    yield from _diff_readers(ctx, seen)
                continue
            if code in _READER_GONE or code == _NO_READERS:
                # One reader of the list vanished before we asked: re-list and go on.
                yield from _diff_readers(ctx, seen)
                continue
            _check(code, msg("waiting for cards"))
            for name, state, atr in states:
                state = int(state)
                if name == PNP_NOTIFICATION:
                    if state & STATE_UNKNOWN:
                        pnp_state = None  # not supported here: fall back to listing
                    elif state & STATE_CHANGED:
                        pnp_state = state & ~STATE_CHANGED
                        yield from _diff_readers(ctx, seen)
                    continue
                if name not in seen or not state & STATE_CHANGED:
                    continue
                yield from _reader_changed(seen, name, state, bytes(atr))


def _reader_changed(
    seen: dict[str, tuple[int, bytes]], name: str, state: int, atr: bytes
) -> Iterator[ReaderEvent]:
    old_state, _ = seen[name]
    if state & (STATE_UNKNOWN | STATE_UNAVAILABLE):
        del seen[name]
        if old_state & STATE_PRESENT:
            yield ReaderEvent("removed", name)
        yield ReaderEvent("reader-removed", name)
        return
    state &= ~STATE_CHANGED
    seen[name] = (state, atr)
    was, now = bool(old_state & STATE_PRESENT), bool(state & STATE_PRESENT)
    # The high word counts insertions and removals: a card swapped between two polls still shows.
    swapped = was and now and (old_state >> 16) != (state >> 16) and old_state >> 16 != 0
    if was and (not now or swapped):
        yield ReaderEvent("removed", name)
    if now and (not was or swapped):
        yield ReaderEvent("inserted", name, atr)


def _diff_readers(ctx: _Context, seen: dict[str, tuple[int, bytes]]) -> Iterator[ReaderEvent]:
    """Re-list the readers; report the ones that came and went, and cards that differ from ``seen``."""
    current = {name: (state, atr) for name, state, atr in _status(ctx, _reader_names(ctx))}
    for name in list(seen):
        if name not in current:
            was_present = bool(seen.pop(name)[0] & STATE_PRESENT)
            if was_present:
                yield ReaderEvent("removed", name)
            yield ReaderEvent("reader-removed", name)
    for name, (state, atr) in current.items():
        if name not in seen:
            seen[name] = (STATE_EMPTY, b"")
            yield ReaderEvent("reader-added", name)
        yield from _reader_changed(seen, name, state | STATE_CHANGED, atr)


# --- one card ----------------------------------------------------------------------------------


def resolve_reader(name: str, readers: Sequence[str]) -> str:
    """The reader called ``name`` exactly, or the only one whose name contains it (any case)."""
    if name in readers:
        return name
    matches = [r for r in readers if name.lower() in r.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ReaderGoneError(
            msg("no reader matches '{name}'; connected: {readers}", name=name, readers=", ".join(readers) or msg("none"))
        )
    raise EnvironmentProblem(msg("'{name}' matches several readers ({matches}); be more precise", name=name, matches=', '.join(matches)))


class PcscTransport:
    """One card connection, shared with other programs (SCARD_SHARE_SHARED), T=0 or T=1.

    Implements :class:`provision.card.base.RawTransport`. Keep the object while you use the card;
    :meth:`close` leaves the card powered (SCARD_LEAVE_CARD), so other programs' handles survive.
    """

    def __init__(self, ctx: _Context, reader: str) -> None:
        self._ctx = ctx
        self._scard = ctx.scard
        self.reader = reader
        self.apdu_count = 0
        self._handle: Any = None
        self._protocol = 0
        self._atr = b""
        self._in_transaction = False
        self._connect()

    def _connect(self) -> None:
        s = self._scard
        code = 0
        for attempt in range(2):
            code, handle, protocol = s.SCardConnect(
                self._ctx.handle, self.reader, s.SCARD_SHARE_SHARED,
                s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1,
            )
            if not code & 0xFFFFFFFF:
                self._handle, self._protocol = handle, int(protocol)
                break
            # Right after a quick remove and re-insert, pcscd may not have powered the new card
            # yet: one connect misses. Give it one polling period before calling the card gone.
            if attempt == 0 and code & 0xFFFFFFFF in _CARD_GONE:
                time.sleep(_REINSERT_GRACE_S)
                continue
            break
        _check(code, msg("connecting to the card"), self.reader)
        code, _reader, _state, _protocol, atr = s.SCardStatus(self._handle)
        _check(code, msg("reading the card's ATR"), self.reader)
        self._atr = bytes(atr)

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def protocol(self) -> str:
        return "T=1" if self._protocol == self._scard.SCARD_PROTOCOL_T1 else "T=0"

    @property
    def supports_extended(self) -> bool:
        """The ATR announces extended Lc/Le, and the protocol can carry them (T=0 cannot)."""
        return self.protocol == "T=1" and atr_supports_extended(self._atr)

    def _live_handle(self) -> Any:
        if self._handle is None:
            raise CardError(msg("the connection to '{reader}' is closed", reader=self.reader))
        return self._handle

    def transmit(self, apdu: bytes) -> bytes:
        code, response = self._scard.SCardTransmit(self._live_handle(), self._protocol, list(apdu))
        self.apdu_count += 1
        code &= 0xFFFFFFFF
        data = bytes(response) if not code else b""
        if code in _CARD_GONE or (len(data) < 2 and code in (0, _NOT_TRANSACTED, _COMM_ERROR)):
            # A card pulled during the exchange shows as an empty answer or "not transacted"
            # before the service has noticed the removal: wait one polling period to tell.
            gone = self._card_gone_code()
            if gone:
                raise error_for(gone, msg("sending a command to the card"), self.reader)
        _check(code, msg("sending a command to the card"), self.reader)
        if len(data) < 2:
            raise CardProtocolError(
                msg("the card in '{reader}' answered {n} byte(s), without a status word", reader=self.reader, n=len(data))
            )
        return data

    def _card_gone_code(self) -> int:
        """The PC/SC code saying the card left, if it did within one polling period; else 0."""
        deadline = time.monotonic() + _REINSERT_GRACE_S + 0.2
        while True:
            code = self._scard.SCardStatus(self._handle)[0] & 0xFFFFFFFF
            if code in _CARD_GONE or code in _SERVICE_DOWN or code in _READER_GONE:
                return int(code)
            if time.monotonic() >= deadline:
                return 0
            time.sleep(0.05)

    def unchanged(self) -> bool:
        """Whether the card connected to is still there as it was: not pulled (or swapped) and not
        reset since the connection was made. PC/SC answers SCARD_W_REMOVED_CARD or SCARD_W_RESET_CARD
        on a handle whose card left or was reset (pcsc-lite, WinSCard and macOS alike)."""
        if self._handle is None:
            return False
        return not self._scard.SCardStatus(self._handle)[0] & 0xFFFFFFFF

    def begin_transaction(self) -> None:
        _check(self._scard.SCardBeginTransaction(self._live_handle()), msg("locking the card"), self.reader)
        self._in_transaction = True

    def end_transaction(self) -> None:
        if not self._in_transaction or self._handle is None:
            return
        self._in_transaction = False
        code = self._scard.SCardEndTransaction(self._handle, self._scard.SCARD_LEAVE_CARD)
        _check(code, msg("unlocking the card"), self.reader)

    def close(self) -> None:
        """Disconnect, leaving the card powered; then release the context. Safe to call twice."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._in_transaction = False
            # A card already gone cannot be disconnected cleanly; there is nothing to do about it.
            self._scard.SCardDisconnect(handle, self._scard.SCARD_LEAVE_CARD)
        self._ctx.release()

    def __enter__(self) -> PcscTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PcscTransport(reader={self.reader!r}, apdus={self.apdu_count})"


def connect(reader: str) -> PcscTransport:
    """Connect to the card in ``reader`` (exact name, or a unique part of it)."""
    ctx = _Context()
    try:
        names = _reader_names(ctx)
        if not names:
            raise EnvironmentProblem(msg('no smart-card reader is connected; connect one and run again'))
        return PcscTransport(ctx, resolve_reader(reader, names))
    except BaseException:
        ctx.release()
        raise
