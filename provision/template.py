"""Restricted templates for slot names and export paths.

A template is a Python format string over a fixed set of fields (JOBFILE.md). Anything else is
refused when the job file is validated, not when a card is in the reader: no attribute access
beyond the listed names, no indexing, no conversions (``!r``), no nested fields in a format spec.
Dates are shown in the job file's time zone, so ``e-Cert{cert.not_before:%Y%m%d}`` names the day
the operator's calendar shows, not the UTC day.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from provision import limits
from provision.errors import TemplateError
from provision.i18n import msg

# Field → kind of value; the kind decides which format specs make sense (checked by a trial render).
FIELDS: dict[str, type] = {
    "cert.not_before": datetime,
    "cert.not_after": datetime,
    "cert.subject_cn": str,
    "cert.issuer_cn": str,
    "cert.serial": str,
    "cert.sha256": str,
    "card.serial": int,
    "slot": str,
    "job.id": str,
    "holder": str,
    "batch": str,
    "today": date,
}

_SAMPLES: dict[type, object] = {
    datetime: datetime(2006, 7, 29, 10, 15, 0),
    date: date(2006, 7, 29),
    str: "sample",
    int: 12345678,
}

MAX_SLOT_NAME_CHARS = limits.MAX_SLOT_NAME_CHARS
_FORMATTER = string.Formatter()
# Numbers in a format spec that make text wide: ``{holder:>999999999}`` asks for a 1 GB string.
_SPEC_NUMBERS = re.compile(r"[0-9]+")
# In a date spec, digits are literal text except right after % (glibc's %10Y pads to a width).
_DATE_WIDTH = re.compile(r"%[-_^#]*([0-9]+)")


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[tuple[str, str | None, str], ...]  # (literal, field or None, format spec)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(f for _, f, _ in self.parts if f is not None)

    def render(self, values: Mapping[str, object], *, for_path: bool = False) -> str:
        """Fill in the fields. ``for_path``: values cannot add directories or climb out (``/``, ``..``)."""
        out: list[str] = []
        size = 0
        for literal, field, spec in self.parts:
            text = literal
            if field is not None and (field not in values or values[field] is None):
                text += f"<{field}>"  # unknown until a card is present (plan without a card)
            elif field is not None:
                value = format(values[field], spec)  # its width was bounded by parse()
                text += _path_safe(value) if for_path else value
            size += len(text)
            if size > limits.MAX_RENDERED_CHARS:  # checked part by part: a long value stops it early
                raise TemplateError(
                    msg('template {text_!r} gives more than {MAX_RENDERED_CHARS} characters with these values; shorten the template', text_=self.text, MAX_RENDERED_CHARS=limits.MAX_RENDERED_CHARS)
                )
            out.append(text)
        return "".join(out)


def _path_safe(text: str) -> str:
    for bad in ("/", "\\", "\x00", ":"):
        text = text.replace(bad, "_")
    return "_" if text in ("", ".", "..") else text


def parse(text: str) -> Template:
    """Parse and check a template; raise TemplateError with one sentence saying what to change."""
    if len(text) > limits.MAX_TEMPLATE_CHARS:
        raise TemplateError(msg('the template is longer than {MAX_TEMPLATE_CHARS} characters; shorten it', MAX_TEMPLATE_CHARS=limits.MAX_TEMPLATE_CHARS))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise TemplateError(msg('template {text_!r} contains a control character; remove it', text_=text))
    try:
        raw = list(_FORMATTER.parse(text))
    except ValueError:
        raise TemplateError(
            msg('template {text_!r} has an unbalanced brace; write {{{{ or }}}} for a literal brace', text_=text)
        ) from None
    parts: list[tuple[str, str | None, str]] = []
    for literal, field, spec, conversion in raw:
        if field is None:
            parts.append((literal, None, ""))
            continue
        if field == "" or field.isdigit():
            raise TemplateError(msg('template {text_!r} has an empty field {{}}; name one of: {known_fields}', text_=text, known_fields=known_fields()))
        if "[" in field:
            raise TemplateError(msg('template {text_!r}: indexing ({field}) is not allowed; use one of: {known_fields}', text_=text, field=field, known_fields=known_fields()))
        if field not in FIELDS:
            raise TemplateError(msg('template {text_!r}: unknown field {{{field}}}; use one of: {known_fields}', text_=text, field=field, known_fields=known_fields()))
        if conversion is not None:
            raise TemplateError(msg('template {text_!r}: conversions like !{conversion} are not allowed', text_=text, conversion=conversion))
        spec = spec or ""
        if "{" in spec or "}" in spec:
            raise TemplateError(msg('template {text_!r}: a format spec cannot contain another field', text_=text))
        too_wide = _too_wide(spec, FIELDS[field])
        if too_wide is not None:  # before the trial render, which would build the wide string
            raise TemplateError(
                msg("template {text_!r}: the width or precision {too_wide} in '{{{field}:{spec}}}' is more than {MAX_FORMAT_WIDTH}; use a smaller number", text_=text, too_wide=too_wide, field=field, spec=spec, MAX_FORMAT_WIDTH=limits.MAX_FORMAT_WIDTH)
            )
        try:  # a trial render catches specs that do not fit the field's kind, e.g. {holder:%Y}
            format(_SAMPLES[FIELDS[field]], spec)
        except (ValueError, TypeError, OverflowError):
            raise TemplateError(
                msg("template {text_!r}: format '{spec}' does not apply to {field} ({name})", text_=text, spec=spec, field=field, name=FIELDS[field].__name__)
            ) from None
        parts.append((literal, field, spec))
    return Template(text, tuple(parts))


def _too_wide(spec: str, kind: type) -> str | None:
    """The first width or precision in ``spec`` above the bound, as written, or None.

    For text and numbers every number in the spec is a width, a precision or a one-digit fill, so
    all are checked (leading zeros do not hide a large number). For dates the spec is strftime's,
    where only digits right after ``%`` are a width."""
    if kind in (datetime, date):
        numbers = _DATE_WIDTH.findall(spec)
    else:
        numbers = _SPEC_NUMBERS.findall(spec)
    return next((n for n in numbers if int(n) > limits.MAX_FORMAT_WIDTH), None)


def known_fields() -> str:
    return ", ".join(FIELDS)


def check_slot_name(name: str) -> str | None:
    """Why a rendered slot name cannot be used, or None."""
    if not name:
        return "the slot name is empty"
    if len(name) > MAX_SLOT_NAME_CHARS:
        return f"the slot name {name!r} is longer than {MAX_SLOT_NAME_CHARS} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return f"the slot name {name!r} contains control characters"
    return None
