"""Why the runner refused a card, as a typed value: the sentence is made where it is shown
(``provision.display.refusal_text``), not in the middle of the runner.

A refused card had read-only APDUs only; nothing was written to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RefusalKind(Enum):
    CALLED_ANOTHER = "called-another"  # the card's job is open, but the counter called another holder
    JOB_ENDED = "job-ended"  # the card's job already ended (loaded, failed, refused …)
    NO_JOB = "no-job"  # no job of the job file is for this card
    ANY_TAKEN = "any-taken"  # the job file has jobs for any card, and every one is taken (in progress or ended)
    ANY_TO_OTHERS = "any-to-others"  # unattended: the open jobs for any card go to other cards in view (cardpick)
    AMBIGUOUS = "ambiguous"  # another card or token in view answers to the same job: neither is written
    NOT_CLAIMED = "not-claimed"  # the shared queue gave the job to another station (its own sentence)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused card: the kind and what its sentence names."""

    kind: RefusalKind
    holder: str = ""  # the holder of the card's job (CALLED_ANOTHER, JOB_ENDED, AMBIGUOUS, ANY_TAKEN: the last)
    job_id: str = ""  # JOB_ENDED, AMBIGUOUS, ANY_TAKEN (the last job for any card)
    status: str = ""  # the status the card's job ended with (JOB_ENDED, ANY_TAKEN)
    called: str = ""  # the holder the counter called (CALLED_ANOTHER)
    jobfile: str = ""  # the job file's name (NO_JOB, ANY_TAKEN)
    card: str = ""  # how the card describes itself (NO_JOB, AMBIGUOUS, ANY_TAKEN)
    expected: str | None = None  # NO_JOB at a counter: whose card the counter expects
    twins: int = 0  # AMBIGUOUS: how many other cards or tokens answer to the job
    taken: int = 0  # ANY_TAKEN: how many jobs for any card there are (all taken); ANY_TO_OTHERS: how many go to others
    detail: str = ""  # NOT_CLAIMED: the queue's own sentence
