"""Tokens behind PKCS#11 modules as a card backend: slots with a token are the runner's "readers".

Events come from polling ``C_GetSlotList(tokenPresent)`` every half second (``C_WaitForSlotEvent`` is
not implemented by SoftHSM2 and blocks the whole module in others). A slot whose token is not
initialised (SoftHSM2's spare slot, a blank card) is not offered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provision.backend import (
    CardBackend,
    CardEvent,
    CardHandle,
    CardLoader,
    CardSeen,
    MixedBackend,
    as_backend,
)
from provision.errors import CardRemovedError
from provision.i18n import msg
from provision.jobfile import JobFile
from provision.load import LoadContext
from provision.p11.module import Module, open_module, p11_errors

POLL_SECONDS = 0.5


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).rstrip(" \x00")


class Pkcs11Token:
    """One token, held for one job attempt: the module's lock is ours from ``open`` to ``close``."""

    def __init__(self, module: Module, slot_id: int, reader: str) -> None:
        self.module = module
        self.slot_id = slot_id
        self.reader = reader
        self.calls = 0
        self._sessions: list[Any] = []
        self._seen: CardSeen | None = None
        module.lock.acquire()

    def _slot(self) -> Any:
        self.calls += 1
        for slot in self.module.lib.get_slots(token_present=True):
            if slot.slot_id == self.slot_id:
                return slot
        raise CardRemovedError(msg('the token in {reader} was removed', reader=self.reader))

    def token(self) -> Any:
        """The token as it is now (``C_GetTokenInfo`` again: flags and PIN counters change)."""
        with p11_errors(msg('reading the token in {reader}', reader=self.reader)):
            self.calls += 1
            return self._slot().get_token()

    def identify(self) -> CardSeen:
        token = self.token()
        self._seen = CardSeen(module=self.module.path, token_serial=_text(token.serial), token_label=_text(token.label),
                              others=self._other_tokens())  # fmt: skip
        return self._seen

    def _other_tokens(self) -> tuple[CardSeen, ...]:
        """The module's other tokens as they say they are (two NSS databases both say serial
        0000000000000000; two SoftHSM2 tokens may share a label): read under the module's lock."""
        import pkcs11

        others: list[CardSeen] = []
        with p11_errors(msg("listing the tokens beside {reader}", reader=self.reader)):
            self.calls += 1
            for slot in self.module.lib.get_slots(token_present=True):
                if slot.slot_id == self.slot_id:
                    continue
                try:
                    token = slot.get_token()
                except pkcs11.PKCS11Error:
                    continue  # pulled between the two calls, or not recognised
                others.append(CardSeen(module=self.module.path, token_serial=_text(token.serial),
                                       token_label=_text(token.label)))  # fmt: skip
        return tuple(others)

    def seen_now(self) -> CardSeen:
        token = self.token()
        return CardSeen(module=self.module.path, token_serial=_text(token.serial), token_label=_text(token.label))

    def open_session(self, *, user_pin: Any = None, so_pin: Any = None) -> Any:
        """A read-write session; with ``user_pin`` (or ``so_pin``) also ``C_Login`` as the user (or
        the Security Officer). PKCS#11 errors pass through."""
        token = self.token()
        self.calls += 2 if user_pin is not None or so_pin is not None else 1
        session = token.open(rw=True, so_pin=so_pin) if so_pin is not None else token.open(rw=True, user_pin=user_pin)
        self._sessions.append(session)
        return session

    def loader(self, ctx: LoadContext, seen: CardSeen) -> CardLoader:
        from provision.p11.loader import Pkcs11Loader

        return Pkcs11Loader(ctx, self, seen)

    @property
    def operations(self) -> int:
        return self.calls

    def close(self) -> None:
        import pkcs11

        try:
            for session in reversed(self._sessions):
                try:
                    session.close()  # the last session closed also logs the user out
                except pkcs11.PKCS11Error:
                    pass
            self._sessions.clear()
        finally:
            self.module.lock.release()


class Pkcs11Source:
    """Every initialised token of the given modules."""

    def __init__(self, modules: list[Path], poll: float = POLL_SECONDS) -> None:
        self.modules = [open_module(path) for path in modules]
        self.poll = poll
        self._known: dict[str, tuple[Module, int]] = {}
        self._scan_lock = threading.Lock()
        self._names = {m.path: (m.path.name if [x.path.name for x in self.modules].count(m.path.name) == 1
                                else str(m.path)) for m in self.modules}  # fmt: skip

    def _scan(self) -> dict[str, tuple[Module, int]] | None:
        """Slots with an initialised token now; None when a module is busy with a job (ask later).
        Scans wait for each other (the runner's loop and its workers both ask): only a job makes
        a module busy."""
        with self._scan_lock:
            return self._scan_now()

    def _scan_now(self) -> dict[str, tuple[Module, int]] | None:
        import pkcs11
        from pkcs11 import TokenFlag

        found: dict[str, tuple[Module, int]] = {}
        for module in self.modules:
            if not module.lock.acquire(blocking=False):
                return None
            try:
                for slot in module.lib.get_slots(token_present=True):
                    try:
                        token = slot.get_token()
                    except pkcs11.PKCS11Error:
                        continue  # pulled between the two calls, or not recognised
                    if not token.flags & TokenFlag.TOKEN_INITIALIZED:
                        continue
                    found[f"{self._names[module.path]} slot {slot.slot_id}"] = (module, slot.slot_id)
            except pkcs11.PKCS11Error:
                continue  # the module's slot list is unavailable for now; the next poll asks again
            finally:
                module.lock.release()
        return found

    def events(self, timeout: float | None) -> Iterator[CardEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._known = self._scan() or {}
        for reader in self._known:
            yield CardEvent("inserted", reader)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            time.sleep(self.poll if left is None else min(self.poll, left))
            now = self._scan()
            if now is not None:
                for reader in now.keys() - self._known.keys():
                    yield CardEvent("inserted", reader)
                for reader in self._known.keys() - now.keys():
                    yield CardEvent("removed", reader)
                self._known = now
            yield CardEvent("tick", "")

    def open(self, reader: str) -> CardHandle:
        if reader not in self._known:
            self._known = self._scan() or self._known
        if reader not in self._known:
            raise CardRemovedError(msg('no token in {reader}', reader=reader))
        module, slot_id = self._known[reader]
        return Pkcs11Token(module, slot_id, reader)

    def done_with(self, reader: str) -> None:
        pass  # a token stays where it is; a pulled one is noticed by the next poll

    def present(self) -> list[str]:
        # Only looks: the tokens known to ``events`` stay as they are, or a token found here first
        # would never be told as inserted (the runner asks from its workers too).
        now = self._scan()
        return list(now if now is not None else self._known)


def with_pkcs11_tokens(jobfile: JobFile, piv_source: Any) -> Any:
    """The card source of a run: the PIV readers, the PKCS#11 tokens the jobs name, or both."""
    modules: list[Path] = []
    for job in jobfile.jobs:
        target = job.card.pkcs11
        if target is not None and target.module.resolve() not in modules:
            modules.append(target.module.resolve())
    if not modules:
        return piv_source
    tokens = Pkcs11Source(modules)
    if piv_source is None:
        return tokens
    backends: list[CardBackend] = [as_backend(piv_source), tokens]
    return MixedBackend(backends)
