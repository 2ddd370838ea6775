"""Records that cannot lie: an attacker (or an unlucky operator) edits the logs directory, and
``audit verify`` with a key, an anchor or a held seal says so (exit 4, with a sentence).

Each test runs real batches (``provision run --sim``) as child processes, tampers with what a
person with write access to ``logs/`` can reach (the log, the journal), and sometimes with the
anchor itself, then asks the command line. What is NOT caught without an anchor or a held seal is
asserted too, so the auditor's threat model stays true (docs/auditor.md, "Threat model of the audit log").
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.audit.records import canonical

CLI = Callable[..., Any]
HOLDERS = ("CHAN Tai Man", "WONG Siu Ming")


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Test e-Cert CA")


class Batch:
    """A job file of two simulated cards, keyed and anchored, and the runs made of it."""

    def __init__(self, tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer, *, key: bool = True,
                 holders: tuple[str, ...] = HOLDERS) -> None:  # fmt: skip
        self.tmp, self.cli = tmp_path, cli
        self.logs = tmp_path / "logs"
        self.anchor = tmp_path / "witness" / "seals.jsonl"  # "other storage": outside logs/
        self.anchor.parent.mkdir()
        self.env = {"SIM_PIN": "123456", "AUDIT_KEY": canaries.audit_key}
        now = datetime.now(UTC)
        canaries.write_secret_file(tmp_path / "p12.pass", canaries.pkcs12_password)
        cards = ""
        for i, cn in enumerate(holders):
            data = fixtures.holder_p12(ca, cn, canaries.pkcs12_password, key_type="p256",
                                       not_before=now - timedelta(days=1), not_after=now + timedelta(days=365))  # fmt: skip
            (tmp_path / f"h{i}.p12").write_bytes(data)
            cards += (f"  - id: HK-{i}\n    holder: {cn}\n    card: {{serial: {12345670 + i}}}\n"
                      f"    pkcs12: {{path: h{i}.p12, password: {{file: p12.pass}}}}\n"
                      "    slot: 9c\n    slot_name: e-Cert\n    pin: {env: SIM_PIN}\n")  # fmt: skip
        audit = "audit: {key: {env: AUDIT_KEY}, anchor: witness/seals.jsonl}\n" if key else ""
        self.job = tmp_path / "job.yaml"
        self.job.write_text(f"version: 1\nbatch: b1\n{audit}cards:\n{cards}")

    def run(self, *extra: str, env: dict[str, str] | None = None) -> Any:
        return self.cli("run", str(self.job), "--sim", "--unattended", "--json", "--no-progress", *extra,
                        env={**self.env, **(env or {})})  # fmt: skip

    def verify(self, *extra: str, anchor: bool = True, key: bool = True) -> Any:
        args = ["audit", "verify", "--json"]
        if key:
            args += ["--key-env", "AUDIT_KEY"]
        if anchor:
            args += ["--anchor", str(self.anchor)]
        return self.cli(*args, *extra, env=self.env)

    @property
    def log(self) -> Path:
        return self.logs / "audit.jsonl"

    @property
    def journal(self) -> Path:
        return self.logs / "journal.sqlite3"

    def lines(self) -> list[bytes]:
        return self.log.read_bytes().splitlines(keepends=True)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def anchored(self) -> list[bytes]:
        return self.anchor.read_bytes().splitlines(keepends=True)


@pytest.fixture
def batch(tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer) -> Batch:
    made = Batch(tmp_path, cli, canaries, ca)
    run = made.run()
    assert run.returncode == 0, run.stderr
    assert made.verify().returncode == 0
    return made


def failed(run: Any, *words: str) -> dict[str, Any]:
    """``audit verify --json`` exited 4 and its sentence says ``words``."""
    assert run.returncode == 4, (run.returncode, run.stdout, run.stderr)
    doc: dict[str, Any] = json.loads(run.stdout)
    assert doc["ok"] is False
    for word in words:
        assert word in doc["message"], doc["message"]
    return doc


def passed(run: Any) -> dict[str, Any]:
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    doc: dict[str, Any] = json.loads(run.stdout)
    assert doc["ok"] is True
    return doc


def rechain_plain(lines: list[bytes]) -> bytes:
    """What an attacker without the key does: drop every MAC and recompute the chain with SHA-256."""
    out, prev = [], "0" * 64
    for raw in lines:
        record = json.loads(raw)
        record.pop("mac", None)
        record.pop("hash", None)
        record["prev"] = prev
        body = canonical(record)
        prev = hashlib.sha256(body).hexdigest()
        out.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
    return b"".join(out)


def cut_to_seal(batch: Batch, nth: int) -> None:
    """Keep the log up to and including its nth seal (0-based): what a cut after a job leaves."""
    lines = batch.lines()
    seals = [i for i, raw in enumerate(lines) if json.loads(raw)["event"] == "seal"]
    batch.log.write_bytes(b"".join(lines[: seals[nth] + 1]))


# ----------------------------------------------------------------------------------------------
# a key means every record is keyed


def test_macs_stripped_and_chain_recomputed_is_caught_with_the_key(batch: Batch) -> None:
    batch.log.write_bytes(rechain_plain(batch.lines()))
    batch.journal.unlink()
    doc = failed(batch.verify(anchor=False), "no MAC", "key was given")
    assert doc["problem"] == "mac-missing" and doc["first_bad_line"] == 1
    # the anchor alone (no key) catches it too: the anchored hashes were MACs
    failed(batch.verify(key=False), "anchor")
    # what is NOT caught: without the key and without the anchor, a recomputed plain chain verifies
    passed(batch.verify(anchor=False, key=False))


def test_a_run_without_the_key_does_not_continue_a_keyed_log(batch: Batch) -> None:
    before = batch.log.read_bytes()
    batch.job.write_text(batch.job.read_text().replace("audit: {key: {env: AUDIT_KEY}, anchor: witness/seals.jsonl}\n", ""))
    run = batch.run()
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "HMAC-chained" in run.stderr and "nothing was appended" in run.stderr
    assert batch.log.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# seals after every job, anchored on other storage


def test_every_job_is_sealed_and_every_seal_anchored(batch: Batch) -> None:
    records = batch.records()
    for i, record in enumerate(records):
        if record["event"].startswith("job_"):
            assert records[i + 1]["event"] == "seal" and records[i + 1]["job_id"] == record["job_id"]
    seals = [(r["seq"], r["hash"]) for r in records if r["event"] == "seal"]
    assert len(seals) == len(HOLDERS) + 1  # one per job, one at the run's end
    anchored = [json.loads(line) for line in batch.anchored()]
    assert [(a["seq"], a["hash"]) for a in anchored] == seals
    assert all(set(a) == {"seq", "hash", "time", "run_id"} for a in anchored)


def test_log_truncated_is_caught_by_the_anchor_and_by_a_held_seal(batch: Batch) -> None:
    final_seal = batch.records()[-1]["hash"]
    batch.log.write_bytes(b"".join(batch.lines()[:-3]))
    failed(batch.verify(), "log ends at seq", "anchor")
    failed(batch.verify("--seal", final_seal, anchor=False), "you hold")
    # the journal's run seal catches this cut as well, while the journal is there
    failed(batch.verify(anchor=False), "from the journal")


def test_records_after_the_last_job_seal_cut_with_the_journal_deleted(batch: Batch) -> None:
    """A killed run leaves at most one job unsealed; cutting back to an earlier job's seal is caught."""
    cut_to_seal(batch, 0)  # the second job, the run's end and the final seal are gone
    batch.journal.unlink()
    failed(batch.verify(), "log ends at seq")
    # NOT caught without the anchor: the cut ends on a valid seal and nothing else knows more
    passed(batch.verify(anchor=False))


def test_log_and_journal_rolled_back_together(batch: Batch) -> None:
    saved = batch.tmp / "saved-logs"
    shutil.copytree(batch.logs, saved)
    second = batch.run()  # a later run on the same cards (skipped: already loaded)
    assert second.returncode == 0, second.stderr
    shutil.rmtree(batch.logs)
    shutil.copytree(saved, batch.logs)  # both back to the earlier copy: consistent with each other
    failed(batch.verify(), "log ends at seq", "rolled back")
    held = json.loads(second.stdout)["seal"]  # the seal printed in the second run's report
    failed(batch.verify("--seal", held, anchor=False), "you hold")
    # NOT caught without the anchor or a held seal: the journal was rolled back with the log
    passed(batch.verify(anchor=False))


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_log_deleted_or_emptied(batch: Batch, damage: str) -> None:
    if damage == "deleted":
        batch.log.unlink()
    else:
        batch.log.write_bytes(b"")
    failed(batch.verify(anchor=False))  # the journal knows the run's seal: exit 4, not "no audit log"
    batch.journal.unlink()
    failed(batch.verify(), "anchor")
    failed(batch.verify("--seal", json.loads(batch.anchored()[-1])["hash"], anchor=False))
    # NOT caught without journal, anchor or held seal: nothing says a log existed
    plain = batch.verify(anchor=False)
    assert plain.returncode == (2 if damage == "deleted" else 0), plain.stdout


def test_a_run_refuses_to_start_a_new_chain_over_a_deleted_log(batch: Batch) -> None:
    batch.log.unlink()
    run = batch.run()
    assert run.returncode == 4, (run.returncode, run.stderr)
    assert "missing or empty" in run.stderr and "--accept-damaged-audit-tail" in run.stderr
    assert not batch.log.exists()
    accepted = batch.run("--accept-damaged-audit-tail", "log lost with the old disk, ticket 4711")
    assert accepted.returncode == 0, accepted.stderr
    first = batch.records()[0]
    assert first["event"] == "audit_tail_accepted" and first["problem"] == "deleted"
    assert first["reason"] == "log lost with the old disk, ticket 4711" and first["lost_seals"]
    doc = passed(batch.verify())
    assert any("accepted as lost" in note for note in doc["accepted_damage"])


def test_a_seal_removed_from_the_anchor_is_caught(batch: Batch) -> None:
    lines = batch.anchored()
    batch.anchor.write_bytes(b"".join(lines[:1] + lines[2:]))
    failed(batch.verify(), "removed from the anchor")


def test_an_anchor_reordered_is_caught(batch: Batch) -> None:
    lines = batch.anchored()
    batch.anchor.write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))
    doc = failed(batch.verify(), "out of order")
    assert doc["problem"] == "reordered"


def test_held_seal_must_be_a_seal(batch: Batch) -> None:
    run = batch.verify("--seal", "not-a-seal", anchor=False)
    assert run.returncode == 2


# ----------------------------------------------------------------------------------------------
# audit show verifies as it reads; operator


def test_audit_show_marks_a_record_that_does_not_verify(batch: Batch) -> None:
    lines = batch.lines()
    lines[3] = lines[3].replace(b'"card_serial":12345670', b'"card_serial":12345679')
    batch.log.write_bytes(b"".join(lines))
    shown = batch.cli("audit", "show", "--json", "--key-env", "AUDIT_KEY", env=batch.env)
    assert shown.returncode == 4, shown.stderr
    events = json.loads(shown.stdout)["events"]
    assert [e["seq"] for e in events if not e["verified"]] == [4]
    text = batch.cli("audit", "show", "--key-env", "AUDIT_KEY", env=batch.env)
    assert text.returncode == 4 and "NOT VERIFIED" in text.stdout
    bad = [line for line in text.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and "#4 " in bad[0]
    unknown = batch.cli("audit", "show", "--event", "no_such_event", env=batch.env)
    assert unknown.returncode == 2 and "job_loaded" in unknown.stderr


def test_operator_is_in_every_record_and_every_report(tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer) -> None:
    made = Batch(tmp_path, cli, canaries, ca)
    refused = made.run("--operator", "Ann\x1b[2J Lee")
    assert refused.returncode == 2 and "control characters" in refused.stderr and not made.log.exists()
    run = made.run(env={"PROVISION_OPERATOR": "LEE Ka Yan"})
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["operator"] == "LEE Ka Yan"
    assert {r["operator"] for r in made.records()} == {"LEE Ka Yan"}
    assert all(r["os_user"] and r["host"] for r in made.records())
    reports = made.logs / "reports"
    assert json.loads((reports / f"{doc['run_id']}.json").read_text())["operator"] == "LEE Ka Yan"
    assert "LEE Ka Yan" in (reports / f"{doc['run_id']}.csv").read_text()
    assert "LEE Ka Yan" in (reports / f"{doc['run_id']}.html").read_text()
    text = made.cli("audit", "show", "--key-env", "AUDIT_KEY", "--event", "job_loaded", env=made.env)
    assert text.returncode == 0 and "operator='LEE Ka Yan'" in text.stdout and "fingerprint=" in text.stdout


def test_run_anchor_option_overrides_the_job_file_and_an_unwritable_anchor_stops_the_run(
    tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer
) -> None:
    made = Batch(tmp_path, cli, canaries, ca)
    (tmp_path / "nowhere").write_text("a file, so no directory can be made under it\n")
    stopped = made.run("--anchor", str(tmp_path / "nowhere" / "seals.jsonl"))
    assert stopped.returncode == 3, (stopped.returncode, stopped.stderr)
    assert "cannot append to the audit anchor" in stopped.stderr and not made.log.exists()
    other = tmp_path / "elsewhere.jsonl"
    run = made.run("--anchor", str(other))
    assert run.returncode == 0, run.stderr
    assert not made.anchor.exists() and len(other.read_bytes().splitlines()) == len(HOLDERS) + 1
    passed(made.cli("audit", "verify", "--json", "--key-env", "AUDIT_KEY", "--anchor", str(other), env=made.env))


def test_time_stamped_seals_catch_a_rewritten_log(tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.helpers.tsa import serving_tsa

    made = Batch(tmp_path, cli, canaries, ca)
    with serving_tsa() as tsa:
        made.job.write_text(made.job.read_text().replace("anchor: witness/seals.jsonl}", f"timestamp: '{tsa.url}'}}"))
        run = made.run()
        assert run.returncode == 0, run.stderr
    cert = tmp_path / "tsa.pem"
    cert.write_bytes(tsa.cert.public_bytes(Encoding.PEM))
    stamps = made.logs / "audit-timestamps.jsonl"
    assert len(stamps.read_bytes().splitlines()) == len(HOLDERS) + 1
    ok = passed(made.verify("--tsa-cert", str(cert), anchor=False))
    assert "time-stamped by a TSA you trust" in ok["message"]
    # the whole log rewritten without the key, the journal deleted: the tokens name seals it lacks
    made.log.write_bytes(rechain_plain(made.lines()))
    made.journal.unlink()
    failed(made.verify("--timestamps", anchor=False, key=False), "time-stamped by a TSA")


# ----------------------------------------------------------------------------------------------
# the time-stamp tokens beside the log (audit-timestamps.jsonl)


class Stamped(Batch):
    """The batch, its seals also sent to a local TSA: the log's seals then say a token was asked for."""

    def __init__(self, tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer, tsa: Any) -> None:
        super().__init__(tmp_path, cli, canaries, ca)
        self.tsa = tsa
        self.job.write_text(self.job.read_text().replace(
            "anchor: witness/seals.jsonl}", f"anchor: witness/seals.jsonl, timestamp: '{tsa.url}'}}"))  # fmt: skip
        self.cert = tmp_path / "tsa.pem"
        from cryptography.hazmat.primitives.serialization import Encoding

        self.cert.write_bytes(tsa.cert.public_bytes(Encoding.PEM))

    @property
    def stamps(self) -> Path:
        return self.logs / "audit-timestamps.jsonl"

    def seals(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == "seal"]


@pytest.fixture
def stamped(tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer) -> Any:
    from tests.helpers.tsa import serving_tsa

    with serving_tsa() as tsa:
        made = Stamped(tmp_path, cli, canaries, ca, tsa)
        run = made.run()
        assert run.returncode == 0, run.stderr
        yield made


MISSING = "deleted, emptied, truncated or rolled back"


def test_no_false_alarm_with_time_stamps(stamped: Stamped) -> None:
    seals = stamped.seals()
    assert len(seals) == len(HOLDERS) + 1 and all(s["timestamp_requested"] is True for s in seals)
    tokens = [json.loads(line)["hash"] for line in stamped.stamps.read_bytes().splitlines()]
    assert tokens == [s["hash"] for s in seals]
    passed(stamped.verify())
    passed(stamped.verify(anchor=False))
    assert "time-stamped by a TSA you trust" in passed(stamped.verify("--tsa-cert", str(stamped.cert)))["message"]
    again = stamped.run()  # a second run appends its own tokens
    assert again.returncode == 0, again.stderr
    passed(stamped.verify("--tsa-cert", str(stamped.cert)))


def test_no_false_alarm_without_time_stamps(batch: Batch) -> None:
    assert not (batch.logs / "audit-timestamps.jsonl").exists()
    assert not any("timestamp_requested" in r for r in batch.records())
    passed(batch.verify())
    passed(batch.verify(anchor=False))


@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated", "last token cut", "rolled back"])
def test_time_stamps_deleted_emptied_truncated_or_rolled_back(stamped: Stamped, damage: str) -> None:
    early = stamped.stamps.read_bytes()
    if damage == "rolled back":  # a later run's tokens, then the file put back as it was before it
        again = stamped.run()
        assert again.returncode == 0, again.stderr
        passed(stamped.verify())
    full = stamped.stamps.read_bytes()
    lines = full.splitlines(keepends=True)
    if damage == "deleted":
        stamped.stamps.unlink()
    else:
        stamped.stamps.write_bytes({"emptied": b"", "truncated": full[: len(full) - len(lines[-1]) // 2],
                                    "last token cut": b"".join(lines[:-1]), "rolled back": early}[damage])  # fmt: skip
    failed(stamped.verify(), MISSING)
    # the log's own seals know: no anchor, no journal and no --timestamps are needed
    stamped.journal.unlink()
    failed(stamped.verify(anchor=False), MISSING)
    checked = stamped.verify("--tsa-cert", str(stamped.cert), anchor=False)
    assert checked.returncode == 4 and json.loads(checked.stdout)["problem"] in ("timestamp-missing", "timestamp-invalid")


def test_time_stamps_deleted_and_the_log_rewritten_is_caught_only_by_the_key_or_the_anchor(stamped: Stamped) -> None:
    stamped.stamps.unlink()
    stripped = []
    for raw in stamped.lines():
        record = json.loads(raw)
        record.pop("timestamp_requested", None)
        stripped.append(canonical(record) + b"\n")
    stamped.log.write_bytes(rechain_plain(stripped))
    stamped.journal.unlink()
    failed(stamped.verify(anchor=False), "MAC")  # the key: the rewritten records have none
    failed(stamped.verify(key=False), "anchor")  # the anchor: its seals are not this chain's
    # NOT caught without the key and the anchor (or a held seal): nothing else knew of the tokens
    passed(stamped.verify(anchor=False, key=False))


def test_a_link_in_place_of_the_time_stamps_is_refused(stamped: Stamped) -> None:
    copy = stamped.tmp / "elsewhere.jsonl"
    saved = stamped.stamps.read_bytes()
    copy.write_bytes(saved)
    stamped.stamps.unlink()
    stamped.stamps.symlink_to(copy)
    for done in (stamped.verify(), stamped.run()):
        assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
        assert "audit-timestamps.jsonl is a symbolic link" in done.stderr
    assert copy.read_bytes() == saved  # the link's target untouched


def test_time_stamps_on_read_only_media(stamped: Stamped, read_only_dir: Any) -> None:
    """An auditor's copy on read-only media: intact, it verifies; without its tokens, it fails."""
    where, freeze = read_only_dir
    intact, robbed = where / "intact", where / "robbed"
    records_only = shutil.ignore_patterns(".reserve", "reports", "store")  # the tmpfs is small
    shutil.copytree(stamped.logs, intact, ignore=records_only)
    shutil.copytree(stamped.logs, robbed, ignore=records_only)
    (robbed / "audit-timestamps.jsonl").unlink()
    freeze()
    with pytest.raises(OSError):
        (intact / "probe").write_bytes(b"")  # really read-only, for root too
    passed(stamped.verify("--logs", str(intact), "--tsa-cert", str(stamped.cert)))
    failed(stamped.verify("--logs", str(robbed)), MISSING)


def test_a_run_killed_while_the_tsa_answers_is_settled_by_the_next_run(
    tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer
) -> None:
    """A seal whose token never came because the process was killed waiting for it: the next run
    records why (timestamp_failed), so verify does not fail on it ever after."""
    import os
    import signal
    import subprocess
    import time

    from tests.helpers.product import product_env, provision_cmd
    from tests.helpers.tsa import serving_tsa

    with serving_tsa() as tsa:
        made = Stamped(tmp_path, cli, canaries, ca, tsa)
        tsa.stall = True
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
        env.update(made.env, PROVISION_LOGS=str(made.logs), PROVISION_CACHE_DIR=str(tmp_path / "cache"))
        proc = subprocess.Popen([*provision_cmd(), "run", str(made.job), "--sim", "--unattended", "--no-progress"],
                                cwd=tmp_path, env=product_env(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            assert tsa.stalled.wait(120), "the run never asked the TSA"
            deadline = time.monotonic() + 10
            while not (made.log.exists() and any(r["event"] == "seal" for r in made.records())):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        tsa.stall = False
        tsa.released.set()
        killed_seal = made.seals()[-1]
        assert killed_seal["timestamp_requested"] is True
        assert not made.stamps.exists() or killed_seal["hash"] not in made.stamps.read_text()
        failed(made.verify(), MISSING)  # before the next run: a token that should exist is missing
        run = made.run()
        assert run.returncode == 0, run.stderr
    settled = [r for r in made.records() if r["event"] == "timestamp_failed"]
    assert [r["seal_seq"] for r in settled] == [killed_seal["seq"]] and "killed" in settled[0]["error"]
    assert any(r["event"] == "run_abandoned" for r in made.records())
    passed(made.verify("--tsa-cert", str(made.cert)))


# ----------------------------------------------------------------------------------------------
# the journal keeps every seal (schema 3), and what that does and does not catch

SNAPSHOT = """
import shutil, sqlite3, sys
from pathlib import Path
logs, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.mkdir(parents=True)
shutil.copy2(logs / "audit.jsonl", dest / "audit.jsonl")
source, copy = sqlite3.connect(logs / "journal.sqlite3"), sqlite3.connect(dest / "journal.sqlite3")
source.backup(copy)
copy.close()
source.close()
print("123456")
"""


@pytest.fixture
def mid_run(tmp_path: Path, cli: CLI, canaries: Any, ca: fixtures.Issuer) -> Batch:
    """A run of three jobs whose second and third PINs come from a program that first copies the
    log and the journal (a backup taken while the run goes on): ``saved/after-1`` holds them as
    they were after the first job, ``saved/after-2`` after the second."""
    import sys

    made = Batch(tmp_path, cli, canaries, ca, holders=(*HOLDERS, "LEE Ka Yan"))
    script = tmp_path / "snapshot.py"
    script.write_text(SNAPSHOT)
    text = made.job.read_text()
    for n, job in ((1, "HK-1"), (2, "HK-2")):
        head, tail = text.split(f"  - id: {job}\n", 1)
        tail = tail.replace("pin: {env: SIM_PIN}", f"pin: {{command: ['{sys.executable}', '{script}', "
                            f"'{made.logs}', '{tmp_path / 'saved' / f'after-{n}'}']}}", 1)  # fmt: skip
        text = f"{head}  - id: {job}\n{tail}"
    made.job.write_text(text)
    run = made.run()
    assert run.returncode == 0, run.stderr
    passed(made.verify())
    return made


def _job_seals(log: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, log.read_bytes().splitlines()) if r["event"] == "seal"]


def test_the_journal_keeps_every_seal(mid_run: Batch) -> None:
    import sqlite3

    seals = [(r["seq"], r["hash"]) for r in _job_seals(mid_run.log)]
    assert len(seals) == 3 + 1  # one per job, one at the run's end
    with sqlite3.connect(mid_run.journal) as db:
        kept = db.execute("SELECT seq, hash FROM seals ORDER BY seq").fetchall()
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    assert kept == seals and schema == "3"
    # the copies taken mid-run are real: after one job, one seal; after two, two
    assert len(_job_seals(mid_run.tmp / "saved" / "after-1" / "audit.jsonl")) == 1
    assert len(_job_seals(mid_run.tmp / "saved" / "after-2" / "audit.jsonl")) == 2


def test_log_and_journal_rolled_back_together_to_mid_run(mid_run: Batch) -> None:
    """Both put back to the copy taken after the first job of the same run: they agree with each
    other, so however many seals the journal keeps, it cannot see it; the anchor and a held seal do."""
    final = _job_seals(mid_run.log)[-1]["hash"]  # the run's seal, printed in its report
    saved = mid_run.tmp / "saved" / "after-1"
    for name in ("journal.sqlite3-wal", "journal.sqlite3-shm"):
        (mid_run.logs / name).unlink(missing_ok=True)
    shutil.copy2(saved / "audit.jsonl", mid_run.log)
    shutil.copy2(saved / "journal.sqlite3", mid_run.journal)
    failed(mid_run.verify(), "log ends at seq", "rolled back")  # with the anchor
    failed(mid_run.verify("--seal", final, anchor=False), "you hold")
    # NOT caught without the anchor or a held seal: the journal was rolled back with the log
    passed(mid_run.verify(anchor=False))


def test_log_cut_back_within_a_killed_run_is_caught_by_the_journal(mid_run: Batch) -> None:
    """The copy after the second job is what a run killed then leaves (the journal says 'running',
    no run seal). The log cut back to the first job's seal, the journal left as it is: the
    journal's job seals catch it (one seal per run could not: the killed run had none)."""
    logs = mid_run.tmp / "saved" / "after-2"
    cut = b"".join(line for line in (logs / "audit.jsonl").read_bytes().splitlines(keepends=True)
                   if json.loads(line)["seq"] <= _job_seals(logs / "audit.jsonl")[0]["seq"])  # fmt: skip
    (logs / "audit.jsonl").write_bytes(cut)
    verify = ("audit", "verify", "--json", "--key-env", "AUDIT_KEY", "--logs", str(logs))
    failed(mid_run.cli(*verify, env=mid_run.env), "from the journal", "rolled back")
    failed(mid_run.cli(*verify, "--anchor", str(mid_run.anchor), env=mid_run.env), "anchor")
    # a journal of schema 2 (run seals only) still opens, and shows the gap this closed
    import sqlite3

    with sqlite3.connect(logs / "journal.sqlite3") as db:
        db.execute("DROP TABLE seals")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    passed(mid_run.cli(*verify, env=mid_run.env))
