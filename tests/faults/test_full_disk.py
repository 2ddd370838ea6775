"""A full disk is an ordinary event (hostile environments).

The logs directory is a small tmpfs, so the disk fills in the middle of a batch. The run must stop
cleanly (exit 3, one sentence, no traceback), every audit record must be whole (the log verifies),
the journal must say the run was interrupted and where, and `resume` must finish the batch once
space is free. A disk too full for the run's reserve stops the run before any card."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.logsdir import RESERVE_BYTES
from tests.helpers.faults_common import record

FAMILY = "hostile inputs and environments"

NOW = datetime.now(UTC)
HOLDERS = 80


# Room beyond the reserve: different amounts make the disk fill at different writes (journal pages,
# an audit record, a store file, a report).
SLACKS_KB = (200, 330, 600, 900)


@contextmanager
def counted(case: str) -> Iterator[None]:
    """One case of the campaign table: consistent when every check in it held."""
    try:
        yield
    except AssertionError as exc:
        record(FAMILY, case, consistent=False, why=str(exc)[:200])
        raise
    record(FAMILY, case, consistent=True)


@pytest.fixture(params=SLACKS_KB, ids=[f"{kb}k-free" for kb in SLACKS_KB])
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    where = tmp_path / "logs"
    where.mkdir()
    size = RESERVE_BYTES + request.param * 1024  # the reserve, and room for some of the batch's records
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"a tmpfs cannot be mounted here ({mounted.stderr.decode().strip()}); the full-disk tests need root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def write_batch(tmp: Path, canaries: Any, count: int) -> Path:
    ca = fixtures.make_ca("Full Disk CA")
    canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp / "card.pin", "123456")
    data = fixtures.holder_p12(ca, "CHAN Tai Man", canaries.pkcs12_password, key_type="p256",
                               not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
    (tmp / "chan.p12").write_bytes(data)
    cards = "".join(
        f"  - id: HK-{i:03d}\n    holder: CHAN Tai Man {i}\n    card: {{serial: {40000000 + i}}}\n"
        "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n" for i in range(count)
    )
    job = tmp / "batch.yaml"
    job.write_text(
        "version: 1\nbatch: full-disk\ndefaults:\n  slot: 9c\n  slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n"
        "  pin: {file: card.pin}\ncards:\n" + cards
    )
    return job


def test_a_disk_that_fills_mid_batch_stops_the_run_cleanly_and_resume_finishes(small_disk: Path, cli: Any,
                                                                               canaries: Any, tmp_path: Path) -> None:  # fmt: skip
    with counted("full disk: test_a_disk_that_fills_mid_batch_stops_the_run_cleanly_and_resume_finishes"):
        job = write_batch(tmp_path, canaries, HOLDERS)
        logs = str(small_disk)
        run = cli("run", str(job), "--sim", "--unattended", "--json", "--no-progress", "--logs", logs)
        assert run.returncode == 3, run.stderr
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr
        said = [line for line in run.stderr.splitlines() if line.startswith("provision: ")]
        assert len(said) == 1 and ("full" in said[0] or "No space left" in said[0]) and run.stderr.rstrip().endswith(said[0]), run.stderr
        document = json.loads(run.stdout)
        statuses = [j["status"] for j in document["jobs"]]
        assert document["stopped_by"] in ("JournalError", "RecordsError"), document["stopped_by"]
        assert statuses.count("loaded") < HOLDERS, statuses  # it stopped in the middle
        assert set(statuses) <= {"loaded", "pending", "in-doubt"}
        # Every record whole: the log verifies; the journal knows the run ended, and where.
        verified = cli("audit", "verify", "--logs", logs)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        with sqlite3.connect(f"file:{small_disk / 'journal.sqlite3'}?mode=ro", uri=True) as db:
            (status,) = db.execute("SELECT status FROM runs WHERE run_id = ?", (document["run_id"],)).fetchone()
            loaded = db.execute("SELECT count(*) FROM jobs WHERE status = 'loaded'").fetchone()[0]
        assert status == "interrupted" and loaded == statuses.count("loaded")

        # Space is freed: resume finishes the batch.
        subprocess.run(["mount", "-o", "remount,size=64m", logs], check=True, capture_output=True)
        resumed = cli("resume", "--sim", "--unattended", "--json", "--no-progress", "--logs", logs)
        assert resumed.returncode == 0, resumed.stderr
        done = {j["id"]: j["status"] for j in json.loads(resumed.stdout)["jobs"]}
        assert set(done.values()) == {"loaded"} and len(done) == HOLDERS - statuses.count("loaded")
        assert cli("audit", "verify", "--logs", logs).returncode == 0


def test_a_disk_without_room_for_the_reserve_stops_before_any_card(small_disk: Path, cli: Any, canaries: Any,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    with counted("full disk: test_a_disk_without_room_for_the_reserve_stops_before_any_card"):
        job = write_batch(tmp_path, canaries, 2)
        filler = small_disk / "filler.bin"
        with open(filler, "wb") as handle:  # leave less than the reserve free
            handle.write(b"\xa5" * (RESERVE_BYTES - 64 * 1024))
        run = cli("run", str(job), "--sim", "--unattended", "--json", "--no-progress", "--logs", str(small_disk))
        assert run.returncode == 3, run.stderr
        assert "MiB free" in run.stderr and "nothing was run" in run.stderr and "Traceback" not in run.stderr
        assert not (small_disk / "reports").exists() or not any((small_disk / "reports").iterdir())


def test_an_audit_record_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """The disk fills in the middle of an audit line: the line is taken back, the error is typed,
    and the log still verifies to its last whole record."""
    with counted("full disk: test_an_audit_record_is_written_whole_or_not_at_all"):
        from provision.audit.chain import AuditLog
        from provision.audit.verify import verify
        from provision.errors import RecordsError

        where = tmp_path / "tiny"
        where.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
                                 capture_output=True)  # fmt: skip
        if mounted.returncode != 0:
            pytest.fail(f"a tmpfs cannot be mounted here ({mounted.stderr.decode().strip()}); the full-disk tests need root")
        try:
            log = AuditLog(where / "audit.jsonl")
            written = 0
            with pytest.raises(RecordsError) as caught:
                for n in range(10_000):
                    log.append("card_inserted", reader="Virtual PCD 00 00", card_serial=n, note="x" * 700)
                    written += 1
            log.close()
            assert "cannot take another record" in caught.value.message and written > 10
            data = (where / "audit.jsonl").read_bytes()
            assert data.endswith(b"\n") and data.count(b"\n") == written
            assert verify(where / "audit.jsonl").ok
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
