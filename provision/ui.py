"""The plain faces of a run: what the runner's UI interface (``runner.RunUI``) is when there is no
counter screen.

``UnattendedUI``: nobody is there; messages go to stderr, PINs and passwords come from the job
file's sources, nothing is asked. ``TerminalUI``: a person at a plain terminal (no counter screen):
the citizen types the card PIN at a prompt on the terminal, one card at a time, and is told which
card to insert next. The counter screen (``provision.counter``) and the tests are the other
implementations; the composition root (``provision.app``) chooses one and hands it to the runner.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from provision.display import printable
from provision.errors import SecretError
from provision.i18n import gettext as _
from provision.i18n import localize, msg, ngettext
from provision.jobfile import Job
from provision.runner import Turn
from provision.secrets import Secret, typed_secret

if TYPE_CHECKING:
    from provision.runner import Runner

Say = Callable[[str], None]


def to_stderr(text: str) -> None:
    sys.stderr.write(printable(text) + "\n")


def terminal_pin_prompt(holder: str, tries: int | None) -> Secret:
    """A person at the terminal types the card PIN, seeing how many tries are left (workflow step 10)."""
    import getpass

    if tries is None:
        left = _("tries left unknown")
    else:
        left = ngettext("{n} try left", "{n} tries left", tries).format(n=tries)
    if not sys.stdin.isatty():
        raise SecretError(msg("the card PIN must be typed at the counter, but there is no terminal"))
    prompt = _("PIN of the card of {holder} ({left}): ").format(holder=holder, left=left)
    try:
        return typed_secret(getpass.getpass(printable(prompt), stream=sys.stderr), "PIN")
    except (EOFError, KeyboardInterrupt):
        raise SecretError(msg("no PIN was typed")) from None


class UnattendedUI:
    """Nobody at the station: the runner's messages are the only output; nothing is asked."""

    types_pins = False
    checks_certificates = False

    def __init__(self, say: Say = to_stderr) -> None:
        self._say = say

    def say(self, text: str) -> None:
        self._say(localize(text))  # the runner's sentences are English (recorded); shown in the chosen language

    def ask_pin(self, holder: str, tries: int | None) -> Secret:
        raise SecretError(msg("the card PIN of {holder} cannot be typed: the run is unattended", holder=holder))

    def confirm(self, job: Job, info: Any, slot_name: str, replaced: Any) -> bool:
        return True  # never asked (checks_certificates is False)

    def announce_next(self, job: Job) -> list[str]:
        return []  # nobody to hand the next card over

    def offer_unblock(self, holder: str, tries: int, make_service: Any) -> bool:
        return False  # the PUK is the holder's: unblocking is offered at the counter screen only

    def begin(self, run: Runner) -> None:
        pass  # no screen to lay out

    def between_cards(self, run: Runner) -> Turn:
        return Turn.TAKE_CARD  # every card is handled as it comes

    def card_handled(self, run: Runner, reader: str) -> None:
        pass  # the runner's own lines said it

    def ended(self, run: Runner) -> None:
        pass


class TerminalUI(UnattendedUI):
    """A person at a plain terminal: PINs typed at a prompt, one card at a time, the next card named."""

    types_pins = True

    def ask_pin(self, holder: str, tries: int | None) -> Secret:
        return terminal_pin_prompt(holder, tries)

    def announce_next(self, job: Job) -> list[str]:
        if job.card.serial is not None:
            return ["", msg("Insert the card of {holder} (serial {serial}).", holder=job.holder, serial=job.card.serial)]
        return ["", msg("Insert the card of {holder}.", holder=job.holder)]
