"""The renewal policy: does this card need the job's certificate now? Pure: no card, no clock.

A job with ``renew: {when_expires_within: 30d}`` loads only when

* the slot is empty (nothing to renew: the card gets its first certificate), or
* the card's certificate cannot be read as X.509 (it is replaced, and archived as usual), or
* the card's certificate expires within the window (or has expired).

Otherwise the card needs nothing and the job is ``skipped`` with the reason, and nothing is written.

A renewal must also be *newer*: when the card's certificate is due but the new certificate's
``not_after`` is not later than the card's, the job is refused (the batch was given stale
material; loading it would shorten the holder's validity). This check belongs to ``renew``
because only a renewal compares the two certificates: a plain job (no ``renew``) replaces whatever
the slot holds, as the counter does, and ``expect.not_after_after`` stays the fixed-date check on
the new certificate alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provision.bundle import CertInfo
    from provision.jobfile import Job

LOAD, SKIP, REFUSE = "load", "skip", "refuse"


@dataclass(frozen=True)
class Decision:
    """What the renewal policy says about one card: ``act`` (load) or not, and why in words."""

    act: bool
    reason: str
    refused: bool = False  # not acting because the new certificate is not newer: the job is refused

    @property
    def outcome(self) -> str:
        return LOAD if self.act else (REFUSE if self.refused else SKIP)


def _day(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z").strip()


def renewal_decision(
    job: Job,
    current: CertInfo | None,
    new: CertInfo,
    now: datetime,
    *,
    current_unreadable: bool = False,
    tz: tzinfo = UTC,
) -> Decision:
    """Whether ``job`` should load ``new`` onto a card whose slot holds ``current`` (None: empty).

    ``current_unreadable``: the slot holds bytes that are not a certificate. A job without
    ``renew`` always acts (the policy is not asked for it)."""
    if job.renew is None:
        return Decision(True, "the job has no renewal policy: it always loads")
    window = job.renew.when_expires_within
    if current is None:
        if current_unreadable:
            return Decision(True, "the slot holds something that is not a readable certificate; it is replaced")
        return Decision(True, "the slot is empty")
    if current.sha256 == new.sha256:
        return Decision(True, "the card already holds this certificate")  # the loader's idempotent path
    left = current.not_after - now
    until = _day(current.not_after, tz)
    if left > job.renew.window:
        return Decision(False, f"the certificate on the card is valid until {until}, more than {window} from now; "
                               "nothing to renew")  # fmt: skip
    due = "has expired" if left.total_seconds() <= 0 else f"expires within {window}"
    if new.not_after <= current.not_after:
        return Decision(
            False,
            f"the certificate on the card {due} (until {until}), but the new one is valid only until "
            f"{_day(new.not_after, tz)}, not later; a renewal must be newer: check the PKCS#12 file",
            refused=True,
        )
    return Decision(True, f"the certificate on the card {due} (until {until}); renewing until {_day(new.not_after, tz)}")
