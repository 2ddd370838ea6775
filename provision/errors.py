"""One exception hierarchy for everything a user can cause.

Each error carries a message that says what is wrong *and* what to do next. Only the CLI turns
these into text and exit codes (see ../shared/CLI.md); nothing below it prints. Messages never
contain a secret's value: callers pass names and sources, never revealed bytes.
"""

from __future__ import annotations

from provision.i18n import localize, msg

# Exit codes of CLI.md.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_AUDIT = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class ProvisionError(Exception):
    """Base of every expected failure. ``exit_code`` is what the CLI returns for it."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def localized(self) -> str:
        """The sentence in the chosen language (``message`` stays English for records and JSON)."""
        return localize(self.message)


class UsageError(ProvisionError):
    """The command line itself is wrong."""

    exit_code = EXIT_INPUT


class Problem:
    """One thing wrong with an input file, located as precisely as we can.

    A plain immutable class rather than a dataclass: this module is imported by ``provision --help``,
    and dataclasses (with inspect) would cost more start-up time than the whole command.
    """

    __slots__ = ("file", "line", "path", "message")

    file: str
    line: int | None
    path: str
    message: str

    def __init__(self, file: str, line: int | None, path: str, message: str) -> None:
        object.__setattr__(self, "file", file)
        object.__setattr__(self, "line", line)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "message", message)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Problem is immutable")

    def _key(self) -> tuple[str, int | None, str, str]:
        return (self.file, self.line, self.path, self.message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Problem(file={self.file!r}, line={self.line!r}, path={self.path!r}, message={self.message!r})"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def localized(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = localize(self.message)
        return f"{where}: {self.path}: {text}" if self.path else f"{where}: {text}"

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}


class JobFileError(ProvisionError):
    """A job file is invalid. Carries every problem found, not just the first."""

    exit_code = EXIT_INPUT

    def __init__(self, problems: list[Problem], *, stage: str = "read") -> None:
        self.problems = list(problems)
        self.stage = stage  # "read" (YAML or schema) or "semantic" (the schema check passed)
        first = str(problems[0]) if problems else msg("invalid job file")
        if len(problems) > 1:
            first = msg("{first} (and {more} more)", first=first, more=len(problems) - 1)
        super().__init__(first)

    def localized(self) -> str:
        if not self.problems:
            return localize(self.message)
        first = self.problems[0].localized()
        if len(self.problems) == 1:
            return first
        return localize(msg("{first} (and {more} more)", first=first, more=len(self.problems) - 1))


class InputTooLargeError(ProvisionError):
    """An input is larger than its documented bound (docs/batch.md, "Bounds on every input")."""

    exit_code = EXIT_INPUT

    def __init__(self, what: str, limit: int, where: str) -> None:
        super().__init__(msg("{where} is larger than {limit} bytes, the limit for {what}; check that it is the right file",
                             where=where, limit=limit, what=_an(what)))  # fmt: skip
        self.what = what
        self.limit = limit
        self.where = where


def _an(what: str) -> str:
    return f"an {what}" if what[:1] in "aeiou" else f"a {what}"


class SecretError(ProvisionError):
    """A secret could not be obtained from its source. Never carries the value."""

    exit_code = EXIT_INPUT


class TemplateError(ProvisionError):
    """A slot-name or path template uses something that is not allowed."""

    exit_code = EXIT_INPUT


class BundleError(ProvisionError):
    """A PKCS#12 file cannot be used for its job; ``status`` is one of the classes of CLI.md, or
    None when the file was not classified (unreadable, its password not obtained) or the file is
    fine but not for this job (``expect``, ``slot_name``)."""

    exit_code = EXIT_INPUT

    def __init__(self, status: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class EnvironmentProblem(ProvisionError):
    """Something outside our input is missing: PC/SC service, reader, a program."""

    exit_code = EXIT_ENVIRONMENT


class LogsError(EnvironmentProblem):
    """The logs directory cannot be used: absent where it must exist, not a directory, read-only, or
    holding a symbolic link, a FIFO, a directory or a hard-linked file where provision keeps its own
    files (someone may have planted it)."""


class JournalError(EnvironmentProblem):
    """The journal cannot be used: damaged, not provision's, unreadable, locked or on a full disk.
    The message carries the journal's own advice."""


class RecordsError(EnvironmentProblem):
    """The audit log cannot take a record (a full disk, an I/O error): the run stops, the record is
    written whole or not at all."""


class InternalError(ProvisionError):
    """A bug caught where a traceback would otherwise reach the operator (a worker thread)."""


class CardError(ProvisionError):
    """A card operation failed. The batch goes on with the next card."""

    exit_code = EXIT_FAILED


class AuditError(ProvisionError):
    """The audit log failed verification."""

    exit_code = EXIT_AUDIT


class CardRemovedError(CardError):
    """The card left the reader during an operation."""


class ReaderGoneError(EnvironmentProblem):
    """The reader disappeared (unplugged, or its driver went away)."""


class ServiceDownError(EnvironmentProblem):
    """The PC/SC service (pcscd, WinSCard) is not running or stopped answering."""


class TransientCardError(CardError):
    """A passing fault (the card was reset by another program, a transaction was lost): reconnect,
    re-select, re-authenticate and continue from the journal. Never a refused PIN or key."""


class CardStatusError(CardError):
    """The card answered with a status word other than success."""

    def __init__(self, message: str, sw: int) -> None:
        super().__init__(message)
        self.sw = sw


class MetadataUnavailableError(CardStatusError):
    """GET METADATA failed for one key slot (``6F00``) on a card that has the command: the key there
    cannot be described (PivApplet cannot for an imported RSA key, whose public half it never
    receives). Only that read is lost; what the slot holds is unknown, not empty."""


class CardProtocolError(CardError):
    """The card's answer is malformed (truncated TLV, wrong length, garbage)."""


class PinError(CardError):
    """The PIN was refused or is blocked. Never retried automatically."""

    def __init__(self, message: str, tries_left: int | None) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class PinFloorError(PinError):
    """The card has fewer PIN tries left than the job's floor (or none): no PIN is sent; the holder
    unblocks it with the PUK (at the counter: ``u``, or ``provision card unblock-pin``)."""


class PukError(CardError):
    """The PUK was refused or is blocked. Never retried automatically."""

    def __init__(self, message: str, tries_left: int | None) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class ManagementKeyError(CardError):
    """Management-key authentication failed. Never retried automatically."""


class WrongCardError(CardError):
    """The card in the reader is not the one the job is for; nothing was written."""


class PinHeldError(PinError):
    """The card refused a PIN before and is on PIN hold: no PIN was sent. An operator clears the
    hold (``provision card clear-pin-hold``) once the PIN the job gives has been checked."""


class StoreError(ProvisionError):
    """The certificate store (logs directory) cannot archive or prove a certificate."""

    exit_code = EXIT_ENVIRONMENT  # the logs directory is part of the environment


class QueueError(ProvisionError):
    """The queue refuses what was asked (batch not pushed, a different job file, a bad URL)."""

    exit_code = EXIT_INPUT


class QueueUnavailable(EnvironmentProblem):
    """The database server cannot be reached even after retrying."""


class LeaseLost(ProvisionError):
    """Another station took over this job (our lease ran out); this station must not write to it."""

    exit_code = EXIT_FAILED


class OperatorDeclined(ProvisionError):
    """The operator did not confirm the certificate; nothing was written and the job stays open."""

    exit_code = EXIT_FAILED


class RecordedFailure(ProvisionError):
    """A job's failure as the journal recorded it (another station's, in a shared queue): its
    sentence is all that is known of it."""

    exit_code = EXIT_FAILED


class JobRefused(ProvisionError):
    """The job cannot be done on this card and nothing was written (replace: refuse, expect …)."""

    exit_code = EXIT_FAILED


class CardNotSupportedError(CardError):
    """The card lacks a function we asked for (no GET METADATA, no such algorithm, ...)."""


class PinFormatError(PinError):
    """The PIN cannot be a PIV PIN (6 to 8 bytes); nothing was sent, no try was spent."""


class KeyMismatchError(CardError):
    """The key in the slot did not produce a result that the certificate's public key accepts."""


# Not ProvisionErrors: neither reaches the CLI as an expected failure.


class SecretInAuditError(ValueError):
    """A caller tried to put a secret (a Secret, or a field named like one) into the audit log.
    A bug in the caller: should it reach the CLI, it exits as an internal error."""

    exit_code = EXIT_INTERNAL


class CardVanished(Exception):  # noqa: N818 - a card event, not an error of ours
    """The simulated card left the reader (``vanish_after``); the bridge closes its socket. A
    simulator event, caught by the simulator's own bridges; it never reaches the CLI."""

    exit_code = EXIT_INTERNAL
