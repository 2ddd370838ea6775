"""Shared parts of the fault campaign (tests/faults): mode, tally, job material, the CLI in-process,
and the consistency judge that every family applies to what a case left behind.

Mode: ``PROVISION_FAULTS=full`` runs every case (``make faults``); anything else runs the reduced,
deterministic sample that ``make test`` can afford.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from provision import fixtures
from provision.sim.card import SimCard, SimOptions

FULL = os.environ.get("PROVISION_FAULTS", "").lower() == "full"
MODE = "full" if FULL else "reduced"
NOW = datetime.now(UTC)
DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
SERIAL = 12345678
INS_IMPORT, INS_PUT_DATA, INS_VERIFY, INS_AUTH = 0xFE, 0xDB, 0x20, 0x87


# ----------------------------------------------------------------------------------------------
# tally: cases run / consistent / lost / leaked, per family


@dataclass
class Tally:
    cases: int = 0
    consistent: int = 0
    lost: int = 0
    leaked: int = 0
    failures: list[str] = field(default_factory=list)


TALLY: dict[str, Tally] = {}
_TALLY_LOCK = threading.Lock()


def record(family: str, case: str, *, consistent: bool, lost: bool = False, leaked: bool = False,
           why: str = "") -> None:  # fmt: skip
    with _TALLY_LOCK:
        tally = TALLY.setdefault(family, Tally())
        tally.cases += 1
        tally.consistent += int(consistent)
        tally.lost += int(lost)
        tally.leaked += int(leaked)
        if not consistent and len(tally.failures) < 20:
            tally.failures.append(f"{case}: {why}"[:300])


def summary_lines() -> list[str]:
    head = f"{'family':34} {'cases':>7} {'consistent':>11} {'failed':>7} {'lost':>5} {'leaked':>7}"
    lines = [f"fault campaign ({MODE})", head, "-" * len(head)]
    total = Tally()
    for family in sorted(TALLY):
        t = TALLY[family]
        lines.append(f"{family:34} {t.cases:>7} {t.consistent:>11} {t.cases - t.consistent:>7} {t.lost:>5} {t.leaked:>7}")
        total.cases, total.consistent = total.cases + t.cases, total.consistent + t.consistent
        total.lost, total.leaked = total.lost + t.lost, total.leaked + t.leaked
    lines.append("-" * len(head))
    lines.append(f"{'total':34} {total.cases:>7} {total.consistent:>11} {total.cases - total.consistent:>7} "
                 f"{total.lost:>5} {total.leaked:>7}")  # fmt: skip
    for family in sorted(TALLY):
        for failure in TALLY[family].failures:
            lines.append(f"  FAILED {family}: {failure}")
    return lines


def summary_json() -> dict[str, Any]:
    return {"mode": MODE, "families": {name: {"cases": t.cases, "consistent": t.consistent, "lost": t.lost,
                                              "leaked": t.leaked, "failures": t.failures}
                                       for name, t in sorted(TALLY.items())}}  # fmt: skip


def sample(total: int, interesting: list[int], step: int = 4) -> list[int]:
    """Every k in 1..total in full mode; every ``step``-th plus the interesting ones otherwise."""
    if FULL:
        return list(range(1, total + 1))
    chosen = set(range(1, total + 1, step)) | {total} | {k for k in interesting if 1 <= k <= total}
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# the CLI in-process


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


_CLI_LOCK = threading.Lock()


def run_cli(*argv: str, outputs: list[str] | None = None) -> CliResult:
    """``provision.cli.main(argv)`` in this process, with stdout and stderr captured."""
    from provision.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _CLI_LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    result = CliResult(code, out.getvalue(), err.getvalue())
    if outputs is not None:
        outputs += [result.stdout, result.stderr]
    return result


# ----------------------------------------------------------------------------------------------
# job material


class Material:
    """One CA and one RSA-2048 key for the whole session (RSA keys are slow to make)."""

    def __init__(self) -> None:
        self.ca = fixtures.make_ca("Fault Campaign CA")
        self.rsa = fixtures.generate_key("rsa2048")


@dataclass
class FaultJob:
    """A one-card job file with its PKCS#12, secret files and an HMAC audit key, in ``directory``."""

    directory: Path
    canaries: Any
    material: Material
    key_type: str = "p256"
    serial: int = SERIAL
    card_spec: str = ""
    extra: str = ""
    pin: str | None = None  # the PIN the job gives (default: the canary PIN)
    batch: str = "faults"
    job_id: str = "HK-1"
    export: bool = True
    management_key: str = "{file: mgmt.key}"  # "" for the card's default key

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        key = self.material.rsa if self.key_type == "rsa2048" else None
        data = fixtures.holder_p12(self.material.ca, "CHAN Tai Man", self.canaries.pkcs12_password,
                                   key_type=self.key_type, key=key, serial=0x1001,  # type: ignore[arg-type]
                                   not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
        (d / "chan.p12").write_bytes(data)
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12

        loaded = pkcs12.load_pkcs12(data, self.canaries.pkcs12_password.encode())
        assert loaded.cert is not None
        self.der = loaded.cert.certificate.public_bytes(Encoding.DER)
        self.sha256 = hashlib.sha256(self.der).hexdigest()
        self.spki = loaded.cert.certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.canaries.write_secret_file(d / "p12.pass", self.canaries.pkcs12_password)
        self.canaries.write_secret_file(d / "card.pin", self.pin if self.pin is not None else self.canaries.pin)
        self.canaries.write_secret_file(d / "audit.key", self.canaries.audit_key)
        self.canaries.write_secret_file(d / "mgmt.key", self.canaries.management_key)
        card = self.card_spec or f"{{serial: {self.serial}}}"
        export = '    export: {pem: "out/{job.id}.pem"}\n' if self.export else ""
        self.path = d / "job.yaml"
        self.path.write_text(
            f"version: 1\nbatch: {self.batch}\ntimezone: Asia/Hong_Kong\naudit: {{key: {{file: audit.key}}}}\n"
            f"cards:\n  - id: {self.job_id}\n    holder: CHAN Tai Man\n    card: {card}\n"
            "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n"
            '    slot: 9c\n    slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n    pin: {file: card.pin}\n'
            + (f"    management_key: {self.management_key}\n" if self.management_key else "") + export + self.extra
        )

    @property
    def audit_key_file(self) -> Path:
        return self.directory / "audit.key"


# ----------------------------------------------------------------------------------------------
# cards


def new_card_state(path: Path, canaries: Any, material: Material, *, serial: int = SERIAL, old_cert: bool = True,
                   pin: str | None = None) -> bytes | None:  # fmt: skip
    """A card's state file: the canary PIN and management key, and (optionally) an old e-Cert in 9C
    with its key. Returns the old certificate's DER."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from provision.card.apdu import ApduChannel
    from provision.piv.session import PivSession
    from provision.sim.card import SimCard, SimOptions
    from provision.sim.inprocess import SimTransport
    from provision.sim.state import pad_pin

    path.unlink(missing_ok=True)
    card = SimCard(SimOptions(serial=serial), path)
    old = None
    if old_cert:
        key, cert = fixtures.make_leaf(material.ca, "CHAN Tai Man", key_type="p256", serial=0x777,
                                       not_before=NOW - timedelta(days=1100), not_after=NOW + timedelta(days=5))  # fmt: skip
        card.power_on()
        session = PivSession(ApduChannel(SimTransport(card)))
        session.select()
        session.authenticate(DEFAULT_KEY)
        session.import_key(0x9C, key)  # type: ignore[arg-type]
        old = cert.public_bytes(Encoding.DER)
        session.write_certificate(0x9C, old)
    card._state.pin = pad_pin((pin if pin is not None else canaries.pin).encode())  # noqa: SLF001 - the card's EEPROM
    card._state.mgmt_key = bytes.fromhex(canaries.management_key)  # noqa: SLF001
    card._commit()  # noqa: SLF001
    return old


@dataclass(frozen=True)
class CardView:
    cert_sha256: str | None
    key_matches: bool | None
    key_spki: bytes | None
    slot_name: str | None
    pin_tries: int | None


def view_card(state: Path, *, serial: int = SERIAL) -> CardView:
    """What the card holds in 9C, read from a copy of its state file (the card itself is untouched)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from provision.card.apdu import ApduChannel
    from provision.cardinfo import read_card_info
    from provision.piv.session import PivSession
    from provision.sim.card import SimCard, SimOptions
    from provision.sim.inprocess import SimTransport

    copy = state.with_name(state.name + ".view")
    shutil.copyfile(state, copy)
    try:
        card = SimCard(SimOptions(serial=serial), copy)
        card.power_on()
        session = PivSession(ApduChannel(SimTransport(card)))
        session.select()
        info = read_card_info(session)
        slot = info.slot(0x9C)
        meta = session.get_metadata(0x9C)
        spki = None
        if meta is not None and meta.public_key is not None:
            spki = meta.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return CardView(slot.certificate.sha256 if slot.certificate else None, slot.key_matches_certificate, spki,
                        slot.slot_name, info.pin_tries_left)  # fmt: skip
    finally:
        copy.unlink(missing_ok=True)


def apdu_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# the judge


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    lost: bool = False

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)

    @property
    def consistent(self) -> bool:
        return not self.problems


def audit_verifies(logs: Path, key_file: Path) -> tuple[bool, str]:
    done = run_cli("audit", "verify", "--logs", str(logs), "--key-file", str(key_file), "--json")
    return done.code == 0, (done.stdout + done.stderr)[-400:]


def journal_steps(logs: Path, batch: str, job_id: str) -> list[tuple[str, str, str]]:
    from provision import journal as jn

    journal = jn.Journal(logs / "journal.sqlite3")
    try:
        return [(run, action, phase) for run, action, phase, _, _ in journal.steps(batch, job_id)]
    finally:
        journal.close()


def journal_job(logs: Path, batch: str, job_id: str) -> Any:
    from provision import journal as jn

    journal = jn.Journal(logs / "journal.sqlite3")
    try:
        return journal.job(batch, job_id)
    finally:
        journal.close()


WRITE_STEPS = ("archive_replaced_certificate", "import_key", "write_certificate", "write_slot_name", "commit")


def no_write_twice(steps: list[tuple[str, str, str]]) -> list[str]:
    """Each write step ends at most once per job overall, and none begins again after it ended."""
    problems = []
    for action in WRITE_STEPS:
        ends = [i for i, (_, a, p) in enumerate(steps) if a == action and p == "end"]
        if len(ends) > 1:
            problems.append(f"{action} ended {len(ends)} times")
        if ends and any(a == action and p == "begin" for _, a, p in steps[ends[0] + 1:]):
            problems.append(f"{action} began again after it had ended")
    return problems


def judge_final(verdict: Verdict, *, job: FaultJob, logs: Path, state: Path, old: bytes | None,
                report_status: str | None) -> CardView:  # fmt: skip
    """After the last run of a case: the new key and certificate are on the card and verified, the
    journal, the report and the audit log say so, the old certificate is On Disk, no write twice."""
    view = view_card(state, serial=job.serial)
    loaded = view.cert_sha256 == job.sha256 and view.key_matches is True
    verdict.check(loaded, f"card holds cert {str(view.cert_sha256)[:12]} key_matches={view.key_matches}, not the new pair")
    verdict.check(view.slot_name is not None and view.slot_name.startswith("e-Cert"), f"slot name on card {view.slot_name!r}")
    record_ = journal_job(logs, job.batch, job.job_id)
    verdict.check(record_ is not None and record_.status in ("loaded", "skipped"),
                  f"journal says {record_.status if record_ else None}")  # fmt: skip
    verdict.check(report_status in ("loaded", "skipped"), f"report says {report_status}")
    judge_old_certificate(verdict, logs=logs, view=view, old=old)
    for problem in no_write_twice(journal_steps(logs, job.batch, job.job_id)):
        verdict.check(False, problem)
    ok, text = audit_verifies(logs, job.audit_key_file)
    verdict.check(ok, f"audit verify failed: {text}")
    return view


def judge_old_certificate(verdict: Verdict, *, logs: Path, view: CardView, old: bytes | None) -> None:
    if old is None:
        return
    sha = hashlib.sha256(old).hexdigest()
    if view.cert_sha256 != sha:
        stored = (logs / "store" / f"{sha}.pem").exists()
        verdict.check(stored, "the old certificate left the card and is not in the store")
        verdict.lost = verdict.lost or not stored


def judge_interrupted(verdict: Verdict, *, job: FaultJob, logs: Path, state: Path, old: bytes | None,
                      document: dict[str, Any] | None) -> CardView:  # fmt: skip
    """After an interrupted run: nothing claimed that is not on the card; a half-loaded slot
    (key without its certificate, or the reverse) is reported as in doubt; the old certificate is
    On Disk if it left the card; the audit log verifies."""
    view = view_card(state, serial=job.serial)
    new_pair = view.cert_sha256 == job.sha256 and view.key_matches is True
    unchanged = old is not None and view.cert_sha256 == hashlib.sha256(old).hexdigest() and view.key_matches is True
    if document is not None:
        entry = document["jobs"][0]
        if entry["status"] in ("loaded", "skipped"):
            verdict.check(new_pair, f"the report claims {entry['status']} but the card does not hold the pair")
        elif not (new_pair or unchanged):
            verdict.check(entry["in_doubt"] is True, f"half-loaded card ({view}) not reported in doubt: {entry}")
    record_ = journal_job(logs, job.batch, job.job_id)
    if record_ is not None and record_.status in ("loaded", "skipped"):
        verdict.check(new_pair, "the journal claims loaded but the card does not hold the pair")
    judge_old_certificate(verdict, logs=logs, view=view, old=old)
    ok, text = audit_verifies(logs, job.audit_key_file)
    if not ok and not (logs / "audit.jsonl").exists():
        # Killed before the run wrote its first audit record (a slow start on a loaded machine): there
        # is nothing to verify yet, and then nothing may have happened. verify must say the log is
        # missing (not that it was deleted: nothing knows a seal of it), no job may be claimed, and
        # the card must be as it was. The resume that follows is judged on a full log.
        verdict.check("audit.jsonl is missing" in text and '"problem": "deleted"' not in text,
                      f"audit verify on a log never written: {text}")  # fmt: skip
        verdict.check(record_ is None or record_.status not in ("loaded", "skipped"),
                      "the journal claims a job before the audit log was started")  # fmt: skip
        verdict.check(unchanged or (old is None and view.cert_sha256 is None),
                      f"the card changed before the audit log was started ({view})")  # fmt: skip
        return view
    verdict.check(ok, f"audit verify failed after the interruption: {text}")
    return view


def final_writes(log: list[dict[str, Any]], ins: str) -> int:
    """Complete write commands (the last segment of a chain) with this INS in an APDU log."""
    return sum(1 for e in log if e.get("ins") == ins and e.get("cla") == "00" and e.get("sw") is not None)


def judge_no_rewrite(verdict: Verdict, *, job: FaultJob, between: CardView, after: list[dict[str, Any]]) -> None:
    """The card's own witness: after the interruption, nothing it already held is written again."""
    imports = final_writes(after, "FE")
    if between.key_spki == job.spki:
        verdict.check(imports == 0, f"the key was imported again ({imports}) although the card had it")
    else:
        verdict.check(imports <= 1, f"{imports} key imports after the interruption")
    name_there = between.slot_name is not None and between.slot_name.startswith("e-Cert")
    expected_puts = (0 if between.cert_sha256 == job.sha256 else 1) + (0 if name_there else 1)
    puts = final_writes(after, "DB")
    verdict.check(puts <= expected_puts, f"{puts} PUT DATA after the interruption, at most {expected_puts} needed")


@contextlib.contextmanager
def thread_errors() -> Iterator[list[str]]:
    """Exceptions that escape a thread (a reader worker that crashed) are collected, not printed."""
    found: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        found.append(f"{args.exc_type.__name__} in {args.thread.name if args.thread else '?'}")

    threading.excepthook = hook
    try:
        yield found
    finally:
        threading.excepthook = previous


class CountingCard(SimCard):
    """A simulated card that keeps every command APDU it received (the tests count them)."""

    def __init__(self, options: SimOptions, state: Path | None = None) -> None:
        super().__init__(options, state)
        self.apdus: list[bytes] = []

    def process(self, apdu: bytes) -> bytes:
        self.apdus.append(bytes(apdu))
        return super().process(apdu)

    def count(self, ins: int, *, with_data: bool | None = None, p2: int | None = None) -> int:
        """Commands with this INS (and P2); ``with_data``: only those with (or without) a body."""
        found = [a for a in self.apdus if len(a) >= 4 and a[1] == ins and (p2 is None or a[3] == p2)]
        if with_data is not None:
            found = [a for a in found if (len(a) > 5) == with_data]
        return len(found)

    def verifies(self) -> int:
        """Every VERIFY of the PIN, with or without data (the status read is a VERIFY too)."""
        return self.count(INS_VERIFY, p2=0x80)
