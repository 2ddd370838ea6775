"""The planner: job + bundle (+ card state) → the steps of a load, and the problems that would stop it.

``provision plan`` prints these steps; ``provision run`` executes the same list, so what an operator
reviewed is what happens. Pure apart from opening the job's PKCS#12 file in ``plan_jobfile``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provision import template as templates
from provision.errors import BundleError, ProvisionError, TemplateError, UsageError
from provision.fields import export_path, template_values
from provision.i18n import gettext as _
from provision.i18n import localize, msg
from provision.piv.profiles import COMPRESS_ABOVE_BYTES, MAX_OBJECT_CONTENT_BYTES

if TYPE_CHECKING:
    from provision.bundle import Bundle, CertInfo, Inspection
    from provision.cardinfo import CardInfo
    from provision.jobfile import Expect, Job, JobFile
    from provision.plancards import CardsSeen, PresentCard
    from provision.secrets import Secret
    from provision.steps import CardState, StepSpec


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(msg("'{name}' is not an IANA time zone; use a name like Asia/Hong_Kong or UTC", name=name)) from None


def certificate_lines(info: CertInfo, tz: ZoneInfo) -> list[str]:
    """What the operator checks before loading (step 8 of the counter workflow)."""

    def when(moment: datetime) -> str:
        local = moment.astimezone(tz)
        return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"

    from provision.display import labelled

    key = f"{info.key_type} {info.curve or info.key_bits}"
    pairs = [
        (_("subject"), info.subject),
        (_("issuer"), info.issuer),
        (_("serial"), str(info.serial)),
        (_("valid"), _("{start} to {end}").format(start=when(info.not_before), end=when(info.not_after))),
        (_("key"), key),
        ("SHA-256", info.sha256),
    ]
    if info.friendly_name:
        pairs.append((_("friendly name"), info.friendly_name))
    return labelled(pairs)


@dataclass(frozen=True)
class Step:
    action: str  # the name load.py executes
    description: str  # what an operator reads
    applies: bool | None = None  # with the card read: whether this card needs the step; None: not known

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "description": self.description, "applies": self.applies}


@dataclass(frozen=True)
class ExpectResult:
    check: str
    expected: str
    actual: str
    ok: bool

    def to_json(self) -> dict[str, object]:
        return {"check": self.check, "expected": self.expected, "actual": self.actual, "ok": self.ok}


def check_expectations(expect: Expect, info: CertInfo) -> list[ExpectResult]:
    results: list[ExpectResult] = []
    if expect.subject_cn is not None:
        actual = info.subject_cn or ""
        results.append(ExpectResult("subject_cn", expect.subject_cn, actual, actual == expect.subject_cn))
    if expect.issuer_cn is not None:
        actual = info.issuer_cn or ""
        results.append(ExpectResult("issuer_cn", expect.issuer_cn, actual, actual == expect.issuer_cn))
    if expect.serial is not None:
        actual = info.serial.lower().lstrip("0") or "0"
        results.append(ExpectResult("serial", expect.serial, info.serial, actual == expect.serial))
    if expect.fingerprint_sha256 is not None:
        results.append(ExpectResult("fingerprint_sha256", expect.fingerprint_sha256, info.sha256,
                                    info.sha256 == expect.fingerprint_sha256))  # fmt: skip
    if expect.not_after_after is not None:
        actual_date = info.not_after.date()
        results.append(ExpectResult("not_after_after", expect.not_after_after.isoformat(),
                                    info.not_after.isoformat(), actual_date > expect.not_after_after))  # fmt: skip
    return results


def load_steps(job: Job, slot_name: str, piv_algorithm: str | None, exports: dict[str, Path]) -> list[Step]:
    """The checklist of one load, in order: the job's backend's declared steps (provision.steps) with
    the job's specifics. ``run`` journals exactly these actions."""
    from provision.steps import checklist, in_plan, step_words

    words = step_words(job, slot_name, piv_algorithm, {kind: str(path) for kind, path in exports.items()})
    return [Step(spec.action_for(job), spec.words.format(**words)) for spec in checklist(job) if in_plan(spec, job)]


@dataclass(frozen=True)
class JobPlan:
    job: Job
    slot_name: str
    bundle_status: str
    bundle_message: str
    info: CertInfo | None
    piv_algorithm: str | None
    expectations: tuple[ExpectResult, ...]
    problems: tuple[str, ...]
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = field(default=())
    card_seen: CardView | None = None  # the job's card as read now; None: not present or not read
    public_key_sha256: str | None = None  # SHA-256 of the certificate's SubjectPublicKeyInfo
    fails_before_card: bool = False  # run fails the job when it opens its PKCS#12, before any card
    differences: tuple[str, ...] = ()  # between the card and the job, in words

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "holder": self.job.holder,
            "card": self.job.card.to_json(),
            "slot": self.job.slot.hex,
            "slot_name": self.slot_name,
            "fingerprint_sha256": self.info.sha256 if self.info else None,
            "bundle_status": self.bundle_status,
            "certificate": self.info.to_json() if self.info else None,
            "piv_algorithm": self.piv_algorithm,
            "expect": [e.to_json() for e in self.expectations],
            "problems": list(self.problems),
            "notes": list(self.notes),
            "steps": [s.to_json() for s in self.steps],
            "card_seen": self.card_seen.to_json() if self.card_seen is not None else None,
            "differences": list(self.differences),
        }


@dataclass(frozen=True)
class Plan:
    jobfile: JobFile
    jobs: tuple[JobPlan, ...]
    cards_read: bool = False  # cards were looked for
    cards_unavailable: str | None = None  # why none was read (no PC/SC service, no reader, no card)
    strangers: tuple[str, ...] = ()  # cards present that no job wants, in words
    for_any: tuple[str, ...] = ()  # a person runs the batch: cards a job for any card takes if presented
    presented: bool = False  # a person runs the batch: a job for any card takes the card presented

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.jobfile.path),
            "batch": self.jobfile.batch,
            "timezone": self.jobfile.timezone,
            "jobs": [dict(j.to_json(), card_choice=_card_choice(j.job, self.presented)) for j in self.jobs],
            "cards": {"read": self.cards_read, "unavailable": self.cards_unavailable,
                      "without_job": list(self.strangers), "for_any_if_presented": list(self.for_any)},  # fmt: skip
        }


def _card_choice(job: Job, presented: bool) -> str:
    """How a run finds this job's card: ``named`` (serial, GUID, token), ``rule`` (an ``any: true``
    job, unattended: ``cardpick``), ``presented`` (an ``any: true`` job, a person chooses the card)."""
    if not job.card.any or job.card.pkcs11 is not None:
        return "named"
    return "presented" if presented else "rule"


@dataclass(frozen=True)
class CardView:
    """One job's card as ``plan`` read it, and what its slot holds against the job's target."""

    reader: str
    info: CardInfo
    key_ref: int  # the job's slot
    slot_action: str  # empty | target | archive | overwrite | refuse
    state: CardState

    def to_json(self) -> dict[str, Any]:
        slot = self.info.slot(self.key_ref)
        return {
            "reader": self.reader,
            "serial": self.info.serial,
            "chuid_guid": self.info.chuid_guid,
            "version": ".".join(map(str, self.info.version)) if self.info.version else None,
            "pin_tries_left": self.info.pin_tries_left,
            "management_key_is_default": self.info.management_key_is_default,
            "slot": {"certificate": slot.certificate.to_json() if slot.certificate else None,
                     "slot_name": slot.slot_name, "key_matches_certificate": slot.key_matches_certificate},
            "slot_action": self.slot_action,
        }  # fmt: skip


def card_state(job: Job, info: CardInfo, target_sha256: str | None, slot_name: str,
               target_key_sha256: str | None = None) -> CardState:  # fmt: skip
    """What the steps care about, from a card read without changing it."""
    from provision.steps import CardState

    slot = info.slot(job.slot.key_ref)
    current = slot.certificate.sha256 if slot.certificate is not None else None
    cert_on = current is not None and current == target_sha256
    return CardState(replaced=current is not None and not cert_on, cert_on_card=cert_on,
                     key_on_card=(slot.public_key_sha256 is not None and slot.public_key_sha256 == target_key_sha256)
                     or (cert_on and slot.key_matches_certificate is True),
                     name_on_card=slot.slot_name == slot_name,
                     key_history_counted=not job.slot.is_retired)  # fmt: skip


def with_card(jp: JobPlan, present: PresentCard | None, why_absent: str) -> JobPlan:
    """``jp`` against the card read for it (or the reason there is none): the steps it needs and the
    differences, in words; a card that would make the load fail adds a problem."""
    from provision.steps import applies

    job = jp.job
    if present is None or present.info is None:
        return replace(jp, differences=(present.error if present is not None and present.error else why_absent,))
    info = present.info
    target = jp.info.sha256 if jp.info is not None else None
    state = card_state(job, info, target, jp.slot_name, jp.public_key_sha256)
    slot = info.slot(job.slot.key_ref)
    here = f"slot {job.slot.hex}"
    differences: list[str] = []
    problems = list(jp.problems)
    if slot.certificate is None:
        action = "empty"
        differences.append(msg('{here} is empty', here=here))
    elif state.cert_on_card:
        action = "target"
        differences.append(f"{here} already holds this certificate" +
                           ("" if state.key_on_card else "; its key is not proven to be there"))  # fmt: skip
    else:
        action = job.replace
        cert = slot.certificate
        what = {"archive": msg("would be archived (On Disk) and replaced"), "overwrite": msg("would be overwritten"),
                "refuse": msg("stays: the job says replace: refuse, so the job would be refused")}[job.replace]  # fmt: skip
        differences.append(msg('{here} holds {value} (SHA-256 {value2}…, until {not_after:%Y-%m-%d}); it {what}', here=here, value=cert.subject_cn or cert.subject, value2=cert.sha256[:16], not_after=cert.not_after, what=what))  # fmt: skip
        if job.replace == "refuse":
            problems.append(msg('{here} holds another certificate and the job says replace: refuse', here=here))
    if slot.slot_name is not None and slot.slot_name != jp.slot_name:
        differences.append(msg('{here} is named {slot_name!r}, the job names it {slot_name2!r}', here=here, slot_name=slot.slot_name, slot_name2=jp.slot_name))
    tries = info.pin_tries_left
    if tries is None:
        differences.append(msg('PIN tries left: not known'))
    elif tries < job.min_pin_retries:
        differences.append(msg('PIN tries left: {tries}, below the floor min_pin_retries {min_pin_retries}', tries=tries, min_pin_retries=job.min_pin_retries))
        problems.append(msg('the card has {tries} PIN tries left, fewer than min_pin_retries ({min_pin_retries})', tries=tries, min_pin_retries=job.min_pin_retries))
    else:
        differences.append(msg('PIN tries left: {tries} (floor {min_pin_retries})', tries=tries, min_pin_retries=job.min_pin_retries))
    if info.management_key_is_default:
        differences.append(msg("the card's management key is the factory default"))
    if job.management_key is not None and info.management_key_is_default:
        differences.append(msg('the job gives a management key, but the card still has the factory default'))
    steps = tuple(replace(s, applies=applies(spec, job, state) if spec.journaled else True)
                  for s, spec in zip(jp.steps, _planned_specs(job), strict=True))  # fmt: skip
    view = CardView(present.reader, info, job.slot.key_ref, action, state)
    return replace(jp, card_seen=view, differences=tuple(differences), problems=tuple(problems), steps=steps)


def _planned_specs(job: Job) -> list[StepSpec]:
    from provision.steps import checklist, in_plan

    return [spec for spec in checklist(job) if in_plan(spec, job)]


def match_cards(plan: Plan, seen: CardsSeen, *, presented: bool = False) -> Plan:
    """Each PIV job's card among those read, as ``run`` matches them: by serial or CHUID GUID (two
    cards that both answer to a job: the run refuses both, and so the job has no card here), then the
    ``any: true`` jobs by the rule ``run --unattended`` follows (``cardpick.pick_cards``: lowest
    serial first). ``presented``: a person runs the batch (counter, terminal), and an ``any: true``
    job takes whichever card is presented when its holder is called, which no plan can know: the
    plan says so and names no card. Also: cards no job wants, and jobs whose card is absent."""
    from provision.backend import CardSeen
    from provision.cardpick import pick_cards

    cards = list(seen.cards)
    readable = {c.reader: CardSeen(serial=c.info.serial, guid=c.info.chuid_guid) for c in cards if c.info is not None}
    taken: dict[str, PresentCard] = {}
    twins: dict[str, list[PresentCard]] = {}
    ended: list[tuple[PresentCard, JobPlan]] = []  # cards whose job fails before any card: refused
    for jp in plan.jobs:
        ident = jp.job.card
        if ident.pkcs11 is not None or ident.any:
            continue
        named = [c for c in cards if c.reader in readable and readable[c.reader].claims(ident)]
        if len(named) > 1:
            twins[jp.job.id] = named
        elif named and jp.fails_before_card:
            ended.append((named[0], jp))
        elif named:
            taken[jp.job.id] = named[0]
        for card in named:
            cards.remove(card)
    any_jobs = [jp for jp in plan.jobs if jp.job.card.any and jp.job.card.pkcs11 is None and not jp.fails_before_card]
    for_any = [c for c in cards if c.reader in readable] if any_jobs else []
    if not presented:
        picks = pick_cards(any_jobs, [(c.reader, readable[c.reader].serial, readable[c.reader].guid) for c in for_any])
        by_reader = {c.reader: c for c in for_any}
        for reader, jp in picks.items():
            taken[jp.job.id] = by_reader[reader]
            cards.remove(by_reader[reader])
        for_any = []
    else:
        cards = [c for c in cards if c not in for_any]
    jobs = []
    for jp in plan.jobs:
        job = jp.job
        if job.card.pkcs11 is not None:
            jobs.append(replace(jp, differences=("PKCS#11 tokens are not read by plan",)))
            continue
        if seen.unavailable:  # said once for the whole plan
            jobs.append(jp)
            continue
        if jp.fails_before_card:
            jobs.append(with_card(jp, None, msg("the job fails before any card is used (its problems say why): no card "
                                                "is written for it")))  # fmt: skip
            continue
        if job.id in twins:
            why = msg("{n} cards in view answer to this job ({who}): run refuses every one of them and writes none; "
                      "leave only the holder's card in", n=len(twins[job.id]), who=job.card.describe())  # fmt: skip
            jobs.append(replace(with_card(jp, None, why), problems=(*jp.problems, why)))
            continue
        if job.card.any and presented:
            why = msg("the card presented when {holder} is called: a person chooses it, so plan names none "
                      "('plan --unattended' names the card an unattended run takes)", holder=job.holder)  # fmt: skip
            jobs.append(with_card(jp, None, why))
            continue
        jobs.append(with_card(jp, taken.get(job.id), f"{job.card.describe()} is not in any reader"))
    rest = "the open jobs for any card go to other cards in view" if any_jobs else ""
    strangers = tuple(
        f"{c.reader}: " + (f"card serial {c.info.serial}" if c.info is not None else (c.error or "unreadable card"))
        + " — " + (rest if rest and c.info is not None else "no job of this file wants it")
        for c in cards
    )  # fmt: skip
    strangers += tuple(f"{c.reader}: card serial {c.info.serial} — its job {jp.job.id} fails before any card is used"
                       for c, jp in ended if c.info is not None)  # fmt: skip
    presentable = tuple(f"{c.reader}: card serial {c.info.serial}" for c in for_any if c.info is not None)
    return replace(plan, jobs=tuple(jobs), cards_read=True, cards_unavailable=seen.unavailable, strangers=strangers,
                   for_any=presentable, presented=presented)  # fmt: skip


def plan_job(jobfile: JobFile, job: Job, inspection: Inspection | None, bundle_message: str,
             *, now: datetime | None = None) -> JobPlan:  # fmt: skip
    """Pure: what a run would do for ``job`` given what opening its PKCS#12 gave."""
    tz = jobfile.tz
    problems: list[str] = []
    notes: list[str] = []
    info = inspection.info if inspection else None
    status = inspection.status if inspection else "wrong-password"
    if inspection is None:
        problems.append(bundle_message)
    elif status != "ok":
        problems.append(inspection.message)
    values = template_values(tz, cert=info, job=job, batch=jobfile.batch, now=now)
    slot_name_failed = False
    try:
        slot_name = job.slot_name.render(values)
    except TemplateError as exc:
        slot_name, slot_name_failed = job.slot_name.text, True
        problems.append(msg('slot_name: {message}', message=exc.message))
    else:
        why = templates.check_slot_name(slot_name) if info is not None else None
        if why:
            problems.append(msg('{why}; change slot_name', why=why))
    expectations = tuple(check_expectations(job.expect, info)) if info else ()
    for result in expectations:
        if not result.ok:
            problems.append(msg('expect.{check}: expected {expected!r}, the certificate has {actual!r}', check=result.check, expected=result.expected, actual=result.actual))
    if job.management_key is None:
        notes.append(msg("uses the card's factory default management key") if job.management_key_rotate is None
                     else msg("uses the card's factory default management key, then changes it (management_key_rotate)"))
    if job.pkcs12_password.kind == "empty":
        notes.append(msg('the PKCS#12 file is opened without a password (password: {{empty: true}})'))
    if job.pin.kind == "value" or job.pkcs12_password.kind == "value":
        notes.append(msg('a secret is written in the job file'))
    if job.renew is not None:
        notes.append(msg('renew: loads only if the slot is empty or its certificate expires within {when_expires_within}, and only a newer certificate', when_expires_within=job.renew.when_expires_within))  # fmt: skip
    exports: dict[str, Path] = {}
    for kind, tmpl in (("pem", job.export.pem), ("nssdb", job.export.nssdb)):
        if tmpl is not None:
            try:
                exports[kind] = export_path(jobfile.path.parent, tmpl, values)
            except TemplateError as exc:
                problems.append(msg('export.{kind}: {message}', kind=kind, message=exc.message))
    steps = tuple(load_steps(job, slot_name, inspection.piv_algorithm if inspection else None, exports))
    # What makes run fail the job as it opens the PKCS#12 (runner.accept_bundle), before any card:
    # then no card is taken for it, and a card that it names is refused.
    fails = info is None or status != "ok" or slot_name_failed or any(not e.ok for e in expectations)
    return JobPlan(job, slot_name, status, bundle_message, info, inspection.piv_algorithm if inspection else None,
                   expectations, tuple(problems), steps, tuple(notes), fails_before_card=fails)  # fmt: skip


@dataclass(frozen=True)
class OpenedBundle:
    """What opening a job's PKCS#12 gave (``open_bundle``): the inspection (None when the file or
    its password could not even be had), the bundle when the job can use it, else why not."""

    inspection: Inspection | None
    bundle: Bundle | None  # decrypted, and its certificate meets the job's ``expect``
    problem: BundleError | None
    public_key_sha256: str | None = None  # of the decrypted certificate's key: to find it on a card

    @property
    def message(self) -> str:
        """The bundle's own sentence (a ``plan`` line): the inspection's, or why there is none."""
        if self.inspection is not None:
            return self.inspection.message
        return self.problem.message if self.problem is not None else ""


def open_bundle(job: Job, *, unattended: bool, password: Secret | None = None) -> OpenedBundle:
    """Read the job's PKCS#12, obtain its password (or take the one a person typed) and decrypt it:
    one decryption per job, for ``plan`` and ``run`` alike. The file first, bounded: nothing is asked
    for a file that cannot be used. The password is wiped when it has been used."""
    from provision.bundle import inspect_pkcs12, read_pkcs12
    from provision.secrets import obtain

    try:
        try:
            data = read_pkcs12(job.pkcs12_path)
        except OSError as exc:
            return OpenedBundle(None, None, _caused(
                BundleError(None, msg("{pkcs12_path} cannot be read ({strerror})", pkcs12_path=job.pkcs12_path,
                                   strerror=exc.strerror)), exc))  # fmt: skip
        except ProvisionError as exc:  # larger than its bound
            return OpenedBundle(None, None, _caused(BundleError(None, exc.message), exc))
        if password is None:
            try:
                password = obtain(job.pkcs12_password, unattended=unattended)
            except ProvisionError as exc:
                problem = BundleError(None, msg("the PKCS#12 password could not be obtained: {message}", message=exc.message))
                return OpenedBundle(None, None, _caused(problem, exc))
        inspection, bundle = inspect_pkcs12(data, password)
    finally:
        if password is not None:
            password.wipe()
    if bundle is None or inspection.info is None:
        return OpenedBundle(inspection, None, BundleError(inspection.status, inspection.message))
    spki = bundle.certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key_sha256 = hashlib.sha256(spki).hexdigest()
    failed = [e for e in check_expectations(job.expect, inspection.info) if not e.ok]
    if failed:
        e = failed[0]
        problem = BundleError(None, msg("expect.{check}: expected {expected!r}, the certificate has {actual!r}",
                                        check=e.check, expected=e.expected, actual=e.actual))  # fmt: skip
        return OpenedBundle(inspection, None, problem, key_sha256)
    if job.card.pkcs11 is None:
        size = _piv_certificate_object_size(bundle.certificate.public_bytes(Encoding.DER))
        if size > MAX_OBJECT_CONTENT_BYTES:
            # Found out at the card, this is too late: the key is in, the old certificate out.
            problem = BundleError(None, msg("the certificate takes {size} bytes on a card even gzip-compressed, more "
                                            "than a PIV card's data object holds ({limit}); it cannot be loaded. Ask "
                                            "the issuer for a smaller certificate", size=size,
                                            limit=MAX_OBJECT_CONTENT_BYTES))  # fmt: skip
            return OpenedBundle(inspection, None, problem, key_sha256)
    return OpenedBundle(inspection, bundle, None, key_sha256)


def _piv_certificate_object_size(der: bytes) -> int:
    """The certificate object a load writes (inside 53), gzip-compressed where a load compresses it."""
    from provision.piv.session import encode_certificate_object

    return len(encode_certificate_object(der, compress=len(der) > COMPRESS_ABOVE_BYTES))


def _caused(problem: BundleError, cause: BaseException) -> BundleError:
    problem.__cause__ = cause
    return problem


def plan_jobfile(jobfile: JobFile, *, unattended: bool = False, now: datetime | None = None) -> Plan:
    plans = []
    for job in jobfile.jobs:
        opened = open_bundle(job, unattended=unattended)
        jp = replace(plan_job(jobfile, job, opened.inspection, opened.message, now=now),
                     public_key_sha256=opened.public_key_sha256)  # fmt: skip
        if opened.problem is not None and opened.problem.message not in jp.problems:
            # What makes run fail this job before any card (e.g. a certificate no PIV object holds).
            jp = replace(jp, problems=(*jp.problems, opened.problem.message), fails_before_card=True)
        plans.append(jp)
    return Plan(jobfile, tuple(plans))


def print_plan(plan: Plan, say: Callable[[str], None]) -> None:
    jf = plan.jobfile
    say(_("Plan for {path}: batch {batch}, {n} job(s), times in {zone}").format(
        path=jf.path, batch=jf.batch, n=len(plan.jobs), zone=jf.timezone))
    if plan.cards_unavailable:
        say(_("Cards: {why}; the steps below are those of any card").format(why=localize(plan.cards_unavailable)))
    for jp in plan.jobs:
        job = jp.job
        say("")
        mark = _("ready") if not jp.problems else _("WILL FAIL")
        say(_("[{mark}] {id}: {holder} — {card}, slot {slot}, slot name {slot_name!r}").format(
            mark=mark, id=job.id, holder=job.holder, card=localize(job.card.describe()), slot=job.slot.hex, slot_name=jp.slot_name))
        say("  " + _("bundle: {status} — {message}").format(status=jp.bundle_status, message=localize(jp.bundle_message)))
        if jp.info is not None:
            for line in certificate_lines(jp.info, jf.tz):
                say(f"  {line}")
        for result in jp.expectations:
            say("  " + _("expect {check}: {verdict} (expected {expected}, found {actual})").format(
                check=result.check, verdict=_("ok") if result.ok else _("MISMATCH"), expected=result.expected,
                actual=result.actual))  # fmt: skip
        for problem in jp.problems:
            say("  " + _("problem: {problem}").format(problem=localize(problem)))
        for note in jp.notes:
            say("  " + _("note: {note}").format(note=localize(note)))
        if jp.card_seen is not None:
            info = jp.card_seen.info
            say("  " + _("card now: serial {serial} in {reader}").format(serial=info.serial, reader=jp.card_seen.reader))
        for difference in jp.differences:
            say("  " + _("card: {difference}").format(difference=localize(difference)))
        say("  " + _("steps:"))
        for number, step in enumerate(jp.steps, 1):
            needed = (" — " + _("not needed on this card")) if step.applies is False else ""
            say(f"    {number:2}. {localize(step.description)}{needed}")
    for stranger in plan.strangers:
        say("")
        say(_("Card without a job: {card}").format(card=localize(str(stranger))))
    for card in plan.for_any:
        say("")
        say(_("Card for a job for any card, if presented: {card}").format(card=localize(card)))
