"""The planner: job + bundle (+ card state) → the steps of a load, and the problems that would stop it.

``provision plan`` prints these steps; ``provision run`` executes the same list, so what an operator
reviewed is what happens. Pure apart from opening the job's PKCS#12 file in ``plan_jobfile``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from provision import template as templates
from provision.errors import ProvisionError, TemplateError, UsageError

if TYPE_CHECKING:
    from provision.bundle import CertInfo, Inspection
    from provision.jobfile import Expect, Job, JobFile


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"'{name}' is not an IANA time zone; use a name like Asia/Hong_Kong or UTC") from None


def template_values(
    tz: ZoneInfo,
    *,
    cert: CertInfo | None = None,
    job: Job | None = None,
    batch: str | None = None,
    card_serial: int | None = None,
    now: datetime | None = None,
) -> dict[str, object]:
    """The fields of JOBFILE.md's template table; dates in the job file's time zone."""
    now = now or datetime.now(UTC)
    values: dict[str, object] = {"today": now.astimezone(tz).date(), "batch": batch}
    if cert is not None:
        values |= {
            "cert.not_before": cert.not_before.astimezone(tz),
            "cert.not_after": cert.not_after.astimezone(tz),
            "cert.subject_cn": cert.subject_cn or "",
            "cert.issuer_cn": cert.issuer_cn or "",
            "cert.serial": cert.serial,
            "cert.sha256": cert.sha256,
        }
    if job is not None:
        values |= {"job.id": job.id, "holder": job.holder, "slot": job.slot.hex}
        card_serial = card_serial if card_serial is not None else job.card.serial
    values["card.serial"] = card_serial
    return values


def certificate_lines(info: CertInfo, tz: ZoneInfo) -> list[str]:
    """What the operator checks before loading (step 8 of the counter workflow)."""

    def when(moment: datetime) -> str:
        local = moment.astimezone(tz)
        return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"

    key = f"{info.key_type} {info.curve or info.key_bits}"
    lines = [
        f"subject:       {info.subject}",
        f"issuer:        {info.issuer}",
        f"serial:        {info.serial}",
        f"valid:         {when(info.not_before)} to {when(info.not_after)}",
        f"key:           {key}",
        f"SHA-256:       {info.sha256}",
    ]
    if info.friendly_name:
        lines.append(f"friendly name: {info.friendly_name}")
    return lines


@dataclass(frozen=True)
class Step:
    action: str  # the name load.py executes
    description: str  # what an operator reads

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, "description": self.description}


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


def export_path(base_dir: Path, template: templates.Template, values: dict[str, object]) -> Path:
    """Where an export goes: the rendered template, relative to the job file's directory."""
    rendered = Path(template.render(values, for_path=True))
    return rendered if rendered.is_absolute() else base_dir / rendered


def load_steps(job: Job, slot_name: str, piv_algorithm: str | None, exports: dict[str, Path]) -> list[Step]:
    """The checklist of one load, in order. ``run`` executes exactly these actions."""
    slot = f"slot {job.slot.hex} ({job.slot.title})"
    mgmt = "the job's management key" if job.management_key is not None else "the factory default management key"
    replace = {
        "archive": f"if {slot} holds a certificate, save it to the store (On Disk) and fsync before any write",
        "refuse": f"if {slot} holds a certificate, stop: the job says replace: refuse",
        "overwrite": f"if {slot} holds a certificate, record its fingerprint in the audit log",
    }[job.replace]
    steps = [
        Step("wait_for_card", f"wait for {job.card.describe()} of {job.holder}"),
        Step("identify_card", "read the card's serial and CHUID; refuse any card that is not this job's"),
        Step("preflight", f"check the card supports {piv_algorithm or 'the key'}, PIN tries ≥ {job.min_pin_retries}, "
                          f"read {slot}"),  # fmt: skip
        Step(f"{job.replace}_replaced_certificate", replace),
        Step("verify_pin", "show the PIN tries left, then verify the card PIN (never retried automatically)"),
        Step("authenticate_management_key", f"mutual authentication with {mgmt}"),
        Step("import_key", f"import the {piv_algorithm or ''} key into {slot} "
                           f"(PIN policy {job.pin_policy}, touch policy {job.touch_policy})"),  # fmt: skip
        Step("write_certificate", f"write the certificate into {slot}"),
        *([Step("register_retired_slot", "count the slot in the Key History object, so middleware finds it")]
          if job.slot.is_retired else []),  # fmt: skip
        Step("write_slot_name", f"name the slot {slot_name!r}"),
        Step("verify_load", "read the certificate back, compare the slot's public key, make and check a test signature"),
        Step("commit", "record the load as done in the journal and the audit log"),
    ]
    if "pem" in exports:
        steps.append(Step("export_pem", f"write the certificate as PEM to {exports['pem']}"))
    if "nssdb" in exports:
        steps.append(Step("export_nssdb", f"add the certificate to the NSS database {exports['nssdb']}"))
    return steps


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
        }


@dataclass(frozen=True)
class Plan:
    jobfile: JobFile
    jobs: tuple[JobPlan, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.jobfile.path),
            "batch": self.jobfile.batch,
            "timezone": self.jobfile.timezone,
            "jobs": [j.to_json() for j in self.jobs],
        }


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
    try:
        slot_name = job.slot_name.render(values)
    except TemplateError as exc:
        slot_name = job.slot_name.text
        problems.append(f"slot_name: {exc.message}")
    else:
        why = templates.check_slot_name(slot_name) if info is not None else None
        if why:
            problems.append(f"{why}; change slot_name")
    expectations = tuple(check_expectations(job.expect, info)) if info else ()
    for result in expectations:
        if not result.ok:
            problems.append(f"expect.{result.check}: expected {result.expected!r}, the certificate has {result.actual!r}")
    if job.management_key is None:
        notes.append("uses the card's factory default management key")
    if job.pkcs12_password.kind == "empty":
        notes.append("the PKCS#12 file is opened without a password (password: {empty: true})")
    if job.pin.kind == "value" or job.pkcs12_password.kind == "value":
        notes.append("a secret is written in the job file")
    if job.renew is not None:
        notes.append(f"renew: loads only if the slot is empty or its certificate expires within "
                     f"{job.renew.when_expires_within}, and only a newer certificate")  # fmt: skip
    exports: dict[str, Path] = {}
    for kind, tmpl in (("pem", job.export.pem), ("nssdb", job.export.nssdb)):
        if tmpl is not None:
            try:
                exports[kind] = export_path(jobfile.path.parent, tmpl, values)
            except TemplateError as exc:
                problems.append(f"export.{kind}: {exc.message}")
    steps = tuple(load_steps(job, slot_name, inspection.piv_algorithm if inspection else None, exports))
    return JobPlan(job, slot_name, status, bundle_message, info, inspection.piv_algorithm if inspection else None,
                   expectations, tuple(problems), steps, tuple(notes))  # fmt: skip


def open_bundle(job: Job, *, unattended: bool) -> tuple[Inspection | None, str]:
    """Obtain the password and inspect the job's PKCS#12: one decryption per job."""
    from provision.bundle import inspect_pkcs12, read_pkcs12
    from provision.secrets import obtain

    try:  # the file first, bounded: nothing is asked for a file that cannot be used
        data = read_pkcs12(job.pkcs12_path)
    except OSError as exc:
        return None, f"the PKCS#12 file {job.pkcs12_path} cannot be read ({exc.strerror})"
    except ProvisionError as exc:
        return None, exc.message
    try:
        password = obtain(job.pkcs12_password, unattended=unattended)
    except ProvisionError as exc:
        return None, f"the PKCS#12 password could not be obtained: {exc.message}"
    try:
        inspection, _bundle = inspect_pkcs12(data, password)
    finally:
        password.wipe()
    return inspection, inspection.message


def plan_jobfile(jobfile: JobFile, *, unattended: bool = False, now: datetime | None = None) -> Plan:
    plans = []
    for job in jobfile.jobs:
        inspection, message = open_bundle(job, unattended=unattended)
        plans.append(plan_job(jobfile, job, inspection, message, now=now))
    return Plan(jobfile, tuple(plans))


def print_plan(plan: Plan, say: Callable[[str], None]) -> None:
    jf = plan.jobfile
    say(f"Plan for {jf.path}: batch {jf.batch}, {len(plan.jobs)} job(s), times in {jf.timezone}")
    for jp in plan.jobs:
        job = jp.job
        say("")
        mark = "ready" if not jp.problems else "WILL FAIL"
        say(f"[{mark}] {job.id}: {job.holder} — {job.card.describe()}, slot {job.slot.hex}, "
            f"slot name {jp.slot_name!r}")  # fmt: skip
        say(f"  bundle: {jp.bundle_status} — {jp.bundle_message}")
        if jp.info is not None:
            for line in certificate_lines(jp.info, jf.tz):
                say(f"  {line}")
        for result in jp.expectations:
            say(f"  expect {result.check}: {'ok' if result.ok else 'MISMATCH'} "
                f"(expected {result.expected}, found {result.actual})")  # fmt: skip
        for problem in jp.problems:
            say(f"  problem: {problem}")
        for note in jp.notes:
            say(f"  note: {note}")
        say("  steps:")
        for number, step in enumerate(jp.steps, 1):
            say(f"    {number:2}. {step.description}")
