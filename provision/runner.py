"""The batch: readers, insertion events, job ↔ card matching, one worker per reader, progress.

For each card that appears, the runner reads its identity (serial, CHUID GUID), finds the job it
belongs to, and hands both to ``load.Loader``. A card with no job, or not the card the counter
expects, is refused after read-only APDUs only. A card pulled mid-load leaves its job *in doubt*;
when that card comes back (in this run, a later one, or ``provision resume``) the loader reads
what the card holds and rolls forward, never repeating a finished write.

The runner is given its card source and a small UI interface (``RunUI``: say, ask the PIN, confirm
the certificate, call the next card) by the composition root, ``provision.app``; it knows neither
the counter screen nor the simulator. Its one loop (``run``) takes the card source's events; between
them it gives the UI its turn (``RunUI.between_cards``): unattended, every card is taken as it
comes; at the counter the screen calls one holder after another and reads the clerk's keys.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from provision import journal as jn
from provision import logsdir
from provision.backend import CardBackend, CardEvent, CardSeen, as_backend
from provision.bundle import Bundle, Inspection
from provision.display import failure_text, printable, refusal_text
from provision.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BundleError,
    CardError,
    CardRemovedError,
    EnvironmentProblem,
    InternalError,
    JobRefused,
    JournalError,
    LogsError,
    ManagementKeyError,
    OperatorDeclined,
    PinError,
    ProvisionError,
    ReaderGoneError,
    RecordedFailure,
    RecordsError,
    TemplateError,
    TransientCardError,
)
from provision.i18n import localize, msg
from provision.jobfile import Job, JobFile
from provision.load import LoadContext, LoadResult
from provision.plan import open_bundle
from provision.refusal import Refusal, RefusalKind
from provision.secrets import Secret
from provision.store import CertificateStore

TRANSIENT_ATTEMPTS = 3
# Failures of the run's own records (journal, audit log, logs directory): they end the whole run.
RECORDS_FAILED = (JournalError, LogsError, RecordsError)


# How long a card waits for the cards in the other readers to be read (their identities decide
# whether its own is ambiguous); a reader whose card cannot be read is not waited for longer.
IDENTIFY_WAIT_SECONDS = 2.0

# How long loads already in hand may take to end by themselves when a run is stopped.
WORKER_GRACE_SECONDS = 15.0


# ----------------------------------------------------------------------------------------------
# What the runner is given: where cards come from, and who (if anyone) is at the station


class CardSource(Protocol):
    """Where cards come from: PC/SC readers (``provision.readers``), simulated readers
    (``provision.sim.source``), PKCS#11 tokens (``provision.p11.source``). PIV reader sources also
    ``connect(reader)`` (a ``RawTransport``); backends ``open(reader)`` (backend.py)."""

    def events(self, timeout: float | None) -> Iterator[CardEvent]:
        """Insertions and removals until ``timeout`` seconds pass with nothing new (None: forever)."""
        ...

    def done_with(self, reader: str) -> None:
        """The runner has finished with the card in ``reader`` (the operator may take it)."""
        ...

    def present(self) -> list[str]:
        """Readers that hold a card right now."""
        ...


class Turn(Enum):
    """What the UI wants between cards (``RunUI.between_cards``)."""

    TAKE_CARD = "take-card"  # a card in a free reader is handled now
    WAIT = "wait"  # not yet: asked again at the source's next event (within a second)
    END = "end"  # the person ended the day: no more cards in this run


class RunUI(Protocol):
    """What the runner asks of the person at the station, or of nobody: the counter screen
    (``provision.counter``), a plain terminal and the unattended mode (``provision.ui``), and tests
    implement it. The composition root (``provision.app``) chooses one and hands it to the runner."""

    types_pins: bool  # a person types card PINs (ask_pin), so cards are handled one at a time
    checks_certificates: bool  # a person checks each certificate before it is written (confirm)

    def say(self, text: str) -> None:
        """One line for the operator (the runner's progress and results)."""
        ...

    def ask_pin(self, holder: str, tries: int | None) -> Secret:
        """The card PIN, typed by its holder, who sees the tries left (only when ``types_pins``)."""
        ...

    def confirm(self, job: Job, info: Any, slot_name: str, replaced: Any) -> bool:
        """Whether the operator accepts this certificate (only when ``checks_certificates``)."""
        ...

    def announce_next(self, job: Job) -> list[str]:
        """The lines that ask for the next card, this job's (none: nobody to hand it over)."""
        ...

    def offer_unblock(self, holder: str, tries: int, make_service: Any) -> bool:
        """A card blocked or below the PIN floor: whether its holder unblocked it now with the PUK
        (``make_service(ui)`` gives the card's ``pinservice.PinService``); False: not offered."""
        ...

    def begin(self, run: Runner) -> None:
        """The run's loop starts (its jobs are prepared): a screen can lay out its queue."""
        ...

    def between_cards(self, run: Runner) -> Turn:
        """The UI's turn at each event of the card source: take the cards that are in, wait, or end."""
        ...

    def card_handled(self, run: Runner, reader: str) -> None:
        """The card in ``reader`` was handled (only when ``types_pins``: one card at a time)."""
        ...

    def ended(self, run: Runner) -> None:
        """The run ended by itself or by the person (not by a signal or a failure) and is recorded."""
        ...


# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)  # one per job for the whole run: no per-instance dict
class JobState:
    job: Job
    slot_name: str  # rendered again with the certificate's fields when the bundle opens
    bundle: Bundle | None = None  # decrypted a window ahead of the cards, dropped when the job ends
    status: str = jn.PENDING
    opened: bool = False  # the PKCS#12 was decrypted (or failed to): never twice per job
    deferred: bool = False  # counter: the password is typed from the holder's envelope when called
    fingerprint: str | None = None  # the bundle's certificate, kept after the bundle is dropped
    result: LoadResult | None = None
    failure: ProvisionError | None = None  # why the job failed, refused or is in doubt; said where it is shown
    apdus: int = 0
    seconds: float = 0.0
    card_serial: int | None = None


@dataclass(frozen=True, slots=True)
class RefusedCard:
    """A card the run refused: where, when, what it said it is, and why (rendered in the records)."""

    reader: str
    time: str
    card: dict[str, Any]  # the card's identity fields, as in the audit records
    refusal: Refusal

    def to_json(self) -> dict[str, Any]:
        return {"reader": self.reader, "time": self.time, **self.card, "reason": refusal_text(self.refusal)}


@dataclass
class RunOptions:
    logs: Path
    unattended: bool = False
    wait: float | None = None  # seconds to wait for missing cards; None: until all are done (counter)
    progress: bool = True
    export_dir: Path | None = None
    queue: str | None = None  # journal/queue URL (provision.queue.open_queue); None: logs/journal.sqlite3
    station: str | None = None  # this station's name in a shared queue (default: host name)
    lease_seconds: float = 30.0  # how long a claim outlives a station that stopped renewing it
    bundle_window: int = 32  # decrypted PKCS#12 bundles kept ready ahead of the cards


class Runner:
    def __init__(self, jobfile: JobFile, source: CardSource | CardBackend, options: RunOptions, *, ui: RunUI,
                 audit: Any = None) -> None:  # fmt: skip
        self.jobfile = jobfile
        self.source = source
        self.backend: CardBackend = as_backend(source)  # PIV readers or PKCS#11 tokens: the runner need not know
        self.options = options
        self.ui = ui
        self.say = ui.say  # above the progress bar while run() shows one
        # os.urandom, not uuid: uuid imports platform, 5-20 ms before the first APDU for 6 hex digits
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()
        from provision.queue import open_queue

        self.journal = open_queue(options.queue, logs=options.logs, station=options.station,
                                  lease_seconds=options.lease_seconds)  # fmt: skip
        self.store = CertificateStore(options.logs / "store")
        # PIN holds and every audit seal live in this station's journal (with a shared queue: the
        # local one beside it).
        shared = not isinstance(self.journal, jn.Journal)
        local = jn.Journal(options.logs / "journal.sqlite3") if shared else self.journal
        assert isinstance(local, jn.Journal)
        self.pin_holds = jn.PinHolds(local, owned=shared)
        self.audit = self.journal.mirror_audit(audit) if audit is not None else None
        if self.audit is not None:
            self.audit.add_seal_listener(lambda seal: local.add_seal(seal.record.get("run_id"), seal.seq, seal.hash,
                                                                     seal.record.get("job_id")))  # fmt: skip
        self._synced_at = 0.0
        self.states: list[JobState] = []
        self.refused_cards: list[RefusedCard] = []
        self.stop_requested: str | None = None  # the signal that asked the run to end
        self.stop_error: ProvisionError | None = None  # the environment failure that ended it
        self.stopped_by: str | None = None  # what ended the run early, in the records
        self.record_failed: ProvisionError | None = None  # the end of the run could not be recorded (why)
        self._lock = threading.RLock()
        self._busy: set[str] = set()
        self._cards_in: dict[str, CardSeen] = {}  # the card last read in each reader (ambiguity)
        self._with_card: set[str] = set()  # readers holding a card, as the source's events said
        self._twins: dict[str, dict[int, CardSeen]] = {}  # cards seen with the same identity as a reader's card
        # The job (or None: refused) given to the card in each reader, until it is taken out: the
        # any-card rule shares the jobs for any card among the cards not decided yet.
        self._decided: dict[str, JobState | None] = {}
        self._named: tuple[set[int], set[str]] | None = None  # the serials and GUIDs the job file names
        self._has_any: bool | None = None  # whether a job takes any card (PIV), found once
        self._workers: list[threading.Thread] = []
        self.started = jn.now_rfc3339()
        self.finished: str | None = None
        self.seal: str | None = None
        self._called: JobState | None = None  # counter screen: the holder the clerk called (call)
        self._opening: set[str] = set()  # jobs whose PKCS#12 is being decrypted right now
        self._ready = threading.Condition(self._lock)  # the prefetcher waits here for room in the window
        self._stopping = False
        self._held = 0  # states holding a decrypted bundle
        self._prefetcher: threading.Thread | None = None

    # --- audit ---

    def record(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(event, run_id=self.run_id, batch=self.jobfile.batch, **fields)

    # --- preparation: each bundle decrypted once, a window ahead of the cards ---

    def prepare(self, *, defer_prompts: bool = False) -> None:
        """The run's jobs, and their first bundles, before any card.

        Each job's PKCS#12 is decrypted once, before its card is handled: the first
        ``bundle_window`` (all of a counter's day) here, the rest by a background thread that keeps
        that many ready ahead of the cards (``start_prefetch``), and a bundle is dropped when its job
        ends. So memory stays flat over a batch of thousands, and a decrypted key does not sit in
        memory for hours. A password a person types is asked here, at the start, unless the counter
        asks it when the holder is called (``defer_prompts``)."""
        from provision.fields import template_values

        self.store.check_writable()
        logsdir.ensure_reserve(self.options.logs)  # room for the run's end, should the disk fill
        # Runs still 'running' while we hold the lock were killed outright (SIGKILL, power loss):
        # they are closed as interrupted, their loads in hand are in doubt, and the log says so.
        # Their seals still waiting for a token are settled first: closing them in the journal ends
        # their being found, so a run stopped in between would leave the tokens missing for ever.
        # (A shared queue lists every station's runs: there, after this station's are recovered.)
        if self.audit is not None and not self.journal.shared:
            running = [r.run_id for r in self.journal.runs() if r.status == "running"]
            if running:
                self.audit.settle_stamps(running)  # a token the killed process was still waiting for
        abandoned = self.journal.recover_abandoned_runs()
        self.journal.start_run(self.run_id, self.jobfile.batch, str(self.jobfile.path),
                               "unattended" if self.options.unattended else "counter")  # fmt: skip
        self.record("run_started", jobfile=str(self.jobfile.path), jobs=len(self.jobfile.jobs),
                    mode="unattended" if self.options.unattended else "counter")  # fmt: skip
        for run_id in abandoned:
            self.record("run_abandoned", abandoned_run_id=run_id, outcome="killed",
                        reason="the run's process ended without closing it (killed or crashed)")  # fmt: skip
        if abandoned and self.audit is not None and self.journal.shared:
            self.audit.settle_stamps(abandoned)
        self.record("validated", jobfile=str(self.jobfile.path), jobs=len(self.jobfile.jobs),
                    warnings=[w.message for w in self.jobfile.warnings], outcome="valid")  # fmt: skip
        tz, batch = self.jobfile.tz, self.jobfile.batch
        for job in self.jobfile.jobs:
            try:
                provisional = job.slot_name.render(template_values(tz, job=job, batch=batch))
            except TemplateError:
                provisional = job.slot_name.text  # the job fails when its bundle is opened (accept_bundle)
            state = JobState(job, provisional)
            state.deferred = defer_prompts and job.pkcs12_password.kind == "prompt"
            previous = self.journal.job(batch, job.id)
            if previous is not None and previous.status in (jn.IN_DOUBT, jn.IN_PROGRESS):
                state.status = jn.IN_DOUBT  # an interrupted load: the same card finishes it
                state.card_serial = previous.card_serial
            self.states.append(state)
        # Every job of the run has its row from the start, so `provision status` lists the pending too.
        self.journal.add_pending(batch, self.run_id, [(s.job.id, s.job.holder, s.job.slot.hex) for s in self.states])
        window = self.options.bundle_window
        for index, state in enumerate(self.states):
            if index < window or (state.job.pkcs12_password.kind == "prompt" and not state.deferred):
                self.ensure_bundle(state)
        self.start_prefetch()

    def ensure_bundle(self, state: JobState) -> bool:
        """Decrypt this job's PKCS#12 unless that was done already; True when its bundle is ready.
        The prefetcher and a reader's worker never decrypt the same file twice: one waits for the other."""
        with self._ready:
            while state.job.id in self._opening:
                self._ready.wait()
            if state.opened or state.deferred:
                return state.bundle is not None
            self._opening.add(state.job.id)
        try:
            opened = open_bundle(state.job, unattended=self.options.unattended)
            self.accept_bundle(state, opened.inspection, opened.bundle, opened.problem)
        finally:
            with self._ready:
                self._opening.discard(state.job.id)
                self._ready.notify_all()
        return opened.bundle is not None

    def accept_bundle(self, state: JobState, inspection: Inspection | None, bundle: Bundle | None,
                      problem: BundleError | None) -> None:  # fmt: skip
        """Record what opening the job's PKCS#12 gave: the bundle and its slot name, or why the job fails."""
        from provision.fields import template_values

        info = inspection.info if inspection else None
        state.opened = True
        if bundle is not None and info is not None:
            values = template_values(self.jobfile.tz, cert=info, job=state.job, batch=self.jobfile.batch)
            try:
                slot_name = state.job.slot_name.render(values)
            except TemplateError as exc:
                bundle, problem = None, BundleError(None, msg('slot_name: {message}', message=exc.message))
            else:
                with self._lock:
                    state.bundle, state.fingerprint, state.slot_name = bundle, info.sha256, slot_name
                    self._held += 1
                return
        problem = problem or BundleError(None, msg('the PKCS#12 file could not be opened'))
        with self._lock:
            state.failure = kept(problem)  # also when a claim already moved the job on: its failure says why
            if state.status not in (jn.PENDING, jn.IN_DOUBT):
                return
            state.status = jn.FAILED
        self.journal.set_job(self.jobfile.batch, state.job.id, self.run_id, state.job.holder, jn.FAILED,
                             error=problem.message)  # fmt: skip
        self.record("job_failed", job_id=state.job.id, holder=state.job.holder, outcome="failed",
                    error_class=type(problem).__name__, error=problem.message)  # fmt: skip

    def start_prefetch(self) -> None:
        """Keep ``bundle_window`` bundles decrypted ahead of the cards, in job-file order."""
        if all(s.opened or s.deferred or s.status not in (jn.PENDING, jn.IN_DOUBT) for s in self.states):
            return
        self._prefetcher = threading.Thread(target=self._prefetch, daemon=True, name="bundle-prefetch")
        self._prefetcher.start()

    def _prefetch(self) -> None:
        window = max(1, self.options.bundle_window)
        for state in self.states:
            if state.opened or state.deferred:
                continue
            with self._ready:
                while not self._stopping and self._held >= window:
                    self._ready.wait(0.5)
                if self._stopping:
                    return
            if state.status in (jn.PENDING, jn.IN_DOUBT):
                try:
                    self.ensure_bundle(state)
                except RECORDS_FAILED as exc:
                    self.stop_for(exc)
                    return

    def release_bundle(self, state: JobState) -> None:
        """The job has ended: its decrypted key and certificate go (a job still open keeps them)."""
        with self._ready:
            if state.bundle is not None and state.status not in (jn.PENDING, jn.IN_DOUBT, jn.IN_PROGRESS):
                state.bundle = None
                self._held -= 1
                self._ready.notify_all()

    def stop_prefetch(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._prefetcher is not None:
            self._prefetcher.join()
            self._prefetcher = None

    # --- matching ---

    def match(self, serial: int | None, guid: str | None, seen: CardSeen | None = None, reader: str = ""
              ) -> tuple[JobState, None] | tuple[None, Refusal]:  # fmt: skip
        """The job for the card in ``reader``, or None and why it is refused. The decision is kept
        until the card is taken out: unattended, the ``any: true`` jobs are shared out among the
        cards not decided yet by one rule (``cardpick``), whichever worker asks first."""
        seen = seen or CardSeen(serial=serial, guid=guid)
        # The readers with a card, asked before the lock: a PC/SC call that is slow (a busy pcscd)
        # must not hold up the other readers' workers. Only the any-card rule needs it.
        present = set(self.source.present()) if self.options.unattended and self._any_jobs() else set()
        with self._lock:
            self._decided.pop(reader, None)  # this card is decided (again) now
            state, refusal = self._match(serial, seen, reader, present)
            self._decided[reader] = state
        if state is None:
            assert refusal is not None
            return None, refusal
        return state, None

    def _any_jobs(self) -> bool:
        """Whether the job file has a job for any card (PIV, through PC/SC), found once."""
        if self._has_any is None:
            self._has_any = any(s.job.card.any and s.job.card.pkcs11 is None for s in self.states)
        return self._has_any

    def _pick_any(self, reader: str, seen: CardSeen, open_states: list[JobState], present: set[str]
                  ) -> tuple[JobState | None, int]:  # fmt: skip
        """Unattended: the ``any: true`` job this card takes by the rule (``cardpick.pick_cards``),
        among the cards in view that no job names and that are not decided yet, and how many open
        such jobs the rule gives to other cards (when this one gets none)."""
        from provision.cardpick import pick_cards

        if seen.is_token:
            return None, 0
        decided = [s for r, s in self._decided.items() if s is not None and r != reader and s.job.card.any]
        in_hand = sum(1 for s in decided if s.status in (jn.PENDING, jn.IN_DOUBT, jn.IN_PROGRESS))
        gone = {id(d) for d in decided}
        jobs = [s for s in open_states if s.job.card.any and s.job.card.pkcs11 is None and id(s) not in gone]
        present = present | self._with_card
        in_doubt = {s.card_serial for s in self.states if s.status == jn.IN_DOUBT and s.card_serial is not None}
        candidates = {r: v for r, v in self._cards_in.items()
                      if r != reader and r in present and r not in self._decided and not self._spoken_for(v, in_doubt)}  # fmt: skip
        candidates[reader] = seen
        picks = pick_cards(jobs, [(r, v.serial, v.guid) for r, v in candidates.items()])
        mine = picks.pop(reader, None)
        return mine, len(picks) + in_hand

    def _spoken_for(self, seen: CardSeen, in_doubt: set[int]) -> bool:
        """A card that a job names (or whose interrupted load it holds, ``in_doubt``): never one for
        an ``any: true`` job."""
        if self._named is None:  # the job file's serials and GUIDs, once: a card costs O(1), not O(jobs)
            self._named = ({s.job.card.serial for s in self.states if s.job.card.serial is not None},
                           {s.job.card.guid for s in self.states if s.job.card.guid is not None})  # fmt: skip
        serials, guids = self._named
        return seen.is_token or seen.serial in serials or seen.guid in guids or seen.serial in in_doubt

    def _match(self, serial: int | None, seen: CardSeen, reader: str, present: set[str]
               ) -> tuple[JobState, None] | tuple[None, Refusal]:  # fmt: skip
        with self._lock:
            open_states = [s for s in self.states if s.status in (jn.PENDING, jn.IN_DOUBT)]
            for s in open_states:  # a job already started on this very card comes first
                if s.card_serial is not None and s.card_serial == serial and s.status == jn.IN_DOUBT:
                    return self._unambiguous(s, seen)
            for s in open_states:
                if seen.claims(s.job.card):
                    called = self._called
                    if called is not None and s is not called:
                        return None, Refusal(RefusalKind.CALLED_ANOTHER, holder=s.job.holder,
                                             called=called.job.holder)  # fmt: skip
                    return self._unambiguous(s, seen)
            for s in self.states:
                if seen.claims(s.job.card):
                    return None, Refusal(RefusalKind.JOB_ENDED, job_id=s.job.id, holder=s.job.holder, status=s.status)
            if self.options.unattended:
                picked, going = self._pick_any(reader, seen, open_states, present)
                if picked is not None:
                    return picked, None
                if going:  # the open jobs for any card go to the cards before this one in the rule's order
                    return None, Refusal(RefusalKind.ANY_TO_OTHERS, jobfile=self.jobfile.path.name,
                                         card=seen.describe(), taken=going)  # fmt: skip
            else:  # a person at the station: the holder called (or next) takes whichever card is presented
                expected_now = self.expected()
                for s in open_states:
                    if seen.takes_any(s.job.card) and s is expected_now:
                        return s, None
            expected = self.expected()
            for_any = [s for s in self.states if seen.takes_any(s.job.card)]
            if for_any and all(s.status not in (jn.PENDING, jn.IN_DOUBT) for s in for_any):
                # The job file takes any card, but every such job is taken: say so, not "no job".
                last = for_any[-1]
                return None, Refusal(RefusalKind.ANY_TAKEN, jobfile=self.jobfile.path.name, card=seen.describe(),
                                     taken=len(for_any), job_id=last.job.id, holder=last.job.holder,
                                     status=last.status)  # fmt: skip
            return None, Refusal(RefusalKind.NO_JOB, jobfile=self.jobfile.path.name, card=seen.describe(),
                                 expected=expected.job.holder if expected and not self.options.unattended else None)  # fmt: skip

    @staticmethod
    def _unambiguous(state: JobState, seen: CardSeen) -> tuple[JobState, None] | tuple[None, Refusal]:
        """The job, unless another card or token in view answers to it too (two NSS databases with
        serial 0000000000000000, two PIV cards with one serial): then no write may go to either."""
        card = state.job.card
        twins = [o for o in seen.others if o.claims(card)]
        if not twins:
            return state, None
        return None, Refusal(RefusalKind.AMBIGUOUS, job_id=state.job.id, holder=state.job.holder, card=seen.describe(),
                             twins=len(twins))  # fmt: skip

    def expected(self) -> JobState | None:
        if self._called is not None:
            return self._called
        return next((s for s in self.states if s.status in (jn.PENDING, jn.IN_DOUBT)), None)

    def open_jobs(self) -> list[JobState]:
        return [s for s in self.states if s.status in (jn.PENDING, jn.IN_DOUBT)]

    # --- one card ---

    def handle_card(self, reader: str) -> None:
        # Transient faults only (another program reset the card, a transaction was lost): reconnect,
        # re-select, re-authenticate and continue from the journal and the card's real state. A wrong
        # PIN, a refused management key or a refused key are never retried: they are not transient.
        # (A plain loop: importing a retry library cost each run 10 ms before its first APDU.)
        try:
            for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
                try:
                    self._handle_card(reader)
                    break
                except TransientCardError as exc:
                    if attempt == TRANSIENT_ATTEMPTS:
                        raise
                    self.say(msg("{reader}: {error}; trying again", reader=reader, error=exc.message))
                    time.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))
        except TransientCardError as exc:
            self.say(msg("{reader}: {error}; the job stays open, re-insert the card", reader=reader, error=exc.message))
        except RECORDS_FAILED as exc:  # the journal or the audit log cannot be written: the run ends
            self.stop_for(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in a reader thread ends the run, not in a traceback
            self.stop_for(InternalError(msg('internal error in the worker of {reader} ({name}); this is a bug, please report it', reader=reader, name=type(exc).__name__)))  # fmt: skip
        finally:
            with self._lock:
                self._busy.discard(reader)
            self.source.done_with(reader)

    def _handle_card(self, reader: str) -> None:
        start = time.monotonic()
        try:
            card = self.backend.open(reader)
        except (CardRemovedError, ReaderGoneError) as exc:
            self.say(f"{reader}: {exc.message}")
            return
        state: JobState | None = None
        resuming = claimed = False
        try:
            seen = self._in_view(reader, card.identify())
            serial, guid = seen.serial, seen.guid
            self.record("card_inserted", reader=reader, **seen.audit_fields())
            state, refusal = self.match(serial, guid, seen, reader)
            if state is None:
                assert refusal is not None
                self.refuse_card(reader, seen, refusal, operations=card.operations)
                return
            if state.bundle is None and not self.ensure_bundle(state):  # not decrypted ahead: now, once
                self.say(msg("{result} Nothing was written; take the card out.", result=self.result_line(state)))
                return
            state, claim = self.claim_job(state, serial)
            if not claim.granted:  # another station has it, or has finished it: read-only APDUs only
                self.refuse_card(reader, seen, Refusal(RefusalKind.NOT_CLAIMED, detail=claim.reason),
                                 operations=card.operations, job_id=state.job.id)  # fmt: skip
                self.sync_shared_queue(force=True)
                return
            claimed = True
            with self._lock:
                self._decided[reader] = state  # claim_job may have chosen another job for any card
                resuming = state.status == jn.IN_DOUBT or claim.resuming
                state.status = jn.IN_PROGRESS
                state.card_serial = serial
            self.record("card_identified", job_id=state.job.id, holder=state.job.holder, reader=reader,
                        **seen.audit_fields())  # fmt: skip
            self.journal.set_job(self.jobfile.batch, state.job.id, self.run_id, state.job.holder, jn.IN_PROGRESS,
                                 card_serial=serial, slot=state.job.slot.hex, slot_name=state.slot_name)  # fmt: skip
            self.say(msg("{reader}: loading {holder} ({id}) into slot {slot} as {name!r}", reader=reader,
                         holder=state.job.holder, id=state.job.id, slot=state.job.slot.hex, name=state.slot_name))  # fmt: skip
            if state.bundle is None and not self.ensure_bundle(state):  # claim_job may have chosen another job
                raise ProvisionError(failure_text(state.failure) or msg("the PKCS#12 file could not be opened"))
            assert state.bundle is not None
            ctx = LoadContext(
                jobfile=self.jobfile, job=state.job, bundle=state.bundle, slot_name=state.slot_name, run_id=self.run_id,
                journal=self.journal, store=self.store, record=self._job_recorder(state), unattended=self.options.unattended,
                ask_pin=self.ui.ask_pin if self.ui.types_pins else None, export_dir=self.options.export_dir,
                resuming=resuming, confirm=self.ui.confirm if self.ui.checks_certificates else None,
                pin_holds=self.pin_holds, offer_unblock=self.ui.offer_unblock if self.ui.types_pins else None,
            )  # fmt: skip
            loader = card.loader(ctx, seen)
            state.result = loader.result  # what the load found so far, also if it fails
            result = loader.run()
            self._finish(state, result.status, result, None, card.operations, start)
        except TransientCardError as exc:
            if state is not None:  # the retry finds this job again by the card's serial, as in doubt
                self._finish(state, jn.IN_DOUBT, None, exc, card.operations, start)
            raise
        except CardRemovedError as exc:
            if state is not None:
                self._finish(state, jn.IN_DOUBT, None, exc, card.operations, start)
            else:
                self.say(f"{reader}: {exc.message}")
        except JobRefused as exc:
            assert state is not None
            self._finish(state, jn.REFUSED, None, exc, card.operations, start)
        except OperatorDeclined as exc:
            assert state is not None
            with self._lock:
                state.status = jn.IN_DOUBT if resuming else jn.PENDING
            self.journal.set_job(self.jobfile.batch, state.job.id, self.run_id, state.job.holder, state.status)
            self.say(exc.message)
        except RECORDS_FAILED as exc:
            # Nothing more can be recorded: the job is in doubt (the card's state decides on resume),
            # and the run stops; no second write is tried here.
            if state is not None:
                with self._lock:
                    state.status, state.failure = jn.IN_DOUBT, kept(exc)
            raise
        except (PinError, ManagementKeyError, CardError, ProvisionError) as exc:
            if state is None:
                self.say(msg("{reader}: the card could not be read: {error}", reader=reader, error=exc.message))
                self.record("card_error", reader=reader, error_class=type(exc).__name__, error=exc.message)
            else:
                self._finish(state, jn.FAILED, None, exc, card.operations, start)
        finally:
            if claimed and state is not None:
                with contextlib.suppress(*RECORDS_FAILED):
                    self.journal.release(self.jobfile.batch, state.job.id)
            card.close()

    def _in_view(self, reader: str, seen: CardSeen) -> CardSeen:
        """``seen`` with the PIV cards read in the other readers that hold a card now (a PKCS#11 token
        lists its module's other tokens itself). Unattended, every card in a reader has its worker:
        the cards not read yet are waited for (briefly), so two cards with one serial inserted
        together are both seen by both workers, whichever reads first. With a person at the
        station (one card at a time) the other cards are read here (``_read_other_cards``)."""
        with self._lock:
            self._cards_in[reader] = seen
        if seen.is_token:
            return seen
        deadline = time.monotonic() + IDENTIFY_WAIT_SECONDS
        if self.ui.types_pins:
            self._read_other_cards(reader, deadline)
        while True:
            # The readers holding a card: as the source says now, and as its events told the loop.
            present = set(self.source.present())
            with self._lock:
                present = (present | self._with_card) - {reader}
                known = {r: v for r, v in self._cards_in.items() if r in present}
            if len(known) == len(present) or self.ui.types_pins or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        with self._lock:
            # Twins are told to each other: the first of two cards read may find the second gone
            # already (refused and taken out) when it looks, and must still not be written.
            for other_reader, other in known.items():
                if _same_piv_card(seen, other):
                    self._twins.setdefault(other_reader, {})[id(seen)] = seen
                    self._twins.setdefault(reader, {})[id(other)] = other
            others = {id(v): v for v in known.values() if not v.is_token} | self._twins.get(reader, {})
        return replace(seen, others=seen.others + tuple(others.values())) if others else seen

    def _read_other_cards(self, reader: str, deadline: float) -> None:
        """One card at a time (a person at the station): no worker reads the cards in the other
        readers, so they are read here, identity only (SELECT, serial, CHUID: read-only), before this
        card is matched: a twin put in another reader must be known before anything is written.
        Every present card is read again (one that came and went between two events would otherwise
        leave a stale identity); all at once, each until ``deadline``: a card that does not answer by
        then is not waited for longer, as unattended."""
        present = set(self.source.present())  # asked before the lock, as in match()
        with self._lock:
            others = sorted((present | self._with_card) - {reader})
            tokens = {r for r in others if r in self._cards_in and self._cards_in[r].is_token}
        others = [r for r in others if r not in tokens]  # tokens list their twins themselves
        if not others:
            return

        def read(other: str) -> None:
            try:
                handle = self.backend.open(other)
            except ProvisionError:
                return
            try:
                found = handle.identify()
            except ProvisionError:
                return
            finally:
                handle.close()
            with self._lock:
                self._cards_in[other] = found

        threads = [threading.Thread(target=read, args=(r,), daemon=True, name=f"identify-{r}") for r in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def refuse_card(self, reader: str, seen: CardSeen, refusal: Refusal, *, operations: int, **audit: Any) -> None:
        """Refuse the card in ``reader`` (read-only APDUs only): kept for the run's records, audited, said."""
        self.refused_cards.append(RefusedCard(reader, jn.now_rfc3339(), seen.audit_fields(), refusal))
        why = refusal_text(refusal)
        self.record("card_refused", reader=reader, **seen.audit_fields(), outcome="refused", reason=why, **audit,
                    apdus=operations)  # fmt: skip
        self.say(msg("REFUSED: {why}. Nothing was written; take the card out.", why=why))

    def _job_recorder(self, state: JobState) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.record(event, job_id=state.job.id, holder=state.job.holder, **fields)

        return record

    def _finish(self, state: JobState, status: str, result: LoadResult | None, exc: ProvisionError | None,
                apdus: int, start: float) -> None:  # fmt: skip
        result = result or state.result  # a failed load still tells what it found (tries, archive)
        with self._lock:
            state.status = status
            state.result = result
            state.apdus += apdus
            state.seconds += time.monotonic() - start
            state.failure = kept(exc) if exc is not None else None
        fields: dict[str, Any] = {"card_serial": state.card_serial, "slot": state.job.slot.hex,
                                  "slot_name": state.slot_name, "apdus": state.apdus,
                                  "seconds": round(state.seconds, 3), "error": failure_text(exc)}  # fmt: skip
        if result is not None:
            fields.update(fingerprint_sha256=result.fingerprint_sha256, replaced_sha256=result.replaced_sha256,
                          archived_to=result.archived_to, pin_tries_left=result.pin_tries_left,
                          not_after=result.not_after)  # fmt: skip
        if isinstance(exc, PinError):
            fields["pin_tries_left"] = exc.tries_left
            if result is not None:
                result.pin_tries_left = exc.tries_left
        journal_status = jn.IN_PROGRESS if status == jn.IN_DOUBT else status
        self.journal.set_job(self.jobfile.batch, state.job.id, self.run_id, state.job.holder, journal_status, **fields)
        if status == jn.IN_DOUBT:
            self.journal.set_job(self.jobfile.batch, state.job.id, self.run_id, state.job.holder, jn.IN_DOUBT)
        self.record(f"job_{status.replace('-', '_')}", job_id=state.job.id, holder=state.job.holder,
                    outcome=status, error_class=type(exc).__name__ if exc else None, **fields)  # fmt: skip
        self.release_bundle(state)
        self.say(self.result_line(state))

    def result_line(self, state: JobState) -> str:
        job, result = state.job, state.result
        if state.status == jn.SKIPPED and result is not None and result.skip_reason:
            return msg("{holder} ({id}): skipped, nothing written: {reason}", holder=job.holder, id=job.id,
                       reason=result.skip_reason)  # fmt: skip
        if state.status in (jn.LOADED, jn.SKIPPED) and result is not None:
            fields = {"holder": job.holder, "id": job.id, "slot": job.slot.hex, "name": state.slot_name,
                      "date": result.not_after, "path": result.archived_to}  # fmt: skip
            if state.status == jn.SKIPPED:
                return msg("{holder} ({id}): already on the card, nothing changed. New certificate On Card in slot "
                           "{slot} as {name!r}, valid until {date}", **fields)  # fmt: skip
            if result.archived_to:
                return msg("{holder} ({id}): loaded. New certificate On Card in slot {slot} as {name!r}, valid until "
                           "{date}; the old one is On Disk at {path}", **fields)  # fmt: skip
            return msg("{holder} ({id}): loaded. New certificate On Card in slot {slot} as {name!r}, valid until {date}",
                       **fields)  # fmt: skip
        if state.status == jn.IN_DOUBT:
            return msg("{holder} ({id}): the card was removed during the load; put it back to finish "
                       "('provision resume' finishes it later)", holder=job.holder, id=job.id)  # fmt: skip
        return msg("{holder} ({id}): {status}: {error}", holder=job.holder, id=job.id, status=state.status.upper(),
                   error=failure_text(state.failure))  # fmt: skip

    # --- the loop ---

    def run(self) -> int:
        """The run's one loop: the card source's events, the UI's turn between them, and the cards."""
        bar: Any = _NoBar()  # --no-progress: tqdm (and the multiprocessing it pulls in) is not even imported
        if self.options.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.states), file=sys.stderr, unit="card", desc=printable(self.jobfile.batch), leave=True)
            self.say = lambda text: tqdm.write(printable(localize(text)), file=sys.stderr)  # above the bar, not through it
        bar.update(sum(1 for s in self.states if s.status == jn.FAILED))
        interrupted = False
        try:
            self.ui.begin(self)
            if self.open_jobs():
                self._announce()
            # Cards that came in and are not handled yet: a quick swap while that reader's worker was
            # finishing, or a card that came before the person was ready for it.
            waiting: set[str] = set()
            for event in self.source.events(self.options.wait):
                if self.stop_requested is not None:  # SIGTERM/SIGHUP: no new card; the loads in hand end
                    interrupted = True
                    break
                if event.kind == "removed":
                    waiting.discard(event.reader)
                    with self._lock:
                        self._with_card.discard(event.reader)
                        self._cards_in.pop(event.reader, None)
                        self._twins.pop(event.reader, None)
                        self._decided.pop(event.reader, None)
                elif event.kind == "inserted":
                    with self._lock:
                        self._with_card.add(event.reader)
                fresh = [event.reader] if event.kind == "inserted" else []
                waiting.update(fresh)
                turn = self.ui.between_cards(self)
                if turn is Turn.END:
                    break
                if turn is Turn.TAKE_CARD and not self.open_jobs() and not self._busy:
                    break  # every job has ended and nobody waits on anything (a card to be taken out)
                if turn is Turn.TAKE_CARD and waiting:
                    present = set(self.source.present())  # once, and before the lock
                    with self._lock:
                        ready = fresh + [r for r in waiting if r not in fresh and r not in self._busy
                                         and r in present]  # fmt: skip
                    for reader in ready:
                        if not self.take_reader(reader):  # a quick swap: handle the new card when the worker ends
                            continue
                        waiting.discard(reader)
                        if self.ui.types_pins:
                            # One person at the station: one card at a time, in this thread, so that a
                            # Ctrl-C at a prompt reaches the prompt; then the UI's turn again.
                            self.handle_card(reader)
                            self.ui.card_handled(self, reader)
                            break
                        worker = threading.Thread(target=self.handle_card, args=(reader,), daemon=True,
                                                  name=f"reader-{reader}")  # fmt: skip
                        # Only the live workers are kept: a batch of thousands of cards must not keep
                        # thousands of finished threads.
                        self._workers = [w for w in self._workers if w.is_alive()]
                        self._workers.append(worker)
                        worker.start()
                self._reap(bar)
                if event.kind == "removed" and self.open_jobs() and not self._busy:
                    self._announce()
            for worker in self._workers:
                worker.join()
            self._reap(bar)
        except KeyboardInterrupt:
            interrupted = True
            self.stop_requested = self.stop_requested or "SIGINT"
        except EnvironmentProblem as exc:  # the PC/SC service or the reader went away under the run
            interrupted = True
            self.stop_error = exc
        finally:
            bar.close()
        code = self.finish(interrupted)
        if not interrupted:
            self.ui.ended(self)
        return code

    def stop_for(self, exc: ProvisionError) -> None:
        """A failure that ends the whole run (records that cannot be written, a bug in a thread)."""
        with self._lock:
            self.stop_error = self.stop_error or exc
        self.request_stop(type(exc).__name__)

    def request_stop(self, cause: str) -> None:
        """A signal asked the run to end (SIGTERM, SIGHUP): no new card is taken; the run ends at
        the next event (within a second) as interrupted, sealed and reported."""
        self.stop_requested = self.stop_requested or cause

    def claim_job(self, state: JobState, serial: int | None) -> tuple[JobState, Any]:
        """Claim the matched job in the queue. An unattended ``any: true`` job that another station
        took is not worth a refusal: the next free one in file order is claimed instead."""
        claim = self.journal.claim(self.jobfile.batch, state.job.id, self.run_id, card_serial=serial)
        if claim.granted or not state.job.card.any or not self.options.unattended:
            return state, claim
        with self._lock:
            others = [s for s in self.states if s.job.card.any and s is not state and s.status == jn.PENDING]
        for other in others:
            other_claim = self.journal.claim(self.jobfile.batch, other.job.id, self.run_id, card_serial=serial)
            if other_claim.granted:
                return other, other_claim
        return state, claim

    def sync_shared_queue(self, *, force: bool = False) -> None:
        """A shared queue: jobs that other stations finished are finished here too (at most once a second)."""
        if not self.journal.shared or (not force and time.monotonic() - self._synced_at < 1.0):
            return
        self._synced_at = time.monotonic()
        shared = {j.job_id: j for j in self.journal.jobs(batch=self.jobfile.batch)}
        with self._lock:
            for state in self.states:
                row = shared.get(state.job.id)
                if (row is not None and state.status in (jn.PENDING, jn.IN_DOUBT) and row.run_id != self.run_id
                        and row.status in (jn.LOADED, jn.SKIPPED, jn.FAILED, jn.REFUSED)):  # fmt: skip
                    state.status, state.card_serial = row.status, row.card_serial
                    state.failure = RecordedFailure(row.error) if row.error else None
                    self.release_bundle(state)

    def adopt_done_from_journal(self) -> list[str]:
        """Jobs that an earlier run of this batch loaded (or found on the card) are done: the
        journal says so, so they are not queued again (the counter's job file opened again)."""
        rows = {j.job_id: j for j in self.journal.jobs(batch=self.jobfile.batch)}
        adopted: list[str] = []
        with self._lock:
            for state in self.states:
                row = rows.get(state.job.id)
                if (row is not None and state.status == jn.PENDING and row.run_id != self.run_id
                        and row.status in (jn.LOADED, jn.SKIPPED)):  # fmt: skip
                    state.status, state.card_serial, state.failure = row.status, row.card_serial, None
                    adopted.append(state.job.id)
        for state in self.states:
            if state.job.id in adopted:
                self.release_bundle(state)
        return adopted

    def _reap(self, bar: Any) -> None:
        self.sync_shared_queue()
        done = sum(1 for s in self.states if s.status not in (jn.PENDING, jn.IN_DOUBT, jn.IN_PROGRESS))
        bar.update(done - bar.n)

    def _announce(self) -> None:
        expected = self.expected()
        if expected is None:
            return
        if self.options.unattended:
            return
        for line in self.ui.announce_next(expected.job):
            self.say(line)

    # --- what a UI that calls one holder after another asks (the counter screen) ---

    def call(self, state: JobState | None) -> None:
        """The counter called this holder: ``match`` gives their card only and refuses another
        holder's (None: no holder called, as in a batch)."""
        self._called = state

    def take_reader(self, reader: str) -> bool:
        """Mark ``reader`` as being handled; False when its card already is."""
        with self._lock:
            if reader in self._busy:
                return False
            self._busy.add(reader)
            return True

    def free_readers(self) -> list[str]:
        """Readers that hold a card nobody is handling yet."""
        with self._lock:
            busy = set(self._busy)
        return [reader for reader in self.source.present() if reader not in busy]

    def put_cards_back(self) -> None:
        """The cards in the readers are not the ones wanted now: a simulated source puts them at
        the back of its pile; a real reader's card stays until a person takes it out."""
        requeue = getattr(self.source, "requeue", None)
        if requeue is not None:
            for reader in self.source.present():
                requeue(reader)

    def card_stays(self, reader: str) -> bool:
        """Whether a card is in ``reader`` until a person takes it out (a simulated one leaves by itself)."""
        return getattr(self.source, "requeue", None) is None and reader in self.source.present()

    def finish(self, interrupted: bool) -> int:
        """End the run: its end record, seal and journal end."""
        if self.finished is not None:  # already ended: a second call changes nothing
            return EXIT_INTERRUPTED if interrupted else EXIT_OK
        # A load in hand gets a bounded time to end on its own before its job is called in doubt.
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.stop_prefetch()
        self.sync_shared_queue(force=True)
        for state in self.states:
            if state.status == jn.IN_PROGRESS:
                state.status = jn.IN_DOUBT
        interrupted = interrupted or self.stop_error is not None
        if isinstance(self.stop_error, RECORDS_FAILED):
            logsdir.release_reserve(self.options.logs)  # the end record, seal and journal end fit in it
        stopped_by = None
        if interrupted:
            stopped_by = type(self.stop_error).__name__ if self.stop_error is not None else (self.stop_requested or "SIGINT")
        self.stopped_by = stopped_by
        try:
            if self.audit is not None:
                counts = self.counts()
                self.record("run_finished", outcome="interrupted" if interrupted else "finished",
                            stopped_by=stopped_by, error=self.stop_error.message if self.stop_error else None,
                            **counts)  # fmt: skip
                self.seal = self.audit.seal(run_id=self.run_id)
            self.journal.finish_run(self.run_id, "interrupted" if interrupted else "finished", self.seal)
        except RECORDS_FAILED as exc:
            # Not even the reserve was enough: the run stays 'running' in the journal, and the next
            # run or resume closes it as a killed one would be (run_abandoned).
            self.stop_error = self.stop_error or exc
            self.record_failed = exc
        finally:
            if self.audit is not None:
                self.audit.close()
        self.finished = jn.now_rfc3339()
        if self.stop_error is not None:
            return self.stop_error.exit_code
        if interrupted:
            return EXIT_INTERRUPTED
        if all(s.status in (jn.LOADED, jn.SKIPPED) for s in self.states):
            return EXIT_OK
        return EXIT_FAILED

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.states:
            counts[state.status] = counts.get(state.status, 0) + 1
        return counts

    def document(self) -> dict[str, Any]:
        """The run's JSON (CLI.md): what ``run --json`` prints and the reports are made from."""
        jobs = []
        for s in self.states:
            r = s.result
            # The journal's status, in-doubt included: the run JSON, every report and `status` agree.
            # A slot name is shown once the certificate's fields made it (never a raw template).
            jobs.append({
                "id": s.job.id, "holder": s.job.holder, "status": s.status,
                "in_doubt": s.status == jn.IN_DOUBT, "card_serial": s.card_serial, "slot": s.job.slot.hex,
                "slot_name": s.slot_name if s.fingerprint is not None else None,
                "fingerprint_sha256": r.fingerprint_sha256 if r else s.fingerprint,
                "replaced_sha256": r.replaced_sha256 if r else None, "archived_to": r.archived_to if r else None,
                "pin_tries_left": r.pin_tries_left if r else None, "not_after": r.not_after if r else None,
                "slot_name_on_card": r.slot_name_on_card if r else None, "notes": r.notes if r else [],
                "apdus": s.apdus, "seconds": round(s.seconds, 3), "error": failure_text(s.failure),
                "management_key": _management_key_kind(s.job, r),
            })  # fmt: skip
        return {"run_id": self.run_id, "batch": self.jobfile.batch, "jobfile": str(self.jobfile.path),
                "mode": "unattended" if self.options.unattended else "counter", "started": self.started,
                "finished": self.finished, "stopped_by": self.stopped_by, "counts": self.counts(), "seal": self.seal,
                "refused_cards": [card.to_json() for card in self.refused_cards], "jobs": jobs}  # fmt: skip


def _same_piv_card(a: CardSeen, b: CardSeen) -> bool:
    """Two PIV cards that say they are the same card (one serial, or one CHUID GUID)."""
    if a.is_token or b.is_token:
        return False
    same_guid = a.guid is not None and a.guid == b.guid and a.guid.strip("0") != ""  # all zeros: no GUID set
    return (a.serial is not None and a.serial == b.serial) or same_guid


def kept(exc: ProvisionError) -> ProvisionError:
    """The failure as job state keeps it, for the whole run: without the tracebacks of its chain,
    whose frames would keep the card, the decrypted bundle and the PIN alive with it."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


def _management_key_kind(job: Job, result: Any) -> str | None:
    """PIV only: the kind of management key the card ends with, as far as this run knows it."""
    if job.card.pkcs11 is not None:
        return None
    found = getattr(result, "management_key", None)
    if found:
        return str(found)
    # Not authenticated in this run (a skip): what the job says the card carries, once it is on the card.
    return job.management_key_kind if getattr(result, "status", None) in (jn.LOADED, jn.SKIPPED) else None


class _NoBar:
    """The progress bar's interface, showing nothing."""

    n = 0

    def update(self, count: int) -> None:
        self.n += count

    def close(self) -> None:
        pass
