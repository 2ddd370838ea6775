"""The composition root of ``provision run`` and ``resume``: everything a run needs, built once.

It takes the logs lock, opens the audit log (and, through the runner, the journal and the store),
builds the card source (PC/SC readers, simulated cards, PKCS#11 tokens), chooses the UI the runner
talks to (the counter screen, a plain terminal, or nobody: unattended), installs the signal
handling, runs, and writes the reports. ``cli.py`` calls ``run_jobfile``; the runner below it knows
none of these choices.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.backend import CardBackend
from provision.early import EarlyRead
from provision.errors import LogsError, ProvisionError
from provision.i18n import current_language, msg
from provision.jobfile import JobFile
from provision.logsdir import LogsLock
from provision.runner import RECORDS_FAILED, CardSource, Runner, RunOptions, RunUI
from provision.ui import Say, TerminalUI, UnattendedUI, to_stderr


@dataclass
class RunOutcome:
    exit_code: int
    document: dict[str, Any]
    reports: dict[str, Path]
    failure: ProvisionError | None = None  # what ended the run early (the PC/SC service went away, …)
    sealed: bool = True  # False: not even the run's end record and seal could be written
    reports_failure: OSError | ProvisionError | None = None  # after such an end, the reports failed too


def run_jobfile(
    jobfile: JobFile,
    *,
    logs: Path,
    unattended: bool,
    wait: float | None,
    readers: list[str] | None = None,
    sim: bool = False,
    source: CardSource | CardBackend | None = None,
    progress: bool = True,
    say: Say = to_stderr,
    only_jobs: set[str] | None = None,
    accept_damaged_audit_tail: str | None = None,
    operator: str | None = None,
    counter_screen: bool | None = None,
    queue: str | None = None,
    station: str | None = None,
    lease_seconds: float = 30.0,
    bundle_window: int = 32,
    logs_lock: LogsLock | None = None,
    early: EarlyRead | None = None,
) -> RunOutcome:
    """Everything ``provision run`` does after the job file validated. ``logs_lock``: the caller
    already holds the logs lock (``resume`` takes it before it reads the journal). ``early``: the
    card read while the program started (``provision.early``); the PC/SC readers take it."""
    if only_jobs is not None:
        from dataclasses import replace

        jobfile = replace(jobfile, jobs=tuple(j for j in jobfile.jobs if j.id in only_jobs))
    from contextlib import AbstractContextManager, nullcontext

    lock: AbstractContextManager[Any] = nullcontext() if logs_lock is not None and logs_lock.held else LogsLock(logs)
    with lock:
        if counter_screen is None:  # the counter screen needs a person at a terminal
            counter_screen = not unattended and sys.stdin.isatty() and sys.stderr.isatty()
        if source is None:
            source = card_source(jobfile, readers=readers, sim=sim, early=early)
        audit = open_audit(logs, jobfile, unattended=unattended, accept_damaged_tail=accept_damaged_audit_tail,
                           operator=operator)  # fmt: skip
        if unattended and wait is None:
            wait = 0.0
        if counter_screen:  # the clerk ends the day; the screen is the progress shown
            wait, progress = None, False
        options = RunOptions(logs=logs, unattended=unattended, wait=wait, progress=progress, queue=queue,
                             station=station, lease_seconds=lease_seconds, bundle_window=bundle_window)  # fmt: skip
        ui: RunUI
        if counter_screen:
            from provision.counter import CounterScreen

            ui = CounterScreen()
        else:
            ui = UnattendedUI(say) if unattended else TerminalUI(say)
        runner = Runner(jobfile, source, options, ui=ui, audit=audit)
        with stop_on_signals(runner, raise_interrupt=counter_screen):
            runner.prepare(defer_prompts=counter_screen)
            threading.Thread(target=warm_up_reports, args=(jobfile.timezone,), daemon=True, name="reports-warm-up").start()
            code = runner.run()
            document = runner.document()
            document["operator"] = audit.operator  # the person (BR §5.4.1), as every audit record names them
            # The language the people at the counter saw (a language code; every other field stays
            # language-neutral) and the zone the reports write times in.
            document["language"] = current_language()
            document.setdefault("timezone", jobfile.timezone)
            with contextlib.suppress(*RECORDS_FAILED):
                runner.journal.close()
                runner.pin_holds.close()
            failure, reports_failure = runner.stop_error, None
            try:
                reports = write_run_reports(document, logs)
            except (OSError, ProvisionError) as exc:
                reports = {}
                if failure is None:
                    raise
                reports_failure = exc
    return RunOutcome(code, document, reports, failure, sealed=runner.record_failed is None,
                      reports_failure=reports_failure)  # fmt: skip


@contextmanager
def stop_on_signals(runner: Runner, *, raise_interrupt: bool) -> Iterator[None]:
    """SIGTERM (systemd stop, kill) and SIGHUP (the terminal closed) end a run as Ctrl-C does:
    interrupted, with its end record, a seal and the reports, and `provision resume` finishes it.
    Unattended, the signal only asks the loop to stop (checked at every event, within a second), so
    it never lands in the middle of a record; at the counter, where the main thread waits on a
    person, it interrupts like Ctrl-C. A second signal while the run ends is ignored."""
    import signal

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread() or not names:
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        for number in previous:
            signal.signal(number, signal.SIG_IGN)
        runner.request_stop(name)
        if raise_interrupt:
            raise KeyboardInterrupt(name)

    for name in names:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def card_source(jobfile: JobFile, *, readers: list[str] | None, sim: bool,
                early: EarlyRead | None = None) -> CardSource | CardBackend:  # fmt: skip
    """The cards of ``provision run``: PC/SC readers (``readers`` filters them by name), or one
    fresh simulated card per job (``--sim``), and the PKCS#11 tokens of jobs that name a module."""
    from provision.p11.source import with_pkcs11_tokens

    piv: CardSource | None = None
    if any(job.card.pkcs11 is None for job in jobfile.jobs):
        if sim:
            from provision.sim import batch
            from provision.sim.source import SimSource

            piv = SimSource([batch.sim_cards_for(jobfile)])
        else:
            from provision.readers import PcscSource

            piv = PcscSource(readers, early=early)
    source: CardSource | CardBackend = with_pkcs11_tokens(jobfile, piv)  # the PIV source alone when no job names a token
    return source


def open_audit(logs: Path, jobfile: JobFile, *, unattended: bool, accept_damaged_tail: str | None = None,
               operator: str | None = None) -> Any:  # fmt: skip
    """The audit log of this logs directory, keyed when the job file names an audit key, sealed after
    every job and, with audit.anchor, anchored to a witness file on other storage.

    A log whose end does not verify, or that is gone while the journal or the anchor knows its
    seals, is not appended to (the new records would hide the damage) unless the operator says so,
    with a reason that goes into the log itself."""
    from provision.audit.chain import AuditLog
    from provision.audit.forward import syslog_target
    from provision.audit.verify import journal_seals
    from provision.errors import AuditError
    from provision.secrets import obtain

    key = obtain(jobfile.audit_key, unattended=unattended) if jobfile.audit_key is not None else None
    syslog = syslog_target(jobfile.audit_syslog, all_events=jobfile.audit_syslog_all) if jobfile.audit_syslog else None
    audit = AuditLog(logs / "audit.jsonl", key=key, syslog=syslog, operator=operator, anchor=jobfile.audit_anchor,
                     seal_each_job=True, timestamp=jobfile.audit_timestamp)  # fmt: skip
    try:
        audit.check_anchor()
        known = journal_seals(logs)
        tail = audit.check_tail(known)
        if not tail.ok:
            if not accept_damaged_tail:
                raise AuditError(
                    msg("the audit log's end is damaged ({message}); nothing was run. Check it with 'provision audit verify', then run again with --accept-damaged-audit-tail REASON to continue", message=tail.message)
                )
            audit.accept_damaged_tail(accept_damaged_tail, known)
    except BaseException:
        audit.close()
        raise
    return audit


def warm_up_reports(zone: str | None) -> None:
    """Load, while the cards are handled, what the reports would otherwise load after the last card:
    the report module, Babel and the chosen language's date formats (about 30 ms of a one-card run,
    ``make profile``). The card's thread waits on the card most of the time, so this costs it little;
    a failure here changes nothing, since the reports load the same things again when written."""
    with contextlib.suppress(Exception):
        from provision.report import when

        when("2000-01-01T00:00:00Z", zone)


def write_run_reports(document: dict[str, Any], logs: Path) -> dict[str, Path]:
    from provision.logsdir import refuse_link
    from provision.report import write_reports

    refuse_link(logs / "reports", directory=True)  # planted during the run: the reports stay in the journal
    try:
        return dict(write_reports(document, logs / "reports"))
    except OSError as exc:  # no permission, a read-only directory: the environment's, never a bug
        raise LogsError(msg("the reports of run {run_id} cannot be written in {reports} ({strerror}); the run itself is in the journal and the audit log ('provision status' shows it): make that directory writable by this user before the next run", run_id=document.get("run_id"), reports=logs / "reports", strerror=exc.strerror or exc)) from None  # fmt: skip
