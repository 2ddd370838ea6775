"""What reaches a person's screen: text that cannot steer the terminal.

Holder names, ids, subject names, slot names read from a card, program names, paths: any of them
may carry terminal control sequences (ESC, CSI in C1 form, ``\\r``, BEL) or invisible bidi overrides
that make one name look like another. Every human output goes through ``printable`` at the display
boundary (the CLI's print functions, the runner's messages, the counter screen, prompts), which shows
such characters as visible escapes (``\\x1b``, ``\\u202e``). JSON output is not passed through it:
JSON has its own escapes and must keep the exact values.
"""

from __future__ import annotations

import unicodedata

from provision.errors import ProvisionError
from provision.i18n import msg
from provision.refusal import Refusal, RefusalKind

# Cc: C0 and C1 controls and DEL; Cf: invisible format characters, among them the bidi overrides
# and isolates (U+202A-U+202E, U+2066-U+2069) and zero-width characters; Zl/Zp: line and paragraph
# separators, which some terminals break lines at; Cs: lone surrogates (undecodable bytes).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every control, format or separator character shown as a visible escape.

    The result is one line: a newline in ``text`` is shown as ``\\x0a``, so a value cannot forge
    a line of output. Callers print one line per call."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without a look-up per character
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in text)


def cell_width(text: str) -> int:
    """Terminal cells ``text`` takes: two for a wide (East Asian) character, none for a combining one."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


# Where Chinese text may not be broken: no line starts with a closing mark, none ends with an opening one.
_NO_LINE_START = frozenset("、，。．：；！？）」』】〕〉》,.:;!?)]}")
_NO_LINE_END = frozenset("（「『【〔〈《([{")


def wrap_cells(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` terminal cells, as a person writing Chinese breaks it.

    Runs of whitespace become one space. Lines break at a space, or between two wide (East Asian)
    characters, which Chinese allows anywhere but before a closing mark (，。）」) or after an opening
    one (（「). A Latin word is never split unless it alone is longer than a line. ``textwrap``
    counts characters and breaks only at spaces, so a Chinese sentence came out twice the width.
    """
    width = max(2, width)
    units: list[tuple[str, bool]] = []  # (unit, a space before it)
    space, word = False, ""
    for char in text:
        wide = cell_width(char) == 2
        if char.isspace() or wide:
            if word:
                units.append((word, space))
                space, word = False, ""
            if char.isspace():
                space = bool(units)
            else:
                units.append((char, space))
                space = False
        else:
            word += char
    if word:
        units.append((word, space))
    lines: list[list[tuple[str, bool]]] = [[]]
    used = 0
    for unit, spaced in units:
        line = lines[-1]
        need = cell_width(unit) + (1 if spaced and line else 0)
        if used + need <= width or not line:
            line.append((unit, spaced))
            used += need
            continue
        carried: list[tuple[str, bool]] = []
        # Keep a closing mark with what it closes, and an opening mark with what it opens.
        while len(line) > 1 and ((unit if not carried else carried[0][0])[0] in _NO_LINE_START
                                 or line[-1][0][-1] in _NO_LINE_END):  # fmt: skip
            carried.insert(0, line.pop())
            if sum(cell_width(u) for u, _ in carried) + cell_width(unit) > width // 2:
                break
        lines.append(carried + [(unit, spaced)])
        used = sum(cell_width(u) + (1 if s and i else 0) for i, (u, s) in enumerate(lines[-1]))
    out: list[str] = []
    for line in lines:
        text_line = "".join((" " if spaced and i else "") + unit for i, (unit, spaced) in enumerate(line))
        while cell_width(text_line) > width:  # one word longer than a line: split it by cells
            cut = 0
            while cut < len(text_line) and cell_width(text_line[: cut + 1]) <= width:
                cut += 1
            out.append(text_line[:cut])
            text_line = text_line[cut:]
        out.append(text_line)
    return [line for line in out if line] or [""]


def at_column(label: str, value: str, cells: int) -> str:
    """``label`` then ``value`` starting at terminal cell ``cells`` (or one space after a longer
    label), counted in cells so that a double-width label keeps the column."""
    return f"{label}{' ' * max(1, cells - cell_width(label))}{value}"


def labelled(pairs: list[tuple[str, str]]) -> list[str]:
    """``label: value`` lines with the values in one column, whatever the labels' language."""
    width = max((cell_width(label) for label, _value in pairs), default=0)
    return [at_column(f"{label}:", value, width + 2) for label, value in pairs]


def failure_text(failure: ProvisionError | None) -> str | None:
    """The sentence a person (and every record of the run) reads for a job's failure, kept as an
    exception until it is shown; None when the job has none."""
    return None if failure is None else failure.message


def refusal_text(refusal: Refusal) -> str:
    """The sentence a person (and every record of the run) reads for a refused card: the English
    sentence, which remembers its message for ``i18n.localize`` (records stay language-neutral)."""
    if refusal.kind is RefusalKind.CALLED_ANOTHER:
        return msg("this is the card of {holder}, but the counter called {called}; give it back "
                   "and ask for the right card", holder=refusal.holder, called=refusal.called)  # fmt: skip
    if refusal.kind is RefusalKind.JOB_ENDED:
        return msg("this card's job {id} ({holder}) is already {status}", id=refusal.job_id, holder=refusal.holder,
                   status=refusal.status)  # fmt: skip
    if refusal.kind is RefusalKind.NO_JOB:
        if refusal.expected is not None:
            return msg("no job in {file} is for this card ({who}); the counter expects the card of {holder}",
                       file=refusal.jobfile, who=refusal.card, holder=refusal.expected)  # fmt: skip
        return msg("no job in {file} is for this card ({who})", file=refusal.jobfile, who=refusal.card)
    if refusal.kind is RefusalKind.ANY_TAKEN:
        return msg("every job in {file} for any card is taken ({n}; the last, {id} ({holder}), is {status}); "
                   "this card ({who}) is not written", n=refusal.taken, file=refusal.jobfile, id=refusal.job_id,
                   holder=refusal.holder, status=refusal.status, who=refusal.card)  # fmt: skip
    if refusal.kind is RefusalKind.ANY_TO_OTHERS:
        return msg("the open jobs in {file} for any card ({n}) go to other cards in view, lowest serial first; "
                   "this card ({who}) is not written", file=refusal.jobfile, n=refusal.taken, who=refusal.card)  # fmt: skip
    if refusal.kind is RefusalKind.AMBIGUOUS:
        return msg("this card ({who}) and {n} other card(s) or token(s) in view all answer to job {id} ({holder}): "
                   "which one is the holder's cannot be told, so none is written; leave only the holder's in, "
                   "or give them distinct serials or labels", who=refusal.card, n=refusal.twins, id=refusal.job_id,
                   holder=refusal.holder)  # fmt: skip
    return refusal.detail
