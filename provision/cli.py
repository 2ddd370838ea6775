"""The ``provision`` command: parse arguments, call one function, print, map errors to exit codes.

Heavy modules (cryptography, jsonschema, pyscard) are imported inside the commands that need them,
so ``provision --help`` starts about as fast as Python itself. Nothing a user can cause ends in a
traceback: ProvisionError subclasses carry the sentence and the exit code (errors.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from provision import __version__, installed_version
from provision.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    JobFileError,
    LogsError,
    ProvisionError,
    UsageError,
)
from provision.i18n import ENGLISH, N_, choose, localize, msg, set_language
from provision.i18n import gettext as _

TYPE_CHECKING = False  # importing typing costs start-up time; mypy honours this name
if TYPE_CHECKING:
    import argparse
    from types import ModuleType
    from typing import Any, NoReturn

Handler = Callable[["argparse.Namespace"], int]


def _emit_json(document: object) -> None:
    import json

    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _say(text: str = "") -> None:
    """One line for a person on stdout; control characters in it are shown, never obeyed."""
    from provision.display import printable

    sys.stdout.write(printable(text) + "\n")


def _say_json(text: str) -> None:
    """A JSON document built by a lower layer: written exactly (JSON escapes what it must)."""
    sys.stdout.write(text + "\n")


def _warn(text: str) -> None:
    from provision.display import printable

    sys.stderr.write(printable(text) + "\n")


def _logs(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The checked logs directory (provision.logsdir): links planted in it are refused, exit 3."""
    from pathlib import Path

    from provision.logsdir import open_logs

    return open_logs(Path(args.logs), create=create)


def _warn_if_logs_shared(args: argparse.Namespace) -> None:
    from pathlib import Path

    from provision.logsdir import shared_write_warning

    warning = shared_write_warning(Path(args.logs))
    if warning:
        _warn(_("warning: {warning}").format(warning=localize(warning)))


# ----------------------------------------------------------------------------------------------
# validate


def cmd_validate(args: argparse.Namespace) -> int:
    from provision.jobfile import load_jobfile

    _warn_if_logs_shared(args)
    results: list[dict[str, Any]] = []
    failed = False
    for name in args.jobfiles:
        try:
            jf = load_jobfile(name, unattended=args.unattended)
        except JobFileError as exc:
            failed = True
            results.append({"file": name, "valid": False, "jobs": 0,
                            "errors": [p.to_json() for p in exc.problems], "warnings": []})  # fmt: skip
            if not args.json:
                for problem in exc.problems:
                    _warn(_("error: {problem}").format(problem=problem.localized()))
            continue
        results.append({"file": name, "valid": True, "batch": jf.batch, "jobs": len(jf.jobs), "errors": [],
                        "warnings": [w.to_json() for w in jf.warnings]})  # fmt: skip
        if not args.json:
            for warning in jf.warnings:
                _warn(_("warning: {warning}").format(warning=warning.localized()))
            _say(_("{file}: valid, batch {batch}, {n} job(s)").format(file=name, batch=jf.batch, n=len(jf.jobs)))
    if args.json:
        _emit_json({"valid": not failed, "files": results})
    return EXIT_INPUT if failed else EXIT_OK


# ----------------------------------------------------------------------------------------------
# inspect


def _password_from_args(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from provision.secrets import SecretSource, obtain

    if args.no_password:
        source = SecretSource("empty", "")  # a file exported without a password, said explicitly
    elif args.password_env:
        source = SecretSource("env", args.password_env)
    elif args.password_file:
        source = SecretSource("file", args.password_file)
    else:
        source = SecretSource("prompt", f"Password of {Path(args.file).name}")
    return obtain(source, unattended=False)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision import template as templates
    from provision.bundle import inspect_pkcs12, read_pkcs12
    from provision.fields import template_values
    from provision.plan import certificate_lines, zone

    tz = zone(args.timezone)
    slot_name_template = templates.parse(args.slot_name)
    path = Path(args.file)
    try:
        data = read_pkcs12(path)  # bounded before the password is asked: /dev/zero ends at once
    except OSError as exc:
        raise UsageError(msg("cannot read {path}: {reason}; check the path", path=path, reason=exc.strerror)) from None
    password = _password_from_args(args)
    try:
        inspection, _bundle = inspect_pkcs12(data, password, target=args.target)
    finally:
        password.wipe()
    document = inspection.to_json(str(path))
    slot_name = None
    if inspection.info is not None:
        slot_name = slot_name_template.render(template_values(tz, cert=inspection.info))
        document["slot_name"] = slot_name
    if args.json:
        _emit_json(document)
    else:
        _say(f"{path}: {inspection.status}")
        _say(f"  {localize(inspection.message)}")
        if inspection.info is not None:
            for line in certificate_lines(inspection.info, tz):
                _say(f"  {line}")
            _say("  " + _("PIV algorithm: {algorithm}").format(algorithm=inspection.piv_algorithm or _("none")))
            _say("  " + _("slot name: {name}   (template {template})").format(name=slot_name, template=args.slot_name))
    return EXIT_OK if inspection.status == "ok" else EXIT_INPUT


# ----------------------------------------------------------------------------------------------
# plan


def cmd_plan(args: argparse.Namespace) -> int:
    from provision.jobfile import load_jobfile
    from provision.plan import match_cards, plan_jobfile, print_plan
    from provision.plancards import read_pcsc_cards, read_sim_cards

    _warn_if_logs_shared(args)
    documents = []
    any_problem = False
    jobfiles = [load_jobfile(name, unattended=args.unattended) for name in args.jobfiles]
    present = None if args.sim else read_pcsc_cards()  # read-only: no PIN, no management key, no write
    for jf in jobfiles:
        # A person runs a batch without --unattended: a job for any card takes the card presented.
        # (--sim: the cards come from a pile in job order, not from a person.)
        plan = match_cards(plan_jobfile(jf, unattended=args.unattended), present or read_sim_cards(jf),
                           presented=not args.unattended and not args.sim)  # fmt: skip
        any_problem = any_problem or any(job.problems for job in plan.jobs)
        if args.json:
            documents.append(plan.to_json())
        else:
            print_plan(plan, _say)
    if args.json:
        _emit_json(documents[0] if len(documents) == 1 else {"plans": documents})
    return EXIT_INPUT if any_problem else EXIT_OK


# ----------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision.demo import run_demo
    from provision.logsdir import LogsLock

    logs = _logs(args, create=True)
    directory = Path(args.dir) if args.dir else logs / "demo"
    # The lock before the material is (re)written: a live run may be reading LOGS/demo's files.
    with LogsLock(logs) as held:
        return run_demo(directory, holders=args.holders, out=_say, logs=logs, logs_lock=held)


# ----------------------------------------------------------------------------------------------
# jobs new


def cmd_jobs_new(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision.csvjobs import write_jobs_from_csv

    made = write_jobs_from_csv(Path(args.csv), Path(args.template), Path(args.output), batch=args.batch,
                               unattended=args.unattended, check_files=not args.no_file_checks,
                               force=args.force)  # fmt: skip
    jf = made.jobfile
    if args.json:
        _emit_json({"file": args.output, "valid": True, "batch": jf.batch, "jobs": len(jf.jobs),
                    "warnings": made.warnings + [str(w) for w in jf.warnings]})  # fmt: skip
        return EXIT_OK
    for warning in made.warnings + [w.localized() for w in jf.warnings]:
        _warn(_("warning: {warning}").format(warning=localize(warning)))
    _say(_("{file}: written and valid, batch {batch}, {n} job(s)").format(file=args.output, batch=jf.batch, n=len(jf.jobs)))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# run, resume, status, store


def _print_summary(document: dict[str, Any], reports: dict[str, Any]) -> None:
    """The run for a person, in the chosen language; the status names stay as in every record, so
    that the summary, the reports and ``provision status`` say the same word."""
    from provision.report import error_text, when

    zone = document.get("timezone")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(document["counts"].items()))
    _say(_("Run {run_id} of batch {batch}: {counts}").format(run_id=document["run_id"], batch=document["batch"], counts=counts))
    if document.get("operator"):
        _say(_("Operator: {operator}").format(operator=document["operator"]))
    for job in document["jobs"]:
        line = f"  {job['status']:8} {job['id']:14} {job['holder']}"
        if job["status"] == "skipped" and job.get("notes"):
            line += f" — {'; '.join(localize(n) for n in job['notes'])}"  # renew: not due, nothing written
        elif job["status"] in ("loaded", "skipped"):
            line += " — " + _("slot {slot} {slot_name!r}, On Card until {date}").format(
                slot=job["slot"], slot_name=job["slot_name"], date=when(job["not_after"], zone))
            if job["archived_to"]:
                line += "; " + _("old certificate On Disk: {path}").format(path=job["archived_to"])
        elif job["error"]:
            line += f" — {error_text(job['error'])}"
        _say(line)
    for card in document.get("refused_cards", []):
        _say("  " + _("refused card in {reader}: {reason}").format(reader=card["reader"], reason=localize(card["reason"])))
    if document.get("seal"):
        _say(_("Audit seal: {seal}").format(seal=document["seal"]))
    for kind, path in sorted(reports.items()):
        _say(_("Report ({kind}): {path}").format(kind=kind, path=path))


def _with_syslog(jobfile: Any, address: str | None) -> Any:
    """``--syslog ADDRESS`` forwards the audit seals there, whatever the job file's audit.syslog says."""
    if address is None:
        return jobfile
    from dataclasses import replace

    from provision.audit.forward import syslog_target

    syslog_target(address)  # a wrong address is a usage error before anything runs
    return replace(jobfile, audit_syslog=address)


def _with_anchor(jobfile: Any, anchor: str | None) -> Any:
    """``--anchor PATH`` anchors the seals there, whatever the job file's audit.anchor says."""
    if anchor is None:
        return jobfile
    from dataclasses import replace
    from pathlib import Path

    return replace(jobfile, audit_anchor=Path(anchor))


def _operator(args: argparse.Namespace) -> str | None:
    """The person at the station (CA/B Forum BR §5.4.1): --operator, $PROVISION_OPERATOR, or asked once
    at a terminal; None (the OS user is recorded) when unattended and not given."""
    from provision.audit.records import operator_name

    given = args.operator if args.operator is not None else os.environ.get("PROVISION_OPERATOR")
    if given:
        return operator_name(given)
    if args.unattended or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    sys.stderr.write(_("Operator (your name, recorded in every audit record; q: leave): "))
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer == "" or answer.strip().lower() == "q":  # q and Ctrl-D leave the prompt: nothing is done
        raise UsageError(msg("no operator was given (the prompt was left); nothing was done"))
    return operator_name(answer) if answer.strip() else None


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile

    jobfile = _with_syslog(load_jobfile(args.jobfile, unattended=args.unattended), args.syslog)
    _warn_if_logs_shared(args)
    jobfile = _with_anchor(jobfile, args.anchor)
    operator = _operator(args)
    outcome = run_jobfile(jobfile, logs=Path(args.logs), unattended=args.unattended, wait=args.wait,
                          readers=args.reader, sim=args.sim, progress=not args.no_progress,
                          accept_damaged_audit_tail=args.accept_damaged_audit_tail, queue=args.queue,
                          operator=operator, station=args.station, lease_seconds=args.lease,
                          early=getattr(args, "early_read", None))  # fmt: skip
    if args.json:
        _emit_json(outcome.document)
    else:
        _say("")
        _print_summary(outcome.document, outcome.reports)
    _warn_if_stopped(outcome)
    return outcome.exit_code


def _warn_if_stopped(outcome: Any) -> None:
    """A run that ended early says why, once, on stderr (its records and reports are written)."""
    error = outcome.failure.localized() if outcome.failure is not None else None
    if error and outcome.reports_failure is not None:
        failed = outcome.reports_failure
        error += "; " + _("the reports could not be written either ({reason})").format(
            reason=getattr(failed, "strerror", None) or failed)
    if error and not outcome.sealed:
        _warn("provision: " + _("{error}; not even the run's end could be recorded, so the journal still calls it running: "
              "once that is fixed, 'provision resume' closes it and finishes what was started").format(error=error))  # fmt: skip
    elif error:
        _warn("provision: " + _("{error}; the run was recorded as interrupted and sealed, and 'provision resume' "
              "finishes it once that is fixed").format(error=error))  # fmt: skip
    elif outcome.exit_code == EXIT_INTERRUPTED:
        _warn("provision: " + _("interrupted; the journal is consistent and 'provision resume' finishes what was started"))


def cmd_resume(args: argparse.Namespace) -> int:
    from provision import journal as jn
    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile
    from provision.logsdir import LogsLock

    if args.queue and not args.queue.startswith("sqlite:"):
        raise UsageError(msg("with a shared queue there is nothing to resume here: run 'provision run JOBFILE --queue URL' again; a job in doubt is finished by the station that sees its card"))  # fmt: skip
    logs = _logs(args)
    # The lock first: a run that is alive must find its journal as it left it (its runs are not
    # "abandoned"), and a resume that cannot have the lock changes nothing at all.
    with LogsLock(logs) as held:
        if not (logs / "journal.sqlite3").exists():
            _say(_("Nothing to resume: no run has happened here."))
            return EXIT_OK
        journal = jn.Journal(logs / "journal.sqlite3")
        try:
            # A killed run's jobs are still in progress here; the run below closes it and records that.
            open_jobs = [j for j in journal.jobs() if j.status in (jn.IN_DOUBT, jn.IN_PROGRESS, jn.PENDING)]
            runs = {r.run_id: r for r in journal.runs()}
        finally:
            journal.close()
        if not open_jobs:
            _say(_("Nothing to resume: every job in the journal is finished."))
            return EXIT_OK
        code = EXIT_OK
        operator = _operator(args)  # asked once for the whole resume, not once per job file
        by_file: dict[str, set[str]] = {}
        for job in open_jobs:
            by_file.setdefault(runs[job.run_id].jobfile, set()).add(job.job_id)
        for path, ids in by_file.items():
            _warn(_("Resuming {n} job(s) of {path}: {ids}").format(n=len(ids), path=path, ids=", ".join(sorted(ids))))
            jobfile = _with_anchor(_with_syslog(load_jobfile(path, unattended=args.unattended), args.syslog),
                                   args.anchor)
            outcome = run_jobfile(jobfile, logs=logs, unattended=args.unattended, wait=args.wait,
                                  readers=args.reader, sim=args.sim, only_jobs=ids, progress=not args.no_progress,
                                  accept_damaged_audit_tail=args.accept_damaged_audit_tail,
                                  logs_lock=held, operator=operator)  # fmt: skip
            if args.json:
                _emit_json(outcome.document)
            else:
                _print_summary(outcome.document, outcome.reports)
            _warn_if_stopped(outcome)
            code = max(code, outcome.exit_code)
            if outcome.exit_code in (EXIT_INTERRUPTED, EXIT_ENVIRONMENT):
                break  # stopped: the other files wait for the next resume
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from provision import journal as jn

    path = _logs(args) / "journal.sqlite3"
    if not path.exists():
        if args.json:
            _emit_json({"runs": [], "jobs": [], "pin_holds": []})
        else:
            _say(_("No journal in {logs} yet: no run has happened here.").format(logs=args.logs))
        return EXIT_OK
    journal = jn.Journal(path, read_only=True)
    try:
        runs, jobs, holds = journal.runs(), journal.jobs(), jn.PinHolds(journal).all()
    finally:
        journal.close()
    from provision.logsdir import run_alive

    # 'running' with no process holding the logs lock: killed outright (the next run records it).
    killed = not run_alive(_logs(args)) and any(r.status == "running" for r in runs)
    if args.json:
        _emit_json({"runs": [{**r.__dict__, "process_gone": killed and r.status == "running"} for r in runs],
                    "jobs": [{"batch": j.batch, "run_id": j.run_id, **j.to_json()} for j in jobs],
                    "pin_holds": [h.to_json() for h in holds]})  # fmt: skip
        return EXIT_OK
    for run in runs:
        state = run.status
        if killed and run.status == "running":
            state = _("running in the journal, but its process is gone (killed); 'provision resume' closes it")
        _say(_("run {run_id}: batch {batch}, {mode}, {state}, started {started}").format(
            run_id=run.run_id, batch=run.batch, mode=run.mode, state=state, started=run.started))
    for job in jobs:
        _say(f"  {job.status:10} {job.batch}/{job.job_id} {job.holder}" + (f" — {localize(job.error)}" if job.error else ""))
    for hold in holds:
        card = hold.card_serial if hold.card_serial is not None else hold.chuid_guid
        _say(_("PIN hold: {card_text} refused a PIN on {since} (job {batch}/{job_id}); no PIN is sent to it until "
               "'provision card clear-pin-hold {card} --reason TEXT'").format(card_text=hold.card_text(), since=hold.since,
                                                                            batch=hold.batch, job_id=hold.job_id, card=card))  # fmt: skip
    return EXIT_OK


def cmd_store_list(args: argparse.Namespace) -> int:
    from provision.store import CertificateStore

    stored = CertificateStore(_logs(args) / "store").list()
    if args.json:
        _emit_json({"certificates": [s.to_json() for s in stored]})
        return EXIT_OK
    if not stored:
        _say(_("The store is empty: no certificate has been taken off a card."))
    for s in stored:
        slot = f"{s.slot} {s.slot_name!r}" if s.slot_name else s.slot
        _say(_("{archived_at}  On Disk: {subject} (until {not_after}) from card {serial} slot {slot}, job {job_id} — {path}")
             .format(archived_at=s.archived_at, subject=s.subject, not_after=s.not_after, serial=s.card_serial, slot=slot,
                     job_id=s.job_id, path=s.path))  # fmt: skip
    return EXIT_OK



class _TerminalPinUI:
    """The PIN service's person: prompts and tries on stderr (stdout keeps the result, or --json)."""

    def say(self, text: str) -> None:
        _warn(text)

    def ask_secret(self, prompt: str) -> Any:
        import getpass

        from provision.errors import SecretError
        from provision.secrets import typed_secret

        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise SecretError(msg('cannot ask for the {prompt}: there is no terminal; give it with its --…-env or --…-file option', prompt=prompt))
        try:
            typed = getpass.getpass(f"{prompt}: ", stream=sys.stderr)
        except (EOFError, KeyboardInterrupt):
            raise SecretError(msg('no {prompt} was typed; nothing was sent to the card', prompt=prompt)) from None
        return typed_secret(typed, prompt)

    def confirm_last_try(self, what: str) -> bool:
        from provision.pinservice import LAST_TRY_ANSWER

        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            return False  # never from options alone
        sys.stderr.write(f"This is the card's LAST {what} try: a wrong {what} now blocks it for good.\n"
                         f"Type '{LAST_TRY_ANSWER}' to spend it (anything else stops): ")  # fmt: skip
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower() == LAST_TRY_ANSWER


def _source(env: str | None, file: str | None) -> Any:
    from pathlib import Path

    from provision.secrets import SecretSource

    if env:
        return SecretSource("env", env)
    if file:
        return SecretSource("file", file, Path.cwd())
    return None


def cmd_card_pin_service(args: argparse.Namespace) -> int:
    """``card unblock-pin``, ``card change-pin``, ``card change-puk``: audited, never retried."""
    from pathlib import Path

    from provision import journal as jn
    from provision.audit.chain import AuditLog
    from provision.backend import piv_session_in_reader
    from provision.errors import AuditError, PinError, PukError
    from provision.logsdir import LogsLock
    from provision.pinservice import PinService

    action = args.card_command
    sources = {
        "unblock-pin": {"puk": _source(args.puk_env, args.puk_file), "new_pin": _source(args.new_pin_env, args.new_pin_file)},
        "change-pin": {"pin": _source(args.pin_env, args.pin_file), "new_pin": _source(args.new_pin_env, args.new_pin_file)},
        "change-puk": {"puk": _source(args.puk_env, args.puk_file), "new_puk": _source(args.new_puk_env, args.new_puk_file)},
    }[action]
    operator = _operator(args)
    logs = Path(_logs(args, create=True))
    with LogsLock(logs), piv_session_in_reader(args.reader) as (reader, session):
        path = logs / "journal.sqlite3"
        journal = jn.Journal(path) if path.exists() else None
        audit = AuditLog(logs / "audit.jsonl", key=_audit_key(args), operator=operator)
        try:
            tail = audit.check_tail()
            if not tail.ok:
                raise AuditError(msg("the audit log's end is damaged ({message}); nothing was sent to the card. Check it with 'provision audit verify'", message=tail.message))  # fmt: skip

            def record(event: str, **fields: Any) -> None:
                audit.append(event, reader=reader, command=f"card {action}", **fields)

            service = PinService(session, _TerminalPinUI(), record=record,
                                 holds=jn.PinHolds(journal) if journal is not None else None)  # fmt: skip
            service.identify()
            try:
                if action == "unblock-pin":
                    result = service.unblock_pin(**sources)
                elif action == "change-pin":
                    result = service.change_pin(**sources)
                else:
                    result = service.change_puk(**sources)
            except (PinError, PukError) as exc:
                if args.json:  # the tries left, also when the card said no (the message goes to stderr)
                    what = "pin_tries_left" if isinstance(exc, PinError) else "puk_tries_left"
                    _emit_json({"reader": reader, "action": action, "ok": False, "card_serial": service.card_serial,
                                "chuid_guid": service.chuid_guid, "error_class": type(exc).__name__,
                                "error": exc.message, what: exc.tries_left})  # fmt: skip
                raise
        finally:
            audit.close()
            if journal is not None:
                journal.close()
    if args.json:
        _emit_json({"reader": reader, **result.to_json()})
        return EXIT_OK
    from provision.pinservice import tries_text

    done = {"unblock-pin": _("PIN unblocked and set"), "change-pin": _("PIN changed"), "change-puk": _("PUK changed")}[action]
    card = result.card_serial if result.card_serial is not None else (result.chuid_guid or _("(no serial)"))
    _say(_("{done} on card {card}. PIN tries left: {pin}; PUK tries left: {puk}.").format(
        done=done, card=card, pin=tries_text(result.pin_tries_left), puk=tries_text(result.puk_tries_left)))
    if result.pin_hold_cleared:
        _say(_("The card's PIN hold was lifted: runs may send it a PIN again."))
    return EXIT_OK

# ----------------------------------------------------------------------------------------------
# audit, report


def _audit_key(args: argparse.Namespace) -> Any:
    from provision.secrets import SecretSource, obtain

    if args.key_env:
        return obtain(SecretSource("env", args.key_env), unattended=True)
    if args.key_file:
        return obtain(SecretSource("file", args.key_file), unattended=True)
    return None


def cmd_queue_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision.jobfile import load_jobfile
    from provision.queue import is_shared_url, open_queue

    if not is_shared_url(args.queue):
        raise UsageError(msg('queue push needs a shared queue: --queue postgresql://USER@HOST:PORT/DB (or $PROVISION_QUEUE)'))
    jobfile = load_jobfile(args.jobfile, unattended=args.unattended)
    queue: Any = open_queue(args.queue, logs=Path(args.logs))
    try:
        added, present = queue.push(jobfile)
    finally:
        queue.close()
    if args.json:
        _emit_json({"batch": jobfile.batch, "jobfile": str(Path(args.jobfile).resolve()), "added": added,
                    "already_queued": present})  # fmt: skip
    else:
        _say(_("{file}: batch {batch}, {added} job(s) added to the queue, {present} already there").format(
            file=args.jobfile, batch=jobfile.batch, added=added, present=present))
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision.cli_audit import cmd_audit_verify as verify_command
    from provision.cli_audit import cmd_audit_verify_queue

    if args.queue:
        from provision.queue import is_shared_url, open_queue

        if not is_shared_url(args.queue):
            raise UsageError(msg("audit verify --queue needs postgresql://…; a local journal's log is checked without --queue"))
        if args.seal or args.anchor or args.timestamps or args.tsa_cert:
            raise UsageError(msg("audit verify --queue checks the stations' chains in the database; --seal and --anchor check a logs directory: give --logs DIR instead of --queue"))  # fmt: skip
        queue: Any = open_queue(args.queue, logs=Path(args.logs))
        try:
            return cmd_audit_verify_queue(queue, _audit_key(args), args.json, _say_json if args.json else _say)
        finally:
            queue.close()
    from provision.audit.verify import journal_seals

    logs = _logs(args)
    anchor = Path(args.anchor) if args.anchor else None
    return verify_command(logs, _audit_key(args), journal_seals(logs), args.json, _say_json if args.json else _say, _warn,
                          held=args.seal or (), anchor=anchor, timestamps=args.timestamps or bool(args.tsa_cert),
                          tsa_certs=[_certificate_der(path) for path in args.tsa_cert or ()])  # fmt: skip


def _certificate_der(path: str) -> bytes:
    """A TSA certificate the auditor trusts, PEM or DER, as DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        data = open(path, "rb").read()  # noqa: SIM115 - a small file, read at once
    except OSError as exc:
        raise UsageError(msg('cannot read the TSA certificate {path} ({strerror})', path=path, strerror=exc.strerror)) from None
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise UsageError(msg("{path} is not a certificate (PEM or DER); give the TSA's certificate", path=path)) from None
    return cert.public_bytes(Encoding.DER)


def cmd_audit_show(args: argparse.Namespace) -> int:
    from provision.cli_audit import cmd_audit_show as show_command

    return show_command(_logs(args), job=args.job, card=args.card, since=args.since, until=args.until,
                        event=args.event, as_json=args.json, out=_say_json if args.json else _say, err=_warn,
                        key=_audit_key(args))  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from provision.report import render, write_report

    reports = _logs(args) / "reports"
    if args.last or not args.run_id:
        try:  # glob would call an unreadable directory empty
            names = [e.name for e in os.scandir(reports) if e.name.endswith(".json")] if reports.is_dir() else []
            found = sorted((reports / name for name in names), key=lambda p: p.lstat().st_mtime)
        except OSError as exc:
            raise LogsError(msg('{reports} cannot be read ({strerror}); make it readable by this user', reports=reports, strerror=exc.strerror)) from None  # fmt: skip
        if not found:
            raise UsageError(msg('no run has a report in {reports} yet; run a batch first', reports=reports))
        source = found[-1]
    else:
        source = reports / f"{args.run_id}.json"
        if not source.is_file():
            raise UsageError(msg("there is no report for run {run_id!r} in {reports}; 'provision status' lists runs", run_id=args.run_id, reports=reports))
    from provision.limits import MAX_REPORT_BYTES
    from provision.logsdir import open_read

    try:
        with open_read(source) as handle:  # a regular file, never a FIFO's endless wait
            data = handle.read(MAX_REPORT_BYTES + 1)
        if len(data) > MAX_REPORT_BYTES:
            raise ValueError("larger than any run report")
        document = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        raise UsageError(msg('{source} is not a readable run report', source=source)) from None
    if args.output:
        try:
            written = write_report(document, args.format, Path(args.output))
        except OSError as exc:
            raise UsageError(msg('the report cannot be written to {output} ({strerror}); choose another -o', output=args.output, strerror=exc.strerror)) from None
        _say(str(written))
    else:
        sys.stdout.write(render(document, args.format))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# readers, sim serve


def cmd_readers(args: argparse.Namespace) -> int:
    from provision.backend import pcsc_readers

    readers = pcsc_readers()
    if args.json:
        _emit_json({"readers": [r.to_json() for r in readers]})
        return EXIT_OK
    if not readers:
        _say(_("No smart-card reader is connected. Plug one in (or start 'provision sim serve')."))
    for reader in readers:
        if reader.mute:
            state = "a card that does not answer (reinsert it)"
        elif reader.card_present:
            state = f"card present, ATR {reader.atr.hex(' ').upper()}"
        else:
            state = "empty"
        _say(f"{reader.name}: {state}")
    return EXIT_OK


def cmd_card_info(args: argparse.Namespace) -> int:
    from provision.backend import read_card_in_reader

    reader, info = read_card_in_reader(args.reader)
    if args.json:
        _emit_json({"reader": reader, **info.to_json()})
    else:
        _say(_("Reader: {reader}").format(reader=reader))
        for line in info.info_lines():
            _say(line)
    return EXIT_OK


def cmd_card_clear_pin_hold(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision import journal as jn
    from provision.audit.chain import AuditLog
    from provision.errors import AuditError
    from provision.logsdir import LogsLock

    card = args.card.strip().lower()
    if card.isdigit():
        serial, guid = int(card), None
    elif len(card) == 32 and all(c in "0123456789abcdef" for c in card):
        serial, guid = None, card
    else:
        raise UsageError(msg('{card!r} is neither a card serial (digits) nor a CHUID GUID (32 hex digits)', card=args.card))
    if not args.reason.strip():
        raise UsageError(msg('--reason must say why the hold may be cleared (it goes into the audit log)'))
    logs = Path(args.logs)
    with LogsLock(logs):  # before anything is read or changed: a live run keeps its journal as it is
        path = logs / "journal.sqlite3"
        journal = jn.Journal(path) if path.exists() else None
        holds = jn.PinHolds(journal) if journal is not None else None
        try:
            hold = holds.get(serial, guid) if holds is not None else None
            if holds is None or hold is None:
                raise UsageError(msg('card {card} is not on PIN hold in {logs}; nothing was changed', card=args.card, logs=logs))
            audit = AuditLog(logs / "audit.jsonl", key=_audit_key(args))
            try:
                tail = audit.check_tail()
                if not tail.ok:
                    raise AuditError(msg("the audit log's end is damaged ({message}); the hold was not cleared. Check it with 'provision audit verify'", message=tail.message))  # fmt: skip
                # Audited first: a hold is never lifted without its record.
                audit.append("pin_hold_cleared", outcome="cleared", by="operator", reason=args.reason.strip(),
                             card_serial=hold.card_serial, chuid_guid=hold.chuid_guid, held_since=hold.since,
                             held_by_run=hold.run_id, held_by_job=hold.job_id, batch=hold.batch,
                             pin_tries_left=hold.tries_left)  # fmt: skip
            finally:
                audit.close()
            holds.clear(serial, guid)
        finally:
            if journal is not None:
                journal.close()
    if args.json:
        _emit_json({"cleared": True, **hold.to_json()})
    else:
        tries = "unknown" if hold.tries_left is None else str(hold.tries_left)
        _say(_("PIN hold on {card_text} cleared (held since {since}, job {job_id}; {tries} PIN tries left then). Runs may "
               "send it a PIN again: check the job's PIN first.").format(card_text=hold.card_text(), since=hold.since,
                                                                         job_id=hold.job_id, tries=tries))  # fmt: skip
    return EXIT_OK


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from provision.sim.vpcd import run_sim_server

    extra = {"pin_tries": args.pin_tries} if args.pin_tries is not None else {}
    return run_sim_server(
        port=args.port,
        serial=args.serial,
        state=Path(args.state) if args.state else None,
        firmware=args.firmware,
        latency_ms=args.latency_ms,
        vanish_after=args.vanish_after,
        fail_after=args.fail_after,
        apdu_log=Path(args.apdu_log) if args.apdu_log else None,
        profile=args.profile,
        atr=args.atr,
        host=args.host,
        **extra,
    )


# ----------------------------------------------------------------------------------------------


MAX_WAIT_SECONDS = 30 * 24 * 3600  # --wait: a month; beyond it, timers overflow and nobody waits
MAX_LEASE_SECONDS = 24 * 3600


def _seconds_type(*, positive: bool, limit: float) -> Callable[[str], float]:
    """An argparse type for a duration: a finite number of seconds in range. NaN, infinities and
    negatives are usage errors (exit 2), not a run that never waits or waits for ever."""

    def seconds(text: str) -> float:
        import argparse
        import math

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(_("{text!r} is not a number of seconds").format(text=text)) from None
        low_ok = value > 0 if positive else value >= 0
        if not math.isfinite(value) or not low_ok or value > limit:
            text_ = _("{text!r} is not a number of seconds more than 0 and at most {limit:.0f}") if positive else \
                _("{text!r} is not a number of seconds 0 or more and at most {limit:.0f}")
            raise argparse.ArgumentTypeError(text_.format(text=text, limit=limit))
        return value

    return seconds


def _int_type(low: int, high: int) -> Callable[[str], int]:
    def whole(text: str) -> int:
        import argparse

        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(_("{text!r} is not a whole number").format(text=text)) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(_("{value} is out of range ({low} to {high})").format(value=value, low=low, high=high))
        return value

    return whole


def _logs_default() -> str:
    return os.environ.get("PROVISION_LOGS", "logs")


DESCRIPTION = N_("Load certificates and keys onto smart cards from declarative YAML job files.")
EPILOG = N_("Exit codes: 0 done, 1 a card failed, 2 invalid input, 3 environment, 4 audit log "
            "failed verification, 70 internal error, 130 interrupted.")  # fmt: skip
LANG_HELP = N_("language of the screens, prompts, messages and reports: en or zh_Hant (Traditional Chinese, Hong Kong); "
             "default $PROVISION_LANG, else the locale (zh_HK, zh_TW → zh_Hant), else en. --json stays language-neutral")
# One line per command: argparse's sub-parsers and the fast top-level help both read this table.
COMMANDS: dict[str, str] = {
    "validate": N_("check job files; writes nothing"),
    "inspect": N_("open a PKCS#12 file and show what an operator confirms"),
    "plan": N_("what a run would do, card by card; with cards present (read-only), the difference to each job"),
    "jobs": N_("write a job file from a CSV of holders and a template ('jobs new')"),
    "run": N_("the batch: wait for each card, load, verify, record, report"),
    "resume": N_("finish what an interrupted run left"),
    "status": N_("runs and jobs in the journal"),
    "queue": N_("a shared job queue for many stations ('queue push')"),
    "store": N_("certificates archived from cards, 'On Disk' ('store list')"),
    "audit": N_("check the audit log's integrity ('audit verify') or read it ('audit show')"),
    "report": N_("a run's report as JSON, CSV or HTML"),
    "readers": N_("PC/SC readers and the cards in them"),
    "card": N_("a card's serial, version, PIN tries, certificates and slot names ('card info'); "
               "'card clear-pin-hold' after a refused PIN; 'card unblock-pin|change-pin|change-puk' at the counter"),
    "sim": N_("simulated PIV cards for tests, training and peers ('sim serve')"),
    "demo": N_("a complete batch on simulated cards, from generated certificates"),
}


def _description() -> str:
    return _("{description} Version {version}.").format(description=_(DESCRIPTION), version=__version__)


def fast_help() -> str:
    """``provision --help`` without importing argparse: the counter PC starts it often. It says what
    argparse's help would, in the chosen language (the same catalog entries as the parser's)."""
    commands = {name: _(text) for name, text in COMMANDS.items()}
    width = max(len(name) for name in COMMANDS) + 2
    lines = [
        _("usage: ") + "provision [-h] [--version] [--lang en|zh_Hant] COMMAND ...",
        "",
        _description(),
        "",
        _("commands:"),
        *(f"  {name:{width}}{text}" for name, text in commands.items()),
        "",
        _("options:"),
        "  -h, --help  " + _("show this help message and exit"),
        "  --version   " + _("show the installed version and exit"),
        "",
        _("'provision COMMAND --help' describes a command."),
        _(EPILOG),
    ]
    return "\n".join(lines) + "\n"


# The secrets a PIN service reads, as its options' help names them.
_SECRET_NAMES = {"pin": N_("PIN"), "puk": N_("PUK"), "new-pin": N_("new PIN"), "new-puk": N_("new PUK")}


# argparse's own words come from the standard library's "argparse" gettext domain, which has no
# Traditional Chinese: these are ours, in our catalog, put in by the formatter and the parser below.
_ARGPARSE_WORDS = {
    "positional arguments": N_("positional arguments"),
    "options": N_("options"),
    "optional arguments": N_("options"),
    "show this help message and exit": N_("show this help message and exit"),
}


def _help_formatter(argparse: ModuleType) -> type[argparse.HelpFormatter]:
    class Formatter(argparse.HelpFormatter):  # type: ignore[name-defined,misc]
        """argparse's help with its fixed words ("usage:", section titles, -h) in the chosen language."""

        def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
            super().add_usage(usage, actions, groups, _("usage: ") if prefix is None else prefix)

        def start_section(self, heading: str | None) -> None:
            super().start_section(_(_ARGPARSE_WORDS[heading]) if heading in _ARGPARSE_WORDS else heading)

        # argparse wraps with textwrap, which counts characters: a Chinese line came out twice the
        # terminal's width. Text with wide characters is wrapped by terminal cells instead.
        def _split_lines(self, text: str, width: int) -> list[str]:
            from provision.display import cell_width, wrap_cells

            if cell_width(text) == len(text):
                return super()._split_lines(text, width)  # type: ignore[no-any-return]
            return wrap_cells(text, width)

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            from provision.display import cell_width, wrap_cells

            if cell_width(text) == len(text):
                return super()._fill_text(text, width, indent)  # type: ignore[no-any-return]
            return "\n".join(indent + line for line in wrap_cells(text, width - len(indent)))

        def _format_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None) -> str:
            # "用法：" is three characters but six cells: format with an ASCII stand-in of its width,
            # so the lines keep to the terminal and the continuation lines stay in their column.
            from provision.display import cell_width

            if prefix is None or cell_width(prefix) == len(prefix):
                return super()._format_usage(usage, actions, groups, prefix)  # type: ignore[no-any-return]
            stand_in = "u" * cell_width(prefix)
            text: str = super()._format_usage(usage, actions, groups, stand_in)
            return prefix + text[len(stand_in):] if text.startswith(stand_in) else text

        def add_argument(self, action: Any) -> None:
            if action.help in _ARGPARSE_WORDS:
                import copy

                action = copy.copy(action)
                action.help = _(_ARGPARSE_WORDS[action.help])
            super().add_argument(action)

    return Formatter


# argparse's usage errors, recognised by their English form and said in the chosen language.
_ARGPARSE_ERRORS = (
    (r"the following arguments are required: (?P<names>.+)", N_("the following arguments are required: {names}")),
    (r"unrecognized arguments: (?P<names>.+)", N_("unrecognized arguments: {names}")),
    (r"argument (?P<name>\S+): invalid choice: (?P<value>.+?) \(choose from (?P<choices>.+)\)",
     N_("argument {name}: invalid choice: {value} (choose from {choices})")),
    (r"argument (?P<name>\S+): expected one argument", N_("argument {name}: expected one argument")),
    (r"argument (?P<name>\S+): not allowed with argument (?P<other>\S+)",
     N_("argument {name}: not allowed with argument {other}")),
    # Our own type checks (already in the chosen language) and anything else about one argument.
    (r"argument (?P<name>\S+): (?P<problem>.+)", N_("argument {name}: {problem}")),
)


def _parser_class(argparse: ModuleType) -> type[argparse.ArgumentParser]:
    class Parser(argparse.ArgumentParser):  # type: ignore[name-defined,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", _help_formatter(argparse))
            super().__init__(*args, **kwargs)

        def error(self, message: str) -> NoReturn:
            import re

            for pattern, text in _ARGPARSE_ERRORS:
                found = re.fullmatch(pattern, message)
                if found:
                    message = _(text).format(**found.groupdict())
                    break
            self.print_usage(sys.stderr)
            sys.stderr.write(_("{prog}: error: {message}").format(prog=self.prog, message=message) + "\n")
            raise SystemExit(2)

    return Parser


def _prescan_language(argv: Sequence[str]) -> None:
    """The language before the parser is built, so that --help and argparse's errors are in it:
    ``--lang X`` / ``--lang=X`` anywhere, else $PROVISION_LANG, else the locale. A language we lack
    is left for main() to refuse after parsing (exit 2); until then English."""
    option = None
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word == "--lang" and i + 1 < len(argv):
            option = argv[i + 1]
        elif word.startswith("--lang="):
            option = word.split("=", 1)[1]
    try:
        set_language(choose(option))
    except ValueError:
        set_language(ENGLISH)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = _parser_class(argparse)(prog="provision", description=_description(), epilog=_(EPILOG),
                                     formatter_class=_help_formatter(argparse))  # fmt: skip

    class _Version(argparse.Action):  # the metadata is read only when asked, not at every start
        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            parser.exit(message=f"provision {installed_version()}\n")

    parser.add_argument("--version", nargs=0, action=_Version, help=_("show the installed version and exit"))
    parser.add_argument("--lang", dest="lang_top", default=None, metavar="en|zh_Hant", help=_(LANG_HELP))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help=_("one JSON document on stdout, nothing else there"))
    common.add_argument("--lang", default=None, metavar="en|zh_Hant", help=_(LANG_HELP))
    common.add_argument("--logs", default=_logs_default(), metavar="DIR",
                        help=_("work files (journal, audit log, store, reports); default ./logs or $PROVISION_LOGS"))  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", parents=[common], help=_(COMMANDS["validate"]))
    p.add_argument("jobfiles", nargs="+", metavar="JOBFILE")
    p.add_argument("--unattended", action="store_true", help=_("check as for an unattended run (no prompts)"))
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("inspect", parents=[common], help=_(COMMANDS["inspect"]))
    p.add_argument("file", metavar="FILE.p12")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-env", metavar="NAME", help=_("take the password from this environment variable"))
    group.add_argument("--password-file", metavar="PATH", help=_("take the password from this file (mode 0600)"))
    group.add_argument("--no-password", action="store_true",
                       help=_("the file was exported without a password (the empty password, both encodings)"))  # fmt: skip
    p.add_argument("--timezone", default="UTC", metavar="TZ", help=_("IANA zone for dates and the slot name"))
    p.add_argument("--target", default="sp800-78-4", choices=["sp800-78-4", "yubikey-5.7"],
                   help=_("judge the key against SP 800-78-4 (default) or a YubiKey 5.7"))  # fmt: skip
    p.add_argument("--slot-name", default="e-Cert{cert.not_before:%Y%m%d}", metavar="TEMPLATE",
                   help=_("slot-name template to show the result of"))  # fmt: skip
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("plan", parents=[common], help=_(COMMANDS["plan"]))
    p.add_argument("jobfiles", nargs="+", metavar="JOBFILE")
    p.add_argument("--unattended", action="store_true", help=_("plan as for an unattended run (no prompts)"))
    p.add_argument("--sim", action="store_true",
                   help=_("plan against the fresh simulated cards 'run --sim' would have, instead of the readers"))  # fmt: skip
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("jobs", help=_(COMMANDS["jobs"]))
    jobs = p.add_subparsers(dest="jobs_command", metavar="JOBS_COMMAND", required=True)
    p = jobs.add_parser("new", parents=[common], help=_("a job file from a CSV of holders (id, holder, card_serial, pkcs12, password_file) and a template (a job file without cards)"))  # fmt: skip
    p.add_argument("--csv", required=True, metavar="HOLDERS.csv", help=_("UTF-8 (BOM allowed), ',' ';' or tab separated"))
    p.add_argument("--template", required=True, metavar="TEMPLATE.yaml", help=_("version, batch, timezone, defaults, audit"))
    p.add_argument("-o", "--output", required=True, metavar="JOBFILE", help=_("the job file to write"))
    p.add_argument("--batch", metavar="ID", help=_("batch id (default: the template's, else the CSV's name)"))
    p.add_argument("--force", action="store_true", help=_("replace JOBFILE if it exists"))
    p.add_argument("--unattended", action="store_true", help=_("validate as for an unattended run (no prompts)"))
    p.add_argument("--no-file-checks", action="store_true",
                   help=_("do not check that PKCS#12 and secret files exist (they are made later)"))  # fmt: skip
    p.set_defaults(handler=cmd_jobs_new)

    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument("--unattended", action="store_true", help=_("no prompts at all (scheduled batches)"))
    run_options.add_argument("--wait", type=_seconds_type(positive=False, limit=MAX_WAIT_SECONDS), metavar="SECONDS",
                             help=_("how long to wait for missing cards (default: counter until done, unattended 0)"))  # fmt: skip
    run_options.add_argument("--reader", action="append", metavar="NAME", help=_("use only readers whose name contains NAME"))
    run_options.add_argument("--no-progress", action="store_true", help=_("no progress bar on stderr"))
    run_options.add_argument("--syslog", metavar="ADDRESS",
                             help=_("forward the audit seals to syslog: /dev/log (journald) or host:port (UDP)"))  # fmt: skip
    run_options.add_argument("--queue", default=os.environ.get("PROVISION_QUEUE") or None, metavar="URL",
                             help=_("journal and job queue: sqlite:///PATH (default LOGS/journal.sqlite3, one station) or postgresql://USER@HOST:PORT/DB (many stations; $PROVISION_QUEUE)"))  # fmt: skip
    run_options.add_argument("--station", default=None, metavar="NAME",
                             help=_("this station's name in a shared queue (default $PROVISION_STATION or the host name)"))  # fmt: skip
    run_options.add_argument("--lease", type=_seconds_type(positive=True, limit=MAX_LEASE_SECONDS), default=30.0, metavar="SECONDS",
                             help=_("how long a claimed job stays this station's after it stops renewing (default 30)"))  # fmt: skip
    run_options.add_argument("--accept-damaged-audit-tail", metavar="REASON",
                             help=_("continue after a damaged, emptied or deleted audit log; the reason is recorded in the log"))  # fmt: skip
    run_options.add_argument("--operator", default=None, metavar="NAME",
                             help=_("the person at the station, in every audit record (default $PROVISION_OPERATOR; asked at a terminal; unattended: the OS user)"))  # fmt: skip
    run_options.add_argument("--anchor", default=None, metavar="PATH",
                             help=_("also append every seal, fsynced, to this witness file on other storage (overrides audit.anchor)"))  # fmt: skip

    p = sub.add_parser("run", parents=[common, run_options], help=_(COMMANDS["run"]))
    p.add_argument("jobfile", metavar="JOBFILE")
    p.add_argument("--sim", action="store_true", help=_("in-process simulated cards, one per job, no pcscd"))
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("resume", parents=[common, run_options], help=_(COMMANDS["resume"]))
    p.add_argument("--sim", action="store_true", help=_("the open jobs on fresh in-process simulated cards (training)"))
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("status", parents=[common], help=_(COMMANDS["status"]))
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("queue", help=_(COMMANDS["queue"]))
    queue_sub = p.add_subparsers(dest="queue_command", metavar="QUEUE_COMMAND", required=True)
    p = queue_sub.add_parser("push", parents=[common], help=_("put a batch's jobs into the shared queue (idempotent)"))
    p.add_argument("jobfile", metavar="JOBFILE", help=_("the job file, at the path every station reads it from"))
    p.add_argument("--queue", default=os.environ.get("PROVISION_QUEUE") or None, metavar="URL",
                   help=_("postgresql://USER@HOST:PORT/DB ($PROVISION_QUEUE)"))  # fmt: skip
    p.add_argument("--unattended", action="store_true", help=_("validate as for an unattended run (no prompts)"))
    p.set_defaults(handler=cmd_queue_push)

    p = sub.add_parser("store", help=_(COMMANDS["store"]))
    store = p.add_subparsers(dest="store_command", metavar="STORE_COMMAND", required=True)
    p = store.add_parser("list", parents=[common], help=_("certificates taken off cards, with where they came from"))
    p.set_defaults(handler=cmd_store_list)

    p = sub.add_parser("audit", help=_(COMMANDS["audit"]))
    audit = p.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", required=True)
    audit_key = argparse.ArgumentParser(add_help=False)
    group = audit_key.add_mutually_exclusive_group()
    group.add_argument("--key-env", metavar="NAME", help=_("the audit HMAC key from this environment variable"))
    group.add_argument("--key-file", metavar="PATH", help=_("the audit HMAC key from this file (mode 0600)"))
    p = audit.add_parser("verify", parents=[common, audit_key], help=_("exit 0 if intact, 4 with the first bad line"))
    p.add_argument("--queue", default=None, metavar="URL",
                   help=_("check every station's chain in this shared queue (postgresql://…) instead of LOGS"))  # fmt: skip
    p.add_argument("--seal", action="append", metavar="HASH",
                   help=_("a seal you hold (report, syslog, ticket) that must be in the chain; repeatable"))  # fmt: skip
    p.add_argument("--anchor", metavar="FILE",
                   help=_("a witness file of seals: each in the chain, in order, the log not ending before the last"))  # fmt: skip
    p.add_argument("--timestamps", action="store_true",
                   help=_("check the RFC 3161 time-stamps of the seals (LOGS/audit-timestamps.jsonl)"))  # fmt: skip
    p.add_argument("--tsa-cert", action="append", metavar="FILE",
                   help=_("a TSA certificate you trust (PEM or DER); time-stamps must be signed by one; repeatable"))  # fmt: skip
    p.set_defaults(handler=cmd_audit_verify)
    p = audit.add_parser("show", parents=[common, audit_key], help=_("read the audit log for review, verifying each record"))
    p.add_argument("--job", metavar="ID")
    p.add_argument("--card", metavar="SERIAL")
    p.add_argument("--since", metavar="DATE")
    p.add_argument("--until", metavar="DATE")
    p.add_argument("--event", metavar="TYPE")
    p.set_defaults(handler=cmd_audit_show)

    p = sub.add_parser("report", parents=[common], help=_(COMMANDS["report"]))
    p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    p.add_argument("--last", action="store_true", help=_("the most recent run (the default)"))
    p.add_argument("--format", choices=["json", "csv", "html"], default="html")
    p.add_argument("-o", "--output", metavar="FILE", help=_("write here instead of stdout"))
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("readers", parents=[common], help=_(COMMANDS["readers"]))
    p.set_defaults(handler=cmd_readers)

    p = sub.add_parser("card", help=_(COMMANDS["card"]))
    card = p.add_subparsers(dest="card_command", metavar="CARD_COMMAND", required=True)
    p = card.add_parser("info", parents=[common], help=_("read a card without changing it"))
    p.add_argument("--reader", metavar="NAME", help=_("the reader (a unique part of its name); default: the one with a card"))
    p.set_defaults(handler=cmd_card_info)
    p = card.add_parser("clear-pin-hold", parents=[common, audit_key],
                        help=_("let runs send a PIN again to a card that refused one (audited)"))  # fmt: skip
    p.add_argument("card", metavar="CARD", help=_("the card's serial, or its CHUID GUID (32 hex digits)"))
    p.add_argument("--reason", required=True, metavar="TEXT",
                   help=_("why the hold may go, e.g. 'PIN file corrected, checked with the holder' (audited)"))  # fmt: skip
    p.set_defaults(handler=cmd_card_clear_pin_hold)
    services = (
        ("unblock-pin", _("set a new PIN with the PUK (RESET RETRY COUNTER); the card's PIN tries come back"), ("puk", "new-pin")),
        ("change-pin", _("change the PIN, proven by the current one (CHANGE REFERENCE DATA)"), ("pin", "new-pin")),
        ("change-puk", _("change the PUK, proven by the current one (CHANGE REFERENCE DATA)"), ("puk", "new-puk")),
    )
    for name, text, secrets in services:
        p = card.add_parser(name, parents=[common, audit_key],
                            help=_("{service}; tries shown before each attempt, audited").format(service=text),
                            description=_("{service}. The tries left are shown before each attempt. A value not given "
                                          "by an option is typed at the terminal without echo (a new one twice); without a "
                                          "terminal that is exit 2. The last PUK try is spent only after 'yes, this is the last "
                                          "try' is typed at the terminal. Never retried; audited in --logs.").format(service=text))  # fmt: skip
        p.add_argument("--reader", metavar="NAME", help=_("the reader (a unique part of its name); default: the one with a card"))
        p.add_argument("--operator", default=None, metavar="NAME",
                       help=_("who serves the card holder (recorded in the audit record; default $PROVISION_OPERATOR)"))  # fmt: skip
        for secret in secrets:
            what = _(_SECRET_NAMES[secret])
            group = p.add_mutually_exclusive_group()
            group.add_argument(f"--{secret}-env", metavar="NAME", help=_("read the {what} from this environment variable").format(what=what))
            group.add_argument(f"--{secret}-file", metavar="PATH", help=_("read the {what} from the first line of this file (mode 0600)").format(what=what))
        p.set_defaults(handler=cmd_card_pin_service, unattended=False, pin_env=None, pin_file=None, puk_env=None,
                       puk_file=None, new_pin_env=None, new_pin_file=None, new_puk_env=None, new_puk_file=None)  # fmt: skip

    p = sub.add_parser("sim", help=_(COMMANDS["sim"]))
    sim = p.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)
    p = sim.add_parser("serve", help=_("connect one simulated PIV card to the vpcd virtual reader, until stopped"))
    p.add_argument("--port", type=_int_type(1, 65535), default=35963, help=_("vpcd port (35963 is 'Virtual PCD 00 00')"))
    p.add_argument("--host", default="localhost", help=_("where vpcd listens (default localhost)"))
    p.add_argument("--serial", type=_int_type(0, 2**32 - 1), help=_("the card's serial number"))
    p.add_argument("--state", metavar="FILE", help=_("keep the card's state in this file across restarts"))
    p.add_argument("--firmware", metavar="X.Y.Z", help=_("behave like this YubiKey firmware (default 5.7.1)"))
    p.add_argument("--profile", choices=["yubikey", "pivapplet"], help=_("card family to imitate (default yubikey)"))
    p.add_argument("--pin-tries", type=_int_type(1, 15), metavar="N", help=_("PIN tries of a fresh card (default 3)"))
    p.add_argument("--latency-ms", type=_seconds_type(positive=False, limit=60_000), metavar="N", help=_("each APDU takes N ms more"))
    p.add_argument("--vanish-after", type=_int_type(0, 2**31), metavar="N", help=_("after N APDUs the card is pulled"))
    p.add_argument("--fail-after", type=_int_type(0, 2**31), metavar="N", help=_("after N APDUs every answer is 6F00"))
    p.add_argument("--apdu-log", metavar="FILE", help=_("one JSON line per APDU (header and status, no data)"))
    p.add_argument("--atr", default="nfc", metavar="nfc|usb|HEX",
                   help=_("the ATR the reader reports: nfc (default; a YubiKey 5 NFC in a contactless reader, which ykman, yubico-piv-tool and OpenSC accept on any reader), usb (a YubiKey 5 on USB: ykman then needs a reader named 'Yubico YubiKey ...') or the ATR in hex"))  # fmt: skip
    p.set_defaults(handler=cmd_sim_serve)

    p = sub.add_parser("demo", parents=[common], help=_(COMMANDS["demo"]))
    p.add_argument("--dir", metavar="DIR", help=_("where to write the demo material (default LOGS/demo)"))
    p.add_argument("--holders", type=_int_type(1, 1000), default=4, metavar="N", help=_("how many card holders (default 4)"))
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    _prescan_language(words)
    bare = [w for i, w in enumerate(words) if not (w == "--lang" or w.startswith("--lang=") or (i and words[i - 1] == "--lang"))]
    if bare in (["--help"], ["-h"]):
        sys.stdout.write(fast_help())
        return EXIT_OK
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        sys.stdout.write(f"provision {installed_version()}\n")
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    early = args.early_read = _start_early_read(args)
    try:
        try:
            set_language(choose(getattr(args, "lang", None) or getattr(args, "lang_top", None)))
        except ValueError as exc:
            raise UsageError(exc.args[0]) from None
        return handler(args)
    except ProvisionError as exc:
        _warn(f"provision: {exc.localized()}")
        return exc.exit_code
    except KeyboardInterrupt:
        _warn("provision: " + _("interrupted; 'provision resume' finishes what was started"))
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, reported without secrets
        if os.environ.get("PROVISION_DEBUG"):
            raise
        # Only the type: a library's message could quote a value we passed it.
        _warn("provision: " + _("internal error ({name}); this is a bug, please report it with the command you ran "
                                "(set PROVISION_DEBUG=1 for a traceback)").format(name=type(exc).__name__))  # fmt: skip
        return EXIT_INTERNAL
    finally:
        if early is not None:  # not taken by the run (it ended before a card, or had no PC/SC card)
            early.close()


def _start_early_read(args: argparse.Namespace) -> Any:
    """An unattended ``run`` on PC/SC readers reads the card's identity while the rest of the program
    is imported and the job file and PKCS#12 are opened (``provision.early``); None elsewhere."""
    if args.handler is not cmd_run or not args.unattended or args.sim:
        return None
    from provision.early import start_early_read

    return start_early_read(args.jobfile, args.reader)


def exit_after(code: int) -> NoReturn:
    """End the process with ``code``, doing what the interpreter's own exit does that matters, and
    skipping what costs time and protects nothing.

    Before exiting, the interpreter waits for non-daemon threads, runs the ``atexit`` functions
    (logging's flush among them) and flushes stdout and stderr; this does the same, in the same order.
    It then skips freeing every module and object, and OpenSSL's own clean-up, which took 60-90 ms
    of a 0.77 s load (``make profile``). Nothing durable is left to that clean-up: the audit log,
    the journal (closed, so SQLite has folded its write-ahead log back) and the reports are written
    and synced before a command returns.

    Anything unusual takes the interpreter's ordinary exit instead: a Python without the two
    functions used here, ``PROVISION_SLOW_EXIT`` set, or a stream that cannot be flushed (a closed
    pipe keeps Python's own report and exit status).
    """
    import atexit
    import threading

    wait_for_threads = getattr(threading, "_shutdown", None)
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if wait_for_threads is None or run_exit_functions is None or os.environ.get("PROVISION_SLOW_EXIT"):
        sys.exit(code)
    wait_for_threads()
    run_exit_functions()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            sys.exit(code)  # the ordinary exit reports it as it always has
    os._exit(code)


def _signals_interrupt() -> None:
    """SIGTERM and SIGHUP end any command as Ctrl-C does (exit 130 and one sentence), not by their
    default action (killed, exit 143 or 129, without a word), from the start: a run installs its
    own handlers once it has a journal (app.stop_on_signals) and gives these back after. A signal
    the parent set to be ignored (nohup) stays ignored."""
    import signal

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) == signal.SIG_DFL:
            signal.signal(number, interrupt)


def entry() -> NoReturn:
    """The ``provision`` command (console script, ``python -m provision`` and the one-file build)."""
    _signals_interrupt()
    try:
        code = main()
    except KeyboardInterrupt:  # before main's own handling began (parsing the arguments)
        _warn("provision: " + _("interrupted; 'provision resume' finishes what was started"))
        code = EXIT_INTERRUPTED
    exit_after(code)


if __name__ == "__main__":
    entry()
