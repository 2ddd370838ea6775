"""One job on a PKCS#11 token: the same checklist and guarantees as the PIV loader.

preflight (public objects under the slot name, token identity, write protection) → renewal →
operator → archive the replaced certificate → PIN (tries from the token flags, one attempt) →
inventory (private keys) → import key → public key → certificate → delete the replaced objects →
verify (read back, test signature with C_Sign checked against the certificate) → commit → exports.

The slot name is ``CKA_LABEL`` of the private key, the public key and the certificate; they share
the CKA_ID of ``objects.key_id``. Objects under that label with another ID (or a certificate with
other bytes) are "replaced": archived (certificates) and destroyed in the same session, after the
new objects are written, so the token never lacks a key under that name. Every write is a journal
step and first looks at the token: a resumed job writes only what is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from provision import journal as jn
from provision.backend import CardSeen
from provision.bundle import cert_info
from provision.errors import (
    CardError,
    CardNotSupportedError,
    JobRefused,
    ManagementKeyError,
    OperatorDeclined,
    PinError,
    PinHeldError,
    WrongCardError,
)
from provision.i18n import Msg, msg
from provision.load import (
    LoadContext,
    LoadResult,
    export_certificate,
    journal_step,
)
from provision.p11 import mechanisms, objects, pins
from provision.p11.module import Module, p11_errors
from provision.renewal import renewal_decision
from provision.secrets import Secret, obtain

TEST_MESSAGE = b"provision: test signature after load"
_TOKEN_WRITES = frozenset({"import_key", "write_public_key", "write_certificate", "relabel_existing_objects"})


@dataclass
class Found:
    """What the token holds under the slot name."""

    certificates: list[Any] = field(default_factory=list)  # (object, DER, CKA_ID)
    public_keys: list[Any] = field(default_factory=list)  # (object, CKA_ID)
    private_keys: list[Any] = field(default_factory=list)  # (object, CKA_ID)
    private_seen: bool = False  # after login: private objects are listed too
    fixed_place: bool = False  # found by a fixed CKA_ID (the job's object_id), not by the slot name

    def ours(self, der: bytes, cka_id: bytes) -> tuple[bool, bool, bool]:
        cert = any(d == der and i == cka_id for _, d, i in self.certificates)
        pub = any(i == cka_id for _, i in self.public_keys)
        key = any(i == cka_id for _, i in self.private_keys)
        if self.fixed_place:
            # In a fixed place the id says where, not which key: a key there is this job's only
            # beside this job's certificate (and the test signature proves it); otherwise the old one.
            pub, key = pub and cert, key and cert
        return cert, pub, key

    def replaced(self, der: bytes, cka_id: bytes) -> list[tuple[str, Any, bytes | None]]:
        """(kind, object, certificate DER) under the label that are not this job's."""
        out: list[tuple[str, Any, bytes | None]] = []
        out += [("certificate", o, d) for o, d, i in self.certificates if not (d == der and i == cka_id)]
        out += [("public_key", o, None) for o, i in self.public_keys if i != cka_id]
        out += [("private_key", o, None) for o, i in self.private_keys if i != cka_id]
        return out


class TokenHandle(Protocol):
    """What the loader uses of an open token (provision.p11.source.Pkcs11Token builds the loader)."""

    calls: int
    reader: str
    module: Module

    def token(self) -> Any: ...

    def seen_now(self) -> CardSeen: ...

    def open_session(self, *, user_pin: Any = None, so_pin: Any = None) -> Any: ...


class Pkcs11Loader:
    def __init__(self, ctx: LoadContext, token: TokenHandle, seen: CardSeen) -> None:
        self.ctx = ctx
        self.token = token
        self.seen = seen
        self.job = ctx.job
        self.label = ctx.slot_name
        self.certificate = ctx.bundle.certificate
        self.der = self.certificate.public_bytes(Encoding.DER)
        self.sha256 = hashlib.sha256(self.der).hexdigest()
        self.result = LoadResult(status=jn.IN_PROGRESS, card_serial=None, fingerprint_sha256=self.sha256,
                                 not_after=self.certificate.not_valid_after_utc.isoformat().replace("+00:00", "Z"))  # fmt: skip
        self.cka_id = b""
        target = self.job.card.pkcs11
        self.object_id = target.object_id if target is not None else None  # a fixed place (ykcs11's slots)
        self.so_pin_source = target.so_pin if target is not None else None
        self.session: Any = None  # logged in after verify_pin
        self._pin: Secret | None = None
        self._handled: set[str] = set()  # replaced certificates already archived, refused or noted

    # --- bookkeeping (as load.Loader) ---

    @contextmanager
    def step(self, action: str, **detail: Any) -> Iterator[dict[str, Any]]:
        with journal_step(self.ctx, action, detail) as found:
            yield found

    def audit(self, event: str, **fields: Any) -> None:
        self.ctx.record(event, card_serial=None, token_serial=self.seen.token_serial, token_label=self.seen.token_label,
                        slot_name=self.label, fingerprint_sha256=self.sha256, **fields)  # fmt: skip

    # --- the checklist ---

    def run(self) -> LoadResult:
        try:
            why = objects.supported(self.ctx.bundle.key)
            if why is not None:
                raise JobRefused(why)
            self.cka_id = self.object_id or objects.key_id(self.certificate.public_key())
            found = self.preflight()
            cert_ours = found.ours(self.der, self.cka_id)[0]
            if self.job.renew is not None and not cert_ours and not self.ctx.resuming:
                if not self.renewal_due(found):
                    return self.result
            if not cert_ours:
                self.confirm_with_operator(found)
                self.handle_replaced_certificates(found)
            self.verify_pin()
            found = self.inventory()
            cert_on, pub_on, key_on = found.ours(self.der, self.cka_id)
            done = cert_on and key_on and not found.replaced(self.der, self.cka_id)
            if done and not self.ctx.resuming:
                return self.skip()
            if self.object_id is None and not (done or cert_on or key_on or found.replaced(self.der, self.cka_id)):
                elsewhere = self.find_under_other_label()
                if elsewhere is not None:
                    return self.adopt(*elsewhere)
            if not done:
                self.check_writable()
                self.check_identity()
                self.handle_replaced_certificates(found)  # a certificate only visible after login
                self.log_in_as_so()
                self.import_key(key_on)
                self.write_public_key(pub_on)
                self.write_certificate(cert_on)
                self.delete_replaced(found)
                self.log_in_as_user_again()
            self.verify_load()
            self.commit()
            self.exports()
            return self.result
        finally:
            if self._pin is not None:
                self._pin.wipe()

    def _list(self, session: Any, cls: Any) -> list[Any]:
        from pkcs11 import Attribute

        where = {Attribute.ID: self.object_id} if self.object_id is not None else {Attribute.LABEL: self.label}
        with p11_errors(msg('listing the objects labelled {label!r}', label=self.label)):
            self.token.calls += 1
            return list(session.get_objects({Attribute.CLASS: cls, **where}))

    def _read(self, session: Any, logged_in: bool) -> Found:
        from pkcs11 import Attribute, ObjectClass

        found = Found(private_seen=logged_in, fixed_place=self.object_id is not None)
        with p11_errors(msg('reading attributes')):
            for obj in self._list(session, ObjectClass.CERTIFICATE):
                found.certificates.append((obj, bytes(obj[Attribute.VALUE]), bytes(obj[Attribute.ID])))
            for obj in self._list(session, ObjectClass.PUBLIC_KEY):
                found.public_keys.append((obj, bytes(obj[Attribute.ID])))
            if logged_in:
                for obj in self._list(session, ObjectClass.PRIVATE_KEY):
                    found.private_keys.append((obj, bytes(obj[Attribute.ID])))
        return found

    def preflight(self) -> Found:
        from pkcs11 import TokenFlag

        with self.step("preflight") as info:
            self.check_identity()
            with p11_errors(msg('opening a session')):
                public = self.token.open_session()
            found = self._read(public, logged_in=False)
            cert_ours = found.ours(self.der, self.cka_id)[0]
            current = [d for _, d, _ in found.certificates if d != self.der]
            if current:
                self.result.replaced_sha256 = hashlib.sha256(current[0]).hexdigest()
            previous = self.ctx.journal.job(self.ctx.jobfile.batch, self.job.id)
            if self.ctx.resuming and previous is not None and previous.replaced_sha256 and not self.result.replaced_sha256:
                self.result.replaced_sha256 = previous.replaced_sha256  # archived by an interrupted attempt
                self.result.archived_to = previous.archived_to
            self.result.resumed = self.ctx.resuming
            write_protected = bool(self.token.token().flags & TokenFlag.WRITE_PROTECTED)
            info.update(current_sha256=self.result.replaced_sha256, cert_on_token=cert_ours,
                        write_protected=write_protected, token_serial=self.seen.token_serial)  # fmt: skip
            self.audit("preflight", current_sha256=self.result.replaced_sha256, outcome="done" if cert_ours else "load")
            if write_protected and not cert_ours:
                raise JobRefused(msg('the token {token_label!r} is write-protected through {name}; nothing was written', token_label=self.seen.token_label, name=self.token.module.path.name))  # fmt: skip
            self.token.calls += 2
            uncheckable = mechanisms.cannot_check(self.token.token().slot, self.certificate.public_key())
            info.update(key_checkable=uncheckable is None)
            if uncheckable is not None:
                self.audit("preflight", outcome="refused", reason=uncheckable)
                raise CardNotSupportedError(uncheckable)
            return found

    def renewal_due(self, found: Found) -> bool:
        current = next((d for _, d, _ in found.certificates if d != self.der), None)
        info, unreadable = None, False
        if current is not None:
            try:
                info = cert_info(x509.load_der_x509_certificate(current))
            except ValueError:
                unreadable = True
        decision = renewal_decision(self.job, info, self.ctx.bundle.info, datetime.now(UTC),
                                    current_unreadable=unreadable, tz=self.ctx.jobfile.tz)  # fmt: skip
        if decision.refused:
            self.result.replaced_sha256 = None
            self.audit("preflight", outcome="refused", reason=decision.reason)
            raise JobRefused(decision.reason)
        if decision.act:
            return True
        self.result.status = jn.SKIPPED
        self.result.replaced_sha256 = None
        self.result.skip_reason = decision.reason
        self.result.notes.append(decision.reason)
        self.audit("skipped", reason=decision.reason, outcome="not_due")
        return False

    def check_identity(self) -> None:
        """The token answering now is the one the job was matched to (before any write)."""
        now = self.token.seen_now()
        if now.token_serial != self.seen.token_serial or now.token_label != self.seen.token_label:
            raise WrongCardError(msg('the token in {reader} is now {now}, not {seen}; nothing was written', reader=self.token.reader, now=now.describe(), seen=self.seen.describe()))  # fmt: skip

    def check_writable(self) -> None:
        from pkcs11 import TokenFlag

        if self.token.token().flags & TokenFlag.WRITE_PROTECTED:
            raise JobRefused(msg('the token {token_label!r} is write-protected through {name}; nothing was written', token_label=self.seen.token_label, name=self.token.module.path.name))  # fmt: skip

    def confirm_with_operator(self, found: Found) -> None:
        if self.ctx.confirm is None:
            return
        replaced = None
        current = next((d for _, d, _ in found.certificates if d != self.der), None)
        if current is not None:
            try:
                replaced = cert_info(x509.load_der_x509_certificate(current))
            except ValueError:
                replaced = None
        if not self.ctx.confirm(self.job, self.ctx.bundle.info, self.label, replaced):
            self.audit("operator_declined", outcome="declined")
            raise OperatorDeclined(msg('the operator did not confirm the certificate of {holder}; nothing was written', holder=self.job.holder))
        self.audit("operator_confirmed", outcome="confirmed")

    def handle_replaced_certificates(self, found: Found) -> None:
        """Each certificate under the label that is not this job's: archived (fsynced) before any
        write, refused, or noted for overwrite, as ``replace`` says."""
        for kind, _, der in found.replaced(self.der, self.cka_id):
            if kind != "certificate" or der is None:
                continue
            sha = hashlib.sha256(der).hexdigest()
            if sha in self._handled or (self.job.replace == "archive" and self._archived(sha)):
                continue
            self._handled.add(sha)
            with self.step(f"{self.job.replace}_replaced_certificate", replaced_sha256=sha) as info:
                if self.job.replace == "refuse":
                    raise JobRefused(msg('the token already holds a certificate labelled {label!r} (SHA-256 {sha}…) and the job says replace: refuse; the token was not changed', label=self.label, sha=sha[:16]))  # fmt: skip
                if self.job.replace == "archive":
                    stored = self.ctx.store.archive(der, card_serial=None, slot="pkcs11", slot_name=self.label,
                                                    holder=self.job.holder, job_id=self.job.id,
                                                    batch=self.ctx.jobfile.batch, run_id=self.ctx.run_id)  # fmt: skip
                    info["archived_to"] = str(stored.path)
                    self.result.replaced_sha256, self.result.archived_to = sha, str(stored.path)
                    self.audit("archived", replaced_sha256=sha, archived_to=str(stored.path))
                else:
                    self.result.replaced_sha256 = sha
                    self.audit("overwrite_planned", replaced_sha256=sha)
                self.ctx.journal.set_job(self.ctx.jobfile.batch, self.job.id, self.ctx.run_id, self.job.holder,
                                         jn.IN_PROGRESS, replaced_sha256=self.result.replaced_sha256,
                                         archived_to=self.result.archived_to)  # fmt: skip

    def _archived(self, sha: str) -> bool:
        stored = self.ctx.store.directory / f"{sha}.pem"
        if stored.is_file() and (self.ctx.store.directory / f"{sha}.json").is_file():
            if self.result.replaced_sha256 in (None, sha):
                self.result.replaced_sha256, self.result.archived_to = sha, str(stored)
            return True
        return False

    def verify_pin(self) -> None:
        """Tries as the token's flags prove them (PKCS#11 has no counter), the floor, one C_Login.
        A token that reports nothing is said so; its refusal may mean a blocked PIN (``pins``)."""
        import pkcs11
        from pkcs11 import TokenFlag

        with self.step("verify_pin") as info:
            flags = self.token.token().flags
            typed = self._person_types_pin() or bool(flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH)
            if not typed:
                self._refuse_if_pin_held()
            before = pins.PinFlags.of(flags)
            tries = before.tries_left
            info.update(tries_before=tries, count_low=before.count_low, count_reported=before.any)
            self.result.pin_tries_left = tries
            refused = pins.refusal_before_login(before, self.job.min_pin_retries)
            if refused is not None:
                self.audit("pin_refused_floor", pin_tries_left=tries, outcome="refused")
                raise PinError(refused, tries)
            note = pins.note_before_login(before)
            if note is not None:
                self.result.notes.append(note)
            if flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH:
                pin_value: Any = pkcs11.PROTECTED_AUTH  # the PIN is typed on the reader's pad
            else:
                self._pin = self._obtain_pin(tries)
                pin_value = self._pin.reveal().decode("utf-8")  # python-pkcs11 encodes the text itself
            try:
                self.session = self.token.open_session(user_pin=pin_value)
            except pkcs11.UserAlreadyLoggedIn:
                with p11_errors(msg('opening a session')):
                    self.session = self.token.open_session()
            except (pkcs11.PinIncorrect, pkcs11.PinLocked, pkcs11.PinInvalid, pkcs11.PinLenRange,
                    pkcs11.PinExpired, pkcs11.UserPinNotInitialized) as exc:  # fmt: skip
                after = pins.PinFlags.of(self.token.token().flags)
                message, left = pins.refusal_after_login(type(exc).__name__, after, str(self.token.module.path))
                self.result.pin_tries_left = left
                outcome = ("no_user_pin" if isinstance(exc, pkcs11.UserPinNotInitialized)
                           else "blocked" if left == 0 else "wrong")  # fmt: skip
                self.audit("pin_verify", pin_tries_left=left, outcome=outcome, count_reported=after.any)
                if isinstance(exc, (pkcs11.PinIncorrect, pkcs11.PinLocked)):
                    message += self._hold_pin(left)
                raise PinError(message, left) from None
            except pkcs11.PKCS11Error:
                with p11_errors(msg('logging in')):
                    raise
            self.audit("pin_verify", pin_tries_left=tries, outcome="ok")
            if typed:
                self._lift_pin_hold()

    def _person_types_pin(self) -> bool:
        """The PIN comes from a person at the counter, not from a source that would send the same
        value again in every run (as the PIV loader)."""
        return not self.ctx.unattended and self.job.pin.kind == "prompt" and self.ctx.ask_pin is not None

    def _hold_id(self) -> str:
        return pins.hold_id(self.seen.token_serial, self.seen.token_label)

    def _refuse_if_pin_held(self) -> None:
        """A token that refused a PIN in an earlier run gets none from a file, variable or program
        (the same wrong PIN would cost a try per run, unseen on tokens that report no count)."""
        holds = self.ctx.pin_holds
        hold = holds.get(None, self._hold_id()) if holds is not None else None
        if hold is None:
            return
        self.audit("pin_refused_hold", outcome="refused", held_since=hold.since, held_by_run=hold.run_id,
                   held_by_job=hold.job_id, pin_tries_left=hold.tries_left)  # fmt: skip
        raise PinHeldError(
            msg("the token {token_label!r} (serial {token_serial}) refused a PIN on {since} (job {job_id}, run {run_id}) and is on PIN hold; no PIN was sent to it. Check the PIN this job gives (with the holder if need be) and the token's PIN state, then run 'provision card clear-pin-hold {hold_id} --reason TEXT' and run again, or load it at the counter", token_label=self.seen.token_label, token_serial=self.seen.token_serial, since=hold.since, job_id=hold.job_id, run_id=hold.run_id, hold_id=self._hold_id()),
            hold.tries_left,
        )  # fmt: skip

    def _hold_pin(self, tries_left: int | None) -> str:
        """Put the token on PIN hold after a refusal; the sentence that says so (empty: no journal)."""
        holds = self.ctx.pin_holds
        if holds is None:
            return ""
        holds.hold(None, self._hold_id(), tries_left=tries_left, run_id=self.ctx.run_id,
                   batch=self.ctx.jobfile.batch, job_id=self.job.id)  # fmt: skip
        self.audit("pin_hold_set", outcome="held", pin_tries_left=tries_left, pin_hold=self._hold_id())
        return (f". The token is now on PIN hold: no run sends it a PIN from a file, variable or program until "
                f"'provision card clear-pin-hold {self._hold_id()} --reason TEXT'")  # fmt: skip

    def _lift_pin_hold(self) -> None:
        holds = self.ctx.pin_holds
        lifted = holds.clear(None, self._hold_id()) if holds is not None else None
        if lifted is not None:
            self.audit("pin_hold_cleared", outcome="cleared", by="counter", held_since=lifted.since,
                       held_by_run=lifted.run_id)  # fmt: skip

    def _obtain_pin(self, tries: int | None) -> Secret:
        if self.job.pin.kind == "prompt" and self.ctx.ask_pin is not None:
            return self.ctx.ask_pin(self.job.holder, tries)
        return obtain(self.job.pin, unattended=self.ctx.unattended)

    def inventory(self) -> Found:
        with self.step("inventory") as info:
            found = self._read(self.session, logged_in=True)
            cert_on, pub_on, key_on = found.ours(self.der, self.cka_id)
            info.update(cert_on_token=cert_on, public_key_on_token=pub_on, key_on_token=key_on,
                        replaced=len(found.replaced(self.der, self.cka_id)))  # fmt: skip
            return found

    def find_under_other_label(self) -> tuple[list[Any], Any, str] | None:
        """This certificate already on the token under another label (written by another tool or the
        PIV backend), with a private key of its CKA_ID: (its objects, the key, the label)."""
        from pkcs11 import Attribute, ObjectClass

        with p11_errors(msg('looking for the certificate under other labels')):
            self.token.calls += 1
            certificates = list(self.session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.VALUE: self.der}))
            for cert in certificates:  # one search at a time: a session has one active C_FindObjects
                cka_id = bytes(cert[Attribute.ID])
                keys = list(self.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: cka_id}))
                if len(keys) == 1:
                    pubs = list(self.session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: cka_id}))
                    return [cert, keys[0], *pubs], keys[0], str(cert[Attribute.LABEL])
        return None

    def adopt(self, found: list[Any], key: Any, label: str) -> LoadResult:
        """Name the objects that are already there with the slot name (C_SetAttributeValue); where the
        module keeps its own labels (OpenSC's PIV driver), leave them and say so. No second copy of
        the key is made either way; the test signature proves the key is the certificate's."""
        import pkcs11
        from pkcs11 import Attribute

        with self.step("relabel_existing_objects", label_before=label) as info:
            try:
                with p11_errors(msg('renaming the objects')):
                    for obj in found:
                        self.token.calls += 1
                        try:
                            obj[Attribute.LABEL] = self.label
                        except (pkcs11.FunctionNotSupported, pkcs11.AttributeReadOnly, pkcs11.TokenWriteProtected,
                                pkcs11.SessionReadOnly):  # fmt: skip
                            if obj is found[0]:
                                raise _LabelsFixed() from None
                            raise
                relabeled = True
            except _LabelsFixed:
                relabeled = False
            info["relabeled"] = relabeled
        with self.step("verify_load") as info:
            mechanism = self._test_signature(key)
            info.update(test_signature="verified", test_signature_mechanism=mechanism)
            self.result.notes.append(msg("test signature verified with {mechanism}", mechanism=mechanism))
            self.audit("verified", outcome="ok", mechanism=mechanism, label_on_token=self.label if relabeled else label)
        self.result.slot_name_on_card = relabeled
        if relabeled:
            self.audit("slot_name_written", stored=True)
            self.commit()
        else:
            self.result.status = jn.SKIPPED
            self.result.notes.append(msg("the certificate and its key are on the token under the labels the module gives "
                                         "them ({label!r}); the module does not let provision change labels, so the "
                                         "slot name is kept by provision only", label=label))  # fmt: skip
            self.audit("skipped", reason="the token already holds this certificate and its key under another label")
        self.exports()
        return self.result

    def skip(self) -> LoadResult:
        """Already on the token: ``skipped`` only once the test signature verified (a load whose
        check could not be made stays failed however often it runs)."""
        self.verify_load()
        if self._earlier_attempt_unfinished():  # written by an attempt that did not verify: now done
            self.commit()
            self.exports()
            return self.result
        self.result.status = jn.SKIPPED
        self.audit("skipped", outcome="verified",
                   reason="the token already holds this certificate and its key (test signature) under this label")  # fmt: skip
        self.exports()
        return self.result

    def _earlier_attempt_unfinished(self) -> bool:
        """An earlier attempt of this job (this journal) began a write to the token and no commit
        ended after it (its test signature failed or could not be made)."""
        unfinished = False
        for _, action, phase, _, _ in self.ctx.journal.steps(self.ctx.jobfile.batch, self.job.id):
            if phase == "begin" and (action in _TOKEN_WRITES or action.startswith("delete_replaced_")):
                unfinished = True
            elif action == "commit" and phase == "end":
                unfinished = False
        return unfinished

    def log_in_as_so(self) -> None:
        """For a module that creates objects only for the Security Officer (the job's ``so_pin``;
        ykcs11: the PIV management key): the user's session ends and an SO session writes. One
        C_Login with the SO PIN; a refusal ends the job with nothing written, never retried."""
        if self.so_pin_source is None:
            return
        import pkcs11

        so_pin = obtain(self.so_pin_source, unattended=self.ctx.unattended)
        try:
            with self.step("so_login") as info:
                with p11_errors(msg("ending the user's session")):
                    self.token.calls += 1
                    self.session.close()
                try:
                    self.session = self.token.open_session(so_pin=so_pin.reveal().decode("utf-8"))
                except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange, pkcs11.PinLocked) as exc:
                    ckr = pins.ckr_name(type(exc).__name__)
                    self.audit("so_login", outcome="refused", error=ckr)
                    raise ManagementKeyError(msg("the token refused the SO PIN ({ckr}); nothing was written and it was not tried again. Check the job's so_pin (through ykcs11 it is the card's PIV management key in hex; ykcs11 before 2.3 knows only 3DES management keys, and a YubiKey 5.7 or later comes with an AES-192 one)", ckr=ckr)) from None  # fmt: skip
                except pkcs11.PKCS11Error:
                    with p11_errors(msg('logging in as the Security Officer')):
                        raise
                info["logged_in"] = "so"
                self.audit("so_login", outcome="ok")
        finally:
            so_pin.wipe()

    def log_in_as_user_again(self) -> None:
        """After the SO's writes, the test signature is the user's: the SO session ends and the PIN
        this job already had accepted logs the user in again."""
        if self.so_pin_source is None:
            return
        import pkcs11

        with p11_errors(msg('logging in again after the writes')):
            self.token.calls += 2
            self.session.close()
            pin = self._pin.reveal().decode("utf-8") if self._pin is not None else pkcs11.PROTECTED_AUTH
            self.session = self.token.open_session(user_pin=pin)

    def _create(self, what: Msg, template: dict[Any, Any]) -> Any:
        with p11_errors(what):
            self.token.calls += 1
            return self.session.create_object(template)

    def _keep_only_a_protected_key(self, key: Any) -> None:
        """A key made from the minimal template (no CKA_PRIVATE, no CKA_EXTRACTABLE) has the module's
        defaults for them. It must still be private, sensitive and not extractable: a module that
        says otherwise gets the key destroyed again and the job fails, rather than a key that can
        leave the token. An attribute the module does not report is its own rule (a card's key
        never leaves the card)."""
        import pkcs11
        from pkcs11 import Attribute

        wanted = {Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
        wrong = []
        for attribute, value in wanted.items():
            try:
                self.token.calls += 1
                if bool(key[attribute]) != value:
                    wrong.append(f"CKA_{attribute.name}={'TRUE' if not value else 'FALSE'}")
            except pkcs11.PKCS11Error:
                continue
        if not wrong:
            return
        try:
            self.token.calls += 1
            key.destroy()
            removed = True
        except pkcs11.PKCS11Error:
            removed = False
        if removed:
            raise CardError(msg("the token made the private key with {attributes} when given only the attributes it "
                                "accepts, so it was destroyed again: a key that can leave the token is not loaded",
                                attributes=", ".join(wrong)))  # fmt: skip
        raise CardError(msg("the token made the private key with {attributes} when given only the attributes it "
                            "accepts, and refused to destroy it: remove the key labelled {label!r} with the token's "
                            "own tool", attributes=", ".join(wrong), label=self.label))  # fmt: skip

    def import_key(self, on_token: bool) -> None:
        if on_token:
            self.result.notes.append(msg("the key was already on the token"))
            return
        import pkcs11

        with self.step("import_key", algorithm=self.ctx.bundle.algorithm.name) as info:
            subject = self.certificate.subject.public_bytes()
            template = objects.private_key_template(self.ctx.bundle.key, self.label, self.cka_id, subject)
            try:
                self.token.calls += 1
                self.session.create_object(template)
                info["template"] = "full"
            except pkcs11.AttributeTypeInvalid:
                # Some modules take only the attributes they need (ykcs11: the CRT parts or the EC
                # scalar, no usage flags); an attribute it does not know means nothing was created.
                minimal = objects.private_key_template(self.ctx.bundle.key, self.label, self.cka_id, subject, minimal=True)
                key = self._create(msg("creating the private key"), minimal)
                info["template"] = "minimal"
                self._keep_only_a_protected_key(key)
            except pkcs11.PKCS11Error:
                with p11_errors(msg("creating the private key")):
                    raise
            self.audit("key_imported", algorithm=self.ctx.bundle.algorithm.name, cka_id=self.cka_id.hex())

    def write_public_key(self, on_token: bool) -> None:
        if on_token:
            return
        import pkcs11

        with self.step("write_public_key") as info:
            subject = self.certificate.subject.public_bytes()
            template = objects.public_key_template(self.certificate.public_key(), self.label, self.cka_id, subject)
            try:
                self.token.calls += 1
                self.session.create_object(template)
                info["stored"] = True
            except (pkcs11.FunctionNotSupported, pkcs11.TemplateInconsistent, pkcs11.AttributeValueInvalid,
                    pkcs11.TemplateIncomplete) as exc:  # fmt: skip
                # Some tokens derive the public key object themselves; the certificate carries it anyway.
                info["stored"] = False
                self.result.notes.append(msg("no separate public key object ({name})", name=type(exc).__name__))

    def write_certificate(self, on_token: bool) -> None:
        if on_token:
            return
        with self.step("write_certificate"):
            self._create(msg("creating the certificate"), objects.certificate_template(self.certificate, self.label, self.cka_id))
            self.audit("certificate_written", replaced_sha256=self.result.replaced_sha256)

    def delete_replaced(self, found: Found) -> None:
        for kind, obj, der in found.replaced(self.der, self.cka_id):
            if found.fixed_place:
                continue  # the same place was written over: deleting it would delete the new object
            detail: dict[str, Any] = {"sha256": hashlib.sha256(der).hexdigest()} if der else {}
            with self.step(f"delete_replaced_{kind}", **detail):
                with p11_errors(msg('deleting a replaced object ({kind})', kind=kind)):
                    self.token.calls += 1
                    obj.destroy()
                self.audit("replaced_object_deleted", kind=kind, **detail)

    def verify_load(self) -> None:
        from pkcs11 import Attribute

        with self.step("verify_load") as info:
            found = self._read(self.session, logged_in=True)
            cert_on, _, key_on = found.ours(self.der, self.cka_id)
            if not cert_on:
                raise CardError(msg('the certificate read back under {label!r} differs from the one written', label=self.label))
            if not key_on:
                raise CardError(msg('no private key labelled {label!r} with CKA_ID {cka_id} on the token', label=self.label, cka_id=self.cka_id.hex()))
            left = found.replaced(self.der, self.cka_id)
            if left:
                raise CardError(msg('{n} replaced object(s) are still labelled {label!r}', n=len(left), label=self.label))
            key = next(o for o, i in found.private_keys if i == self.cka_id)
            mechanism = self._test_signature(key)
            info.update(test_signature="verified", test_signature_mechanism=mechanism, cka_id=self.cka_id.hex())
            label = _attribute(key, Attribute.LABEL)
            self.result.slot_name_on_card = label is None or str(label) == self.label
            self.result.notes.append(msg("test signature verified with {mechanism}", mechanism=mechanism))
            if not self.result.slot_name_on_card:
                self.result.notes.append(msg("the module keeps its own labels ({label!r}), so the slot name is kept by provision only", label=str(label)))
            self.audit("verified", outcome="ok", mechanism=mechanism)

    def _test_signature(self, key: Any) -> str:
        """Sign ``TEST_MESSAGE`` with ``key`` on the token and verify it against the certificate
        (``mechanisms.check_key``). Returns the mechanism's name."""
        import pkcs11

        always = bool(_attribute(key, pkcs11.Attribute.ALWAYS_AUTHENTICATE))
        pin = self._pin.reveal().decode("utf-8") if self._pin is not None and always else None
        self.token.calls += 2
        return mechanisms.check_key(self.token.token().slot, key, self.certificate.public_key(), TEST_MESSAGE,
                                    label=self.label, pin=pin)  # fmt: skip

    def commit(self) -> None:
        with self.step("commit"):
            self.result.status = jn.LOADED
            self.ctx.journal.set_job(
                self.ctx.jobfile.batch, self.job.id, self.ctx.run_id, self.job.holder, jn.LOADED,
                card_serial=None, slot=self.job.slot.hex, slot_name=self.label, fingerprint_sha256=self.sha256,
                replaced_sha256=self.result.replaced_sha256, archived_to=self.result.archived_to,
                pin_tries_left=self.result.pin_tries_left, not_after=self.result.not_after,
            )  # fmt: skip
            self.audit("committed", replaced_sha256=self.result.replaced_sha256, archived_to=self.result.archived_to,
                       resumed=self.result.resumed, not_after=self.result.not_after)  # fmt: skip

    def exports(self) -> None:
        export_certificate(self.ctx, card_serial=None, audit=self.audit)

class _LabelsFixed(Exception):
    """The module does not let labels change (a read-only PIV driver)."""


def _attribute(obj: Any, attribute: Any) -> Any:
    import pkcs11

    try:
        return obj[attribute]
    except pkcs11.PKCS11Error:
        return None
