"""The counter screen: one clerk, a queue of citizens, one card at a time.

It shows the queue (next, done, failed, waiting), the one thing to do now in plain words
("Insert the card of CHAN Tai Man"), the certificate to confirm before anything is written, the
PIN prompt with the tries left, and the result ("On Card" / "On Disk"). Between cards the clerk
can skip a holder, come back to one, or stop for the day (``provision resume`` continues). A card
blocked or below the PIN floor can be unblocked by its holder in the same visit (``u``: the PUK
and a new PIN, through ``provision.pinservice``); ``q`` or Ctrl-D leaves any prompt.

Keys are read a line at a time, and only when the screen is waiting, so that the PIN prompt
(getpass, on the terminal) never competes with a background reader.

The screen is the runner's UI at a counter (``runner.RunUI``: it says, asks the PIN, shows the
certificate to confirm), handed to the runner by ``provision.app``. It has no loop of its own: at
each event of the runner's loop it has its turn (``between_cards``: call the next holder, read the
clerk's key, or end the day), and it is told when their card was handled (``card_handled``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from provision import journal as jn
from provision.display import failure_text, printable
from provision.errors import BundleError, InternalError, OperatorDeclined, SecretError
from provision.i18n import N_, localize, msg, ngettext
from provision.i18n import gettext as _
from provision.jobfile import Job, JobFile
from provision.limits import MAX_SECRET_CHARS
from provision.plan import open_bundle
from provision.runner import JobState, Runner, Turn
from provision.secrets import Secret, typed_secret

if TYPE_CHECKING:
    from provision.bundle import Bundle, Inspection

POLL_SECONDS = 0.3
# The keys stay s, l, b, q, y, u in every language; the words around them are translated.
HELP = N_("Enter: the card is in   s: skip this holder   l: later (after the others)   b N: back to holder N   q: stop for today")
# The queue's status column: what the clerk reads (the journal's status names stay as they are).
STATUS_SHOWN = {
    jn.PENDING: N_("waiting"),
    jn.IN_DOUBT: N_("in doubt"),
    jn.LOADED: N_("loaded"),
    jn.SKIPPED: N_("already on the card"),
    jn.FAILED: N_("failed"),
    jn.REFUSED: N_("refused"),
    "skipped today": N_("skipped today"),
    "later": N_("later"),
    "done (earlier run)": N_("done (earlier run)"),
    "NEXT": N_("NEXT"),
}

# Prompts a job file usually gives (its own words are data; these common ones are translated).
COMMON_PROMPTS = (N_("16-digit number on the PIN envelope"), N_("Card PIN"), N_("PUK"), N_("new PIN"))


def tries_left(tries: int | None) -> str:
    """PIN tries left in words, in the chosen language."""
    if tries is None:
        return _("tries left unknown")
    return ngettext("{n} try left", "{n} tries left", tries).format(n=tries)


def shown(text: object, style: str = "") -> Text:
    """Words for the screen built from data (names, subjects, messages): never rich markup, and
    control characters shown as escapes, so a holder called ``[bold red]x`` or ``\x1b[2J`` is
    displayed as written and cannot restyle or clear the clerk's screen."""
    return Text(printable(str(text)), style=style)


def input_ready(timeout: float) -> bool:
    """Whether a line can be read from stdin within ``timeout`` seconds, without blocking."""
    if sys.platform == "win32":  # pragma: no cover - counter PCs on Windows
        import msvcrt

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if msvcrt.kbhit():
                return True
            time.sleep(0.05)
        return False
    import select

    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready)


class CounterRun(Protocol):
    """What the counter screen asks of the run it is attached to (``runner.Runner`` is one)."""

    @property
    def states(self) -> list[JobState]: ...

    @property
    def jobfile(self) -> JobFile: ...

    def accept_bundle(self, state: JobState, inspection: Inspection | None, bundle: Bundle | None,
                      problem: BundleError | None) -> None: ...  # fmt: skip

    def put_cards_back(self) -> None: ...


class CounterScreen:
    """The runner's UI at a counter (``runner.RunUI``): the clerk's queue, one holder at a time."""

    types_pins = True  # the citizen types the PIN, one card at a time
    checks_certificates = True  # the clerk checks each certificate before it is written (workflow step 8)

    def __init__(self, *, console: Console | None = None, read_line: Callable[[], str] | None = None) -> None:
        self._runner: CounterRun | None = None  # the run whose queue this is (attach)
        self.console = console or Console(stderr=True, highlight=False)
        self.read_line = read_line or (lambda: sys.stdin.readline())
        self.order: list[str] = []  # the queue, as the clerk arranges it
        self.later: set[str] = set()  # put back to the end of the queue
        self.skipped: set[str] = set()  # skipped today (they stay pending in the journal)
        self.earlier: set[str] = set()  # done by an earlier run of the day (the journal says so)
        self.stopping = False  # the clerk left a prompt with q or Ctrl-D: the day ends
        self.called: JobState | None = None  # the holder asked to hand over their card now
        self.take_out: str | None = None  # the reader whose card the clerk is asked to take out
        self._pin_asked: tuple[str, int | None] | None = None  # the last PIN prompt of this card

    def attach(self, runner: CounterRun) -> None:
        """The run whose holders this screen calls, in job-file order to begin with."""
        self._runner = runner
        self.order = [s.job.id for s in runner.states]

    @property
    def runner(self) -> CounterRun:
        """The attached run (``attach``, called by the runner's ``begin`` before anything else)."""
        if self._runner is None:
            raise InternalError(msg("the counter screen was used before a run was attached to it; this is a bug, "
                                    "please report it"))  # fmt: skip
        return self._runner

    # --- the runner's loop gives the screen its turn ---

    def begin(self, run: Runner) -> None:
        self.attach(run)
        # The day's job file opened again: holders the journal shows as loaded are done, not queued.
        self.earlier = set(run.adopt_done_from_journal())

    def between_cards(self, run: Runner) -> Turn:
        """Call the next holder (their envelope, then their card), or act on the clerk's key."""
        if self.take_out is not None:
            if run.card_stays(self.take_out):
                return Turn.WAIT
            self.take_out = None
        if self.called is None:
            waiting = self.queue()
            if not waiting:
                return Turn.END
            self.render_queue()
            state = waiting[0]
            if state.bundle is None and not (self.open_envelope(state) if state.deferred
                                             else run.ensure_bundle(state)):  # fmt: skip
                if self.stopping:
                    return self.stop_for_today()
                return Turn.WAIT  # the next holder at the next turn
            self.instruct(state)
            # The card in the reader is matched to its job by serial: the called holder's only
            # (match() refuses another holder's card at the counter).
            self.called = state
            run.call(state)
            self._pin_asked = None
        if run.free_readers():
            return Turn.TAKE_CARD
        key = self.read_key()
        if key is None:
            return Turn.WAIT
        if key == "q":
            return self.stop_for_today()
        state, self.called = self.called, None
        if key == "s":
            self.skipped.add(state.job.id)
            self.eject()
        elif key == "l":
            self.order.remove(state.job.id)
            self.order.append(state.job.id)
            self.later.add(state.job.id)
            self.eject()
        else:
            self.come_back(key)
        return Turn.WAIT

    def card_handled(self, run: Runner, reader: str) -> None:
        state, self.called = self.called, None
        if state is not None:
            self.show_result(state)
            if state.status in (jn.PENDING, jn.IN_DOUBT):
                # Declined, another holder's card, or pulled: the same holder stays next, so the
                # right card (or the same one, put back) finishes it; `s` skips them.
                self.eject()
        if run.card_stays(reader):
            self.console.print(Text(_("Take the card out of the reader."), style="bold"))
            self.take_out = reader

    def ended(self, run: Runner) -> None:
        self.render_queue()

    def stop_for_today(self) -> Turn:
        self.console.print(shown(_("Stopping for today. 'provision resume' continues with the holders still waiting.")))
        return Turn.END

    # --- what the runner and the loader ask ---

    def say(self, text: str) -> None:
        self.console.print(shown(localize(text)))

    def announce_next(self, job: Job) -> list[str]:
        return []  # the screen calls each holder itself (instruct)

    def confirm(self, job: Any, info: Any, slot_name: str, replaced: Any) -> bool:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row(_("Holder"), shown(job.holder))
        table.add_row(_("Subject"), shown(info.subject))
        table.add_row(_("Issuer"), shown(info.issuer))
        table.add_row(_("Serial"), shown(info.serial))
        table.add_row(_("New expiry"), f"{info.not_after:%Y-%m-%d}")
        table.add_row(_("Slot name"), shown(slot_name))
        if replaced is not None:
            table.add_row(_("Replaces"), shown(_("{subject}, expiring {date} (it will be kept On Disk)").format(
                subject=replaced.subject, date=f"{replaced.not_after:%Y-%m-%d}")))
        self.console.print(Panel(table, title=_("Check the certificate before it is loaded"), border_style="cyan"))
        self.console.print(shown(_("Load this certificate onto the card? y: yes / n: no: ")), end="")
        return self.read_line().strip().lower() in ("y", "yes")

    def ask_pin(self, holder: str, tries: int | None) -> Secret:
        import getpass

        left = _("unknown") if tries is None else str(tries)
        asked = self._pin_asked
        if asked is not None and asked[0] == holder and (tries is None or asked[1] is None or tries < asked[1]):
            # Asked again for the same card: the card refused the PIN just typed (and counted it).
            self.console.print(shown(_("Wrong PIN, {tries}.").format(tries=tries_left(tries)), style="bold red"))
        self._pin_asked = (holder, tries)
        line = shown(_("The holder types the card PIN (q: leave). Tries left: {n}").format(n=left))
        if tries is not None and tries <= 2:
            line.append(" " + _("(careful: the card blocks when none are left)"), style="bold red")
        self.console.print(line)
        try:
            typed = getpass.getpass(_("Card PIN: "), stream=sys.stderr)
        except EOFError:
            typed = "q"  # Ctrl-D leaves the prompt, as q does
        except KeyboardInterrupt:
            raise SecretError(msg("no PIN was typed")) from None
        if typed.strip().lower() == "q":
            # The clerk left the prompt: the holder is not loaded yet and stays next (s skips them).
            raise OperatorDeclined(msg("no PIN was typed for {holder}; nothing was sent to the card", holder=holder))
        return typed_secret(typed, "PIN")

    # --- unblocking a card at the counter (the citizen types the PUK and a new PIN) ---

    def offer_unblock(self, holder: str, tries: int, make_service: Any) -> bool:
        from provision.errors import CardError, PinError, PukError
        from provision.pinservice import tries_text

        asked = self._pin_asked
        if asked is not None and asked[0] == holder and asked[1] is not None and tries < asked[1]:
            # The PIN just typed was refused (and counted): say so, as for every refused PIN.
            self.console.print(shown(_("Wrong PIN, {tries}.").format(tries=tries_left(tries)), style="bold red"))
        if tries == 0:
            state = _("The card of {holder} is blocked.").format(holder=holder)
        else:
            state = ngettext("The card of {holder} has {n} PIN try left, below the floor.",
                             "The card of {holder} has {n} PIN tries left, below the floor.", tries).format(holder=holder, n=tries)
        words = [shown(state, style="bold red"),
                 Text(_("u: the holder unblocks it now with the PUK and a new PIN (the load goes on)   Enter: not now"),
                      style="dim")]  # fmt: skip
        self.console.print(Panel(Group(*words), border_style="red"))
        self.console.print(shown(_("Unblock now? u / Enter: ")), end="")
        if self.read_line().strip().lower() not in ("u", "y", "yes"):
            return False
        try:
            result = make_service(self).unblock_pin()
        except (PukError, PinError, SecretError, CardError) as exc:
            self.console.print(Panel(shown(_("Not unblocked: {reason}").format(reason=exc.localized())), border_style="red"))
            return False
        self._pin_asked = None  # the next PIN prompt is the new PIN's first
        done = _("PIN unblocked: PIN tries left {pin}, PUK tries left {puk}. The holder now types the new PIN to load "
                 "the certificate.").format(pin=tries_text(result.pin_tries_left), puk=tries_text(result.puk_tries_left))
        self.console.print(Panel(shown(done, style="bold green"), border_style="green"))
        return True

    def ask_secret(self, prompt: str) -> Secret:
        """The PUK or the new PIN, typed by the citizen without echo (q or Ctrl-D: leave)."""
        import getpass

        try:
            typed = getpass.getpass(_("{prompt} (q: leave): ").format(prompt=_(prompt)), stream=sys.stderr)
        except (EOFError, KeyboardInterrupt):
            raise SecretError(msg("no {prompt} was typed; nothing was sent to the card", prompt=prompt)) from None
        if typed.strip().lower() == "q":
            raise SecretError(msg("no {prompt} was typed; nothing was sent to the card", prompt=prompt))
        return typed_secret(typed, prompt)

    def confirm_last_try(self, what: str) -> bool:
        from provision.pinservice import LAST_TRY_ANSWER

        self.console.print(shown(_("This is the card's LAST {what} try: a wrong {what} now blocks it for good.").format(what=what),
                                 style="bold red"))  # fmt: skip
        self.console.print(shown(_("Type '{answer}' to spend it (anything else stops): ").format(answer=LAST_TRY_ANSWER)), end="")
        return self.read_line().strip().lower() == LAST_TRY_ANSWER

    # --- the queue ---

    def queue(self) -> list[Any]:
        """The holders still waiting, in the clerk's order (skipped ones are out for today)."""
        by_id = {s.job.id: s for s in self.runner.states}
        return [by_id[j] for j in self.order if by_id[j].status in (jn.PENDING, jn.IN_DOUBT) and j not in self.skipped]

    def render_queue(self) -> None:
        table = Table(title=shown(_("Batch {batch}").format(batch=self.runner.jobfile.batch)), expand=False)
        for column in ("#", _("Holder"), _("Card"), _("Status")):
            table.add_column(column)
        nxt = self.queue()[0] if self.queue() else None
        styles = {"done (earlier run)": "green", jn.LOADED: "green", jn.SKIPPED: "green", jn.FAILED: "red", jn.REFUSED: "red"}
        for number, state in enumerate(self.runner.states, 1):
            status = state.status
            if state.job.id in self.skipped and status in (jn.PENDING, jn.IN_DOUBT):
                status = "skipped today"
            elif state.job.id in self.later and status in (jn.PENDING, jn.IN_DOUBT) and state is not nxt:
                status = "later"
            if state.job.id in self.earlier:
                status = "done (earlier run)"
            if state is nxt:
                status = "NEXT"
            card = localize(state.job.card.describe())
            words = _(STATUS_SHOWN[status]) if status in STATUS_SHOWN else status
            table.add_row(str(number), shown(state.job.holder), shown(card), Text(words, style=styles.get(status, "bold" if state is nxt else "")))
        done = sum(1 for s in self.runner.states if s.status in (jn.LOADED, jn.SKIPPED))
        failed = sum(1 for s in self.runner.states if s.status in (jn.FAILED, jn.REFUSED))
        self.console.print(table)
        self.console.print(shown(_("done {done} · failed {failed} · waiting {waiting} · skipped today {skipped}").format(
            done=done, failed=failed, waiting=len(self.queue()), skipped=len(self.skipped))))

    def instruct(self, state: Any) -> None:
        card = state.job.card
        if card.serial is not None:
            text = _("Insert the card of {holder} (card serial {serial})").format(holder=state.job.holder, serial=card.serial)
        else:
            text = _("Insert the card of {holder}").format(holder=state.job.holder)
        self.console.print(Panel(Group(shown(text, style="bold"), Text(_(HELP), style="dim")), border_style="yellow"))

    # --- the holder called ---

    def open_envelope(self, state: Any) -> bool:
        """Workflow steps 5–7: the 16-digit number from the holder's PIN envelope opens the file."""
        import getpass

        prompt = state.job.pkcs12_password.ref
        self.console.print(Panel(shown(_("{holder}: type the {prompt}").format(holder=state.job.holder, prompt=_(prompt)), style="bold"),
                                 border_style="yellow"))  # fmt: skip
        while True:
            try:
                typed = getpass.getpass(_("Password (nothing typed: skip this holder; q: stop for today): "), stream=sys.stderr)
            except (EOFError, KeyboardInterrupt):
                typed = "q"  # Ctrl-D leaves the prompt, as q does
            if typed.strip().lower() == "q":  # never taken as a password
                self.stopping = True
                return False
            if not typed:
                self.skipped.add(state.job.id)
                return False
            if len(typed) > MAX_SECRET_CHARS:
                self.console.print(shown(_("That is longer than {n} characters; type the password again.").format(n=MAX_SECRET_CHARS),
                                         style="bold red"))  # fmt: skip
                continue
            opened = open_bundle(state.job, unattended=False, password=Secret(typed))
            del typed
            problem = opened.problem
            if problem is not None and problem.status == "wrong-password":
                self.console.print(shown(problem.localized(), style="bold red"))
                continue  # a mistyped envelope number: type it again
            self.runner.accept_bundle(state, opened.inspection, opened.bundle, problem)
            if problem is not None:
                self.console.print(shown(problem.localized(), style="bold red"))
            return opened.bundle is not None

    def come_back(self, action: str) -> None:
        """``b N``: holder N (a number from the table) is next, even if skipped earlier today."""
        parts = action.split()
        if len(parts) == 2 and parts[1].isdigit() and 1 <= int(parts[1]) <= len(self.runner.states):
            job_id = self.runner.states[int(parts[1]) - 1].job.id
            self.skipped.discard(job_id)
            self.later.discard(job_id)
            self.order.remove(job_id)
            self.order.insert(0, job_id)
            self.eject()
        else:
            self.console.print(shown(_("Type b and the holder's number from the table, e.g. b 2")))

    def eject(self) -> None:
        """Simulated readers only: the card of a holder who is not next goes back to the pile."""
        self.runner.put_cards_back()

    def read_key(self) -> str | None:
        """The clerk's key (s, l, b N, q) if one was typed within a moment; end of input is q."""
        if not input_ready(POLL_SECONDS):
            return None
        line = self.read_line()
        if line == "":  # end of input: nobody is at the keyboard any more
            return "q"
        key = line.strip().lower()
        return key if key in ("s", "l", "q") or key.startswith("b") else None

    def show_result(self, state: Any) -> None:
        result = state.result
        if state.status in (jn.LOADED, jn.SKIPPED) and result is not None:
            lines = [shown(_("{holder}: done").format(holder=state.job.holder), style="bold green"),
                     shown(_("New certificate On Card: slot {slot} '{name}', valid until {date}").format(
                         slot=state.job.slot.hex, name=state.slot_name, date=result.not_after[:10]))]  # fmt: skip
            if result.archived_to:
                lines.append(shown(_("Old certificate On Disk: {path}").format(path=result.archived_to)))
            if state.status == jn.SKIPPED:
                lines.append(Text(_("The card already held this certificate; nothing was changed.")))
            self.console.print(Panel(Group(*lines), border_style="green"))
        elif state.status in (jn.PENDING, jn.IN_DOUBT):
            why = localize(failure_text(state.failure) or "")
            self.console.print(Panel(shown(_("{holder}: not loaded yet. {why}").format(holder=state.job.holder, why=why)),
                                     border_style="yellow"))  # fmt: skip
        else:
            words = _(STATUS_SHOWN[state.status]) if state.status in STATUS_SHOWN else state.status
            failure = localize(failure_text(state.failure) or "")
            self.console.print(Panel(shown(f"{state.job.holder}: {words.upper()}: {failure}"), border_style="red"))
