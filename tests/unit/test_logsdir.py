"""The logs directory is ours (provision.logsdir) and the journal's failures are the user's (journal.py).

The CLI-level walk is tests/faults/test_hostile.py; these tests reach below the start-of-command
check, as an attacker racing it would: a link planted after ``open_logs`` is still not followed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from provision import journal as jn
from provision.app import write_run_reports
from provision.audit.chain import AuditLog
from provision.audit.records import read_anchor, read_stamps
from provision.errors import EXIT_ENVIRONMENT, JournalError, LogsError
from provision.logsdir import LogsLock, ensure_reserve, open_logs, shared_write_warning
from provision.store import CertificateStore

VICTIM_TEXT = b"root:x:0:0:the attacker's target\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM_TEXT)
    return path


def test_an_audit_log_planted_as_a_link_after_the_check_is_not_appended_to(tmp_path: Path, victim: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    (logs / "audit.jsonl").symlink_to(victim)
    with pytest.raises(LogsError) as caught:
        AuditLog(logs / "audit.jsonl").append("test_event")
    assert caught.value.exit_code == EXIT_ENVIRONMENT and "symbolic link" in caught.value.message
    assert victim.read_bytes() == VICTIM_TEXT


def test_a_planted_audit_lock_link_creates_nothing_at_its_target(tmp_path: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    target = tmp_path / "created-by-attacker"
    (logs / ".audit.jsonl.lock").symlink_to(target)
    with pytest.raises(LogsError):
        AuditLog(logs / "audit.jsonl").append("test_event")
    assert not target.exists()


def test_a_planted_run_lock_link_is_refused(tmp_path: Path, victim: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    (logs / ".lock").symlink_to(victim)
    with pytest.raises(LogsError), LogsLock(logs):
        pass
    assert victim.read_bytes() == VICTIM_TEXT


def test_store_and_reports_planted_as_links_are_refused(tmp_path: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (logs / "store").symlink_to(elsewhere)
    (logs / "reports").symlink_to(elsewhere)
    with pytest.raises(LogsError):
        CertificateStore(logs / "store").check_writable()
    with pytest.raises(LogsError):
        write_run_reports({"run_id": "20261129T000000Z-abcdef", "jobs": []}, logs)
    assert list(elsewhere.iterdir()) == []


def test_a_journal_planted_as_a_link_is_refused(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "journal.sqlite3").symlink_to(victim)
    with pytest.raises(LogsError):
        jn.Journal(tmp_path / "journal.sqlite3")
    assert victim.read_bytes() == VICTIM_TEXT


@pytest.mark.parametrize("name", ["audit.jsonl", "journal.sqlite3", ".lock", "store", "reports"])
def test_open_logs_refuses_every_planted_link(name: str, tmp_path: Path, victim: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / name).symlink_to(victim)
    with pytest.raises(LogsError) as caught:
        open_logs(logs, create=False)
    assert str(logs / name) in caught.value.message and "remove the link" in caught.value.message


def test_open_logs_follows_a_link_to_a_directory_but_not_a_dangling_one(tmp_path: Path) -> None:
    real = tmp_path / "on-another-disk"
    real.mkdir()
    (tmp_path / "logs").symlink_to(real)
    assert open_logs(tmp_path / "logs", create=True) == tmp_path / "logs"
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(LogsError, match="which does not exist"):
        open_logs(tmp_path / "dangling", create=True)
    assert not (tmp_path / "gone").exists()


def test_open_logs_reports_a_logs_path_that_cannot_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LogsError, match="give another --logs"):
        open_logs(tmp_path / "afile" / "logs", create=True)
    with pytest.raises(LogsError, match="is not a directory"):
        open_logs(tmp_path / "afile", create=False)


# ----------------------------------------------------------------------------------------------
# not a regular file: a FIFO waits for ever when opened; a hard link writes a file elsewhere


def _bounded(action: Callable[[], object], fifo: Path, seconds: float = 5.0) -> BaseException | None:
    """Run ``action`` on a thread; what it raised, or None. If it still waits after ``seconds``
    (blocked opening ``fifo``), the FIFO's other end is opened to let it go, and the test fails."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, flags))
        worker.join(5)
        pytest.fail(f"still waiting on the FIFO {fifo.name} after {seconds} s")
    return outcome[0]


def _refused_as_not_regular(raised: BaseException | None) -> None:
    assert isinstance(raised, LogsError), raised
    assert raised.exit_code == EXIT_ENVIRONMENT and "named pipe" in raised.message and "regular file" in raised.message


def _after_the_check(tmp_path: Path, name: str) -> tuple[Path, Path]:
    logs = open_logs(tmp_path / "logs", create=True)
    os.mkfifo(logs / name)  # planted after the start-of-command check, as a racing attacker would
    return logs, logs / name


def test_an_audit_log_planted_as_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    logs, fifo = _after_the_check(tmp_path, "audit.jsonl")
    _refused_as_not_regular(_bounded(lambda: AuditLog(logs / "audit.jsonl").append("test_event"), fifo))


def test_a_reserve_planted_as_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    logs, fifo = _after_the_check(tmp_path, ".reserve")
    _refused_as_not_regular(_bounded(lambda: ensure_reserve(logs), fifo))


def test_a_run_lock_planted_as_a_fifo_is_refused(tmp_path: Path) -> None:
    logs, fifo = _after_the_check(tmp_path, ".lock")

    def lock() -> None:
        with LogsLock(logs):
            pass

    _refused_as_not_regular(_bounded(lock, fifo))


def test_a_time_stamp_file_planted_as_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    logs, fifo = _after_the_check(tmp_path, "audit-timestamps.jsonl")
    _refused_as_not_regular(_bounded(lambda: read_stamps(fifo), fifo))


def test_an_anchor_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    fifo = tmp_path / "anchor"
    os.mkfifo(fifo)
    _refused_as_not_regular(_bounded(lambda: AuditLog(logs / "audit.jsonl", anchor=fifo).check_anchor(), fifo))
    _refused_as_not_regular(_bounded(lambda: read_anchor(fifo), fifo))


def test_a_store_entry_planted_as_a_fifo_is_skipped_not_waited_on(tmp_path: Path) -> None:
    store = CertificateStore(open_logs(tmp_path / "logs", create=True) / "store")
    store.directory.mkdir()
    fifo = store.directory / ("ab" * 32 + ".json")
    os.mkfifo(fifo)
    found: list[object] = []
    assert _bounded(lambda: found.extend(store.list()), fifo) is None
    assert found == []


def test_a_store_entry_too_big_to_be_ours_is_never_read_whole(tmp_path: Path) -> None:
    store = CertificateStore(open_logs(tmp_path / "logs", create=True) / "store")
    store.directory.mkdir()
    with open(store.directory / ("cd" * 32 + ".json"), "wb") as handle:
        handle.truncate(4 * 1024**3)  # sparse: 4 GiB that json.loads would otherwise be handed
    assert store.list() == []


@pytest.mark.parametrize("name", ["audit.jsonl", "journal.sqlite3", "journal.sqlite3-wal", ".reserve", ".lock"])
def test_open_logs_refuses_a_fifo_or_a_directory_in_place_of_its_files(name: str, tmp_path: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    os.mkfifo(logs / name)
    for create in (True, False):  # every command, reading or writing, says what is wrong
        with pytest.raises(LogsError, match="named pipe"):
            open_logs(logs, create=create)
    os.unlink(logs / name)
    (logs / name).mkdir()
    with pytest.raises(LogsError, match="is a directory where provision keeps a regular file"):
        open_logs(logs, create=False)


@pytest.mark.parametrize("name", ["audit.jsonl", "journal.sqlite3", ".reserve"])
def test_a_hard_link_to_a_file_elsewhere_is_never_written(name: str, tmp_path: Path, victim: Path) -> None:
    logs = open_logs(tmp_path / "logs", create=True)
    before = b"" if name == "audit.jsonl" else VICTIM_TEXT  # an empty file: a log a first record would start
    victim.write_bytes(before)
    os.link(victim, logs / name)
    with pytest.raises(LogsError, match="hard links"):
        open_logs(logs, create=True)
    open_logs(logs, create=False)  # reading it harms nothing (an auditor's copy made with cp -al)
    # planted after the check, as a racing attacker would: still neither appended to nor truncated
    with pytest.raises(LogsError, match="hard links"):
        if name == "audit.jsonl":
            AuditLog(logs / name).append("test_event")
        elif name == ".reserve":
            ensure_reserve(logs)
        else:
            jn.Journal(logs / name)
    assert victim.read_bytes() == before


@pytest.mark.parametrize(
    "planted",
    [
        "CREATE TRIGGER unmark AFTER INSERT ON runs BEGIN UPDATE jobs SET status = 'loaded'; DELETE FROM seals; END",
        "CREATE VIEW bogus AS SELECT * FROM runs",
    ],
)
def test_a_journal_with_a_planted_trigger_or_view_is_refused_and_nothing_of_it_runs(planted: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = jn.Journal(path)
    journal.start_run("r1", "b", "job.yaml", "unattended")
    journal.close()
    db = sqlite3.connect(path)
    db.execute(planted)
    db.commit()
    db.close()
    for read_only in (False, True):
        with pytest.raises(JournalError, match="which provision never creates") as caught:
            jn.Journal(path, read_only=read_only)
        assert caught.value.exit_code == EXIT_ENVIRONMENT
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # no run of ours was added, no trigger ran
    db.close()


def test_a_journal_row_too_big_to_be_ours_is_never_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = jn.Journal(path)
    journal.start_run("r1", "b", "job.yaml", "unattended")
    journal.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET jobfile = ?", ("x" * (jn.MAX_JOURNAL_VALUE_BYTES + 1),))
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="move it aside") as caught:
        jn.Journal(path, read_only=True).runs()
    assert caught.value.exit_code == EXIT_ENVIRONMENT and "too big" in caught.value.message


def test_reports_this_user_cannot_write_are_a_sentence_not_a_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reports directory the run's user cannot write (mode 555) ended a whole run in exit 70
    (PermissionError from mkstemp). Root ignores modes, so the refusal such a user gets is given here."""
    from provision import report

    def refuse(*_args: object, **_kwargs: object) -> dict[str, Path]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report, "write_reports", refuse)
    logs = open_logs(tmp_path / "logs", create=True)
    with pytest.raises(LogsError) as caught:
        write_run_reports({"run_id": "20250101T000000Z-abcd"}, logs)
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    assert "cannot be written" in caught.value.message and "Permission denied" in caught.value.message


def test_a_store_or_reports_directory_this_user_cannot_read_is_said_so_not_called_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'store list' said "the store is empty" and 'report --last' "no run has a report yet" for a
    directory at mode 000 (glob hides the refusal). Root ignores modes: the refusal is given here."""
    from provision import cli
    from provision.errors import StoreError

    logs = open_logs(tmp_path / "logs", create=True)
    for name in ("store", "reports"):
        (logs / name).mkdir()
    real = os.scandir

    def refuse(path: object = ".") -> object:
        if Path(str(path)).name in ("store", "reports"):
            raise PermissionError(13, "Permission denied")
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(StoreError, match="cannot be read"):
        CertificateStore(logs / "store").list()
    assert cli.main(["report", "--last", "--format", "json", "--logs", str(logs)]) == EXIT_ENVIRONMENT
    assert "reports cannot be read (Permission denied)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE runs SET finished = x'00ff'",  # a blob where a time is kept: 'status --json' crashed (exit 70)
        "ALTER TABLE runs ADD COLUMN extra TEXT",  # a column provision never made: every read crashed
        "UPDATE jobs SET seconds = x'01'",
        "INSERT INTO seals VALUES (99, x'00ff', NULL, NULL, 'x')",  # 'audit verify' crashed sorting it
        "UPDATE pin_holds SET since = x'00'",
    ],
)
def test_a_journal_value_of_the_wrong_type_is_damage_not_a_crash(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = jn.Journal(path)
    journal.start_run("r1", "b", "job.yaml", "unattended")
    journal.add_seal("r1", 1, "ab" * 32, None)
    jn.PinHolds(journal).hold(12345678, None, tries_left=2, run_id="r1", batch="b", job_id="J1")
    journal.close()
    db = sqlite3.connect(path)
    if "jobs" in damage:
        db.execute("INSERT INTO jobs (batch, job_id, run_id, holder, status, updated) VALUES ('b', 'J1', 'r1', 'H', 'loaded', 'now')")
    db.execute(damage)
    db.commit()
    db.close()
    journal = jn.Journal(path, read_only=True)
    with pytest.raises(JournalError, match="is damaged") as caught:
        journal.runs()
        journal.jobs()
        journal.seals()
        jn.PinHolds(journal).all()
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    journal.close()


@pytest.mark.parametrize("mode, expected", [(0o700, None), (0o755, None), (0o775, "its group"), (0o777, "every user")])
def test_shared_write_warning(mode: int, expected: str | None, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(mode)
    warning = shared_write_warning(logs)
    assert (warning is None) if expected is None else (warning is not None and expected in warning)


# ----------------------------------------------------------------------------------------------
# the journal's own errors


def test_a_foreign_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError) as caught:
        jn.Journal(path)
    assert caught.value.exit_code == EXIT_ENVIRONMENT and "not a provision journal" in caught.value.message
    assert path.read_bytes() == before


def test_a_damaged_journal_advises_moving_it_aside(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + b"\xa5" * 4080)
    with pytest.raises(JournalError) as caught:
        jn.Journal(path)
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    assert "damaged" in caught.value.message and "move it aside" in caught.value.message
    assert "provision audit verify" in caught.value.message


def test_damage_found_after_opening_is_a_journal_error_too(tmp_path: Path) -> None:
    journal = jn.Journal(tmp_path / "journal.sqlite3")
    journal._db.execute("DROP TABLE runs")  # noqa: SLF001 - damage the open database underneath
    with pytest.raises(JournalError, match="damaged"):
        journal.runs()
    with pytest.raises(JournalError, match="damaged"):
        journal.start_run("r", "b", "j.yaml", "sim")
    journal.close()


def test_an_unreadable_journal_says_so(tmp_path: Path) -> None:
    (tmp_path / "journal.sqlite3").mkdir()
    with pytest.raises(LogsError, match="is a directory where provision keeps a regular file"):
        jn.Journal(tmp_path / "journal.sqlite3")


def test_a_read_only_journal_is_neither_created_nor_written(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.touch()  # an empty file: no run recorded yet
    journal = jn.Journal(path, read_only=True)
    assert journal.runs() == [] and journal.seals() == []
    journal.close()
    assert path.read_bytes() == b""


def test_a_journal_with_pin_holds_is_ours_and_a_newer_schema_is_named(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = jn.Journal(path)
    jn.PinHolds(journal).hold(12345678, None, tries_left=2, run_id="r", batch="b", job_id="j")  # schema 2
    journal.close()
    jn.Journal(path, read_only=True).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer provision"):
        jn.Journal(path)


@pytest.mark.parametrize("old", ["1", "2"])
def test_an_old_journal_keeps_its_run_seals_and_is_migrated_by_the_first_job_seal(tmp_path: Path, old: str) -> None:
    """A journal from before every seal was kept (schema 1, or 2 with PIN holds): read as it is
    (its run seals), untouched by readers, and migrated in place by the first seal written."""
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(jn._SCHEMA)  # noqa: SLF001 - the old tables, as the old code made them
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (old,))
    db.execute("INSERT INTO runs VALUES ('old-run', 'b', 'j.yaml', 'unattended', 't', 't', 'finished', ?)", ("a" * 64,))
    if old == "2":
        db.execute(jn._PIN_HOLDS_TABLE)  # noqa: SLF001
    db.commit()
    db.close()
    before = path.read_bytes()
    reader = jn.Journal(path, read_only=True)
    assert reader.seals() == ["a" * 64]
    reader.close()
    assert path.read_bytes() == before
    journal = jn.Journal(path)
    assert journal.seals() == ["a" * 64]  # opening for writing does not migrate either
    journal.add_seal("new-run", 7, "b" * 64, "J1")
    journal.add_seal("new-run", 9, "c" * 64, None)
    journal.add_seal("new-run", 9, "c" * 64, None)  # the same seal twice is kept once
    journal.finish_run("new-run", "finished", "c" * 64)
    assert journal.seals() == ["b" * 64, "c" * 64, "a" * 64]
    assert [r.run_id for r in journal.runs()] == ["old-run"]
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(jn.SEALS_SCHEMA_VERSION) == "3"
    db.close()
    jn.Journal(path, read_only=True).close()  # ours, and still readable
