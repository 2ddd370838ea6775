"""One card: the counter's checklist, done transactionally.

preflight → archive the replaced certificate → verify the PIN → management key → import the key →
write the certificate → write the slot name → verify (read back, public key, test signature) →
commit → exports.

Every step is recorded in the journal before and after it runs. Every write step first looks at
what the card already holds, so the same code finishes an interrupted load (resume) and changes
nothing on a card that already carries the target (an idempotent re-run, reported ``skipped``).
Nothing is retried here: a wrong PIN, a refused management key or a refused key end the job with
their reason. Transient faults (a pulled card) are the runner's to retry, by running this again.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provision import journal as jn
from provision.bundle import Bundle, cert_info
from provision.errors import (
    CardError,
    CardNotSupportedError,
    CardProtocolError,
    CardStatusError,
    InternalError,
    JobRefused,
    ManagementKeyError,
    MetadataUnavailableError,
    OperatorDeclined,
    PinError,
    PinFloorError,
    PinFormatError,
    PinHeldError,
    SecretError,
)
from provision.i18n import msg
from provision.jobfile import DerivedKey, Job, JobFile, PinProtectedKey
from provision.piv import mgmtkey
from provision.piv.profiles import (
    COMPRESS_ABOVE_BYTES,
    DEFAULT_MANAGEMENT_KEY,
    KEY_HISTORY_OBJECT_ID,
    SLOT_REFUSED_SW,
    VENDOR_REFUSED_SW,
    holds_extended_algorithms,
    key_history_update,
    pin_always,
)
from provision.piv.session import (
    SW_SECURITY_NOT_SATISFIED,
    PivSession,
    SlotMetadata,
)
from provision.queue.base import JournalStore
from provision.renewal import Decision, renewal_decision
from provision.secrets import Secret, obtain
from provision.store import CertificateStore, write_atomically

# In every report of a job that wrote with it: anyone holding such a card can replace its keys and
# certificates without the PIN.
DEFAULT_KEY_NOTE = msg("written with the card's factory default management key: anyone holding the card can "
                       "replace its certificates without the PIN; give the job a management_key")  # fmt: skip
# Journal steps that write to a card: one begun and not followed by a commit is an unfinished load.
_CARD_WRITES = frozenset({"import_key", "write_certificate", "write_key_history", "write_slot_name"})

Recorder = Callable[..., None]  # audit: record(event, **fields)
PinPrompt = Callable[[str, int | None], Secret]  # (holder, tries left) → PIN typed by the citizen
# (job, new certificate, slot name, certificate now on the card or None) → the operator's yes/no
Confirm = Callable[[Job, Any, str, Any], bool]
# (holder, PIN tries left, make_service(ui) → pinservice.PinService of this card) → unblocked now
UnblockOffer = Callable[[str, int, Any], bool]


@dataclass(slots=True)  # one per job for the whole run: no per-instance dict
class LoadResult:
    status: str
    card_serial: int | None = None
    fingerprint_sha256: str | None = None
    replaced_sha256: str | None = None
    archived_to: str | None = None
    pin_tries_left: int | None = None
    not_after: str | None = None
    slot_name_on_card: bool | None = None
    resumed: bool = False
    skip_reason: str | None = None  # skipped for another reason than "already on the card" (renew)
    notes: list[str] = field(default_factory=list)
    # The kind of management key the card ends with: default, job, derived, pin-protected (PIV)
    management_key: str | None = None


@dataclass(frozen=True, slots=True)
class Preflight:
    """What preflight found on the card, before anything is written; the later steps act on it."""

    current: bytes | None  # the certificate in the job's slot now (DER), None if empty
    metadata: SlotMetadata | None  # GET METADATA of the slot; None: empty slot or a card without F7
    key_on_card: bool | None  # the slot's key is the certificate's; None: no F7 to tell
    cert_on_card: bool  # the slot holds exactly this job's certificate
    done: bool  # certificate and key both proven on the card: nothing to write
    renewal: Decision | None  # renew: the decision on the card's certificate; None: not asked


@dataclass
class LoadContext:
    jobfile: JobFile
    job: Job
    bundle: Bundle
    slot_name: str
    run_id: str
    journal: JournalStore
    store: CertificateStore
    record: Recorder
    unattended: bool
    ask_pin: PinPrompt | None = None  # counter mode: a person types the PIN, seeing the tries left
    export_dir: Path | None = None
    resuming: bool = False  # the journal says an earlier attempt on this job was interrupted
    confirm: Confirm | None = None  # counter mode: the operator checks the certificate (workflow step 8)
    pin_holds: jn.PinHolds | None = None  # cards that refused a PIN in an earlier run (None: not kept)
    # counter mode: a card blocked or below the PIN floor may be unblocked by its holder (the PUK)
    offer_unblock: UnblockOffer | None = None


def _fault_point(action: str, phase: str) -> None:
    """Test hook of the fault campaign (tests/faults/test_kill_process.py), inert unless set:
    ``PROVISION_FAULT_KILL_AT=<action>:<phase>`` kills this process (SIGKILL, as a power cut or the
    task manager would) right after the journal recorded that step's begin or end."""
    target = os.environ.get("PROVISION_FAULT_KILL_AT")
    if target and target == f"{action}:{phase}":
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


# Steps that change nothing on the card or token (reads, the journal's own result, files): their
# begin needs no fsync of its own, since the next step that does change the card syncs the journal,
# and this begin with it, before its first write. Every other begin is on disk before its step.
CARD_UNCHANGED = frozenset({"preflight", "commit", "export_pem", "export_nssdb"})


@contextmanager
def journal_step(ctx: LoadContext, action: str, detail: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One step of a load in the journal: ``begin`` before it, ``end`` after it with what the step
    found, ``fail`` on error. Every card backend's loader records its steps through this, and only
    the steps its backend declared (provision.steps): what ``plan`` showed is what runs."""
    from provision.steps import declared_actions

    if action not in declared_actions(ctx.job):
        raise InternalError(msg('the loader took the step {action!r}, which its backend does not declare', action=action))
    ctx.journal.step(ctx.run_id, ctx.jobfile.batch, ctx.job.id, action, "begin", detail,
                     durable=action not in CARD_UNCHANGED)  # fmt: skip
    _fault_point(action, "begin")
    found: dict[str, Any] = {}
    try:
        yield found
    except BaseException as exc:
        ctx.journal.step(ctx.run_id, ctx.jobfile.batch, ctx.job.id, action, "fail",
                         {"error_class": type(exc).__name__})  # fmt: skip
        raise
    ctx.journal.step(ctx.run_id, ctx.jobfile.batch, ctx.job.id, action, "end", found)
    _fault_point(action, "end")


class Loader:
    """Loads ``ctx.bundle`` into ``ctx.job.slot`` of the card behind ``session``."""

    def __init__(self, ctx: LoadContext, session: PivSession, card_serial: int | None, *,
                 chuid_guid: str | None = None) -> None:  # fmt: skip
        self.ctx = ctx
        self.session = session
        self.card_serial = card_serial
        self.chuid_guid = chuid_guid
        self.job = ctx.job
        self.slot = ctx.job.slot
        self.der = ctx.bundle.certificate.public_bytes(Encoding.DER)
        digest = hashlib.sha256(self.der).hexdigest()
        self.sha256 = ctx.bundle.info.sha256 if ctx.bundle.info.sha256 == digest else digest  # one string per job
        self.result = LoadResult(status=jn.IN_PROGRESS, card_serial=card_serial, fingerprint_sha256=self.sha256,
                                 not_after=_rfc3339(ctx.bundle.certificate.not_valid_after_utc))  # fmt: skip
        self._pin: Secret | None = None
        self._authenticated = False
        self._metadata_supported = True
        # The slot-name object as read in this transaction (archive, then naming): one GET DATA.
        self._slot_names: dict[int, str] | None = None
        self._slot_names_read = False
        self._wrote = False  # this attempt sent a write to the card (a skip then becomes a load)

    # --- bookkeeping ---

    @contextmanager
    def step(self, action: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """Journal ``begin`` before, ``end`` after (with what the step found), ``fail`` on error."""
        with journal_step(self.ctx, action, detail) as found:
            yield found

    def audit(self, event: str, **fields: Any) -> None:
        self.ctx.record(event, card_serial=self.card_serial, slot=self.slot.hex, slot_name=self.ctx.slot_name,
                        fingerprint_sha256=self.sha256, **fields)  # fmt: skip

    # --- the checklist ---

    def run(self) -> LoadResult:
        try:
            state = self.preflight()
            if state.done:
                return self.skip()
            if state.renewal is not None and not state.renewal.act:
                return self.skip_not_due(state.renewal)
            self.check_pin_floor_first()
            self.confirm_with_operator(state)
            self.handle_replaced_certificate(state)
            self.verify_pin()
            self.authenticate_management_key()
            self.import_key(state)
            self.write_certificate(state)
            self.register_retired_slot()
            self.write_slot_name()
            self.verify_load()
            self.rotate_management_key()
            self.commit()
            self.exports()
            return self.result
        finally:
            if self._pin is not None:
                self._pin.wipe()

    def preflight(self) -> Preflight:
        bundle, job = self.ctx.bundle, self.job
        with self.step("preflight") as found:
            alg = bundle.algorithm
            # GET VERSION only where the answer matters (keys that need firmware 5.7).
            version = None if alg.standard else self.session.version()
            if not alg.standard and not holds_extended_algorithms(version):
                raise JobRefused(
                    msg('the card (firmware {version_text}) cannot hold a {name} key; it needs a YubiKey 5.7 or a key of RSA-1024/2048, P-256 or P-384', version_text=_version_text(version), name=alg.name)
                )
            current = self._current_certificate(found)
            metadata = self._metadata()
            key_matches = None
            if metadata is not None and metadata.public_key is not None:
                key_matches = _spki(metadata.public_key) == _spki(bundle.certificate.public_key())
            elif self._metadata_supported:
                key_matches = False  # F7 says the slot is empty
            cert_matches = current == self.der
            found.update(current_sha256=hashlib.sha256(current).hexdigest() if current else None,
                         cert_on_card=cert_matches, key_on_card=key_matches)  # fmt: skip
            if current is not None and not cert_matches:
                self.result.replaced_sha256 = hashlib.sha256(current).hexdigest()
            previous = self.ctx.journal.job(self.ctx.jobfile.batch, job.id)
            if self.ctx.resuming and previous is not None and previous.replaced_sha256 and not self.result.replaced_sha256:
                self.result.replaced_sha256 = previous.replaced_sha256  # archived by an interrupted attempt
                self.result.archived_to = previous.archived_to
            self.result.resumed = self.ctx.resuming
            done = cert_matches and key_matches is True
            if cert_matches and key_matches is None:
                # No F7 on this card: only the key itself can say whether it is the certificate's.
                done = self._key_proves_certificate()
            found["done"] = done
            # renew: a fresh job on a card whose certificate is not due does nothing (an
            # interrupted one was already judged due by the attempt that started it).
            renewal = None
            if job.renew is not None and not cert_matches and not self.ctx.resuming:
                renewal = self._renewal_decision(current)
                found["renewal"] = renewal.outcome
                if renewal.refused:
                    self.result.replaced_sha256 = None  # nothing is replaced
                    self.audit("preflight", current_sha256=found["current_sha256"], outcome="refused",
                               reason=renewal.reason)  # fmt: skip
                    raise JobRefused(renewal.reason)
            outcome = "done" if done else ("load" if renewal is None or renewal.act else "not_due")
            self.audit("preflight", current_sha256=found["current_sha256"], outcome=outcome,
                       **({"reason": renewal.reason} if renewal is not None else {}))  # fmt: skip
            return Preflight(current=current, metadata=metadata, key_on_card=key_matches,
                             cert_on_card=cert_matches, done=done, renewal=renewal)  # fmt: skip

    def _current_certificate(self, found: dict[str, Any]) -> bytes | None:
        """The certificate in the job's slot. A certificate object that cannot be parsed is this
        job's own interrupted write when the journal says a ``write_certificate`` of it began and
        never ended: a card that stores a command chain segment by segment (CanoKey) keeps the
        segments that arrived. The old certificate was archived before that write began, so the
        slot is taken as empty and written again. Anything else unreadable is not ours to replace:
        that write may have been on another card (an ``any: true`` job in doubt goes to the next
        card), so the slot's key must be this job's, imported before that write began."""
        try:
            current = self.session.read_certificate(self.slot.key_ref)
            if current is None:
                # "No certificate" decides that nothing is archived before the slot is written, so
                # the card must say it twice (a second GET DATA is a read; it changes nothing). One
                # wrong 6A82 from a card that holds a certificate had it overwritten, unarchived.
                current = self.session.read_certificate(self.slot.key_ref)
            return current
        except CardProtocolError as exc:
            if not self._interrupted("write_certificate") or not self._job_key_in_slot():
                raise CardError(msg("slot {hex} holds a certificate object that cannot be read ({error}); no load of this "
                                    "job left it, so it was not changed. Look at the card with another tool before "
                                    "loading it", hex=self.slot.hex, error=exc.message)) from None  # fmt: skip
            found["partial_certificate"] = True
            self.result.notes.append(msg("slot {hex} held the part of the certificate that an interrupted load had "
                                         "written; it was written again", hex=self.slot.hex))  # fmt: skip
            return None

    def _job_key_in_slot(self) -> bool:
        """GET METADATA says the slot holds this job's key (a card without it cannot tell: False)."""
        metadata = self._metadata()
        if metadata is None or metadata.public_key is None:
            return False
        return _spki(metadata.public_key) == _spki(self.ctx.bundle.certificate.public_key())

    def _interrupted(self, action: str) -> bool:
        """An earlier attempt of this job began ``action`` and it never ended (killed, card pulled,
        failed), with no commit after it."""
        open_ = False
        for _, step_action, phase, _, _ in self.ctx.journal.steps(self.ctx.jobfile.batch, self.job.id):
            if step_action == action:
                open_ = phase != "end"
            elif step_action == "commit" and phase == "end":
                open_ = False
        return open_

    def _renewal_decision(self, current: bytes | None) -> Decision:
        info, unreadable = None, False
        if current is not None:
            try:
                info = cert_info(x509.load_der_x509_certificate(current))
            except ValueError:
                unreadable = True
        return renewal_decision(self.job, info, self.ctx.bundle.info, datetime.now(UTC),
                                current_unreadable=unreadable, tz=self.ctx.jobfile.tz)  # fmt: skip

    def skip_not_due(self, decision: Decision) -> LoadResult:
        """renew: the card's certificate is not due for renewal. Zero writes; the reason is kept."""
        self.result.status = jn.SKIPPED
        self.result.replaced_sha256 = None  # nothing was replaced
        self.result.skip_reason = decision.reason
        self.result.notes.append(decision.reason)
        self.audit("skipped", reason=decision.reason, outcome="not_due")
        return self.result

    def _metadata(self) -> SlotMetadata | None:
        try:
            return self.session.get_metadata(self.slot.key_ref)
        except MetadataUnavailableError:
            self._metadata_supported = False
            return None
        except CardStatusError as exc:
            # A card with fewer retired slots says 6A86 for one it does not have (cards without
            # GET METADATA at all answer its INS with 6D00 and the like: CardNotSupportedError).
            if not self.slot.is_retired or exc.sw not in SLOT_REFUSED_SW:
                raise
            raise CardNotSupportedError(msg("this card has no slot {hex} (GET METADATA answered {sw:04X}); nothing was "
                                            "written. Use a slot the card has", hex=self.slot.hex, sw=exc.sw)) from None  # fmt: skip
        except CardNotSupportedError:
            # Either way nothing is known about this slot's key: the certificate and, where it
            # matters, a test signature decide (as on a card without F7).
            self._metadata_supported = False
            return None

    def _key_proves_certificate(self) -> bool:
        self.verify_pin()
        try:
            self._test_signature()
        except PinError:
            raise  # a refused PIN is never a reason to load again (nor to present it again)
        except CardError:
            return False
        return True

    def skip(self) -> LoadResult:
        """The card already carries this certificate and a key that matches it. ``skipped`` is said
        only once this run has proven the whole target on the card: the certificate's bytes, the
        slot name (read back) and the key (a test signature checked with the certificate's public
        key). Whatever is missing, e.g. after a fault between two writes of an earlier attempt, is
        finished, verified and committed: that job ends ``loaded``, never ``skipped``."""
        self.verify_pin()  # the test signature needs it
        self.register_retired_slot()
        self.write_slot_name()
        self.verify_load()
        self.rotate_management_key()
        if self.result.resumed or self._wrote or self._earlier_attempt_unfinished() or not self._slot_name_kept():
            self.commit()
            self.exports()
            return self.result
        self.result.status = jn.SKIPPED
        self.audit("skipped", outcome="verified",
                   reason="the card already holds this certificate, its key (test signature) and the slot name")  # fmt: skip
        self.exports()  # an export that failed or went missing after an earlier load is made again
        return self.result

    def _earlier_attempt_unfinished(self) -> bool:
        """An earlier attempt of this job began a write to a card and no commit ended after it."""
        unfinished = False
        for _, action, phase, _, _ in self.ctx.journal.steps(self.ctx.jobfile.batch, self.job.id):
            if action in _CARD_WRITES and phase == "begin":
                unfinished = True
            elif action == "commit" and phase == "end":
                unfinished = False
        return unfinished

    def _slot_name_kept(self) -> bool:
        """The slot name is on the card (read back), or, on a card that refuses it, in the journal
        of a committed load of this job."""
        if self.result.slot_name_on_card:
            return True
        return "commit" in self.ctx.journal.ended_steps(self.ctx.jobfile.batch, self.job.id)

    @contextmanager
    def person_pause(self) -> Iterator[None]:
        """Release the PC/SC transaction while a person reads or types: Windows resets a card whose
        transaction stays idle for more than five seconds. The card keeps its security status."""
        transport = getattr(self.session.channel, "transport", None)
        if transport is None:
            yield
            return
        transport.end_transaction()
        self._slot_names_read = False  # another program may use the card meanwhile
        try:
            yield
        finally:
            transport.begin_transaction()

    def confirm_with_operator(self, state: Preflight) -> None:
        """Counter mode: show the certificate (and what it replaces) before anything is written."""
        if self.ctx.confirm is None:
            return
        from provision.bundle import cert_info

        current = state.current
        replaced = None
        if current is not None and not state.cert_on_card:
            try:
                replaced = cert_info(x509.load_der_x509_certificate(current))
            except ValueError:
                replaced = None
        with self.person_pause():
            confirmed = self.ctx.confirm(self.job, self.ctx.bundle.info, self.ctx.slot_name, replaced)
        if not confirmed:
            self.audit("operator_declined", outcome="declined")
            raise OperatorDeclined(msg('the operator did not confirm the certificate of {holder}; nothing was written', holder=self.job.holder))
        self.audit("operator_confirmed", outcome="confirmed")

    def handle_replaced_certificate(self, state: Preflight) -> None:
        current = state.current
        if current is None or state.cert_on_card:
            return
        sha = hashlib.sha256(current).hexdigest()
        # No shortcut for "an interrupted attempt archived it already": the store proves its copy
        # (the card's bytes, same SHA-256, fsynced) or rewrites it, every time, before the card is changed.
        # The journal tells the two apart: an archive that ended before is proven again under its own
        # action, so no write step ever begins again after it ended.
        action = f"{self.job.replace}_replaced_certificate"
        if self.job.replace == "archive" and action in self.ctx.journal.ended_steps(self.ctx.jobfile.batch, self.job.id):
            action = "prove_archived_certificate"
        with self.step(action, replaced_sha256=sha) as found:
            if self.job.replace == "refuse":
                raise JobRefused(msg('slot {hex} already holds a certificate (SHA-256 {value}…) and the job says replace: refuse; the card was not changed', hex=self.slot.hex, value=sha[:16]))  # fmt: skip
            if self.job.replace == "archive":
                names = self._read_slot_names() or {}
                stored = self.ctx.store.archive(
                    current, card_serial=self.card_serial, slot=self.slot.hex, slot_name=names.get(self.slot.key_ref),
                    holder=self.job.holder, job_id=self.job.id, batch=self.ctx.jobfile.batch, run_id=self.ctx.run_id,
                )  # fmt: skip
                self.result.archived_to = str(stored.path)
                found["archived_to"] = str(stored.path)
                self.audit("archived", replaced_sha256=sha, archived_to=str(stored.path))
            else:
                self.audit("overwrite_planned", replaced_sha256=sha)
            self.ctx.journal.set_job(self.ctx.jobfile.batch, self.job.id, self.ctx.run_id, self.job.holder,
                                     jn.IN_PROGRESS, replaced_sha256=sha, archived_to=self.result.archived_to)  # fmt: skip

    def verify_pin(self) -> None:
        """Refuse a card on PIN hold, read the tries left (costs none), refuse below the floor,
        then VERIFY once."""
        with self.step("verify_pin") as found:
            self._refuse_if_pin_held()  # before the status read: not even a VERIFY without data
            tries = self.session.pin_tries()
            self.result.pin_tries_left = tries
            found["tries_before"] = tries
            if tries is None:
                return  # already verified in this card session
            floor = self.job.min_pin_retries
            while True:
                if tries < floor:
                    tries = self._unblock_or_refuse(tries)
                pin = self._obtain_pin(tries)
                try:
                    self._present_pin(pin)
                except PinError as exc:
                    pin.wipe()
                    self.result.pin_tries_left = exc.tries_left
                    self.audit("pin_verify", pin_tries_left=exc.tries_left, outcome="wrong")
                    # A person at the counter may type it again while tries stay above the floor;
                    # a PIN from a file, variable or program is never retried.
                    if self.job.pin.kind != "prompt" or self.ctx.ask_pin is None or exc.tries_left is None:
                        raise
                    if exc.tries_left < floor and self.ctx.offer_unblock is not None and self._person_types_pin():
                        tries = self._unblock_or_refuse(exc.tries_left, wrong=True)
                        continue
                    if exc.tries_left < floor:
                        # The card counted this PIN: say so (never "no PIN was tried").
                        left = exc.tries_left
                        raise PinFloorError(
                            msg('wrong PIN, {left} tr{ies} left; fewer than min_pin_retries ({floor}), so the PIN is not asked again. The last tries belong to the holder: unblock the card with its PUK first', left=left, ies='y' if left == 1 else 'ies', floor=floor),
                            left,
                        ) from None
                    tries = exc.tries_left
                    continue
                self._pin = pin
                self.audit("pin_verify", pin_tries_left=tries, outcome="ok")
                return

    def check_pin_floor_first(self) -> None:
        """Counter mode: a card already below the PIN floor is refused before the clerk is shown
        the certificate (the PIN status read costs no try; a card on hold is not even asked)."""
        if self.ctx.confirm is None:
            return
        self._refuse_if_pin_held()
        tries = self.session.pin_tries()
        if tries is not None and tries < self.job.min_pin_retries:
            self.result.pin_tries_left = tries
            self._unblock_or_refuse(tries)

    def _unblock_or_refuse(self, tries: int, *, wrong: bool = False) -> int:
        """Below the floor: at the counter the holder may unblock the card with the PUK now (the
        load goes on with the new PIN: the PIN tries left are returned); otherwise refused."""
        # Only where the holder types the PIN: a new PIN would not match a PIN file, variable or program.
        offer = self.ctx.offer_unblock if self._person_types_pin() else None
        if offer is not None:
            from provision.pinservice import PinService

            def make_service(ui: Any) -> PinService:
                service = PinService(self.session, ui, record=self.ctx.record, holds=self.ctx.pin_holds)
                service.card_serial, service.chuid_guid = self.card_serial, self.chuid_guid
                return service

            with self.person_pause():
                unblocked = offer(self.job.holder, tries, make_service)
            if unblocked:
                left = self.session.pin_tries()
                if left is not None and left >= self.job.min_pin_retries:
                    self.result.pin_tries_left = left
                    return left
        if wrong:
            floor = self.job.min_pin_retries
            self.audit("pin_refused_floor", pin_tries_left=tries, outcome="refused")
            raise PinFloorError(
                msg('wrong PIN, {tries} tr{ies} left; fewer than min_pin_retries ({floor}), so the PIN is not asked again. The last tries belong to the holder: unblock the card with its PUK first', tries=tries, ies='y' if tries == 1 else 'ies', floor=floor),
                tries,
            )
        self._refuse_below_floor(tries)

    def _refuse_below_floor(self, tries: int) -> NoReturn:
        floor = self.job.min_pin_retries
        self.audit("pin_refused_floor", pin_tries_left=tries, outcome="refused")
        raise PinFloorError(
            msg('the card has {tries} PIN tr{ies} left{blocked}, fewer than min_pin_retries ({floor}); no PIN was tried. The last tries belong to the holder: unblock the card with its PUK first', tries=tries, ies='y' if tries == 1 else 'ies', blocked=' (blocked)' if tries == 0 else '', floor=floor),
            tries,
        )

    def _person_types_pin(self) -> bool:
        """The PIN comes from a person at the counter (the citizen typing it), not from a source
        that would send the same value again in every run."""
        return not self.ctx.unattended and self.job.pin.kind == "prompt" and self.ctx.ask_pin is not None

    def _refuse_if_pin_held(self) -> None:
        holds = self.ctx.pin_holds
        if holds is None or self._person_types_pin():
            return
        hold = holds.get(self.card_serial, self.chuid_guid)
        if hold is None:
            return
        self.audit("pin_refused_hold", outcome="refused", held_since=hold.since, held_by_run=hold.run_id,
                   held_by_job=hold.job_id, pin_tries_left=hold.tries_left)  # fmt: skip
        card = str(hold.card_serial) if hold.card_serial is not None else str(hold.chuid_guid)
        raise PinHeldError(
            msg("{card_text} refused a PIN on {since} (job {job_id}, run {run_id}) and is on PIN hold; no PIN was sent to it. Check the PIN this job gives (with the holder if need be), then run 'provision card clear-pin-hold {card} --reason TEXT' and run again, or load it at the counter", card_text=hold.card_text(), since=hold.since, job_id=hold.job_id, run_id=hold.run_id, card=card),
            hold.tries_left,
        )

    def _present_pin(self, pin: Secret) -> None:
        """VERIFY. A refusal puts the card on PIN hold for later runs; a good PIN typed by a
        person at the counter lifts a hold (that person has just proven the PIN)."""
        holds = self.ctx.pin_holds
        try:
            self.session.verify_pin(pin)
        except PinFormatError:
            raise  # nothing was sent to the card
        except PinError as exc:
            if holds is not None and (self.card_serial is not None or self.chuid_guid):
                holds.hold(self.card_serial, self.chuid_guid, tries_left=exc.tries_left, run_id=self.ctx.run_id,
                           batch=self.ctx.jobfile.batch, job_id=self.job.id)  # fmt: skip
                self.audit("pin_hold_set", outcome="held", pin_tries_left=exc.tries_left)
            raise
        if holds is not None and self._person_types_pin():
            lifted = holds.clear(self.card_serial, self.chuid_guid)
            if lifted is not None:
                self.audit("pin_hold_cleared", outcome="cleared", by="counter", held_since=lifted.since,
                           held_by_run=lifted.run_id)  # fmt: skip

    def _obtain_pin(self, tries: int | None) -> Secret:
        if self._pin is not None:
            return self._pin
        if self.job.pin.kind == "prompt" and self.ctx.ask_pin is not None:
            with self.person_pause():
                return self.ctx.ask_pin(self.job.holder, tries)
        return obtain(self.job.pin, unattended=self.ctx.unattended)

    def authenticate_management_key(self) -> None:
        if self._authenticated:
            return
        with self.step("authenticate_management_key", default_key=self.job.management_key is None):
            key_type = self._key_type()
            key = self._job_management_key()
            try:
                self.session.authenticate(key, key_type)  # type: ignore[arg-type]
            except ManagementKeyError:
                if not self._rotated_key_opens():
                    self.audit("management_key_auth", outcome="failed")
                    raise
                self.audit("management_key_auth", outcome="ok", rotated_key=True)
                return
            finally:
                key.wipe()
            self._authenticated = True
            self.audit("management_key_auth", outcome="ok", default_key=self.job.management_key is None)
            self.result.management_key = self._used_key_kind()
            if self.job.management_key is None:  # until a rotation takes the card off that key
                self.result.notes.append(DEFAULT_KEY_NOTE)

    def _rotated_key_opens(self) -> bool:
        """The job's key was refused: an earlier run may have rotated this card already (it went on
        after the change, or the journal never heard of it). Its target key is tried once."""
        rotation = self.job.management_key_rotate
        if rotation is None:
            return False
        target = self._rotation_target(rotation)
        if target is None:
            return False
        try:
            if not self._try_key(target):
                return False
        finally:
            target.wipe()
        self.result.management_key = "derived" if isinstance(rotation, DerivedKey) else "pin-protected"
        return True

    def _used_key_kind(self) -> str:
        if self.job.management_key is None:
            return "default"
        return "derived" if isinstance(self.job.management_key, DerivedKey) else "job"

    def _job_management_key(self) -> Secret:
        """The key the job authenticates with: the factory default, the job's secret (hex), or the
        key derived from the job's master secret and this card's serial."""
        source = self.job.management_key
        if source is None:
            return Secret(DEFAULT_MANAGEMENT_KEY)
        if isinstance(source, DerivedKey):
            return self._derived_key(source)
        return self._hex_secret(source, "management key")

    def _hex_secret(self, source: Any, what: str) -> Secret:
        text = obtain(source, unattended=self.ctx.unattended)
        try:
            return Secret(bytes.fromhex(text.reveal().decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            raise SecretError(msg('the {what} from the {describe} is not hexadecimal', what=what, describe=source.describe())) from None
        finally:
            text.wipe()

    def _derived_key(self, spec: DerivedKey) -> Secret:
        if self.card_serial is None:
            raise JobRefused(msg("the job derives the management key from the card's serial, and this card has none (no GET SERIAL); give this card its own management_key"))  # fmt: skip
        master = self._hex_secret(spec.master, "master secret")
        try:
            if not len(master):
                raise SecretError(msg('the master secret from the {describe} is empty', describe=spec.master.describe()))
            buf = mgmtkey.derive_management_key(master.reveal(), spec.label, self.card_serial)
        finally:
            master.wipe()
        key = Secret(buf)
        for i in range(len(buf)):
            buf[i] = 0
        return key

    # --- management key rotation (management_key_rotate) ---

    def rotate_management_key(self) -> None:
        """Change the card's management key away from the one the job used, to the derived key or
        to a random key stored PIN-protected on the card (as ykman --protect does). Safe to run
        again after an interruption: the target key is tried first (a finished rotation is only
        completed), then the job's key; the new key is proven by a fresh mutual authentication."""
        rotation = self.job.management_key_rotate
        if rotation is None:
            return
        kind = "derived" if isinstance(rotation, DerivedKey) else "pin-protected"
        target = self._rotation_target(rotation)
        try:
            opened = target is not None and self._try_key(target)
            if opened and self._rotation_finished(rotation):
                self.result.management_key = kind
                self.result.notes = [n for n in self.result.notes if n != DEFAULT_KEY_NOTE]
                return
            with self.step("rotate_management_key", to=kind) as found:
                if opened:
                    found["key_changed_before"] = True  # an interrupted rotation: only the rest is left
                else:
                    old = self._job_management_key()
                    try:
                        self.session.authenticate(old, self._key_type())  # type: ignore[arg-type]
                    except ManagementKeyError:
                        self.audit("management_key_rotated", outcome="failed", to=kind)
                        raise ManagementKeyError(
                            msg("neither the rotation's target key nor the job's management key opens this card; it was not changed by this attempt")) from None  # fmt: skip
                    finally:
                        old.wipe()
                    algorithm = self.session.management_key_algorithm(self._key_type())  # type: ignore[arg-type]
                    if target is None:  # pin_protected, first attempt: a fresh random key, stored first
                        target = Secret(os.urandom(mgmtkey.DERIVED_KEY_LENGTH))
                    if isinstance(rotation, PinProtectedKey):
                        # Stored and announced (ADMIN DATA) before the change: an interruption never
                        # loses the key, and a card that refuses either object keeps its old key.
                        self._wrote = True
                        self._mark_key_protected()
                        stored = mgmtkey.protected_data(target.reveal())
                        try:
                            self.session.put_object(mgmtkey.PROTECTED_DATA_OBJECT_ID, bytes(stored))
                        finally:
                            for i in range(len(stored)):
                                stored[i] = 0
                    self._wrote = True
                    self.result.management_key = None  # not known until the new key is proven
                    self.session.set_management_key(target, algorithm)
                    found["algorithm"] = f"{algorithm:02X}"
                if isinstance(rotation, PinProtectedKey):
                    self._mark_key_protected()  # nothing to do unless an older attempt stopped before it
                if target is None or not self._try_key(target):  # the proof: a fresh mutual authentication
                    raise ManagementKeyError(msg('the card does not accept the new management key after the change'))
                self.result.management_key = kind
                self.audit("management_key_rotated", outcome="ok", to=kind)
        finally:
            if target is not None:
                target.wipe()
        self.result.notes = [n for n in self.result.notes if n != DEFAULT_KEY_NOTE]

    def _rotation_target(self, rotation: DerivedKey | PinProtectedKey) -> Secret | None:
        """The key the card ends with: derived, or the one already stored PIN-protected (an earlier,
        interrupted attempt); None when a random key is still to be made."""
        if isinstance(rotation, DerivedKey):
            return self._derived_key(rotation)
        if self._pin is None:
            self.verify_pin()
        try:
            body = self.session.get_object(mgmtkey.PROTECTED_DATA_OBJECT_ID)
        except CardStatusError as exc:
            if exc.sw != SW_SECURITY_NOT_SATISFIED or self._pin is None:
                raise
            # PIN policy "always" used the verification up: the object is readable after a fresh VERIFY.
            self._present_pin(self._pin)
            body = self.session.get_object(mgmtkey.PROTECTED_DATA_OBJECT_ID)
        found = mgmtkey.stored_key(body)
        return None if not found else Secret(found)

    def _try_key(self, key: Secret) -> bool:
        try:
            self.session.authenticate(key, self._key_type())  # type: ignore[arg-type]
        except ManagementKeyError:
            self._authenticated = False
            return False
        self._authenticated = True
        return True

    def _key_type(self) -> str | None:
        return None if self.job.management_key_type == "auto" else self.job.management_key_type

    def _rotation_finished(self, rotation: DerivedKey | PinProtectedKey) -> bool:
        if isinstance(rotation, DerivedKey):
            return True
        return bool(mgmtkey.admin_data_flags(self._admin_data()) & mgmtkey.FLAG_MGM_KEY_PROTECTED)

    def _admin_data(self) -> bytes | None:
        try:
            return self.session.get_object(mgmtkey.ADMIN_DATA_OBJECT_ID)
        except CardStatusError:
            return None

    def _mark_key_protected(self) -> None:
        """ADMIN DATA 5FFF00 says "management key stored PIN-protected" (flag 02), so ykman finds it."""
        body = self._admin_data()
        if mgmtkey.admin_data_flags(body) & mgmtkey.FLAG_MGM_KEY_PROTECTED:
            return
        try:
            self.session.put_object(mgmtkey.ADMIN_DATA_OBJECT_ID,
                                    mgmtkey.admin_data_with_flags(body, mgmtkey.FLAG_MGM_KEY_PROTECTED))  # fmt: skip
        except CardStatusError as exc:
            if exc.sw not in VENDOR_REFUSED_SW:
                raise
            raise CardNotSupportedError(
                msg('this card refuses the ADMIN DATA object {ADMIN_DATA_OBJECT_ID:06X} ({sw:04X}), so no peer could find a PIN-protected management key; its key was not changed. Use management_key_rotate: {{derive: …}} for this card', ADMIN_DATA_OBJECT_ID=mgmtkey.ADMIN_DATA_OBJECT_ID, sw=exc.sw)) from None  # fmt: skip

    def import_key(self, state: Preflight) -> None:
        if state.key_on_card is True:
            self.result.notes.append(msg("the key was already on the card"))
            return
        with self.step("import_key", algorithm=self.ctx.bundle.algorithm.name):
            try:
                self.session.import_key(self.slot.key_ref, self.ctx.bundle.key,  # type: ignore[arg-type]
                                        self.job.pin_policy, self.job.touch_policy)  # type: ignore[arg-type]  # fmt: skip
            except CardStatusError as exc:
                if exc.sw == 0x6A86:
                    # P2 names the slot, P1 the algorithm: CanoKey says 6A86 for a retired slot it
                    # does not have, although its GET METADATA called that slot empty (6A88).
                    raise CardNotSupportedError(
                        msg("this card has no slot {hex} or does not take {algorithm} keys there (IMPORT KEY answered "
                            "6A86); nothing was written. Use a slot the card has", hex=self.slot.hex,
                            algorithm=self.ctx.bundle.algorithm.name)) from None  # fmt: skip
                # PivApplet takes touch policies default/never only and answers 6A81 to the others.
                if exc.sw != 0x6A81 or self.job.touch_policy in ("default", "never"):
                    raise
                raise CardNotSupportedError(
                    msg("this card does not take touch policy '{policy}' (IMPORT KEY answered {sw:04X}); the key was not "
                        "imported. Use touch_policy: never or default for it", policy=self.job.touch_policy, sw=exc.sw)) from None  # fmt: skip
            self.audit("key_imported", algorithm=self.ctx.bundle.algorithm.name, pin_policy=self.job.pin_policy,
                       touch_policy=self.job.touch_policy)  # fmt: skip

    def write_certificate(self, state: Preflight) -> None:
        if state.cert_on_card:
            return
        with self.step("write_certificate"):
            try:
                self.session.write_certificate(self.slot.key_ref, self.der, compress=len(self.der) > COMPRESS_ABOVE_BYTES)
            except CardStatusError as exc:
                if exc.sw not in (0x6700, 0x6A84):  # wrong length (CanoKey), not enough memory
                    raise
                # Cards hold less than the 3063 bytes plan checks (CanoKey: 2996): known only now.
                raise CardError(msg("the card has no room for this certificate (PUT DATA answered {sw:04X}); the new key "
                                    "is already in slot {hex} and the slot's certificate is not this one. Load a "
                                    "certificate this card can hold into the slot", sw=exc.sw, hex=self.slot.hex)) from None  # fmt: skip
            self.audit("certificate_written", replaced_sha256=self.result.replaced_sha256)

    def _read_slot_names(self) -> dict[int, str] | None:
        if not self._slot_names_read:
            self._slot_names = self.session.read_slot_names()
            self._slot_names_read = True
        return None if self._slot_names is None else dict(self._slot_names)

    def register_retired_slot(self) -> None:
        """A retired slot is found by middleware (OpenSC, Windows) only through the Key History
        object: its ``keysWithOnCardCerts`` (C1) says how many retired slots, from 82 on, to read.
        Raise it to cover this slot; keep everything else in the object as it was."""
        if not self.slot.is_retired:
            return
        current = self.session.get_object(KEY_HISTORY_OBJECT_ID)
        needed, body = key_history_update(current, self.slot.key_ref)
        if body is None:
            return
        if current is None and self._refused_by_committed_load("write_key_history"):
            # This card has no Key History object (CanoKey: GET and PUT DATA 5FC10C answer 6A82,
            # SP 800-73-4 makes it optional) and refused it when this job was loaded: asking again
            # writes nothing and would turn a re-run's "skipped" into "loaded".
            self.result.notes.append(msg("Key History not updated: the card refused it when this job was loaded; some "
                                         "middleware will not list slot {slot}", slot=self.slot.hex))  # fmt: skip
            return
        self.authenticate_management_key()
        self._wrote = True
        with self.step("write_key_history", keys_with_on_card_certs=needed) as found:
            try:
                self.session.put_object(KEY_HISTORY_OBJECT_ID, body)
                found["stored"] = True
            except CardError as exc:  # a card without Key History still holds the key and certificate
                found["stored"] = False
                self.result.notes.append(msg("Key History not updated ({error}); some middleware will not list slot {slot}", error=exc.message, slot=self.slot.hex))  # fmt: skip
            self.audit("key_history_written", keys_with_on_card_certs=needed, stored=found["stored"])

    def write_slot_name(self) -> None:
        names = self._read_slot_names()
        if names is not None and names.get(self.slot.key_ref) == self.ctx.slot_name:
            self.result.slot_name_on_card = True
            return
        if not names and self._refused_by_committed_load("write_slot_name"):
            # This card refused the name when this job was loaded (PivApplet answers GET DATA 5FFF50
            # 6A82 and PUT DATA 6A81): asking again writes nothing and would turn a re-run's
            # "skipped" into "loaded" with a management-key authentication for nothing.
            self.result.slot_name_on_card = False
            self.result.notes.append(msg("slot name kept by provision only: the card refused it when this job was loaded"))
            return
        self.authenticate_management_key()  # a resumed load may reach here without it
        self._wrote = True
        with self.step("write_slot_name") as found:
            outcome = self.session.write_slot_name(self.slot.key_ref, self.ctx.slot_name, current=names)
            self._slot_names_read = False
            self.result.slot_name_on_card = outcome.stored
            found["stored"] = outcome.stored
            if not outcome.stored:
                self.result.notes.append(msg("slot name kept by provision only: {reason}", reason=outcome.reason))
            self.audit("slot_name_written", stored=outcome.stored)

    def _refused_by_committed_load(self, action: str) -> bool:
        """The last ``action`` (write_slot_name, write_key_history) of this job found what it wrote
        refused by the card (``stored`` false), and a commit followed."""
        refused = committed_refused = False
        for _, step_action, phase, detail, _ in self.ctx.journal.steps(self.ctx.jobfile.batch, self.job.id):
            if step_action == action and phase == "end":
                refused = detail.get("stored") is False
            elif step_action == "commit" and phase == "end":
                committed_refused = refused
        return committed_refused

    def verify_load(self) -> None:
        with self.step("verify_load") as found:
            back = self.session.read_certificate(self.slot.key_ref)
            if back != self.der:
                raise CardError(msg('the certificate read back from slot {hex} differs from the one written', hex=self.slot.hex))
            # The test signature, checked with the certificate's public key, proves that the key
            # in the slot is the certificate's: no separate metadata read is needed for that.
            self._test_signature()
            found["test_signature"] = "verified"
            self.audit("verified", outcome="ok")

    def _test_signature(self) -> None:
        """One test signature with the slot's key, with the VERIFY right before it that PIN policy
        *always* needs. Also where ``verify_pin`` sent no VERIFY because the card said the PIN was
        already verified (PivApplet keeps that across a re-SELECT, e.g. from an earlier program):
        an *always* key still wants its own VERIFY immediately before its use."""
        verified = self._pin_always(None)
        if verified:  # PIN policy "always": the VERIFY must immediately precede the key's use
            self._present_pin_again()
        try:
            self.session.test_signature(self.slot.key_ref, self.ctx.bundle.certificate)
        except CardStatusError as exc:
            if exc.sw != SW_SECURITY_NOT_SATISFIED or verified:
                raise
            # This card keeps PIN policy "always" on this key although neither the job nor the
            # slot's usual default says so: present the PIN the card accepted a moment ago.
            self._present_pin_again()
            self.session.test_signature(self.slot.key_ref, self.ctx.bundle.certificate)

    def _present_pin_again(self) -> None:
        """VERIFY with the PIN of this load right before a key's use. Kept once accepted, so a later
        VERIFY does not ask a person again; a refused one raises and is never presented again."""
        pin = self._pin or self._obtain_pin(None)
        try:
            self._present_pin(pin)
        except PinError:
            if pin is not self._pin:
                pin.wipe()
            raise
        self._pin = pin

    def _pin_always(self, metadata: SlotMetadata | None) -> bool:
        return pin_always(self.slot.key_ref, self.job.pin_policy, None if metadata is None else metadata.pin_policy)

    def commit(self) -> None:
        with self.step("commit"):
            self.result.status = jn.LOADED
            self.ctx.journal.set_job(
                self.ctx.jobfile.batch, self.job.id, self.ctx.run_id, self.job.holder, jn.LOADED,
                card_serial=self.card_serial, slot=self.slot.hex, slot_name=self.ctx.slot_name,
                fingerprint_sha256=self.sha256, replaced_sha256=self.result.replaced_sha256,
                archived_to=self.result.archived_to, pin_tries_left=self.result.pin_tries_left,
                not_after=self.result.not_after,
            )  # fmt: skip
            self.audit("committed", replaced_sha256=self.result.replaced_sha256, archived_to=self.result.archived_to,
                       resumed=self.result.resumed, not_after=self.result.not_after)  # fmt: skip

    def exports(self) -> None:
        export_certificate(self.ctx, card_serial=self.card_serial, audit=self.audit)


def export_certificate(ctx: LoadContext, *, card_serial: int | None, audit: Recorder) -> None:
    """After the commit: ``export.pem`` and ``export.nssdb`` (the workflow's "Copy e-Cert to IE"),
    each a journalled step. Every card backend's loader ends with this."""
    from provision.fields import export_path, template_values

    job, certificate = ctx.job, ctx.bundle.certificate
    if job.export.pem is None and job.export.nssdb is None:
        return
    values = template_values(ctx.jobfile.tz, cert=ctx.bundle.info, job=job, batch=ctx.jobfile.batch,
                             card_serial=card_serial)  # fmt: skip
    base = ctx.export_dir or ctx.jobfile.path.parent
    if job.export.pem is not None:
        path = export_path(base, job.export.pem, values)
        with journal_step(ctx, "export_pem", {"path": str(path)}):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, certificate.public_bytes(Encoding.PEM))
            audit("exported", target="pem", path=str(path))
    if job.export.nssdb is not None:
        path = export_path(base, job.export.nssdb, values)
        with journal_step(ctx, "export_nssdb", {"path": str(path)}) as found:
            nickname = export_to_nssdb(path, certificate, nickname=f"{job.holder} {ctx.slot_name}")
            found["nickname"] = nickname
            audit("exported", target="nssdb", path=str(path), nickname=nickname)


def export_to_nssdb(directory: Path, certificate: x509.Certificate, *, nickname: str) -> str:
    """Add the certificate to an NSS database (a browser profile) with NSS ``certutil``.

    Idempotent: a certificate already in the database is not added again. The nickname is
    ``nickname`` unless another certificate holds it (two holders of the same name and slot name):
    then the certificate's short fingerprint is appended, so each certificate keeps its own name.
    Returns the nickname under which the database holds the certificate."""
    import shutil
    import subprocess

    certutil = shutil.which("certutil")
    if certutil is None:
        raise CardError(msg('NSS certutil was not found; install libnss3-tools (Debian) or NSS tools to export to nssdb'))
    der = certificate.public_bytes(Encoding.DER)
    # ':' separates a token name from a nickname in NSS; keep the name on one line and unprefixed.
    nickname = " ".join(nickname.replace(":", " ").split()) or "provision"
    directory.mkdir(parents=True, exist_ok=True)
    db = f"sql:{directory}"

    def certutil_run(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([certutil, *argv], input=stdin, capture_output=True, timeout=60, check=False)

    if not (directory / "cert9.db").exists():
        made = certutil_run("-N", "-d", db, "--empty-password")
        if made.returncode != 0:
            raise CardError(msg('certutil could not create an NSS database in {directory}: {value}', directory=directory, value=made.stderr.decode(errors='replace').strip()[:200]))  # fmt: skip
    candidates = [nickname, f"{nickname} [{hashlib.sha256(der).hexdigest()[:12]}]"]
    held = {name: _nssdb_certificates(certutil_run("-L", "-d", db, "-n", name, "-a")) for name in candidates}
    for name in reversed(candidates):  # NSS lists a subject's certificates under each of its names
        if der in held[name]:
            return name  # already there: a re-run adds nothing
    for name in candidates:
        if held[name]:
            continue  # the nickname belongs to another certificate
        done = certutil_run("-A", "-d", db, "-n", name, "-t", ",,", stdin=der)
        if done.returncode != 0:
            raise CardError(msg('certutil could not add the certificate to {directory}: {value}', directory=directory, value=done.stderr.decode(errors='replace').strip()[:200]))  # fmt: skip
        return name
    raise CardError(msg('the NSS database {directory} holds other certificates under both {value!r} and {value2!r}; remove them or change slot_name', directory=directory, value=candidates[0], value2=candidates[1]))  # fmt: skip


def _nssdb_certificates(listed: Any) -> list[bytes]:
    """DER of every certificate in ``certutil -L -n NICK -a`` output (none when the name is unknown)."""
    if listed.returncode != 0:
        return []
    try:
        return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(listed.stdout)]
    except ValueError:
        return []


def _version_text(version: tuple[int, int, int] | None) -> str:
    return "unknown" if version is None else ".".join(map(str, version))


def _rfc3339(moment: Any) -> str:
    return str(moment.isoformat()).replace("+00:00", "Z")

