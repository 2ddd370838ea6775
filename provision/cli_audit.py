"""The ``provision audit`` commands' text and exit codes: they call provision.audit (and the queue's
mirror), print what came back, and map errors to exit codes."""

from __future__ import annotations

import contextlib
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from provision.audit.records import KNOWN_EVENTS
from provision.audit.verify import show, verify
from provision.errors import AuditError, ProvisionError, UsageError
from provision.i18n import gettext as _
from provision.i18n import localize, msg
from provision.queue.audit_mirror import verify_stations
from provision.secrets import Secret

Out = Callable[[str], None]


def cmd_audit_verify(
    logs_dir: Path,
    key: Secret | None,
    seals: Iterable[str],
    as_json: bool,
    out: Out,
    err: Out | None = None,
    *,
    held: Iterable[str] = (),
    anchor: Path | None = None,
    timestamps: bool = False,
    tsa_certs: Iterable[bytes] = (),
) -> int:
    """``provision audit verify``: 0 when intact, 4 with the first bad line otherwise (2: nothing to check)."""
    warn = err or out
    try:
        result = verify(logs_dir, key=key, seals=seals, held=held, anchor=anchor, timestamps=timestamps,
                        tsa_certs=tsa_certs)  # fmt: skip
    except ProvisionError as exc:
        if as_json:
            out(
                json.dumps(
                    {"ok": False, "problem": None, "message": exc.message}, indent=2, ensure_ascii=False
                )
            )
        else:
            warn(f"provision: {exc.localized()}")
        return exc.exit_code
    if as_json:
        out(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    elif result.ok:
        out(localize(msg('audit log intact: {message}', message=result.message)))
        if result.last_hash:
            out(localize(msg('last hash: {last_hash}', last_hash=result.last_hash)))
        for note in result.accepted_damage:
            out(localize(msg('note: {note}', note=note)))
    else:
        out(localize(msg('audit log FAILED verification ({problem}): {message}', problem=result.problem, message=result.message)))
    return 0 if result.ok else AuditError.exit_code


_SHOW_COLUMNS = ("job_id", "card_serial", "slot", "outcome", "error_class")
_SHOW_FINGERPRINTS = ("fingerprint_sha256", "replaced_sha256", "current_sha256")


def _event_names(logs_dir: Path) -> set[str]:
    """The event names this version writes and those found in the log (an older or newer writer's)."""
    names = set(KNOWN_EVENTS)
    with contextlib.suppress(ProvisionError):
        for record in show(logs_dir):
            if isinstance(record.get("event"), str):
                names.add(record["event"])
    return names


def _show_line(rec: Mapping[str, Any]) -> str:
    mark = "ok " if rec.get("verified") else "BAD"
    extra = " ".join(f"{k}={rec[k]}" for k in _SHOW_COLUMNS if rec.get(k) not in (None, ""))
    prints = " ".join(
        f"{k.removesuffix('_sha256')}={rec[k]}" for k in _SHOW_FINGERPRINTS if isinstance(rec.get(k), str)
    )
    who = f"operator={rec.get('operator')!r}"
    if rec.get("os_user") not in (None, rec.get("operator")):
        who += f" os_user={rec.get('os_user')!r}"
    holder = f"holder={rec['holder']!r}" if rec.get("holder") else ""
    fields = " ".join(part for part in (extra, prints, who, holder) if part)
    text = f"{mark} {rec.get('time', '?')}  #{rec.get('seq')}  {rec.get('event')}  {fields}"
    if not rec.get("verified"):
        text += "\n    " + _("NOT VERIFIED: {problem}").format(problem=localize(str(rec.get("verify_problem"))))
    return _printable(text)


def _printable(text: str) -> str:
    """A record's text on a terminal: control characters shown escaped, never acted on."""
    return "".join(
        ch if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf") else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def cmd_audit_show(
    logs_dir: Path,
    *,
    job: str | None = None,
    card: str | None = None,
    since: str | None = None,
    until: str | None = None,
    event: str | None = None,
    as_json: bool = False,
    out: Out,
    err: Out | None = None,
    key: Secret | None = None,
) -> int:
    """``provision audit show``: the matching events, each verified as it is read, one line each (or
    one JSON document); 4 when any shown record does not verify."""
    warn = err or out
    damaged: list[str] = []
    try:
        if event is not None and event not in KNOWN_EVENTS:
            names = _event_names(logs_dir)
            if event not in names:
                raise UsageError(msg("there is no audit event '{event}'; known events: {join}", event=event, join=', '.join(sorted(names))))
        events = list(
            show(logs_dir, job=job, card=card, since=since, until=until, event=event, damaged=damaged, key=key)
        )
    except ProvisionError as exc:
        warn(f"provision: {exc.localized()}")
        return exc.exit_code
    failed = [rec for rec in events if not rec.get("verified")]
    if as_json:
        out(json.dumps({"events": events, "damaged": damaged, "verified": not failed}, indent=2, ensure_ascii=False))
    else:
        for rec in events:
            out(_show_line(rec))
        if not events:
            out(localize(msg('no audit event matches')))
    for note in damaged:
        warn(localize(msg("warning: {note} are not audit records; run 'provision audit verify'", note=note)))
    if failed:
        warn(localize(
            msg("provision: {n} shown record(s) do not verify (first: seq {seq}, {problem}); run 'provision audit verify'", n=len(failed), seq=failed[0].get('seq'), problem=failed[0].get('verify_problem')))
        )
        return AuditError.exit_code
    return 0


def cmd_audit_verify_queue(queue: Any, key: Secret | None, as_json: bool, out: Any) -> int:
    """``provision audit verify --queue URL``: 0 when every station's chain verifies, 4 otherwise."""
    results = verify_stations(queue, key=key)
    ok = all(r.result.ok for r in results)
    if as_json:
        out(json.dumps({"ok": ok, "stations": [r.to_json() for r in results]}, indent=2, ensure_ascii=False))
    else:
        if not results:
            out(localize(msg('no station has written audit records into this queue yet')))
        for r in results:
            if r.result.ok:
                out(localize(msg('station {station}: audit chain intact, {records} records, {seals_checked} seal(s); last hash {last_hash}', station=r.station, records=r.result.records, seals_checked=r.result.seals_checked, last_hash=r.result.last_hash)))  # fmt: skip
            else:
                out(localize(msg('station {station}: audit chain FAILED verification ({problem}): {message}', station=r.station, problem=r.result.problem, message=r.result.message)))
    return 0 if ok else AuditError.exit_code
