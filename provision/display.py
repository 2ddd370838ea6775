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


def failure_text(failure: ProvisionError | None) -> str | None:
    """The sentence a person (and every record of the run) reads for a job's failure, kept as an
    exception until it is shown; None when the job has none."""
    return None if failure is None else failure.message


def refusal_text(refusal: Refusal) -> str:
    """The sentence a person (and every record of the run) reads for a refused card."""
    if refusal.kind is RefusalKind.CALLED_ANOTHER:
        return (f"this is the card of {refusal.holder}, but the counter called {refusal.called}; "
                "give it back and ask for the right card")  # fmt: skip
    if refusal.kind is RefusalKind.JOB_ENDED:
        return f"this card's job {refusal.job_id} ({refusal.holder}) is already {refusal.status}"
    if refusal.kind is RefusalKind.NO_JOB:
        hint = f"; the counter expects the card of {refusal.expected}" if refusal.expected is not None else ""
        return f"no job in {refusal.jobfile} is for this card ({refusal.card}){hint}"
    if refusal.kind is RefusalKind.AMBIGUOUS:
        others = "another card or token" if refusal.twins == 1 else f"{refusal.twins} other cards or tokens"
        return (f"this card ({refusal.card}) and {others} in view all answer to job {refusal.job_id} "
                f"({refusal.holder}): which one is the holder's cannot be told, so none is written; leave only "
                "the holder's in, or give them distinct serials or labels")  # fmt: skip
    return refusal.detail
