"""Family: hostile inputs and environments (issue 19).

Exit 70 is for our own bugs only. Every command that takes ``--logs`` is run, as a child process
(the ``cli`` fixture), against logs directories an unlucky operator or an attacker can leave behind:
absent, empty, a damaged / foreign / unreadable journal, a dangling ``--logs`` link, a path under a
regular file, a read-only file system, and links planted where provision keeps its own files. Each
case is judged by: exit code never 70, no traceback, one ``provision: …`` (or ``error: …``) sentence
on stderr whenever the exit code is not 0, and a planted link's target untouched. Where the right
answer is known (a planted link or a broken journal: exit 3 with the reason), it is asserted too.
Hostile inputs (a job-file integer of 5000 digits, ``sim serve --state`` naming a directory, a
``sqlite:///`` queue in a missing directory) are judged the same way.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults_common import FaultJob, Material, record

FAMILY = "hostile inputs and environments"
EXIT_INTERNAL, EXIT_ENVIRONMENT = 70, 3

# Commands that take --logs but need a PC/SC service or a PostgreSQL server: their logs handling is
# the shared --logs option, and their own tiers (tests/pcsc, tests/queue) run them.
NOT_WALKED = {"readers": "needs pcscd", "card info": "needs pcscd", "queue push": "needs PostgreSQL"}
# Commands that never open the logs directory (validate and plan only look at it to warn).
LOGS_UNUSED = {"validate", "plan", "inspect", "jobs new"}
JOURNAL_READERS = {"run", "resume", "status", "audit verify", "card clear-pin-hold"}  # demo: its own, unkeyed audit log may stop it first (exit 4)


def commands_taking_logs() -> set[str]:
    """Every (sub)command of build_parser that has a --logs option, as 'audit verify' etc."""
    import argparse

    from provision.cli import build_parser

    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, child in action.choices.items():
                    walk(child, f"{prefix} {name}".strip())
            elif "--logs" in action.option_strings:
                found.add(prefix)

    walk(build_parser(), "")
    return found


def walk_argv(job: FaultJob) -> dict[str, list[str]]:
    d = job.directory
    (d / "holders.csv").write_text(f"id,holder,card_serial,pkcs12,password_file\nHK-9,LEE,{job.serial},chan.p12,p12.pass\n")
    (d / "template.yaml").write_text('version: 1\nbatch: t\ndefaults:\n  slot: 9c\n  slot_name: "x"\n'
                                     "  pin: {file: card.pin}\n")  # fmt: skip
    puk = d / "card.puk"
    fd = os.open(puk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("12345678\n")  # the simulated card's PUK, not a canary
    return {
        "validate": ["validate", str(job.path)],
        "plan": ["plan", str(job.path)],
        "inspect": ["inspect", str(d / "chan.p12"), "--password-file", str(d / "p12.pass")],
        "jobs new": ["jobs", "new", "--csv", str(d / "holders.csv"), "--template", str(d / "template.yaml"),
                     "-o", str(d / "made.yaml"), "--force", "--no-file-checks"],  # fmt: skip
        "run": ["run", str(job.path), "--sim", "--unattended", "--no-progress"],
        "resume": ["resume", "--unattended", "--no-progress"],
        "status": ["status"],
        "store list": ["store", "list"],
        "audit verify": ["audit", "verify", "--key-file", str(job.audit_key_file)],
        "audit show": ["audit", "show"],
        "report": ["report", "--last", "--format", "json"],
        "demo": ["demo"],
        "card clear-pin-hold": ["card", "clear-pin-hold", str(job.serial), "--reason", "hostile walk",
                                "--key-file", str(job.audit_key_file)],  # fmt: skip
        # PIN service: the logs are checked before any card is looked for (no card is in a reader here)
        "card unblock-pin": ["card", "unblock-pin", "--puk-file", str(puk), "--new-pin-file", str(d / "card.pin"),
                             "--key-file", str(job.audit_key_file)],  # fmt: skip
        "card change-pin": ["card", "change-pin", "--pin-file", str(d / "card.pin"), "--new-pin-file",
                            str(d / "card.pin"), "--key-file", str(job.audit_key_file)],  # fmt: skip
        "card change-puk": ["card", "change-puk", "--puk-file", str(puk), "--new-puk-file", str(puk),
                            "--key-file", str(job.audit_key_file)],  # fmt: skip
    }


def test_the_walk_covers_every_command_that_takes_logs(tmp_path: Path, canaries: Any, material: Material) -> None:
    walked = set(walk_argv(FaultJob(tmp_path / "job", canaries, material)))
    missing = commands_taking_logs() - walked - set(NOT_WALKED)
    assert not missing, f"commands with --logs that the hostile walk does not run: {sorted(missing)}"


# ----------------------------------------------------------------------------------------------
# logs directories


class Scene:
    """One logs directory in a given state, plus what must stay untouched (a planted link's target)."""

    def __init__(self, root: Path, job: FaultJob, cli: Any) -> None:
        self.root = root
        self.job = job
        self.cli = cli
        self.logs = root / "logs"
        self.victims: dict[Path, bytes] = {}
        self.elsewhere = root / "elsewhere"

    def populate(self, logs: Path | None = None) -> None:
        """A logs directory after one good run (journal, audit log, reports)."""
        done = self.cli("run", str(self.job.path), "--sim", "--unattended", "--no-progress", "--logs", str(logs or self.logs))
        assert done.returncode == 0, done.stderr

    def victim_file(self) -> Path:
        victim = self.root / "victim.txt"
        victim.write_bytes(b"the attacker's target: must stay exactly like this\n")
        self.victims[victim] = victim.read_bytes()
        return victim

    def victim_directory(self) -> Path:
        self.elsewhere.mkdir(exist_ok=True)
        (self.elsewhere / "keep.txt").write_bytes(b"untouched\n")
        return self.elsewhere

    def untouched(self) -> list[str]:
        changed = [str(p) for p, data in self.victims.items() if not p.is_file() or p.read_bytes() != data]
        if self.elsewhere.exists() and sorted(p.name for p in self.elsewhere.iterdir()) != ["keep.txt"]:
            changed.append(f"{self.elsewhere} now holds {sorted(p.name for p in self.elsewhere.iterdir())}")
        return changed


def _absent(s: Scene) -> None:
    pass


def _empty(s: Scene) -> None:
    s.logs.mkdir()


def _damaged_journal(s: Scene) -> None:
    s.populate()
    journal = s.logs / "journal.sqlite3"
    for extra in ("journal.sqlite3-wal", "journal.sqlite3-shm"):
        (s.logs / extra).unlink(missing_ok=True)
    data = bytearray(journal.read_bytes())
    data[16:4096] = bytes((i * 37 + 11) % 256 for i in range(16, 4096))  # page 1 after the magic: garbage
    journal.write_bytes(bytes(data))


def _foreign_journal(s: Scene) -> None:
    s.logs.mkdir()
    db = sqlite3.connect(s.logs / "journal.sqlite3")
    db.execute("CREATE TABLE customers (name TEXT)")
    db.commit()
    db.close()
    s.victims[s.logs / "journal.sqlite3"] = (s.logs / "journal.sqlite3").read_bytes()  # never written to


def _journal_with_a_trigger(s: Scene) -> None:
    s.populate()
    db = sqlite3.connect(s.logs / "journal.sqlite3")
    db.execute("CREATE TRIGGER unmark AFTER UPDATE ON jobs BEGIN UPDATE jobs SET status = 'loaded'; DELETE FROM seals; END")
    db.commit()
    db.close()


def _not_a_database(s: Scene) -> None:
    s.logs.mkdir()
    (s.logs / "journal.sqlite3").write_bytes(b"this is a text file, not SQLite\n" * 64)


def _unreadable_journal(s: Scene) -> None:
    (s.logs / "journal.sqlite3").mkdir(parents=True)  # root reads any file; nobody opens a directory as one


def _dangling_logs_link(s: Scene) -> None:
    s.logs.symlink_to(s.root / "gone" / "logs")


def _logs_link_to_a_directory(s: Scene) -> None:
    real = s.root / "on-another-disk"
    s.populate(real)
    s.logs.symlink_to(real)  # an administrator's choice, followed


def _logs_under_a_file(s: Scene) -> None:
    (s.root / "afile").write_text("a regular file where a directory should be\n")
    s.logs = s.root / "afile" / "logs"


def _planted(name: str, *, directory: bool = False) -> Callable[[Scene], None]:
    def plant(s: Scene) -> None:
        s.populate()
        target = s.logs / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        target.symlink_to(s.victim_directory() if directory else s.victim_file())

    return plant


def _fifo(name: str) -> Callable[[Scene], None]:
    """A named pipe where provision keeps a file: opening it would wait for ever for a peer."""

    def plant(s: Scene) -> None:
        s.populate()
        target = s.logs / name
        if name.endswith("/*.json"):  # one of the entries there, planted under a name provision reads
            entries = sorted(target.parent.glob("*.json"))
            target = entries[-1] if entries else target.parent / ("ab" * 32 + ".json")
        target.parent.mkdir(exist_ok=True)
        target.unlink(missing_ok=True)
        os.mkfifo(target)

    return plant


def _hard_link_to_victim(s: Scene) -> None:
    s.populate()
    victim = s.root / "victim.txt"  # a file elsewhere that an append through the link would change
    os.replace(s.logs / "audit.jsonl", victim)
    s.victims[victim] = victim.read_bytes()
    os.link(victim, s.logs / "audit.jsonl")


SCENES: dict[str, Callable[[Scene], None]] = {
    "absent": _absent,
    "empty": _empty,
    "damaged journal": _damaged_journal,
    "foreign journal (other tables)": _foreign_journal,
    "journal not SQLite": _not_a_database,
    "journal with a planted trigger": _journal_with_a_trigger,
    "journal unreadable (a directory)": _unreadable_journal,
    "--logs a dangling link": _dangling_logs_link,
    "--logs a link to a directory": _logs_link_to_a_directory,
    "--logs under a regular file": _logs_under_a_file,
    "audit.jsonl -> victim": _planted("audit.jsonl"),
    "journal.sqlite3 -> victim": _planted("journal.sqlite3"),
    ".lock -> victim": _planted(".lock"),
    "audit-timestamps.jsonl -> victim": _planted("audit-timestamps.jsonl"),
    "store -> elsewhere": _planted("store", directory=True),
    "reports -> elsewhere": _planted("reports", directory=True),
    "audit.jsonl a FIFO": _fifo("audit.jsonl"),
    "journal.sqlite3-wal a FIFO": _fifo("journal.sqlite3-wal"),
    ".reserve a FIFO": _fifo(".reserve"),
    "a store entry a FIFO": _fifo("store/*.json"),
    "a report a FIFO": _fifo("reports/*.json"),
    "audit.jsonl a hard link to a file elsewhere": _hard_link_to_victim,
}
OWN_FILE_NOT_REGULAR = {"audit.jsonl a FIFO", "journal.sqlite3-wal a FIFO", ".reserve a FIFO"}
PLANTED = {name for name in SCENES if "->" in name}
BROKEN_JOURNAL = {"damaged journal", "foreign journal (other tables)", "journal not SQLite", "journal unreadable (a directory)",
                  "journal with a planted trigger"}  # fmt: skip
UNUSABLE_LOGS = {"--logs a dangling link", "--logs under a regular file"}


def judge(scene_name: str, command: str, done: Any, scene: Scene) -> list[str]:
    problems = []
    if done.returncode == EXIT_INTERNAL:
        problems.append("exit 70")
    if "Traceback" in done.stderr:
        problems.append("a traceback")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        if not lines or not lines[-1].startswith(("provision: ", "error: ")):
            problems.append(f"exit {done.returncode} without a sentence on stderr")
    if command not in LOGS_UNUSED:
        expected_words = None
        if scene_name in PLANTED:
            expected_words = "symbolic link"
        elif scene_name in OWN_FILE_NOT_REGULAR:
            expected_words = "regular file"
        elif scene_name in UNUSABLE_LOGS:
            expected_words = "logs"
        elif scene_name in BROKEN_JOURNAL and command in JOURNAL_READERS:
            expected_words = "journal"
        if expected_words is not None and (done.returncode != EXIT_ENVIRONMENT or expected_words not in done.stderr):
            problems.append(f"expected exit 3 naming the {expected_words}, got {done.returncode}")
    problems += [f"{what} was changed" for what in scene.untouched()]
    return problems


def walk(scene: Scene, scene_name: str) -> list[str]:
    failures = []
    for command, argv in walk_argv(scene.job).items():
        done = scene.cli(*argv, "--logs", str(scene.logs))
        problems = judge(scene_name, command, done, scene)
        why = f"{'; '.join(problems)} — stderr: {done.stderr.strip()[-300:]!r}"
        record(FAMILY, f"{scene_name}: {command}", consistent=not problems, why=why)
        if problems:
            failures.append(f"{command}: {why}")
    return failures


@pytest.mark.parametrize("scene_name", list(SCENES))
def test_every_logs_command_against_a_hostile_logs_directory(scene_name: str, tmp_path: Path, canaries: Any,
                                                             material: Material, cli: Any) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, management_key="", pin="123456")
    scene = Scene(tmp_path / "scene", job, cli)
    scene.root.mkdir()
    SCENES[scene_name](scene)
    failures = walk(scene, scene_name)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", ["new logs directory", "empty logs directory", "logs after a run"])
def test_every_logs_command_on_a_read_only_file_system(case: str, tmp_path: Path, canaries: Any, material: Material,
                                                       cli: Any, read_only_dir: Any) -> None:  # fmt: skip
    where, freeze = read_only_dir
    job = FaultJob(tmp_path / "job", canaries, material, management_key="", pin="123456")
    scene = Scene(tmp_path, job, cli)
    scene.logs = where / "logs" if case == "new logs directory" else where
    if case == "logs after a run":
        scene.populate(where)
    freeze()
    assert not os.access(where, os.W_OK) or _really_read_only(where), "the directory is still writable"
    failures = walk(scene, f"read-only file system, {case}")
    assert not failures, "\n".join(failures)
    if case == "logs after a run":  # an auditor's copy on read-only media can still be read
        for command in ("status", "audit verify"):
            done = cli(*walk_argv(job)[command], "--logs", str(scene.logs))
            assert done.returncode == 0, (command, done.stderr)
    if case == "new logs directory":  # 'run' must say why, naming the directory it could not create
        done = cli(*walk_argv(job)["run"], "--logs", str(scene.logs))
        assert done.returncode == EXIT_ENVIRONMENT and "cannot be created" in done.stderr, done.stderr


def _really_read_only(where: Path) -> bool:
    try:
        (where / ".probe").write_text("x")
    except OSError:
        return True
    (where / ".probe").unlink()
    return False


# ----------------------------------------------------------------------------------------------
# hostile inputs


def test_a_job_file_integer_of_thousands_of_digits_is_a_validation_error(tmp_path: Path, canaries: Any,
                                                                         material: Material, cli: Any) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, card_spec=f"{{serial: {'1' * 5000}}}")
    (tmp_path / "job" / "holders.csv").write_text(f"id,holder,card_serial,pkcs12\nHK-9,LEE,{'7' * 5000},chan.p12\n")
    (tmp_path / "job" / "template.yaml").write_text('version: 1\nbatch: t\ndefaults: {slot: 9c, slot_name: "x"}\n')
    cases = {
        "validate": ["validate", str(job.path)],
        "plan": ["plan", str(job.path)],
        "run": ["run", str(job.path), "--sim", "--unattended", "--no-progress"],
        "jobs new": ["jobs", "new", "--csv", str(tmp_path / "job" / "holders.csv"), "--template",
                     str(tmp_path / "job" / "template.yaml"), "-o", str(tmp_path / "job" / "made.yaml")],  # fmt: skip
    }
    failures = []
    for name, argv in cases.items():
        done = cli(*argv)
        ok = done.returncode == 2 and "Traceback" not in done.stderr and "digit" in done.stderr
        record(FAMILY, f"5000-digit integer: {name}", consistent=ok, why=f"exit {done.returncode}: {done.stderr[-300:]!r}")
        if not ok:
            failures.append(f"{name}: exit {done.returncode}: {done.stderr[-300:]!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "logs").exists(), "an invalid job file wrote to the logs directory"


def test_sim_serve_with_a_directory_as_its_state_is_a_usage_error(tmp_path: Path, cli: Any) -> None:
    done = cli("sim", "serve", "--state", str(tmp_path), "--port", "1")
    ok = done.returncode == 2 and "is a directory" in done.stderr and "Traceback" not in done.stderr
    record(FAMILY, "sim serve --state DIR", consistent=ok, why=f"exit {done.returncode}: {done.stderr[-300:]!r}")
    assert ok, (done.returncode, done.stderr)


def test_a_sqlite_queue_in_a_missing_directory_is_a_usage_error(tmp_path: Path, canaries: Any, material: Material,
                                                                cli: Any) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, management_key="", pin="123456")
    missing = tmp_path / "nonexistent" / "dir"
    done = cli("run", str(job.path), "--sim", "--unattended", "--no-progress", "--queue", f"sqlite:///{missing}/q.db")
    ok = done.returncode == 2 and "does not exist" in done.stderr and not missing.exists()
    record(FAMILY, "--queue sqlite:/// in a missing directory", consistent=ok, why=f"exit {done.returncode}: {done.stderr[-300:]!r}")
    assert ok, (done.returncode, done.stderr)


@pytest.mark.parametrize("mode, who", [(0o777, "every user"), (0o775, "its group"), (0o755, None)])
def test_a_logs_directory_others_can_write_is_warned_about(mode: int, who: str | None, tmp_path: Path, canaries: Any,
                                                           material: Material, cli: Any) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, management_key="", pin="123456")
    logs = tmp_path / "shared-logs"
    logs.mkdir()
    logs.chmod(mode)
    failures = []
    for command in ("validate", "plan", "run"):
        done = cli(*walk_argv(job)[command], "--logs", str(logs))
        warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: the logs directory")]
        ok = done.returncode == 0 and (len(warnings) == 1 and who in warnings[0] if who else not warnings)
        record(FAMILY, f"logs mode {mode:o}: {command}", consistent=ok, why=f"exit {done.returncode}: {done.stderr[-300:]!r}")
        if not ok:
            failures.append(f"{command}: exit {done.returncode}, stderr {done.stderr!r}")
    assert not failures, "\n".join(failures)


def test_a_report_written_where_no_file_can_be_is_a_usage_error(tmp_path: Path, canaries: Any, material: Material,
                                                                cli: Any) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, management_key="", pin="123456")
    scene = Scene(tmp_path, job, cli)
    scene.populate()
    (tmp_path / "afile").write_text("a regular file where a directory should be\n")
    failures = []
    for where in (tmp_path, tmp_path / "afile" / "report.html"):
        done = cli("report", "--last", "--logs", str(scene.logs), "-o", str(where))
        ok = done.returncode == 2 and "choose another -o" in done.stderr and "Traceback" not in done.stderr
        record(FAMILY, f"report -o {where.name or where}", consistent=ok, why=f"exit {done.returncode}: {done.stderr[-300:]!r}")
        if not ok:
            failures.append(f"-o {where}: exit {done.returncode}: {done.stderr!r}")
    assert not failures, "\n".join(failures)
