"""PIN service at the counter: unblock the PIN with the PUK, change the PIN, change the PUK.

Any PIV card: RESET RETRY COUNTER (``00 2C 00 80``, PUK || new PIN) and CHANGE REFERENCE DATA
(``00 24 00 80`` PIN, ``00 24 00 81`` PUK), each value padded with FF to 8. The rules a person at a
counter relies on:

- the tries left are shown before every attempt, read without spending one (VERIFY without data for
  the PIN; GET METADATA on slot 81 for the PUK where the card has it, else "unknown");
- a secret not given by a source is typed at the terminal without echo; a new value is typed twice;
- the last PUK try is spent only after a person typed "yes, this is the last try" at the terminal
  (never from options alone: unattended, one PUK try left refuses); a blocked one is never tried;
- nothing is retried automatically, and every attempt is audited (never a value);
- a successful unblock lifts a PIN hold of the journal on that card (a person has just set the PIN).

Used by ``provision card unblock-pin|change-pin|change-puk`` (through ``open_card_service``) and by
the counter screen (``u``: the citizen unblocks a blocked card and the load goes on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from provision.errors import CardError, CardNotSupportedError, PinError, PukError, SecretError
from provision.i18n import gettext as _
from provision.i18n import msg
from provision.secrets import Secret, SecretSource, obtain

if TYPE_CHECKING:
    from provision.journal import PinHolds
    from provision.piv.session import PivSession

KEY_REF_PIN = 0x80
KEY_REF_PUK = 0x81
LAST_TRY_ANSWER = "yes, this is the last try"

Recorder = Callable[..., None]  # audit: record(event, **fields)


class PinServiceUI(Protocol):
    """The person at the terminal (the CLI's terminal, the counter screen)."""

    def say(self, text: str) -> None: ...

    def ask_secret(self, prompt: str) -> Secret:
        """A value typed without echo; SecretError when there is no terminal or nothing was typed."""
        ...

    def confirm_last_try(self, what: str) -> bool:
        """True only when a person typed LAST_TRY_ANSWER at the terminal."""
        ...


@dataclass(frozen=True)
class PinServiceResult:
    action: str  # unblock-pin | change-pin | change-puk
    card_serial: int | None
    chuid_guid: str | None
    pin_tries_left: int | None
    puk_tries_left: int | None  # None: the card cannot tell without spending one
    pin_hold_cleared: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "ok": True, "card_serial": self.card_serial, "chuid_guid": self.chuid_guid,
                "pin_tries_left": self.pin_tries_left, "puk_tries_left": self.puk_tries_left,
                "pin_hold_cleared": self.pin_hold_cleared}  # fmt: skip


def tries_text(tries: int | None) -> str:
    return _("unknown (this card cannot tell without spending one)") if tries is None else str(tries)


class PinService:
    """One card's PIN and PUK, for a person at a terminal. Never retries, never prints."""

    def __init__(self, session: PivSession, ui: PinServiceUI, *, record: Recorder,
                 holds: PinHolds | None = None) -> None:  # fmt: skip
        self.session = session
        self.ui = ui
        self.record = record
        self.holds = holds
        self.card_serial: int | None = None
        self.chuid_guid: str | None = None

    def identify(self) -> None:
        with contextlib.suppress(CardError):
            self.card_serial = self.session.serial()
        with contextlib.suppress(CardError):
            self.chuid_guid = self.session.read_chuid()

    def _audit(self, event: str, **fields: Any) -> None:
        self.record(event, card_serial=self.card_serial, chuid_guid=self.chuid_guid, **fields)

    # --- tries, read without spending one ---

    def pin_tries(self) -> int | None:
        return self.session.pin_tries()

    def puk_tries(self) -> int | None:
        try:
            return self.session.puk_tries()
        except CardNotSupportedError:
            return None

    # --- secrets ---

    def _secret(self, source: SecretSource | None, prompt: str) -> Secret:
        if source is not None:
            return obtain(source, unattended=True)
        return self.ui.ask_secret(prompt)

    def _new_secret(self, source: SecretSource | None, what: str) -> Secret:
        if source is not None:
            return obtain(source, unattended=True)
        first = self.ui.ask_secret(f"New {what} (6 to 8 characters)")
        second = self.ui.ask_secret(f"New {what} again")
        try:
            if first.reveal() != second.reveal():
                first.wipe()
                raise SecretError(msg('the two new {what}s typed differ; nothing was sent to the card', what=what))
        finally:
            second.wipe()
        return first

    def _spend_puk_try(self, puk_left: int | None, action: str) -> None:
        """Refuse a blocked PUK; spend the last try only with a person's explicit yes."""
        if puk_left == 0:
            self._audit(action, outcome="refused", reason="puk_blocked", puk_tries_left=0)
            raise PukError(msg('the PUK of this card is blocked (0 tries left); nothing was sent. The card can only be reset (its keys and certificates are lost) or replaced'), 0)  # fmt: skip
        if puk_left == 1 and not self.ui.confirm_last_try("PUK"):
            self._audit(action, outcome="refused", reason="last_puk_try_not_confirmed", puk_tries_left=1)
            raise PukError(msg("the card has 1 PUK try left; it is spent only when a person types '{LAST_TRY_ANSWER}' at the terminal. Nothing was sent to the card", LAST_TRY_ANSWER=LAST_TRY_ANSWER), 1)  # fmt: skip

    # --- the three services ---

    def unblock_pin(self, *, puk: SecretSource | None = None, new_pin: SecretSource | None = None) -> PinServiceResult:
        """RESET RETRY COUNTER: a new PIN with all its tries, proven by the PUK."""
        puk_left = self.puk_tries()
        self.ui.say(msg("PUK tries left: {tries}", tries=tries_text(puk_left)))
        self._spend_puk_try(puk_left, "pin_unblock")
        with self._secrets(puk, "PUK", new_pin, "PIN") as (old, new):
            try:
                self.session.unblock_pin(old, new)
            except PukError as exc:
                self._audit("pin_unblock", outcome="wrong", puk_tries_left=exc.tries_left)
                raise
        pin_left, puk_after = self.pin_tries(), self.puk_tries()
        self._audit("pin_unblock", outcome="ok", pin_tries_left=pin_left, puk_tries_left=puk_after)
        cleared = False
        if self.holds is not None and (self.card_serial is not None or self.chuid_guid):
            lifted = self.holds.clear(self.card_serial, self.chuid_guid)
            if lifted is not None:
                cleared = True
                self._audit("pin_hold_cleared", outcome="cleared", by="unblock", held_since=lifted.since,
                            held_by_run=lifted.run_id, held_by_job=lifted.job_id)  # fmt: skip
        return PinServiceResult("unblock-pin", self.card_serial, self.chuid_guid, pin_left, puk_after, cleared)

    def change_pin(self, *, pin: SecretSource | None = None, new_pin: SecretSource | None = None) -> PinServiceResult:
        """CHANGE REFERENCE DATA on the PIN: the current PIN proves it (a wrong one costs a try)."""
        pin_left = self.pin_tries()
        self.ui.say(msg("PIN tries left: {tries}", tries=tries_text(pin_left)))
        if pin_left == 0:
            self._audit("pin_change", outcome="refused", reason="pin_blocked", pin_tries_left=0)
            raise PinError(msg("the PIN is blocked; nothing was sent. Unblock it with the PUK: 'provision card unblock-pin'"), 0)  # fmt: skip
        self._change_reference(KEY_REF_PIN, "PIN", pin, new_pin)
        pin_left = self.pin_tries()
        self._audit("pin_change", outcome="ok", pin_tries_left=pin_left)
        return PinServiceResult("change-pin", self.card_serial, self.chuid_guid, pin_left, self.puk_tries())

    def change_puk(self, *, puk: SecretSource | None = None, new_puk: SecretSource | None = None) -> PinServiceResult:
        """CHANGE REFERENCE DATA on the PUK: the current PUK proves it (a wrong one costs a try)."""
        puk_left = self.puk_tries()
        self.ui.say(msg("PUK tries left: {tries}", tries=tries_text(puk_left)))
        self._spend_puk_try(puk_left, "puk_change")
        self._change_reference(KEY_REF_PUK, "PUK", puk, new_puk)
        puk_after = self.puk_tries()
        self._audit("puk_change", outcome="ok", puk_tries_left=puk_after)
        return PinServiceResult("change-puk", self.card_serial, self.chuid_guid, self.pin_tries(), puk_after)

    def _change_reference(self, key_ref: int, what: str, old_source: SecretSource | None,
                          new_source: SecretSource | None) -> None:  # fmt: skip
        """CHANGE REFERENCE DATA on the PIN or the PUK; a wrong current value is audited (one try
        spent, never retried) and raised as the session's PinError or PukError."""
        event, error = ("pin_change", PinError) if key_ref == KEY_REF_PIN else ("puk_change", PukError)
        with self._secrets(old_source, what, new_source, what) as (old, new):
            try:
                self.session.change_reference(key_ref, old, new)
            except error as exc:
                self._audit(event, outcome="wrong", **{f"{what.lower()}_tries_left": exc.tries_left})
                raise

    @contextlib.contextmanager
    def _secrets(self, old_source: SecretSource | None, old_what: str, new_source: SecretSource | None,
                 new_what: str) -> Iterator[tuple[Secret, Secret]]:  # fmt: skip
        old = self._secret(old_source, f"Current {old_what}" if old_what == new_what else old_what)
        try:
            new = self._new_secret(new_source, new_what)
        except BaseException:
            old.wipe()
            raise
        try:
            yield old, new
        finally:
            old.wipe()
            new.wipe()
