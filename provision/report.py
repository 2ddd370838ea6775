"""A run's report as JSON, CSV and one self-contained HTML page (CLI.md, "run --json and reports").

The input is the run document exactly as ``run --json`` prints it: ``run_id``, ``batch``,
``started``, ``finished``, ``jobs`` (one dict per job with the fields of ``JOB_COLUMNS``), and
optionally ``seal`` (the audit log's last hash, sealed in the journal), ``operator`` (the person who
ran it, as every audit record names them; CSV repeats it on each row), ``counts`` and, per job,
``not_after`` (the new certificate's expiry, "On Card"). The HTML page has no external assets (inline
CSS only, no script), prints on paper, and escapes every value.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from provision.fsutil import write_all_atomically, write_atomically
from provision.i18n import ENGLISH, N_, current_language, format_datetime, localize
from provision.i18n import gettext as _

JOB_COLUMNS = (
    "id",
    "holder",
    "status",
    "card_serial",
    "slot",
    "slot_name",
    "fingerprint_sha256",
    "replaced_sha256",
    "archived_to",
    "pin_tries_left",
    "apdus",
    "seconds",
    "error",
)
# A card refused at the reader (it matched no job) is a CSV row too: no job id, status "refused",
# its serial, the reason in "error", and the reader and time it was seen.
CSV_COLUMNS = (*JOB_COLUMNS, "not_after", "notes", "reader", "time", "operator", "management_key")  # operator: the run's, on every row
STATUSES = ("loaded", "skipped", "failed", "refused", "pending", "in-doubt")
# The certificate is On Card only in these: elsewhere a fingerprint names the file's certificate.
ON_CARD = ("loaded", "skipped")
FORMATS = ("json", "csv", "html")

# Words for people (translated where shown: _(STATUS_WORDS[status])); the status names stay as they are.
STATUS_WORDS = {
    "loaded": N_("Loaded"),
    "skipped": N_("Already on the card"),
    "failed": N_("Failed"),
    "refused": N_("Refused: wrong card"),
    "pending": N_("Pending: card never inserted"),
    "in-doubt": N_("In doubt: card taken out during the load; insert it again and run provision resume"),
}
# The kind of management key a PIV card ends with (run JSON "management_key"; CSV column; HTML).
MANAGEMENT_KEY_WORDS = {
    "default": N_("factory default (anyone holding the card can replace its certificates)"),
    "job": N_("the job's key"),
    "derived": N_("derived per card from the master key"),
    "pin-protected": N_("random, stored PIN-protected on the card"),
}
# CSV headers: in English the column names of CLI.md, as they always were (scripts read them); in
# another language each column's label, so that a clerk opening the file in a spreadsheet reads it.
CSV_LABELS = {
    "id": N_("Job"),
    "holder": N_("Holder"),
    "status": N_("Status"),
    "card_serial": N_("Card serial"),
    "slot": N_("Slot"),
    "slot_name": N_("Slot name"),
    "fingerprint_sha256": N_("Certificate SHA-256"),
    "replaced_sha256": N_("Replaced certificate SHA-256"),
    "archived_to": N_("Archived to"),
    "pin_tries_left": N_("PIN tries left"),
    "apdus": N_("APDUs"),
    "seconds": N_("Seconds"),
    "error": N_("Error"),
    "not_after": N_("Certificate expires"),
    "notes": N_("Notes"),
    "reader": N_("Reader"),
    "time": N_("Time"),
    "operator": N_("Operator"),
    "management_key": N_("Management key"),
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _jobs(run_doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    jobs = run_doc.get("jobs") or []
    if not isinstance(jobs, Sequence) or not all(isinstance(j, Mapping) for j in jobs):
        raise ValueError("the run document's 'jobs' must be a list of objects")
    return list(jobs)


def refused_cards(run_doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    cards = run_doc.get("refused_cards") or []
    if not isinstance(cards, Sequence) or not all(isinstance(c, Mapping) for c in cards):
        raise ValueError("the run document's 'refused_cards' must be a list of objects")
    return list(cards)


def counts(run_doc: Mapping[str, Any]) -> dict[str, int]:
    """Jobs per status: the document's own ``counts`` when present, else counted from its jobs."""
    given = run_doc.get("counts")
    if isinstance(given, Mapping):
        return {str(k): int(v) for k, v in given.items()}
    result = dict.fromkeys(STATUSES, 0)
    for job in _jobs(run_doc):
        status = str(job.get("status") or "pending")
        result[status] = result.get(status, 0) + 1
    return result


def error_text(error: Any, *, translate: bool = True) -> str:
    """An error in words, whether the runner gave a sentence or {class, message}; in the chosen
    language unless ``translate`` is False (the recorded English sentence)."""
    words = localize if translate else str
    if error is None or error == "":
        return ""
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("error") or ""
        kind = error.get("class") or error.get("error_class") or ""
        return f"{words(str(message))} ({kind})" if message and kind else words(str(message or kind))
    return words(str(error))


def status_words(status: str) -> str:
    """A status for a person, in the chosen language (the status name itself stays in every record)."""
    return _(STATUS_WORDS[status]) if status in STATUS_WORDS else status


def csv_header() -> list[str]:
    if current_language() == ENGLISH:
        return list(CSV_COLUMNS)
    return [_(CSV_LABELS[column]) for column in CSV_COLUMNS]


def when(value: Any, zone: str | None = None) -> str:
    """An ISO 8601 time of the run document as a person in the chosen language writes it, in the
    job's time zone; a value that is not such a time is shown as it is."""
    if not value:
        return ""
    from datetime import datetime

    text = str(value)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is None:
        return text
    try:
        return format_datetime(moment, zone)
    except (LookupError, ValueError):  # an unknown zone name in a hand-edited document
        return format_datetime(moment, None)


def _time(value: Any, zone: str | None) -> str:
    """``<time>`` with the machine form kept in its attribute."""
    if not value:
        return ""
    return f'<time datetime="{_e(value)}">{_e(when(value, zone))}</time>'


# ----------------------------------------------------------------------------------------------
# JSON and CSV


def render_json(run_doc: Mapping[str, Any]) -> str:
    return "".join(_json_chunks(run_doc))


def _json_chunks(run_doc: Mapping[str, Any]) -> Iterator[str]:
    yield from json.JSONEncoder(indent=2, ensure_ascii=False, default=str).iterencode(run_doc)
    yield "\n"


def _csv_cell(value: Any) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, list):
        text = "; ".join(str(v) for v in value)
    else:  # cells hold the recorded values (language-neutral); only the header is translated
        text = error_text(value, translate=False) if isinstance(value, Mapping) else str(value)
    # A spreadsheet runs a cell that starts like a formula; a quote makes it text (OWASP CSV injection).
    return "'" + text if text.startswith(_FORMULA_START) else text


def render_csv(run_doc: Mapping[str, Any]) -> str:
    return "".join(_csv_chunks(run_doc))


def _csv_chunks(run_doc: Mapping[str, Any]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(csv_header())
    operator = run_doc.get("operator")
    refused = ({"status": "refused", "card_serial": c.get("card_serial"), "error": c.get("reason"),
                "reader": c.get("reader"), "time": c.get("time")} for c in refused_cards(run_doc))  # fmt: skip
    for job in itertools.chain(_jobs(run_doc), refused):
        row = {**job, "operator": operator}
        writer.writerow([_csv_cell(row.get(column)) for column in CSV_COLUMNS])
        if buffer.tell() > 65536:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK HK",
       "Microsoft JhengHei", "PingFang HK", sans-serif;
       color: #1a1a1a; background: #fff; margin: 2rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1.25rem; margin: 1rem 0; }
.summary dt { font-weight: 600; color: #444; }
.summary dd { margin: 0; }
.mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .85em;
        word-break: break-all; }
.counts span { display: inline-block; margin-right: 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #bbb; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #eee; }
tbody tr:nth-child(even) { background: #fafafa; }
.status { font-weight: 600; }
.nowrap { white-space: nowrap; }
.status-loaded { color: #0a6b2d; }
.status-skipped { color: #225; }
.status-failed, .status-refused { color: #a00; }
.status-pending, .status-in-doubt { color: #8a5a00; }
.note { color: #8a5a00; }
.error { color: #a00; }
.muted { color: #666; }
footer { margin-top: 1.5rem; font-size: .85em; color: #555; }
@media print {
  body { margin: 0; font-size: 9.5pt; color: #000; }
  @page { size: A4 landscape; margin: 12mm; }
  th { background: #ddd !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  thead { display: table-header-group; }
  tr { page-break-inside: avoid; break-inside: avoid; }
  .status-loaded, .status-skipped, .status-failed, .status-refused, .status-pending, .status-in-doubt,
  .note, .error { color: #000; }
}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _short(fingerprint: Any) -> str:
    text = "" if fingerprint is None else str(fingerprint)
    return f"{text[:16]}…" if len(text) > 20 else text


_HTML_TEXTS = (
    N_('unknown'),
    N_('expires {date}'),
    N_('none'),
    N_('archived to {path}'),
    N_('Cards refused'),
    N_('Cards refused at the reader'),
    N_('None: every card presented matched its job.'),
    N_('These cards matched no job of the run; nothing was written to them.'),
    N_('not sealed (check the journal and run provision audit verify)'),
    N_('not finished'),
    N_('Time zone'),
    N_('Total: {n}'),
    N_('Run summary'),
    N_('Batch'),
    N_('Run'),
    N_('Operator'),
    N_('Started'),
    N_('Finished'),
    N_('Cards'),
    N_('Audit seal'),
    N_('This run has no jobs.'),
    N_('Batch {batch}'),
    N_('not recorded'),
)


def _html_words() -> dict[str, str]:
    """The page's own words, translated and escaped (computed before the f-strings: the extractor
    cannot see a _() inside an f-string)."""
    return {text: _e(_(text)) for text in _HTML_TEXTS}


def _job_row(job: Mapping[str, Any], zone: str | None) -> str:
    w = _html_words()
    status = str(job.get("status") or "pending")
    status_class = status if status in STATUSES else "pending"
    words = status_words(status)
    new_cert = ""
    if status in ON_CARD and (job.get("not_after") or job.get("fingerprint_sha256")):
        expiry = _time(job.get("not_after"), zone) if job.get("not_after") else w['unknown']
        new_cert = w['expires {date}'].format(date=expiry)
        if job.get("fingerprint_sha256"):
            new_cert += f'<br><span class="mono" title="{_e(job["fingerprint_sha256"])}">SHA-256 {_e(_short(job["fingerprint_sha256"]))}</span>'
    replaced = f'<span class="muted">{w["none"]}</span>'
    if job.get("replaced_sha256") or job.get("archived_to"):
        replaced = f'<span class="mono" title="{_e(job.get("replaced_sha256"))}">SHA-256 {_e(_short(job.get("replaced_sha256")))}</span>'
        if job.get("archived_to"):
            replaced += "<br>" + w["archived to {path}"].format(path=f'<span class="mono">{_e(job["archived_to"])}</span>')
    error = error_text(job.get("error"))
    details = []
    if job.get("pin_tries_left") is not None:
        details.append(_e(_("PIN tries left: {n}").format(n=job["pin_tries_left"])))
    if job.get("seconds") is not None:
        details.append(_e(_("{seconds} s").format(seconds=job["seconds"])))
    if job.get("apdus") is not None:
        details.append(_e(_("{n} APDUs").format(n=job["apdus"])))
    if job.get("management_key"):
        kind = str(job["management_key"])
        words_key = _(MANAGEMENT_KEY_WORDS[kind]) if kind in MANAGEMENT_KEY_WORDS else kind
        details.append(_e(_("management key: {kind}").format(kind=words_key)))
    details += [f'<span class="note">{_e(localize(str(note)))}</span>' for note in job.get("notes") or []]
    cells = [
        f'<td class="nowrap">{_e(job.get("id"))}</td>',
        f"<td>{_e(job.get('holder'))}</td>",
        f'<td class="status status-{status_class}">{_e(words)}</td>',
        f'<td class="mono nowrap">{_e(job.get("card_serial") or "")}</td>',
        f"<td>{_e(job.get('slot') or '')}</td>",
        f"<td>{_e(job.get('slot_name') or '')}</td>",
        f"<td>{new_cert}</td>",
        f"<td>{replaced}</td>",
        f'<td class="error">{_e(error)}</td>' if error else '<td class="muted"></td>',
        f'<td class="muted">{"<br>".join(details)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _refused_html(cards: Sequence[Mapping[str, Any]], zone: str | None) -> Iterator[str]:
    w = _html_words()
    yield f'<section aria-label="{w["Cards refused"]}">\n<h2>{w["Cards refused at the reader"]}</h2>\n'
    if not cards:
        yield f'<p class="muted">{w["None: every card presented matched its job."]}</p>\n</section>\n'
        return
    headings = (_("Card serial"), _("Reader"), _("Time"), _("Reason"))
    yield (f"<p>{w['These cards matched no job of the run; nothing was written to them.']}</p>\n<table>\n<thead><tr>"
           + "".join(f"<th>{_e(h)}</th>" for h in headings) + "</tr></thead>\n<tbody>\n")
    for card in cards:
        yield (f'<tr><td class="mono nowrap">{_e(card.get("card_serial"))}</td><td>{_e(card.get("reader"))}</td>'
               f'<td class="nowrap">{_time(card.get("time"), zone)}</td><td>{_e(localize(str(card.get("reason") or "")))}</td></tr>\n')
    yield "</tbody>\n</table>\n</section>\n"


def render_html(run_doc: Mapping[str, Any]) -> str:
    return "".join(_html_chunks(run_doc))


def _html_chunks(run_doc: Mapping[str, Any]) -> Iterator[str]:
    """The page in pieces, a row at a time, so a report of 10,000 cards is never one string. Texts
    are in the chosen language (provision.i18n), times in the job's time zone (``timezone``)."""
    w = _html_words()
    jobs = _jobs(run_doc)
    tally = counts(run_doc)
    run_id = run_doc.get("run_id")
    batch = run_doc.get("batch")
    zone = str(run_doc["timezone"]) if run_doc.get("timezone") else None
    count_html = " ".join(
        f'<span class="status-{_e(k) if k in STATUSES else "pending"}">{_e(status_words(k))}: <b>{_e(v)}</b></span>'
        for k, v in tally.items()
        if v or k in ("loaded", "failed")
    )
    seal = run_doc.get("seal")
    seal_html = (
        f'<span class="mono">{_e(seal)}</span>'
        if seal
        else f'<span class="muted">{w["not sealed (check the journal and run provision audit verify)"]}</span>'
    )
    title = _("Card provisioning report")
    lang = "zh-Hant-HK" if current_language() != ENGLISH else "en"
    started = _time(run_doc.get("started"), zone)
    finished = _time(run_doc.get("finished"), zone) or w['not finished']
    zone_html = f"<dt>{w['Time zone']}</dt><dd>{_e(zone)}</dd>\n" if zone else ""
    total = w['Total: {n}'].format(n=f"<b>{len(jobs)}</b>")
    headings = (_("Job"), _("Holder"), _("Status"), _("Card serial"), _("Slot"), _("Slot name"),
                _("New certificate (On Card)"), _("Replaced certificate (On Disk)"), _("Error"), _("Details"))  # fmt: skip
    yield f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{_e(title)}: {_e(batch)} ({_e(run_id)})</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<div class="muted">{w["Batch {batch}"].format(batch=_e(batch))}</div>
</header>
<section aria-label="{w['Run summary']}">
<dl class="summary">
<dt>{w['Batch']}</dt><dd>{_e(batch)}</dd>
<dt>{w['Run']}</dt><dd class="mono">{_e(run_id)}</dd>
<dt>{w['Operator']}</dt><dd>{_e(run_doc["operator"]) if run_doc.get("operator") else w["not recorded"]}</dd>
<dt>{w['Started']}</dt><dd>{started}</dd>
<dt>{w['Finished']}</dt><dd>{finished}</dd>
{zone_html}<dt>{w['Cards']}</dt><dd class="counts">{count_html} <span>{total}</span></dd>
<dt>{w['Audit seal']}</dt><dd>{seal_html}</dd>
</dl>
</section>
<section aria-label="{w['Cards']}">
<h2>{w['Cards']}</h2>
<table>
<thead><tr>{"".join(f"<th>{_e(h)}</th>" for h in headings)}</tr></thead>
<tbody>
"""
    for job in jobs:
        yield _job_row(job, zone) + "\n"
    if not jobs:
        yield f'<tr><td colspan="10" class="muted">{w["This run has no jobs."]}</td></tr>\n'
    yield """</tbody>
</table>
</section>
"""
    yield from _refused_html(refused_cards(run_doc), zone)
    footer = _("The audit seal is the last hash of the audit log when the run ended; {command} checks that the log still matches it.")
    yield f"""<footer>{_e(footer).format(command="<code>provision audit verify</code>")}</footer>
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------
# files


def _chunks(run_doc: Mapping[str, Any], fmt: str) -> Iterator[str]:
    renderers = {"json": _json_chunks, "csv": _csv_chunks, "html": _html_chunks}
    if fmt not in renderers:
        raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    return renderers[fmt](run_doc)


def render(run_doc: Mapping[str, Any], fmt: str) -> str:
    return "".join(_chunks(run_doc, fmt))


def _encoded(run_doc: Mapping[str, Any], fmt: str) -> Iterator[bytes]:
    """The report's bytes in pieces (a report of thousands of cards is not built as one string first)."""
    return (chunk.encode("utf-8") for chunk in _chunks(run_doc, fmt))


def write_report(run_doc: Mapping[str, Any], fmt: str, path: Path) -> Path:
    """One report in one format at ``path`` (``provision report -o FILE``), written atomically."""
    write_atomically(Path(path), _encoded(run_doc, fmt))
    return Path(path)


def write_reports(run_doc: Mapping[str, Any], reports_dir: Path) -> dict[str, Path]:
    """All three reports as ``reports_dir/<run_id>.{json,csv,html}``; returns {format: path}."""
    run_id = str(run_doc.get("run_id") or "")
    if not _RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ValueError(f"run id {run_id!r} cannot name a report file")
    paths = {fmt: Path(reports_dir) / f"{run_id}.{fmt}" for fmt in FORMATS}
    write_all_atomically([(path, _encoded(run_doc, fmt)) for fmt, path in paths.items()])
    return paths
