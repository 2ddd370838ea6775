"""The seam under the runner: where cards come from, what they say they are, and who loads them.

The runner drives a ``CardBackend``: a source of insertion events (PC/SC readers, in-process
simulated readers, PKCS#11 slots with tokens) that also opens what it announced. ``open(reader)``
gives a ``CardHandle``; its ``identify()`` reads who the card is (read-only: a PIV card's serial
and CHUID GUID, a token's serial and label) and its ``loader(ctx, seen)`` returns the object that
runs one job's checklist on it. The journal, the audit log and the reports see the same
``LoadContext`` and ``LoadResult`` whichever backend did the work.

Two implementations: ``PivBackend`` (below: pyscard or the simulator, ``PivSession``, ``load.Loader``)
and ``provision.p11.source.Pkcs11Source`` (a PKCS#11 module, ``provision.p11.loader``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from provision.card.base import RawTransport
from provision.errors import EnvironmentProblem, ProvisionError, UsageError
from provision.i18n import msg
from provision.jobfile import CardIdentity
from provision.load import LoadContext, LoadResult

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    from provision.card.transport import ReaderState
    from provision.cardinfo import CardInfo
    from provision.piv.session import PivSession
    from provision.sim.card import SimCard


@dataclass(frozen=True)
class CardEvent:
    kind: str  # "inserted" | "removed" | "tick" (nothing happened for a while)
    reader: str


@dataclass(frozen=True)
class CardSeen:
    """What a card or token says about itself, read before anything is written."""

    serial: int | None = None  # PIV: the card serial
    guid: str | None = None  # PIV: the CHUID GUID, lowercase hex
    module: Path | None = None  # PKCS#11: the module that showed the token
    token_serial: str | None = None  # PKCS#11: CK_TOKEN_INFO serialNumber, unpadded
    token_label: str | None = None  # PKCS#11: CK_TOKEN_INFO label, unpadded
    # The other cards or tokens in view when this one was read (the module's other tokens; the
    # runner adds the cards in other readers): a job that one of them answers to too is ambiguous.
    others: tuple[CardSeen, ...] = field(default=(), compare=False, repr=False)

    @property
    def is_token(self) -> bool:
        return self.module is not None

    def claims(self, card: CardIdentity) -> bool:
        """This card is the one the job names (``any: true`` is the runner's business)."""
        target = card.pkcs11
        if target is not None:
            if self.module is None or not same_module(self.module, target.module):
                return False
            if target.token_serial is None and target.token_label is None:
                return False
            return (target.token_serial is None or target.token_serial == self.token_serial) and (
                target.token_label is None or target.token_label == self.token_label
            )
        if self.is_token:
            return False
        return (self.serial is not None and card.serial == self.serial) or (self.guid is not None and card.guid == self.guid)

    def takes_any(self, card: CardIdentity) -> bool:
        """``card: {any: true}`` means the next PIV card; a token is always named by the job."""
        return card.any and not self.is_token

    def audit_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"card_serial": self.serial, "chuid_guid": self.guid}
        if self.is_token:
            fields.update(token_serial=self.token_serial, token_label=self.token_label, module=str(self.module))
        return fields

    def describe(self) -> str:
        if self.is_token:
            return msg("token {label!r} (serial {serial})", label=self.token_label, serial=self.token_serial)
        if self.serial is not None:
            return msg("serial {serial}", serial=self.serial)
        return msg("GUID {guid}", guid=self.guid) if self.guid else msg("no serial or GUID")


def same_module(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


class CardLoader(Protocol):
    result: LoadResult

    def run(self) -> LoadResult: ...


class CardHandle(Protocol):
    """One card or token, open for one job attempt."""

    def identify(self) -> CardSeen:
        """Who the card is; read-only."""
        ...

    def loader(self, ctx: LoadContext, seen: CardSeen) -> CardLoader: ...

    @property
    def operations(self) -> int:
        """Commands sent so far (APDUs for PIV, PKCS#11 calls for a token): the reports' ``apdus``."""
        ...

    def close(self) -> None:
        """End the transaction or session; never raises a ProvisionError."""
        ...


class CardBackend(Protocol):
    def events(self, timeout: float | None) -> Iterator[CardEvent]: ...

    def open(self, reader: str) -> CardHandle: ...

    def done_with(self, reader: str) -> None: ...

    def present(self) -> list[str]: ...


class PivSource(Protocol):
    """What ``sim.source.SimSource`` and ``readers.PcscSource`` offer: PIV cards behind raw transports."""

    def events(self, timeout: float | None) -> Iterator[Any]: ...

    def connect(self, reader: str) -> RawTransport: ...

    def done_with(self, reader: str) -> None: ...

    def present(self) -> list[str]: ...


class PivCard:
    """A PIV card through pyscard or the simulator: one PC/SC transaction per job attempt."""

    def __init__(self, transport: RawTransport) -> None:
        self.transport = transport
        self.session: Any = None

    def identify(self) -> CardSeen:
        from provision.card.apdu import ApduChannel
        from provision.piv.session import PivSession

        self.transport.begin_transaction()
        self.session = PivSession(ApduChannel(self.transport))
        self.session.select()
        return CardSeen(serial=self.session.serial(), guid=self.session.read_chuid())

    def loader(self, ctx: LoadContext, seen: CardSeen) -> CardLoader:
        from provision.load import Loader

        return Loader(ctx, self.session, seen.serial, chuid_guid=seen.guid)

    @property
    def operations(self) -> int:
        return int(self.transport.apdu_count)

    def close(self) -> None:
        try:
            self.transport.end_transaction()
            self.transport.close()
        except ProvisionError:
            pass


class PivBackend:
    """PIV cards from a reader source; everything else the source offers (``requeue``) passes through."""

    def __init__(self, source: PivSource) -> None:
        self.source = source

    def events(self, timeout: float | None) -> Iterator[CardEvent]:
        return self.source.events(timeout)

    def open(self, reader: str) -> CardHandle:
        return PivCard(self.source.connect(reader))

    def done_with(self, reader: str) -> None:
        self.source.done_with(reader)

    def present(self) -> list[str]:
        return self.source.present()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


def as_backend(source: Any) -> CardBackend:
    """A backend as is; a PIV reader source (``connect``) wrapped in ``PivBackend``."""
    if hasattr(source, "open") and not hasattr(source, "connect"):
        return source  # type: ignore[no-any-return]
    return PivBackend(source)


class MixedBackend:
    """Several backends at once (PIV readers and PKCS#11 tokens in one batch).

    Their events are taken in turn; every backend ticks regularly, so none starves the others.
    The run ends when every backend's events end."""

    def __init__(self, backends: list[CardBackend]) -> None:
        self.backends = backends
        self._owner: dict[str, CardBackend] = {}

    def events(self, timeout: float | None) -> Iterator[CardEvent]:
        streams = [(b, b.events(timeout)) for b in self.backends]
        while streams:
            for entry in list(streams):
                backend, stream = entry
                try:
                    event = next(stream)
                except StopIteration:
                    streams.remove(entry)
                    continue
                if event.reader:
                    self._owner[event.reader] = backend
                yield event

    def _backend(self, reader: str) -> CardBackend:
        owner = self._owner.get(reader)
        if owner is not None:
            return owner
        for backend in self.backends:
            if reader in backend.present():
                return backend
        return self.backends[0]

    def open(self, reader: str) -> CardHandle:
        return self._backend(reader).open(reader)

    def done_with(self, reader: str) -> None:
        self._backend(reader).done_with(reader)

    def present(self) -> list[str]:
        return [reader for backend in self.backends for reader in backend.present()]


# --- what commands ask the PIV backend (they never open a channel or a session themselves) ------


def pcsc_readers() -> list[ReaderState]:
    """Every PC/SC reader, with whether a card is in it (``provision readers``)."""
    from provision.card.transport import list_readers

    return list_readers()


def connect_pcsc(reader: str) -> RawTransport:
    """A transport to the card in the PC/SC reader ``reader``; the caller closes it."""
    from provision.card.transport import connect

    return connect(reader)


def read_card_behind(transport: RawTransport) -> CardInfo:
    """SELECT the PIV application behind ``transport`` and describe the card, read-only
    (``cardinfo.read_card_info``: no PIN, no management key, no write)."""
    from provision.card.apdu import ApduChannel
    from provision.cardinfo import read_card_info
    from provision.piv.session import PivSession

    session = PivSession(ApduChannel(transport))
    session.select()
    return read_card_info(session)


def the_reader(reader: str | None) -> str:
    """``reader``, or when None the one reader with a card in it (none or several is the operator's
    to resolve: --reader)."""
    if reader is not None:
        return reader
    present = [r.name for r in pcsc_readers() if r.card_present]
    if not present:
        raise EnvironmentProblem(msg('no card is in any reader; insert one (or name a reader with --reader)'))
    if len(present) > 1:
        raise UsageError(msg('cards are in several readers ({join}); choose one with --reader', join=', '.join(present)))
    return present[0]


def read_card_in_reader(reader: str | None) -> tuple[str, CardInfo]:
    """``provision card info``: (the reader's name, the card in it described read-only). ``reader``
    None: the one reader with a card in it (none or several is the operator's to resolve)."""
    transport = connect_pcsc(the_reader(reader))
    try:
        info = read_card_behind(transport)
    finally:
        transport.close()
    return transport.reader, info


@contextlib.contextmanager
def piv_session_in_reader(reader: str | None) -> Iterator[tuple[str, PivSession]]:
    """``provision card unblock-pin|change-pin|change-puk``: the PIV application SELECTed on the
    card in ``reader`` (None: the one reader with a card in it), closed afterwards."""
    from provision.card.apdu import ApduChannel
    from provision.piv.session import PivSession

    transport = connect_pcsc(the_reader(reader))
    try:
        session = PivSession(ApduChannel(transport))
        session.select()
        yield transport.reader, session
    finally:
        transport.close()


def preload_sim_card(card: SimCard, slot: int, key: PrivateKeyTypes, certificate_der: bytes, slot_name: str) -> None:
    """Put a key, its certificate and a slot name into ``slot`` of a simulated card with the factory
    management key, as an earlier load would have (the demo's old e-Cert); the card is reset after."""
    from provision.card.apdu import ApduChannel
    from provision.piv.profiles import DEFAULT_MANAGEMENT_KEY
    from provision.piv.session import PivSession
    from provision.sim.inprocess import SimTransport

    card.power_on()
    session = PivSession(ApduChannel(SimTransport(card)))
    session.select()
    session.authenticate(DEFAULT_MANAGEMENT_KEY)
    session.import_key(slot, key)  # type: ignore[arg-type]  # a key type PIV refuses raises
    session.write_certificate(slot, certificate_der)
    session.write_slot_name(slot, slot_name)
    card.reset()
