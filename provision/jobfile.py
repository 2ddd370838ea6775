"""Job files: YAML → schema → semantic checks → frozen dataclasses.

Every error is reported as ``file:line: json.path: what is wrong and what to do``, and all of them
at once, so an operator fixes a file in one pass.

YAML is read with the YAML 1.2 *core* schema, deliberately, not PyYAML's YAML 1.1 defaults:

* ``no``/``yes``/``on``/``off`` are text, not booleans (a holder called "No" stays "No"; a
  boolean field written ``yes`` is an error that says to write ``true``);
* ``0123`` is the decimal number 123, never octal (card serials written with leading zeros keep
  their value), ``0x9c`` is a hex number, ``1:20`` is text, not sexagesimal 80;
* dates are text, parsed only where a date is expected;
* in a field that takes text (ids, holders, slots, hex serials) an unquoted number keeps exactly
  the characters written: ``id: 0012`` is ``"0012"``, ``serial: 1001`` under ``expect`` is the hex
  text ``"1001"``, ``slot: 82`` is slot 82.

Anchors and aliases work, as do ``<<`` merge keys; duplicate keys are an error; alias expansion is
bounded (no "billion laughs"); one document per file.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from provision import limits, resources, schema_cache
from provision import template as templates
from provision.display import printable
from provision.errors import InputTooLargeError, JobFileError, Problem, TemplateError
from provision.i18n import Msg, msg
from provision.piv.slots import SLOT_HELP, Slot, parse_slot
from provision.secrets import SecretSource, check_obtainable

MAX_FILE_BYTES = limits.MAX_JOBFILE_BYTES
MAX_EXPANDED_NODES = limits.MAX_EXPANDED_NODES
MAX_PKCS12_BYTES = limits.MAX_PKCS12_BYTES

DEFAULT_SLOT_NAME_TEMPLATE = "e-Cert{cert.not_before:%Y%m%d}"

JsonPath = tuple[str | int, ...]

# Fields whose value is text even when written as an unquoted number or boolean.
_TEXT_KEYS = frozenset(
    {
        "batch", "timezone", "id", "holder", "slot", "slot_name", "guid", "path", "subject_cn",
        "issuer_cn", "fingerprint_sha256", "not_after_after", "pem", "nssdb", "env", "file",
        "prompt", "value", "management_key_type", "replace", "pin_policy", "touch_policy",
        "when_expires_within", "syslog", "module", "token_label", "token_serial", "label",
    }
)  # fmt: skip

_CORE_INT = re.compile(r"[-+]?[0-9]+\Z")
_CORE_OCT = re.compile(r"0o[0-7]+\Z")
_CORE_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_CORE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_CORE_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_CORE_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")
_YAML11_BOOLS = frozenset(
    {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"}
)


# ----------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Pkcs11Target:
    """``card: {pkcs11: …}``: a token behind a PKCS#11 module, named by its label and/or serial."""

    module: Path
    token_label: str | None = None
    token_serial: str | None = None
    object_id: bytes | None = None  # the CKA_ID of a fixed place (ykcs11's PIV slots); None: derived from the key
    so_pin: SecretSource | None = None  # for modules that create objects only for the SO (ykcs11)

    def describe(self) -> str:
        named = [f"label {self.token_label!r}"] if self.token_label is not None else []
        named += [f"serial {self.token_serial}"] if self.token_serial is not None else []
        return f"token {' and '.join(named)} of {self.module.name}"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"module": str(self.module)}
        if self.token_label is not None:
            out["token_label"] = self.token_label
        if self.token_serial is not None:
            out["token_serial"] = self.token_serial
        if self.object_id is not None:
            out["object_id"] = self.object_id.hex()
        return out


@dataclass(frozen=True)
class CardIdentity:
    serial: int | None = None
    guid: str | None = None  # lowercase hex
    any: bool = False
    pkcs11: Pkcs11Target | None = None  # a token behind a PKCS#11 module instead of a PIV card

    def describe(self) -> str:
        if self.pkcs11 is not None:
            return self.pkcs11.describe()
        # msg(): the English words in records and plans, shown translated (i18n.localize).
        if self.serial is not None:
            return msg("card serial {serial}", serial=self.serial)
        if self.guid is not None:
            return msg("card GUID {guid}", guid=self.guid)
        return msg("any card")

    def to_json(self) -> dict[str, object]:
        if self.pkcs11 is not None:
            return {"pkcs11": self.pkcs11.to_json()}
        if self.serial is not None:
            return {"serial": self.serial}
        if self.guid is not None:
            return {"guid": self.guid}
        return {"any": True}


@dataclass(frozen=True)
class Expect:
    subject_cn: str | None = None
    issuer_cn: str | None = None
    serial: str | None = None  # lowercase hex, no separators or leading zeros
    fingerprint_sha256: str | None = None  # lowercase hex, no separators
    not_after_after: date | None = None


@dataclass(frozen=True)
class Export:
    pem: templates.Template | None = None
    nssdb: templates.Template | None = None


@dataclass(frozen=True)
class DerivedKey:
    """``{derive: {master: <secret>, label: "…"}}``: a per-card management key, derived from the
    master secret and the card's serial (``piv.mgmtkey.derive_management_key``)."""

    master: SecretSource
    label: str

    def describe(self) -> str:
        return msg("the key derived from the master secret in the {master} (label {label!r})", master=self.master.describe(),
                   label=self.label)  # fmt: skip


@dataclass(frozen=True)
class PinProtectedKey:
    """``{pin_protected: true}``: a random key, stored PIN-protected on the card as ykman does."""

    def describe(self) -> str:
        return msg("a random key stored PIN-protected on the card")


ManagementKey = SecretSource | DerivedKey
KeyRotation = DerivedKey | PinProtectedKey


@dataclass(frozen=True)
class Renew:
    """``renew``: load only when the certificate on the card expires within ``window``."""

    when_expires_within: str  # as written ("30d"), for messages
    window: timedelta


_DURATION = re.compile(r"([0-9]{1,5})([hdw])\Z")
_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_duration(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``2w`` → timedelta; None when it is not such a duration."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


@dataclass(frozen=True)
class Job:
    index: int
    line: int | None
    id: str
    holder: str
    card: CardIdentity
    pkcs12_path: Path
    pkcs12_password: SecretSource
    slot: Slot
    slot_name: templates.Template
    pin: SecretSource
    management_key: ManagementKey | None
    management_key_type: str
    replace: str
    min_pin_retries: int
    pin_policy: str
    touch_policy: str
    expect: Expect
    export: Export
    renew: Renew | None = None
    management_key_rotate: KeyRotation | None = None

    @property
    def management_key_kind(self) -> str:
        """The kind of management key the card ends with: default, job, derived or pin-protected."""
        if isinstance(self.management_key_rotate, PinProtectedKey):
            return "pin-protected"
        if isinstance(self.management_key_rotate, DerivedKey) or isinstance(self.management_key, DerivedKey):
            return "derived"
        return "default" if self.management_key is None else "job"


@dataclass(frozen=True)
class JobFile:
    path: Path
    batch: str
    timezone: str
    jobs: tuple[Job, ...]
    audit_key: SecretSource | None = None
    warnings: tuple[Problem, ...] = field(default=())
    audit_syslog: str | None = None  # audit.syslog: where seals are forwarded (/dev/log, host:port)
    audit_syslog_all: bool = False  # audit.forward: all (every event), not only seals
    audit_anchor: Path | None = None  # audit.anchor: witness file of seals on other storage
    audit_timestamp: str | None = None  # audit.timestamp: RFC 3161 time-stamp authority URL for every seal

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _problem(file: str, line: int | None, path: str, message: str) -> Problem:
    # Echoed user text stays on one line: control characters are shown escaped (also in --json).
    return Problem(file, line, printable(path), printable(message))


# ----------------------------------------------------------------------------------------------
# YAML with line numbers


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's parser and composer (C when available) with no implicit YAML 1.1 typing."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


class _YamlProblem(Exception):
    def __init__(self, line: int | None, path: JsonPath, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_KEY = "<<"


class _EventBuilder:
    """Turns YAML parser events into JSON-like data and a map of JSON path → line, one value at a time.

    Built from events (PyYAML's C parser), not from a composed node graph, so that the ``cards`` of
    a 10,000-card file can be handed over one by one (``on_card``) and dropped once checked: memory
    stays flat however long the file. Aliases share the anchored value; their expansion is counted
    and bounded (no "billion laughs")."""

    _ANCHOR_LINES_COPIED = 4096  # an alias larger than this points its errors at the alias's line

    def __init__(self, text: str) -> None:
        self.events = _Loader(text)
        self.anchors: dict[str, tuple[Any, int, dict[JsonPath, int]]] = {}  # value, expanded size, lines
        self._open_anchors: set[str] = set()
        self.expanded = 0

    def close(self) -> None:
        self.events.dispose()

    def _count(self, n: int, line: int) -> None:
        self.expanded += n
        if self.expanded > MAX_EXPANDED_NODES:
            raise _YamlProblem(line, (), msg('aliases expand to too many values; write the cards out instead'))

    def value(self, path: JsonPath, lines: dict[JsonPath, int]) -> Any:
        """The next value in the stream (its events consumed), its lines recorded under ``path``."""
        event = self.events.get_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _YamlProblem(line, path, msg('an alias refers to itself; remove the loop'))
            if event.anchor not in self.anchors:
                raise _YamlProblem(line, path, msg('the alias *{anchor} has no anchor &{anchor} before it; define it first', anchor=event.anchor))
            value, size, own = self.anchors[event.anchor]
            self._count(size, line)
            if len(own) <= self._ANCHOR_LINES_COPIED:
                for rel, at in own.items():
                    lines.setdefault(path + rel, at)
            else:
                lines.setdefault(path, line)
            return value
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return self._build(event, path, lines)
        self._open_anchors.add(anchor)
        own_lines: dict[JsonPath, int] = {}
        before = self.expanded
        value = self._build(event, (), own_lines)
        self._open_anchors.discard(anchor)
        self.anchors[anchor] = (value, self.expanded - before, own_lines)
        for rel, at in own_lines.items():
            lines.setdefault(path + rel, at)
        return value

    def _build(self, event: Any, path: JsonPath, lines: dict[JsonPath, int]) -> Any:
        line = event.start_mark.line + 1
        lines.setdefault(path, line)
        self._count(1, line)
        if isinstance(event, yaml.ScalarEvent):
            return _scalar(event, path)
        if isinstance(event, yaml.SequenceStartEvent):
            items: list[Any] = []
            while not self.events.check_event(yaml.SequenceEndEvent):
                items.append(self.value(path + (len(items),), lines))
            self.events.get_event()
            return items
        if isinstance(event, yaml.MappingStartEvent):
            return self.mapping(path, lines)
        raise _YamlProblem(line, path, msg('unsupported YAML node'))

    def mapping(self, path: JsonPath, lines: dict[JsonPath, int],
                on_key: Callable[[str, JsonPath, dict[str, Any]], bool] | None = None) -> dict[str, Any]:  # fmt: skip
        """The rest of a mapping whose start event was read. ``on_key(key, path, keys so far)`` may
        consume a key's value itself (returning True), as the document does with ``cards``."""
        out: dict[str, Any] = {}
        merged: list[tuple[Any, dict[JsonPath, int], int]] = []
        while not self.events.check_event(yaml.MappingEndEvent):
            key_event = self.events.get_event()
            key_line = key_event.start_mark.line + 1
            if not isinstance(key_event, yaml.ScalarEvent):
                raise _YamlProblem(key_line, path, msg('a key must be plain text'))
            key = key_event.value
            if key == _MERGE_KEY and not key_event.style:
                source_line = self.events.peek_event().start_mark.line + 1
                source_lines: dict[JsonPath, int] = {}
                source = self.value((), source_lines)
                merged.append((source, source_lines, source_line))
                continue
            if key in out:
                raise _YamlProblem(
                    key_line, path + (key,), msg("duplicate key '{key}' (first at line {value}); keep only one", key=key, value=lines[path + (key,)])
                )
            lines[path + (key,)] = key_line
            if on_key is not None and on_key(key, path + (key,), out):
                out[key] = None  # consumed by on_key; still a key of this mapping (duplicates, schema)
                continue
            out[key] = self.value(path + (key,), lines)
        self.events.get_event()
        for source, source_lines, source_line in merged:  # explicit keys win over merged ones, as YAML specifies
            sources = source if isinstance(source, list) else [source]
            for number, one in enumerate(sources):
                if not isinstance(one, dict):
                    at = source_lines.get((number,), source_line) if isinstance(source, list) else source_line
                    raise _YamlProblem(at, path, msg("'<<' must merge a mapping (an &anchor of one)"))
                prefix: JsonPath = (number,) if isinstance(source, list) else ()
                for key, value in one.items():
                    if key not in out:
                        out[key] = value
                        for rel, at in source_lines.items():
                            if rel[: len(prefix) + 1] == prefix + (key,):
                                lines.setdefault(path + rel[len(prefix):], at)
        return out


def _scalar(event: Any, path: JsonPath) -> Any:
    text: str = event.value
    if event.tag not in (None, "!"):
        return _explicit_tag(event, path)
    if event.style:  # quoted or block scalar: always text ("" is plain in the C parser)
        return text
    try:
        value = _resolve_core(text)
    except ValueError:  # Python refuses to read decimal integers of more than sys.get_int_max_str_digits()
        raise _YamlProblem(event.start_mark.line + 1, path,
                           msg('a number of {len} digits is longer than any value here can be; shorten it', len=len(text))) from None  # fmt: skip
    if value is not text and value is not None and _wants_text(path):
        return text  # the characters as written: id 0012, hex serial 1001, slot 82
    return value


def _explicit_tag(node: Any, path: JsonPath) -> Any:
    tag = node.tag.rsplit(":", 1)[-1]
    try:
        if tag == "str":
            return node.value
        if tag == "int":
            return int(node.value, 0)
        if tag == "bool" and node.value in ("true", "false"):
            return node.value == "true"
        if tag == "null":
            return None
    except ValueError:
        pass
    raise _YamlProblem(
        node.start_mark.line + 1, path, msg('the YAML tag {tag!r} is not supported here; remove it', tag=node.tag)
    )


def _resolve_core(text: str) -> Any:
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _CORE_INT.match(text):
        return int(text, 10)  # leading zeros are decimal, never octal
    if _CORE_OCT.match(text):
        return int(text[2:], 8)
    if _CORE_HEX.match(text):
        return int(text[2:], 16)
    if _CORE_NAN.match(text):
        return float("nan")
    if _CORE_INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _CORE_FLOAT.match(text):
        return float(text)
    return text


def _wants_text(path: JsonPath) -> bool:
    if len(path) >= 2 and path[-2] == "command":
        return True
    if not path or not isinstance(path[-1], str):
        return False
    key = path[-1]
    if key == "serial":  # card.serial is a number; expect.serial is hex text
        return len(path) >= 2 and path[-2] == "expect"
    return key in _TEXT_KEYS


OnCard = Callable[[int, Any, dict[JsonPath, int], dict[str, Any]], None]


def load_yaml(text: str, filename: str, *, on_card: OnCard | None = None,
              lines: dict[JsonPath, int] | None = None) -> tuple[Any, dict[JsonPath, int]]:  # fmt: skip
    """Parse one YAML document into JSON-like data and a JSON path → line map.

    With ``on_card``, the items of a top-level ``cards`` list are not kept: each is handed to
    ``on_card(index, value, lines)`` as soon as it is read, and ``data["cards"]`` becomes their count
    (an int); ``on_card`` also gets the document's keys read before ``cards``. Cards written as an
    alias, or not as a list, stay in ``data`` as written. ``lines``: the map to fill (the top level's
    lines, the cards' own are in each ``on_card`` call)."""
    builder = _EventBuilder(text)
    events = builder.events
    lines = {} if lines is None else lines

    def take_cards(key: str, path: JsonPath, so_far: dict[str, Any]) -> bool:
        if on_card is None or path != ("cards",) or not events.check_event(yaml.SequenceStartEvent):
            return False
        if events.peek_event().anchor is not None:
            return False  # an anchored list may be aliased later: build it as a value
        events.get_event()
        count = 0
        while not events.check_event(yaml.SequenceEndEvent):
            if count == limits.MAX_CARDS:  # before this card is built: the bound stops the work, not after it
                line = events.peek_event().start_mark.line + 1
                raise _YamlProblem(line, ("cards", count), msg('more than {MAX_CARDS} cards in one job file; split the batch into several job files', MAX_CARDS=limits.MAX_CARDS))  # fmt: skip
            card_lines: dict[JsonPath, int] = {}
            on_card(count, builder.value(("cards", count), card_lines), card_lines, so_far)
            count += 1
        events.get_event()
        counted.append(count)
        return True

    counted: list[int] = []  # the number of cards handed to on_card, once they were
    try:
        events.get_event()  # stream start
        if events.check_event(yaml.StreamEndEvent):
            raise JobFileError([_problem(filename, 1, "", msg("the file is empty; start with 'version: 1'"))])
        events.get_event()  # document start
        if events.check_event(yaml.MappingStartEvent) and events.peek_event().anchor is None:
            start = events.get_event()
            lines[()] = start.start_mark.line + 1
            data: Any = builder.mapping((), lines, on_key=take_cards)
            if counted:
                data["cards"] = counted[0]
        else:
            data = builder.value((), lines)
        events.get_event()  # document end
        if events.check_event(yaml.DocumentStartEvent):
            line = events.peek_event().start_mark.line + 1
            raise JobFileError([_problem(filename, line, "", msg("a job file holds one YAML document; remove the second '---'"))])
        events.get_event()  # stream end
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join((exc.problem or exc.context or "invalid YAML").split())
        raise JobFileError([_problem(filename, line, "", msg('this is not valid YAML ({what}); fix the syntax', what=what))]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        what = f"character #x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        raise JobFileError([_problem(filename, line, "", msg('the file contains {what}, which YAML does not allow; remove it', what=what))]) from None
    except yaml.YAMLError as exc:
        what = " ".join(str(exc).split())
        raise JobFileError([_problem(filename, None, "", msg('this is not valid YAML ({what}); fix the syntax', what=what))]) from None
    except _YamlProblem as exc:
        raise JobFileError([_problem(filename, exc.line, format_path(exc.path), exc.message)]) from None
    except RecursionError:
        raise JobFileError([_problem(filename, None, "", msg('the YAML is nested too deeply'))]) from None
    finally:
        builder.close()
    return data, lines


def format_path(path: JsonPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def line_for(lines: Mapping[JsonPath, int], path: JsonPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that exists in the file."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


# ----------------------------------------------------------------------------------------------
# Schema


@cache
def _validators() -> tuple[Any, Any, Any]:
    """(document without its cards' contents, one card, the defaults) validators, from one schema.

    The cards are checked one by one as they are read, so the document's own check does not look
    inside ``cards``; the schema file stays the single contract."""
    import jsonschema

    schema = json.loads(resources.job_schema_bytes())
    cls = jsonschema.validators.validator_for(schema)
    # The schema itself is checked by a unit test, not at every start (it costs ~170 ms).
    cards = schema["properties"]["cards"]
    document = {**schema, "properties": {**schema["properties"], "cards": {k: v for k, v in cards.items() if k != "items"}}}
    one_card = {"$schema": schema["$schema"], "$defs": schema["$defs"], **cards["items"]}
    defaults = {"$schema": schema["$schema"], "$defs": schema["$defs"], **schema["properties"]["defaults"]}
    checker = cls.FORMAT_CHECKER
    return cls(document, format_checker=checker), cls(one_card, format_checker=checker), cls(defaults, format_checker=checker)


def _schema_problems(validator: Any, data: Any, lines: Mapping[JsonPath, int], filename: str,
                     prefix: JsonPath = ()) -> list[Problem]:  # fmt: skip
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        for leaf in _leaves(error):
            path = prefix + tuple(leaf.absolute_path)
            line = line_for(lines, path)
            if leaf.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(leaf.instance, dict):
                unknown = [k for k in leaf.instance if path + (k,) in lines and k not in _allowed_keys(leaf)]
                line = lines[path + (unknown[0],)] if unknown else line
            problems.append(_problem(filename, line, format_path(path), _explain(leaf, path)))
    return problems


def _leaves(error: Any) -> Iterator[Any]:
    """The most specific errors: jsonschema nests $ref/allOf failures under context."""
    if error.context:
        for sub in error.context:
            yield from _leaves(sub)
    else:
        yield error


_PATTERN_HELP = {
    "id": msg("use letters, digits and . _ : @ / - (up to 128), starting with a letter or digit"),
    "guid": msg("write the CHUID GUID as 32 hex digits"),
    "env": msg("an environment variable name is letters, digits and _"),
    "serial": msg("write the certificate serial in hex, e.g. 1001 or 0x1001"),
    "fingerprint_sha256": msg("write the SHA-256 fingerprint as 64 hex digits (colons allowed)"),
    "when_expires_within": msg("write a duration such as 30d, 12h or 2w (hours, days, weeks)"),
    "syslog": msg("write a unix socket path such as /dev/log, or host:port for UDP"),
}
_SECRET_FORMS = msg('write a secret as one of {{env: NAME}}, {{file: PATH}}, {{prompt: "…"}}, {{command: [argv…]}}, {{value: "…"}}')


def _describe_type(value: Any) -> Msg:
    if value is None:
        return msg("nothing")
    if isinstance(value, bool):
        return msg("the boolean {value}", value=str(value).lower())
    if isinstance(value, int | float):
        return msg("the number {value}", value=value)
    if isinstance(value, str):
        return msg("the text {value!r}", value=value)
    if isinstance(value, list):
        return msg("a list")
    return msg("a mapping")


def _explain(error: Any, path: JsonPath) -> Msg:
    """Our own sentence for each JSON Schema keyword (jsonschema's message text is English the
    catalog cannot know): what is wrong and how to write it, in the chosen language when shown."""
    kind = error.validator
    value = error.instance
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    is_secret = key in ("pin", "password", "management_key", "key") or (
        len(path) >= 2 and path[-2] in ("pin", "password", "management_key", "key")
    )
    if kind == "type":
        wanted = error.validator_value
        if is_secret or (isinstance(wanted, str) and wanted == "object" and key in ("pin", "password")):
            return msg("{found} is not a secret source; {forms} (a bare value is refused)",
                       found=_describe_type(value), forms=_SECRET_FORMS)  # fmt: skip
        if isinstance(value, str) and value in _YAML11_BOOLS and wanted == "boolean":
            return msg("'{value}' is text in YAML 1.2; write true or false", value=value)
        return msg("expected {wanted}, found {found}", wanted=_an(wanted), found=_describe_type(value))
    if kind == "required":
        # jsonschema reports one missing name per error; its sentence is English, so only the name is kept.
        name = error.message.split("'")[1] if "'" in error.message else error.message
        return msg("'{name}' is missing; add it", name=name)
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(error)
        unknown = sorted(set(value) - allowed) if isinstance(value, dict) else []
        if unknown == ["empty"] and is_secret:
            return msg("{{empty: true}} is only for pkcs12.password (a PKCS#12 file exported without a password); "
                       "a PIN, PUK or management key is never empty")  # fmt: skip
        bits: list[str] = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            bits.append(msg("'{name}' (did you mean '{close}'?)", name=name, close=close[0]) if close else f"'{name}'")
        if not bits:  # pragma: no cover - defensive: jsonschema reported a field we cannot name
            return msg("a field here is not allowed; known fields here: {known}", known=", ".join(sorted(allowed)))
        unknown_text = functools.reduce(lambda a, b: msg("{a}, {b}", a=a, b=b), bits)
        return msg("unknown field {unknown}; known fields here: {known}", unknown=unknown_text,
                   known=", ".join(sorted(allowed)))  # fmt: skip
    if kind == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return msg("{found} is not allowed; choose one of: {choices}", found=_describe_type(value), choices=choices)
    if kind == "const":
        if key == "version":
            return msg("version {value!r} is not supported; this provision reads 'version: 1'", value=value)
        if key == "any":
            if isinstance(value, str) and value in _YAML11_BOOLS:
                return msg("'{value}' is text in YAML 1.2; write 'any: true' to accept whichever card is presented",
                           value=value)  # fmt: skip
            return msg("write 'any: true' to accept whichever card is presented")
        if key == "empty":
            return msg("write 'empty: true' for a PKCS#12 file exported without a password, or give its password as another secret form")
        return msg("must be {wanted!r}", wanted=error.validator_value)
    if kind == "pattern":
        return msg("{found} is not valid; {help}", found=_describe_type(value),
                   help=_PATTERN_HELP.get(key) or msg("check the format"))  # fmt: skip
    if kind in ("minProperties", "maxProperties"):
        if key == "card":
            return msg("say which card with exactly one of {{serial: N}}, {{guid: HEX}}, {{any: true}}, {{pkcs11: {{module: …, token_label: …}}}}")
        return _SECRET_FORMS
    if kind == "minItems":
        return msg("the list is empty; add at least one entry") if key != "command" else msg("the command needs a program name")
    if kind == "maxItems":
        return msg("the list is longer than {n} entries; shorten it", n=error.validator_value)
    if kind == "uniqueItems":
        return msg("the list names an entry twice; keep each once")
    if kind == "minLength":
        if path[-2:] == ("password", "value"):
            return msg("this is empty; fill it in, or write password: {{empty: true}} for a PKCS#12 file exported without a password")
        return msg("this is empty; fill it in")
    if kind == "maxLength":
        return msg("this is longer than {n} characters; shorten it", n=error.validator_value)
    if kind == "minimum":
        return msg("{value} is out of range (at least {limit})", value=value, limit=error.validator_value)
    if kind == "maximum":
        return msg("{value} is out of range (at most {limit})", value=value, limit=error.validator_value)
    if kind == "exclusiveMinimum":
        return msg("{value} is out of range (more than {limit})", value=value, limit=error.validator_value)
    if kind == "exclusiveMaximum":
        return msg("{value} is out of range (less than {limit})", value=value, limit=error.validator_value)
    if kind == "format":
        return msg("{found} is not a date; write it as YYYY-MM-DD", found=_describe_type(value))
    if kind in ("oneOf", "anyOf", "not"):
        return msg("{found} does not fit any of the forms allowed here; see JOBFILE.md", found=_describe_type(value))
    # A keyword our schema does not use today: say which rule, never jsonschema's English text.
    return msg("{found} breaks the schema rule '{rule}'; see JOBFILE.md", found=_describe_type(value), rule=kind)


def _an(wanted: Any) -> Msg:
    names = {"string": msg("text"), "integer": msg("a whole number"), "object": msg("a mapping"), "array": msg("a list"),
             "boolean": msg("true or false"), "number": msg("a number"), "null": msg("nothing")}  # fmt: skip
    if isinstance(wanted, list):
        return functools.reduce(lambda a, b: msg("{a} or {b}", a=a, b=b), [names.get(w) or Msg(str(w), {}) for w in wanted])
    return names.get(wanted) or Msg(str(wanted), {})



def _allowed_keys(error: Any) -> set[str]:
    schema = error.schema
    keys = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        ref = sub.get("$ref", "")
        if ref.startswith("#/$defs/"):
            keys |= set(_validators()[0].schema["$defs"][ref.rsplit("/", 1)[-1]].get("properties", {}))
    if "$ref" in schema and str(schema["$ref"]).startswith("#/$defs/"):
        keys |= set(_validators()[0].schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]].get("properties", {}))
    return keys


# ----------------------------------------------------------------------------------------------
# Semantic checks and dataclasses


_CARD_DEFAULTS: dict[str, Any] = {
    "management_key_type": "auto",
    "replace": "archive",
    "min_pin_retries": 2,
    "pin_policy": "default",
    "touch_policy": "default",
}
_NOT_IN_DEFAULTS = ("id", "holder", "pkcs12")


class _Checker:
    def __init__(self, path: Path, lines: Mapping[JsonPath, int], unattended: bool, check_files: bool) -> None:
        self.file = str(path)
        self.base = path.parent
        self.lines = lines
        self.unattended = unattended
        self.check_files = check_files
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self._secret_checks: dict[tuple[str, object], str | None] = {}
        self._templates: dict[str, templates.Template | str] = {}

    def problem(self, path: JsonPath, message: str, *, warning: bool = False) -> None:
        p = _problem(self.file, line_for(self.lines, path), format_path(path), message)
        (self.warnings if warning else self.problems).append(p)

    def secret(self, raw: Any, path: JsonPath) -> SecretSource | None:
        if not isinstance(raw, dict) or len(raw) != 1:
            return None
        kind, ref = next(iter(raw.items()))
        if kind == "empty":  # the schema allows it only here; a PIN, PUK or key is never empty
            if path[-2:] != ("pkcs12", "password"):
                self.problem(path, msg('{{empty: true}} is only for pkcs12.password; a PIN, PUK or management key is never empty'))
                return None
            ref = ""
        source = SecretSource(kind, tuple(ref) if kind == "command" else ref, self.base)
        if kind == "value":
            self.problem(path, msg('the secret is written in the job file; prefer env, file or command'), warning=True)
        # Many cards share one source (via defaults): check each distinct source once.
        cache_key = (kind, source.ref if kind != "value" else "")
        if cache_key not in self._secret_checks:
            self._secret_checks[cache_key] = (
                check_obtainable(source, unattended=self.unattended) if self.check_files or kind == "prompt" else None
            )
        why = self._secret_checks[cache_key]
        if why:
            self.problem(path + (kind,), why)
        return source

    def management_key(self, raw: Any, path: JsonPath) -> ManagementKey | None:
        if isinstance(raw, dict) and "derive" in raw:
            return self.derived_key(raw["derive"], path + ("derive",))
        return self.secret(raw, path)

    def derived_key(self, raw: Any, path: JsonPath) -> DerivedKey | None:
        if not isinstance(raw, dict) or "master" not in raw or not isinstance(raw.get("label"), str):
            return None  # the schema said why
        master = self.secret(raw["master"], path + ("master",))
        return None if master is None else DerivedKey(master, raw["label"])

    def rotation(self, raw: Any, path: JsonPath) -> KeyRotation | None:
        if isinstance(raw, dict) and "derive" in raw:
            return self.derived_key(raw["derive"], path + ("derive",))
        return PinProtectedKey() if isinstance(raw, dict) and raw.get("pin_protected") is True else None

    def template(self, text: str, path: JsonPath) -> templates.Template | None:
        if text not in self._templates:
            try:
                self._templates[text] = templates.parse(text)
            except TemplateError as exc:
                self._templates[text] = exc.message
        parsed = self._templates[text]
        if isinstance(parsed, str):
            self.problem(path, parsed)
            return None
        return parsed


def _merge(defaults: dict[str, Any], card: dict[str, Any]) -> tuple[dict[str, Any], dict[str, JsonPath]]:
    """A card's fields over the defaults (whole fields: a card's ``expect`` replaces the default's)."""
    merged: dict[str, Any] = dict(_CARD_DEFAULTS)
    origin: dict[str, JsonPath] = {}
    for key, value in defaults.items():
        merged[key] = value
        origin[key] = ("defaults", key)
    for key, value in card.items():
        merged[key] = value
        origin[key] = ()
    return merged, origin


def _normalise_hex(text: str) -> str:
    text = text.lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    return text.lstrip("0") or "0"


def _build_job(index: int, card: dict[str, Any], defaults: dict[str, Any], ck: _Checker) -> Job | None:
    here: JsonPath = ("cards", index)
    merged, origin = _merge(defaults, card)

    def at(key: str) -> JsonPath:
        return origin.get(key) or here + (key,)

    before = len(ck.problems)
    slot_text = merged.get("slot")
    slot: Slot | None = None
    if slot_text is None:
        ck.problem(here, msg("'slot' is missing; give it here or under defaults (e.g. slot: 9c)"))
    else:
        slot = parse_slot(str(slot_text))
        if slot is None:
            ck.problem(at("slot"), msg("'{slot_text}' is not a PIV slot ({SLOT_HELP})", slot_text=slot_text, SLOT_HELP=SLOT_HELP))

    slot_name: templates.Template | None = None
    if "slot_name" not in merged:
        ck.problem(here, msg("'slot_name' is missing; give a template here or under defaults, e.g. {DEFAULT_SLOT_NAME_TEMPLATE!r}", DEFAULT_SLOT_NAME_TEMPLATE=DEFAULT_SLOT_NAME_TEMPLATE))
    else:
        slot_name = ck.template(merged["slot_name"], at("slot_name"))

    pin = ck.secret(merged["pin"], at("pin")) if "pin" in merged else None
    if "pin" not in merged:
        ck.problem(here, msg('\'pin\' is missing; say where the card PIN comes from, e.g. pin: {{prompt: "Card PIN"}}'))
    password = ck.secret(card["pkcs12"]["password"], here + ("pkcs12", "password"))
    management_key = ck.management_key(merged["management_key"], at("management_key")) if "management_key" in merged else None
    rotate = ck.rotation(merged["management_key_rotate"], at("management_key_rotate")) \
        if "management_key_rotate" in merged else None  # fmt: skip

    p12 = Path(os.path.expanduser(card["pkcs12"]["path"]))
    p12 = p12 if p12.is_absolute() else ck.base / p12
    if ck.check_files:
        why = _unreadable(p12)
        if why:
            ck.problem(here + ("pkcs12", "path"), why)

    if "card" not in merged:
        ck.problem(here, msg("'card' is missing; say which card with {{serial: N}}, {{guid: HEX}}, {{any: true}} or {{pkcs11: …}}"))
        return None
    ident = merged["card"]
    if isinstance(ident.get("guid"), str) and set(ident["guid"]) == {"0"}:
        ck.problem(at("card") + ("guid",),
                   msg("a GUID of 32 zeros is what a card without a GUID of its own carries, so it names no card; "
                       "name this card by its serial"))  # fmt: skip
    identity = CardIdentity(
        serial=ident.get("serial"),
        guid=ident["guid"].lower() if "guid" in ident else None,
        any=bool(ident.get("any", False)),
        pkcs11=_pkcs11_target(ident["pkcs11"], at("card") + ("pkcs11",), ck) if "pkcs11" in ident else None,
    )

    if identity.pkcs11 is not None and (isinstance(management_key, DerivedKey) or rotate is not None):
        ck.problem(at("management_key_rotate") if rotate is not None else at("management_key"),
                   msg('a PKCS#11 token has no PIV management key to derive or rotate; remove it from this card'))  # fmt: skip
    raw_expect = merged.get("expect", {})
    not_after_after = None
    if "not_after_after" in raw_expect:
        not_after_after = date.fromisoformat(raw_expect["not_after_after"])  # the schema checked the format
    expect = Expect(
        subject_cn=raw_expect.get("subject_cn"),
        issuer_cn=raw_expect.get("issuer_cn"),
        serial=_normalise_hex(raw_expect["serial"]) if "serial" in raw_expect else None,
        fingerprint_sha256=raw_expect["fingerprint_sha256"].lower().replace(":", "")
        if "fingerprint_sha256" in raw_expect
        else None,
        not_after_after=not_after_after,
    )
    raw_export = merged.get("export", {})
    export = Export(
        pem=ck.template(raw_export["pem"], at("export") + ("pem",)) if "pem" in raw_export else None,
        nssdb=ck.template(raw_export["nssdb"], at("export") + ("nssdb",)) if "nssdb" in raw_export else None,
    )
    renew = None
    if "renew" in merged:
        written = merged["renew"]["when_expires_within"]
        window = parse_duration(written)  # the schema checked the form
        renew = Renew(written, window) if window is not None else None
    if len(ck.problems) != before or slot is None or slot_name is None or pin is None or password is None:
        return None
    return Job(
        index=index,
        line=line_for(ck.lines, here),
        id=card["id"],
        holder=card["holder"],
        card=identity,
        pkcs12_path=p12,
        pkcs12_password=password,
        slot=slot,
        slot_name=slot_name,
        pin=pin,
        management_key=management_key,
        management_key_type=merged["management_key_type"],
        replace=merged["replace"],
        min_pin_retries=merged["min_pin_retries"],
        pin_policy=merged["pin_policy"],
        touch_policy=merged["touch_policy"],
        expect=expect,
        export=export,
        renew=renew,
        management_key_rotate=rotate,
    )


def _pkcs11_target(raw: dict[str, Any], path: JsonPath, ck: _Checker) -> Pkcs11Target:
    module = Path(os.path.expanduser(raw["module"]))
    module = module if module.is_absolute() else ck.base / module
    if "token_label" not in raw and "token_serial" not in raw:
        ck.problem(path, msg('say which token: give token_label, token_serial or both (pkcs11-tool --list-token-slots shows them)'))
    if ck.check_files:
        if not module.exists():
            ck.problem(path + ("module",), msg("the PKCS#11 module {module} does not exist; install the card's middleware or correct the path", module=module))  # fmt: skip
        elif not module.is_file():
            ck.problem(path + ("module",), msg("{module} is not a file; name the module's shared library (.so, .dll, .dylib)", module=module))
    object_id = bytes.fromhex(raw["object_id"]) if isinstance(raw.get("object_id"), str) and _is_hex(raw["object_id"]) else None
    so_pin = ck.secret(raw["so_pin"], path + ("so_pin",)) if "so_pin" in raw else None
    if so_pin is not None and "object_id" not in raw:
        # A module that creates objects only for the SO (ykcs11) keeps them in fixed places named by
        # CKA_ID; a key-derived id there could name another place (ykcs11 reads its first byte).
        ck.problem(path + ("so_pin",), msg('so_pin needs object_id: say which place (CKA_ID, hex) the module keeps this key in, e.g. object_id: "02" for slot 9C through ykcs11'))  # fmt: skip
    return Pkcs11Target(module, raw.get("token_label"), raw.get("token_serial"), object_id, so_pin)


def _is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text)


def _unreadable(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"the PKCS#12 file {path} does not exist; check the path (it is relative to the job file)"
    except OSError as exc:
        return f"the PKCS#12 file {path} cannot be reached ({exc.strerror})"
    except ValueError:  # a NUL byte in the path
        return f"the PKCS#12 path {str(path)!r} is not a possible file name (it contains a NUL byte)"
    if not path.is_file():
        return f"{path} is not a file; name the .p12/.pfx file itself"
    if st.st_size > MAX_PKCS12_BYTES:
        return f"{path} is {st.st_size} bytes, too large for a PKCS#12 file; check that it is the right file"
    if not os.access(path, os.R_OK):
        return f"the PKCS#12 file {path} is not readable by this user; check its permissions"
    return None


class _Cards:
    """Each card as the parser reads it: checked against the schema, built into a Job, and dropped.

    Cards are built with the defaults written before them (the usual layout). A file that gives
    ``defaults`` after its cards is read a second time, keeping its cards until the end (``keep``)."""

    def __init__(self, ck: _Checker, filename: str, top_lines: dict[JsonPath, int], *, keep: bool,
                 schema: bool = True) -> None:  # fmt: skip
        self.ck, self.filename, self.top_lines = ck, filename, top_lines
        self.keep, self.schema = keep, schema
        self.kept: list[tuple[int, Any, dict[JsonPath, int]]] = []
        self.defaults: dict[str, Any] | None = None  # None: not fixed yet (no card seen)
        self.defaults_usable = True
        self.schema_problems: list[Problem] = []
        self.jobs: list[Job] = []
        self.first_id: dict[str, int] = {}
        self.first_identity: dict[tuple[str, object], int] = {}

    def fix_defaults(self, written: Any) -> None:
        """The defaults the cards are built with (checked quietly: the document's check reports them)."""
        self.defaults_usable = written is None or not self.schema or _validators()[2].is_valid(written)
        written = written if isinstance(written, dict) and self.defaults_usable else {}
        self.defaults = {k: v for k, v in written.items() if k not in _NOT_IN_DEFAULTS}

    def on_card(self, index: int, card: Any, lines: dict[JsonPath, int], so_far: dict[str, Any]) -> None:
        if self.keep:
            self.kept.append((index, card, lines))
            return
        if self.defaults is None:
            self.fix_defaults(so_far.get("defaults"))
        self.check(index, card, lines)

    def check(self, index: int, card: Any, lines: dict[JsonPath, int]) -> None:
        view = ChainMap(lines, self.top_lines)
        problems = _schema_problems(_validators()[1], card, view, self.filename, ("cards", index)) if self.schema else []
        if problems:
            self.schema_problems += problems
            return
        if self.schema_problems or not self.defaults_usable:
            return  # the schema problems are reported alone; no semantic check on a broken file
        assert self.defaults is not None
        self.ck.lines = view
        job_id = card["id"]
        if job_id in self.first_id:
            self.ck.problem(("cards", index, "id"),
                            msg("id '{job_id}' is already used by cards[{value}]; ids must be unique", job_id=job_id, value=self.first_id[job_id]))  # fmt: skip
        else:
            self.first_id[job_id] = index
        ident = card.get("card", self.defaults.get("card", {}))
        key: tuple[str, object] | None = None
        if "serial" in ident:
            key = ("serial", ident["serial"])
        elif "guid" in ident:
            key = ("guid", ident["guid"].lower())
        elif "pkcs11" in ident and isinstance(ident["pkcs11"], dict):
            token = ident["pkcs11"]
            key = ("token", (token.get("module"), token.get("token_label"), token.get("token_serial")))
        if key is not None:
            if key in self.first_identity:
                self.ck.problem(("cards", index, "card"),
                                msg('{value} {value2} already belongs to cards[{value3}]; one job per card', value=key[0], value2=key[1], value3=self.first_identity[key]))  # fmt: skip
            else:
                self.first_identity[key] = index
        job = _build_job(index, card, self.defaults, self.ck)
        if job is not None:
            self.jobs.append(job)
        self.ck.lines = self.top_lines


def _semantic(data: dict[str, Any], cards: _Cards, ck: _Checker) -> tuple[SecretSource | None, str]:
    """The document's own checks, after its cards."""
    timezone = data.get("timezone", "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        ck.problem(("timezone",), msg("'{timezone}' is not an IANA time zone; use a name like Asia/Hong_Kong or UTC", timezone=timezone))
    for name in _NOT_IN_DEFAULTS:
        if name in data.get("defaults", {}):
            ck.problem(("defaults", name), msg("'{name}' belongs to each card, not to defaults; move it under cards", name=name))
    audit_key = None
    if "audit" in data and "key" in data["audit"]:
        audit_key = ck.secret(data["audit"]["key"], ("audit", "key"))
    # PIV jobs only: a PKCS#11 token has no management key.
    factory = [job.id for job in cards.jobs
               if job.management_key is None and job.management_key_rotate is None and job.card.pkcs11 is None]  # fmt: skip
    if factory:
        ck.problem(
            ("defaults",) if "defaults" in data else ("cards",),
            msg("{len} job(s) give no management_key, so the card's factory default key is used (first: {value}); the report flags them", len=len(factory), value=factory[0]),
            warning=True,
        )
    return audit_key, timezone


def load_jobfile(path: str | Path, *, unattended: bool = False, check_files: bool = True) -> JobFile:
    """Read, validate and build a job file. Raises JobFileError listing every problem."""
    path = Path(path)
    filename = str(path)
    try:
        raw = limits.read_bounded(path, MAX_FILE_BYTES, "job file")  # bounded: /dev/zero or a FIFO too
    except InputTooLargeError:
        raise JobFileError([_problem(filename, None, "", msg('the job file is larger than {MAX_FILE_BYTES} bytes, the limit; split the batch into several job files', MAX_FILE_BYTES=MAX_FILE_BYTES))]) from None  # fmt: skip
    except FileNotFoundError:
        raise JobFileError([_problem(filename, None, "", msg('the job file does not exist; check the path'))]) from None
    except IsADirectoryError:
        raise JobFileError([_problem(filename, None, "", msg('this is a directory; name a job file (.yaml)'))]) from None
    except OSError as exc:
        raise JobFileError([_problem(filename, None, "", msg('the job file cannot be read ({strerror})', strerror=exc.strerror))]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise JobFileError([_problem(filename, line, "", msg('the file is not UTF-8 text; save it as UTF-8'))]) from None
    return parse_jobfile(text, path, unattended=unattended, check_files=check_files)


def parse_jobfile(text: str, path: Path, *, unattended: bool = False, check_files: bool = True) -> JobFile:
    """Read and check a job file. The schema check is skipped for text that passed it before
    (``schema_cache``); every other check (files, secrets, semantics) runs every time."""
    marker = schema_cache.marker(text)
    trusted = marker is not None and marker.exists()
    try:
        jobfile = _parse_twice(text, path, unattended=unattended, check_files=check_files, schema=not trusted)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError):
        if not trusted:
            raise
        # A cache entry that does not fit the text: check it properly, as if it were not there.
        jobfile = _parse_twice(text, path, unattended=unattended, check_files=check_files, schema=True)
    except JobFileError as exc:
        if trusted or exc.stage != "semantic" or marker is None:
            raise
        schema_cache.remember(marker)  # the schema check passed: the next read of this text skips it
        raise
    if not trusted and marker is not None:
        schema_cache.remember(marker)
    return jobfile


def _parse_twice(text: str, path: Path, *, unattended: bool, check_files: bool, schema: bool) -> JobFile:
    jobfile = _parse(text, path, unattended=unattended, check_files=check_files, keep_cards=False, schema=schema)
    if jobfile is None:  # defaults written after the cards: read again, keeping the cards
        jobfile = _parse(text, path, unattended=unattended, check_files=check_files, keep_cards=True, schema=schema)
    assert jobfile is not None
    return jobfile


def _parse(text: str, path: Path, *, unattended: bool, check_files: bool, keep_cards: bool,
           schema: bool = True) -> JobFile | None:  # fmt: skip
    """One pass over the file; None when ``defaults`` came after cards that were built without them."""
    filename = str(path)
    top_lines: dict[JsonPath, int] = {}
    ck = _Checker(path, top_lines, unattended, check_files)
    cards = _Cards(ck, filename, top_lines, keep=keep_cards, schema=schema)
    data, lines = load_yaml(text, filename, on_card=cards.on_card, lines=top_lines)
    if not isinstance(data, dict):
        raise JobFileError([_problem(filename, 1, "", msg("a job file is a mapping that starts with 'version: 1'"))])
    if isinstance(data.get("cards"), list):  # written as an alias: its cards are checked here
        if len(data["cards"]) > limits.MAX_CARDS:
            raise JobFileError([_problem(filename, lines.get(("cards",)), "cards", msg('more than {MAX_CARDS} cards in one job file; split the batch into several job files', MAX_CARDS=limits.MAX_CARDS))])  # fmt: skip
        written, data["cards"] = data["cards"], len(data["cards"])
        for index, card in enumerate(written):
            cards.on_card(index, card, {k: v for k, v in lines.items() if k[:2] == ("cards", index)}, data)
    if cards.defaults is not None and "defaults" in data and lines.get(("defaults",), 0) > lines.get(("cards",), 0):
        return None
    if cards.defaults is None:
        cards.fix_defaults(data.get("defaults"))
    for index, card, card_lines in cards.kept:
        cards.check(index, card, card_lines)
    count = data.get("cards")
    if isinstance(count, int) and not isinstance(count, bool):
        data["cards"] = [None] * min(count, 1)  # the document's check counts cards; each card was checked
    if schema:
        document_validator, _, _ = _validators()
        problems = cards.schema_problems + _schema_problems(document_validator, data, top_lines, filename)
        if problems:
            raise JobFileError(_sorted(problems))
    audit_key, timezone = _semantic(data, cards, ck)
    if ck.problems:
        raise JobFileError(_sorted(ck.problems), stage="semantic")
    return JobFile(
        path=path,
        batch=data["batch"],
        timezone=timezone,
        jobs=tuple(cards.jobs),
        audit_key=audit_key,
        warnings=tuple(_sorted(ck.warnings)),
        audit_syslog=data.get("audit", {}).get("syslog"),
        audit_syslog_all=data.get("audit", {}).get("forward") == "all",
        audit_anchor=_anchor_path(path, data.get("audit", {}).get("anchor")),
        audit_timestamp=data.get("audit", {}).get("timestamp"),
    )


def _anchor_path(jobfile: Path, anchor: str | None) -> Path | None:
    """audit.anchor, relative to the job file's directory like every path in it."""
    if anchor is None:
        return None
    given = Path(anchor)
    return given if given.is_absolute() else Path(jobfile).parent / given


def _sorted(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    unique = [p for p in problems if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
    return sorted(unique, key=lambda p: (p.line or 0))
