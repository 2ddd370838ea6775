"""``provision jobs new``: a job file from a spreadsheet of holders and a template.

Offices keep their queues in spreadsheets. The CSV has a header row and one row per holder:

=================  ===========================================================================
column             meaning
=================  ===========================================================================
``id``             the job id (unique; letters, digits and ``. _ : @ / -``)
``holder``         the holder's name as the operator reads it (any script: 陳大文 is fine)
``card_serial``    the card's serial (decimal); empty: ``card: {any: true}``, the next card
``pkcs12``         the PKCS#12 file, relative to the CSV file
``password_file``  optional: an owner-only file with the PKCS#12 password (relative to the CSV);
                   empty: the template's ``x-pkcs12-password`` source, else a prompt
=================  ===========================================================================

Header names are matched case-insensitively, with spaces and ``-`` read as ``_`` (``Card Serial``
works); a few aliases are accepted (``serial``, ``name``, ``p12``, ``pkcs12_path``…). Other columns
are ignored with a warning, except columns that look like secrets (``password``, ``pin``): those
are refused, since a secret never goes from a spreadsheet into a job file.

Spreadsheet quirks handled: UTF-8 with or without a BOM (Excel's "CSV UTF-8"), ``,``, ``;``
(Excel in many locales) or tab separators (read from the header line), empty rows, ``="0012"``
cells. A serial that a spreadsheet turned into a number (``1.2345678E7``, ``12345678.0``) or that
has separators (``12,345,678``) is an error naming the line: the digits may be lost, so the
column must be re-typed as text. Leading zeros are read as decimal (``0012345678`` is 12345678,
as in a job file) with a warning.

The template is a job file without cards: ``version``, ``batch``, ``timezone``, ``defaults``,
``audit``, and optionally ``x-pkcs12-password: {prompt: "…"}`` (or any secret form) for rows
without a password file. Relative paths in it (secret files, export templates) are relative to
the template and are rewritten for the output's directory.

The output quotes every string, so a holder called ``no`` or an id ``0012`` cannot change type,
and is validated with ``load_jobfile``'s own checks before it is written (atomically): a CSV that
would give an invalid job file writes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import limits
from provision.errors import InputTooLargeError, JobFileError, Problem, UsageError
from provision.i18n import msg
from provision.jobfile import JobFile, load_yaml, parse_jobfile

MAX_CSV_BYTES = 32 * 1024 * 1024
TEMPLATE_PASSWORD_KEY = "x-pkcs12-password"  # noqa: S105 - a key name
DEFAULT_PASSWORD_PROMPT = "16-digit number on the PIN envelope"  # noqa: S105 - prompt text
MAX_SERIAL = 4_294_967_295

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}\Z")
_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "job_id", "job"),
    "holder": ("holder", "name", "holder_name"),
    "card_serial": ("card_serial", "serial", "card", "card_serial_number", "serial_number"),
    "pkcs12": ("pkcs12", "pkcs12_path", "pkcs12_file", "p12", "pfx", "path", "file"),
    "password_file": ("password_file", "pkcs12_password_file", "envelope_file"),
}
_REQUIRED = ("id", "holder", "pkcs12")
_SECRET_LOOKING = re.compile(r"(^|_)(password|passwd|pin|puk|passphrase|secret|key)($|_)")
_SCIENTIFIC = re.compile(r"[-+]?[0-9]*\.?[0-9]+[eE][-+]?[0-9]+\Z")
_DECIMAL_POINT = re.compile(r"[0-9]+[.,][0-9]+\Z")
_GROUPED = re.compile(r"[0-9]{1,3}([,. '\u00a0\u202f][0-9]{3})+\Z")
_LINE_BREAKS = ("\u2028", "\u2029", "\u0085")


@dataclass
class HolderRow:
    line: int
    id: str
    holder: str
    card_serial: int | None
    pkcs12: str
    password_file: str | None


@dataclass
class CsvJobs:
    """What ``jobs new`` made: the validated job file, the YAML text, and warnings in words."""

    jobfile: JobFile
    text: str
    warnings: list[str] = field(default_factory=list)


def _column_key(name: str) -> str:
    return re.sub(r"[\s\-#.]+", "_", name.strip().lower()).strip("_")


def _cell(text: str) -> str:
    text = text.strip()
    if len(text) >= 3 and text.startswith('="') and text.endswith('"'):
        text = text[2:-1]  # Excel's way to keep a value as text: ="0012"
    return text.strip()


def _get(cells: list[str], index: dict[str, int], name: str) -> str:
    position = index.get(name)
    return _cell(cells[position]) if position is not None and position < len(cells) else ""


def _delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def parse_serial(text: str) -> tuple[int | None, str | None, str | None]:
    """(serial, error, warning) for one card-serial cell; empty → (None, None, None): any card."""
    if not text:
        return None, None, None
    if _SCIENTIFIC.match(text):
        return None, (f"card serial {text!r} was turned into a number in scientific notation by a spreadsheet, "
                      "so digits may be lost; format the column as Text and type the serial again"), None  # fmt: skip
    if _DECIMAL_POINT.match(text):
        return None, (f"card serial {text!r} has a decimal point (a spreadsheet number format); "
                      "format the column as Text and type the serial again"), None  # fmt: skip
    if _GROUPED.match(text):
        return None, (f"card serial {text!r} has digit-group separators; write the digits only, "
                      "as printed on the card"), None  # fmt: skip
    if not text.isascii() or not text.isdigit():
        return None, f"card serial {text!r} is not a number; write the card's decimal serial, or leave it empty for any card", None
    value = int(text, 10) if len(text.lstrip("0")) <= 20 else MAX_SERIAL + 1  # int() refuses thousands of digits
    if value > MAX_SERIAL:
        return None, f"card serial {text[:24]}{'…' if len(text) > 24 else ''} is larger than a card serial can be ({MAX_SERIAL}); check the digits", None
    warning = None
    if len(text) > 1 and text.startswith("0"):
        warning = f"card serial {text!r} has leading zeros; read as the decimal number {value}"
    return value, None, warning


def read_holders(raw: bytes, filename: str) -> tuple[list[HolderRow], list[Problem], list[Problem]]:
    """The rows of a holders CSV, and every problem and warning with its line number."""
    problems: list[Problem] = []
    warnings: list[Problem] = []

    def problem(line: int | None, column: str, message: str) -> None:
        problems.append(Problem(filename, line, column, message))

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem(line, "", msg("the file is not UTF-8 text; in Excel save it as 'CSV UTF-8 (Comma delimited)'"))
        return [], problems, warnings
    if "\x00" in text:
        problem(text[: text.index("\x00")].count("\n") + 1, "", msg('the file contains NUL bytes; it is not a CSV text file'))
        return [], problems, warnings
    first_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first_line), strict=False)
    header: list[str] | None = None
    index: dict[str, int] = {}
    rows: list[HolderRow] = []
    last_line = 0
    for cells in reader:
        line = last_line + 1  # the first physical line of this record (a quoted cell may span lines)
        last_line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # empty rows (and Excel's ';;;;')
        if header is None:
            header = cells
            index = _header_index(cells, line, problem, warnings, filename)
            if any(name not in index for name in _REQUIRED):
                return [], problems, warnings
            continue

        def get(name: str) -> str:
            return _get(cells, index, name)  # noqa: B023 - used within this iteration only

        before = len(problems)
        job_id, holder, p12 = get("id"), get("holder"), get("pkcs12")
        for name, value in (("id", job_id), ("holder", holder), ("pkcs12", p12)):
            if not value:
                problem(line, name, msg('the {name} cell is empty; fill it in (or delete the row)', name=name))
        if job_id and not _ID.match(job_id):
            problem(line, 'id', msg('id {job_id!r} is not valid; use letters, digits and . _ : @ / - (up to 128), starting with a letter or digit', job_id=job_id))  # fmt: skip
        for name, value in (("holder", holder), ("pkcs12", p12), ("password_file", get("password_file"))):
            if any(not c.isprintable() for c in value) or any(b in value for b in _LINE_BREAKS):
                problem(line, name, msg('the {name} cell contains a line break or control character; remove it', name=name))
        serial, error, warning = parse_serial(get("card_serial"))
        if error:
            problem(line, 'card_serial', error)
        if warning:
            warnings.append(Problem(filename, line, "card_serial", warning))
        if len(problems) == before:
            rows.append(HolderRow(line, job_id, holder, serial, p12, get("password_file") or None))
    if header is None:
        problem(1, "", msg('the file has no header row; the first row names the columns: id, holder, card_serial, pkcs12, password_file'))
    elif not rows and not problems:
        problem(last_line or 1, "", msg('the file has a header but no holders; add one row per holder'))
    _duplicates(rows, problem)
    return rows, problems, warnings


def _header_index(cells: list[str], line: int, problem: Callable[[int | None, str, str], None],
                  warnings: list[Problem], filename: str) -> dict[str, int]:  # fmt: skip
    index: dict[str, int] = {}
    for position, name in enumerate(cells):
        key = _column_key(name)
        if not key:
            continue
        column = next((c for c, aliases in _COLUMNS.items() if key in aliases), None)
        if column is None:
            if _SECRET_LOOKING.search(key):
                problem(line, name, msg("the column {name!r} looks like it holds secrets; provision never copies a secret from a spreadsheet into a job file: remove the column and give owner-only password files in 'password_file'", name=name))  # fmt: skip
            else:
                warnings.append(Problem(filename, line, name, msg('the column {name!r} is not used and was ignored', name=name)))
            continue
        if column in index:
            problem(line, name, msg('two columns mean {column!r} (columns {value} and {value2}); keep one', column=column, value=index[column] + 1, value2=position + 1))
            continue
        index[column] = position
    for column in _REQUIRED:
        if column not in index:
            aliases = ", ".join(_COLUMNS[column])
            problem(line, "", msg('the header has no {column!r} column (accepted names: {aliases}); the columns are id, holder, card_serial, pkcs12, password_file', column=column, aliases=aliases))  # fmt: skip
    return index


def _duplicates(rows: list[HolderRow], problem: Callable[[int | None, str, str], None]) -> None:
    first_id: dict[str, int] = {}
    first_serial: dict[int, int] = {}
    for row in rows:
        if row.id in first_id:
            problem(row.line, 'id', msg('id {id!r} is on line {value} and line {line}; ids must be unique', id=row.id, value=first_id[row.id], line=row.line))
        else:
            first_id[row.id] = row.line
        if row.card_serial is not None:
            if row.card_serial in first_serial:
                problem(row.line, 'card_serial', msg('card serial {card_serial} is on line {value} and line {line}; one job per card', card_serial=row.card_serial, value=first_serial[row.card_serial], line=row.line))  # fmt: skip
            else:
                first_serial[row.card_serial] = row.line


# ----------------------------------------------------------------------------------------------
# The template


_TEMPLATE_KEYS = ("version", "batch", "timezone", "defaults", "audit")


def read_template(path: Path) -> dict[str, Any]:
    """The template's header as data (YAML 1.2 core, as job files are read)."""
    filename = str(path)
    try:
        text = limits.read_bounded(path, limits.MAX_JOBFILE_BYTES, "template").decode("utf-8-sig")
    except InputTooLargeError as exc:
        raise JobFileError([Problem(filename, None, "", exc.message)]) from None
    except OSError as exc:
        raise JobFileError([Problem(filename, None, "", msg('the template cannot be read ({strerror}); check the path', strerror=exc.strerror))]) from None
    except UnicodeDecodeError:
        raise JobFileError([Problem(filename, None, "", msg('the template is not UTF-8 text; save it as UTF-8'))]) from None
    data, lines = load_yaml(text, filename)
    if not isinstance(data, dict):
        raise JobFileError([Problem(filename, 1, "", msg('a template is a job file without cards: a mapping with version, batch, defaults'))])
    if data.get("cards"):
        raise JobFileError([Problem(filename, lines.get(("cards",)), "cards",
                                    msg('a template has no cards (they come from the CSV); remove them'))])  # fmt: skip
    return data


def _rebase(value: str, source_dir: Path, target_dir: Path) -> str:
    """A path relative to ``source_dir``, made relative to ``target_dir`` (absolute stays absolute)."""
    if os.path.isabs(value) or value.startswith("~"):
        return value
    return os.path.relpath(os.path.normpath(source_dir / value), target_dir)


def _rebase_secret(secret: Any, source_dir: Path, target_dir: Path) -> Any:
    if isinstance(secret, dict) and isinstance(secret.get("file"), str):
        return {"file": _rebase(secret["file"], source_dir, target_dir)}
    if isinstance(secret, dict) and isinstance(secret.get("derive"), dict):  # a derived management key's master
        derive = secret["derive"]
        return {"derive": {**derive, "master": _rebase_secret(derive.get("master"), source_dir, target_dir)}}
    return secret


def _rebased_template(data: dict[str, Any], source_dir: Path, target_dir: Path) -> dict[str, Any]:
    out = {k: data[k] for k in _TEMPLATE_KEYS if k in data}
    defaults = dict(out.get("defaults") or {})
    for name in ("pin", "management_key", "management_key_rotate"):
        if name in defaults:
            defaults[name] = _rebase_secret(defaults[name], source_dir, target_dir)
    if isinstance(defaults.get("export"), dict):
        defaults["export"] = {k: _rebase(v, source_dir, target_dir) if isinstance(v, str) else v
                              for k, v in defaults["export"].items()}  # fmt: skip
    if defaults:
        out["defaults"] = defaults
    if isinstance(out.get("audit"), dict) and "key" in out["audit"]:
        out["audit"] = {**out["audit"], "key": _rebase_secret(out["audit"]["key"], source_dir, target_dir)}
    return out


# ----------------------------------------------------------------------------------------------
# YAML out: every string quoted


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML 1.2 double-quoted scalar
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # lists and mappings in flow style, strings quoted


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name) and name not in ("y", "n") else json.dumps(name)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for key, item in value.items():
        if isinstance(item, dict) and item:
            out.append(f"{pad}{_key(key)}:")
            _emit(item, indent + 2, out)
        else:
            out.append(f"{pad}{_key(key)}: {_scalar(item)}")


def render_jobfile(header: dict[str, Any], cards: list[dict[str, Any]], comment: str) -> str:
    out = [f"# {line}" if line else "#" for line in comment.splitlines()]
    _emit(header, 0, out)
    out.append("cards:")
    for card in cards:
        first = True
        for key, item in card.items():
            out.append(f"  {'- ' if first else '  '}{_key(key)}: {_scalar(item)}")
            first = False
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------


def jobs_from_csv(csv_path: Path, template_path: Path, output: Path, *, batch: str | None = None,
                  unattended: bool = False, check_files: bool = True) -> CsvJobs:  # fmt: skip
    """Build and validate the job file; nothing is written. Raises JobFileError listing every problem."""
    try:
        raw = limits.read_bounded(csv_path, MAX_CSV_BYTES, "CSV file")  # bounded: a FIFO or /dev/zero too
    except OSError as exc:
        raise UsageError(msg('cannot read {csv_path} ({strerror}); check the path', csv_path=csv_path, strerror=exc.strerror)) from None
    rows, problems, warnings = read_holders(raw, str(csv_path))
    template = read_template(template_path)
    if problems:
        raise JobFileError(sorted(problems, key=lambda p: p.line or 0))
    out_dir = output.resolve().parent
    csv_dir = csv_path.resolve().parent
    header = _rebased_template(template, template_path.resolve().parent, out_dir)
    header.setdefault("version", 1)
    if batch is not None:
        header["batch"] = batch
    if "batch" not in header:
        header["batch"] = csv_path.stem
    default_password = _rebase_secret(template.get(TEMPLATE_PASSWORD_KEY) or {"prompt": DEFAULT_PASSWORD_PROMPT},
                                      template_path.resolve().parent, out_dir)  # fmt: skip
    cards: list[dict[str, Any]] = []
    for row in rows:
        password = {"file": _rebase(row.password_file, csv_dir, out_dir)} if row.password_file else default_password
        cards.append({
            "id": row.id,
            "holder": row.holder,
            "card": {"serial": row.card_serial} if row.card_serial is not None else {"any": True},
            "pkcs12": {"path": _rebase(row.pkcs12, csv_dir, out_dir), "password": password},
        })  # fmt: skip
    comment = (f"Written by 'provision jobs new' from {csv_path.name} and {template_path.name}.\n"
               f"{len(cards)} holder(s); every string is quoted on purpose (a holder called no stays text).")  # fmt: skip
    text = render_jobfile(header, cards, comment)
    jobfile = parse_jobfile(text, output, unattended=unattended, check_files=check_files)
    return CsvJobs(jobfile, text, [str(w) for w in warnings])


def write_jobs_from_csv(csv_path: Path, template_path: Path, output: Path, *, batch: str | None = None,
                        unattended: bool = False, check_files: bool = True, force: bool = False) -> CsvJobs:  # fmt: skip
    """``provision jobs new``: build, validate, then write ``output`` atomically (0644)."""
    from provision.store import write_atomically

    if output.exists() and not force:
        raise UsageError(msg('{output} already exists; choose another -o or pass --force to replace it', output=output))
    output.parent.mkdir(parents=True, exist_ok=True)  # paths in the job file are relative to it
    made = jobs_from_csv(csv_path, template_path, output, batch=batch, unattended=unattended, check_files=check_files)
    write_atomically(output, made.text.encode("utf-8"))
    return made
