"""Many counters, one queue, on a real PostgreSQL server (a private cluster, never a mock).

Stations are separate processes with in-process simulated cards; a card's state lives in a file, so
"the same card at another station" is the same file opened by another process.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from provision import journal as jn
from provision.queue import open_queue
from provision.queue.postgres import PostgresQueue
from tests.helpers.pg_cluster import Cluster
from tests.queue.conftest import FIRST_SERIAL, provision_cli, start_station, station_result, write_batch

pytestmark = pytest.mark.postgres


def push(jobfile: Path, url: str, logs: Path) -> None:
    done = provision_cli("queue", "push", str(jobfile), "--queue", url, "--unattended", "--json", logs=logs)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["batch"]


def import_stations(url: str, batch: str) -> dict[str, list[str]]:
    """job_id → stations that finished import_key for it."""
    queue = PostgresQueue(url, station="checker")
    try:
        found: dict[str, list[str]] = {}
        for station, job_id, action, phase in queue.steps_of_batch(batch):
            if action == "import_key" and phase == "end":
                found.setdefault(job_id, []).append(station)
        return found
    finally:
        queue.close()


def shared_jobs(url: str, batch: str) -> dict[str, jn.JobRecord]:
    queue = PostgresQueue(url, station="checker")
    try:
        return {j.job_id: j for j in queue.jobs(batch=batch)}
    finally:
        queue.close()


def test_push_is_idempotent_and_one_claim_wins(tmp_path: Path, canaries: Any, queue_ca: Any, pg_url: str) -> None:
    jobfile = write_batch(tmp_path, canaries, queue_ca, 3)
    push(jobfile, pg_url, tmp_path / "logs")
    again = provision_cli("queue", "push", str(jobfile), "--queue", pg_url, "--unattended", logs=tmp_path / "logs")
    assert again.returncode == 0 and "0 job(s) added" in again.stdout and "3 already there" in again.stdout
    a = open_queue(pg_url, logs=tmp_path, station="A", lease_seconds=1.0)
    b = open_queue(pg_url, logs=tmp_path, station="B", lease_seconds=1.0)
    try:
        first = a.claim("queue-batch", "Q-0000", "run-a", card_serial=FIRST_SERIAL)
        second = b.claim("queue-batch", "Q-0000", "run-b", card_serial=FIRST_SERIAL)
        assert first.granted and not first.resuming
        assert not second.granted and "station A" in second.reason
        # A stops renewing (as if killed): after the lease the job reads in doubt and B resumes it.
        a.close()
        time.sleep(1.3)
        assert b.job("queue-batch", "Q-0000").status == jn.IN_DOUBT  # type: ignore[union-attr]
        third = b.claim("queue-batch", "Q-0000", "run-b", card_serial=FIRST_SERIAL)
        assert third.granted and third.resuming and third.epoch == first.epoch + 1
        b.set_job("queue-batch", "Q-0000", "run-b", "HOLDER 0000", jn.LOADED, card_serial=FIRST_SERIAL)
        assert b.job("queue-batch", "Q-0000").status == jn.LOADED  # type: ignore[union-attr]
        late = b.claim("queue-batch", "Q-0000", "run-c", card_serial=FIRST_SERIAL)
        assert not late.granted and "already loaded" in late.reason
        missing = b.claim("queue-batch", "NOPE", "run-b", card_serial=1)
        assert not missing.granted and "not in the queue" in missing.reason
    finally:
        b.close()


def test_station_refuses_a_batch_not_pushed_or_a_different_file(tmp_path: Path, canaries: Any, queue_ca: Any,
                                                                  pg_url: str) -> None:  # fmt: skip
    jobfile = write_batch(tmp_path, canaries, queue_ca, 1)
    run = provision_cli("run", str(jobfile), "--sim", "--unattended", "--no-progress", "--queue", pg_url,
                        "--station", "S1", logs=tmp_path / "logs")  # fmt: skip
    assert run.returncode == 2 and "not in the queue" in run.stderr, run.stderr
    push(jobfile, pg_url, tmp_path / "logs")
    jobfile.write_text(jobfile.read_text() + "# changed\n")
    run = provision_cli("run", str(jobfile), "--sim", "--unattended", "--no-progress", "--queue", pg_url,
                        "--station", "S1", logs=tmp_path / "logs")  # fmt: skip
    assert run.returncode == 2 and "not the job file pushed" in run.stderr, run.stderr


def test_four_stations_race_over_200_jobs_each_loaded_exactly_once(tmp_path: Path, canaries: Any, queue_ca: Any,
                                                                   pg_url: str) -> None:  # fmt: skip
    count, stations = 200, ["counter-1", "counter-2", "counter-3", "counter-4"]
    jobfile = write_batch(tmp_path, canaries, queue_ca, count)
    push(jobfile, pg_url, tmp_path / "logs-push")
    rng = random.Random(9)
    serials = [FIRST_SERIAL + i for i in range(count)]
    decks: dict[str, list[int]] = {name: [] for name in stations}
    for i, serial in enumerate(serials):  # every card at one station, a fifth of them at a second one too
        decks[stations[i % 4]].append(serial)
        if rng.random() < 0.2:
            decks[rng.choice([s for s in stations if s != stations[i % 4]])].append(serial)
    procs = {}
    for name in stations:
        deck = decks[name]
        rng.shuffle(deck)
        cards = [(serial, tmp_path / f"cards-{name}" / f"{serial}.state") for serial in deck]
        for _, state in cards:
            state.parent.mkdir(exist_ok=True)
        procs[name] = start_station(tmp_path, name, jobfile=jobfile, queue=pg_url, latency_ms=0.5,
                                    readers=[cards[0::2], cards[1::2]])  # fmt: skip
    results = {name: station_result(proc) for name, proc in procs.items()}
    # Exactly one copy of each card received write commands; every other copy was refused untouched.
    writers: dict[int, list[str]] = {}
    for name, result in results.items():
        for serial, writes in result["writes"].items():
            if writes:
                writers.setdefault(int(serial), []).append(name)
    assert sorted(writers) == serials and all(len(w) == 1 for w in writers.values()), writers
    presented = sum(len(deck) for deck in decks.values())
    # Second copies were refused, or never inserted once the queue had nothing left for that station.
    assert 0 < sum(len(r["refused"]) for r in results.values()) <= presented - count
    jobs = shared_jobs(pg_url, "queue-batch")
    assert {j.status for j in jobs.values()} == {jn.LOADED} and len(jobs) == count
    imports = import_stations(pg_url, "queue-batch")
    assert len(imports) == count and all(len(s) == 1 for s in imports.values())
    # Every station's audit chain is in the database and verifies.
    verified = provision_cli("audit", "verify", "--queue", pg_url, "--json", logs=tmp_path / "logs-push")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    chains = json.loads(verified.stdout)["stations"]
    assert sorted(c["station"] for c in chains) == stations and all(c["ok"] and c["seals_checked"] for c in chains)


def test_killed_station_job_is_finished_by_another_after_the_lease(tmp_path: Path, canaries: Any, queue_ca: Any,
                                                                     pg_url: str) -> None:  # fmt: skip
    jobfile = write_batch(tmp_path, canaries, queue_ca, 3)
    push(jobfile, pg_url, tmp_path / "logs-push")
    cards = tmp_path / "cards"  # the physical cards: one state file each, carried from station to station
    cards.mkdir()
    deck = [(FIRST_SERIAL + i, cards / f"{i}.state") for i in range(3)]
    lease = 2.0
    doomed = start_station(tmp_path, "dies", jobfile=jobfile, queue=pg_url, lease=lease, readers=[deck[:1]],
                           env={"PROVISION_FAULT_KILL_AT": "write_certificate:begin"})  # fmt: skip
    doomed.communicate(timeout=120)
    assert doomed.returncode == -signal.SIGKILL
    held = shared_jobs(pg_url, "queue-batch")["Q-0000"]
    assert held.status == jn.IN_PROGRESS  # its lease is still running
    # A station that sees the card within the lease is refused, with zero writes.
    early = station_result(start_station(tmp_path, "early", jobfile=jobfile, queue=pg_url, lease=lease,
                                         readers=[[(FIRST_SERIAL, tmp_path / "copy.state")]]))  # fmt: skip
    assert early["writes"] == {str(FIRST_SERIAL): 0} and "station dies" in early["refused"][0]["reason"]
    time.sleep(lease + 0.5)
    assert shared_jobs(pg_url, "queue-batch")["Q-0000"].status == jn.IN_DOUBT
    rescue = station_result(start_station(tmp_path, "rescue", jobfile=jobfile, queue=pg_url, lease=lease,
                                          readers=[[deck[1], deck[0], deck[2]]]))  # fmt: skip
    assert rescue["exit_code"] == 0, rescue["jobs"]
    jobs = shared_jobs(pg_url, "queue-batch")
    assert {j.status for j in jobs.values()} == {jn.LOADED}
    queue = PostgresQueue(pg_url, station="checker")
    try:
        steps = [(s, a, p) for s, j, a, p in queue.steps_of_batch("queue-batch") if j == "Q-0000"]
    finally:
        queue.close()
    assert ("dies", "import_key", "end") in steps and ("rescue", "commit", "end") in steps
    assert ("rescue", "import_key", "begin") not in steps  # the journal and the card say the key is there
    assert ("rescue", "write_certificate", "end") in steps and rescue["writes"][str(FIRST_SERIAL)] > 0
    assert not any(s == "dies" and a == "write_certificate" and p == "end" for s, a, p in steps)


def test_database_restart_mid_run_loses_nothing(tmp_path: Path, canaries: Any, queue_ca: Any, pg_url: str,
                                               pg_cluster: Cluster) -> None:  # fmt: skip
    count, stations = 60, ["r-1", "r-2", "r-3", "r-4"]
    jobfile = write_batch(tmp_path, canaries, queue_ca, count)
    push(jobfile, pg_url, tmp_path / "logs-push")
    procs = {}
    for k, name in enumerate(stations):
        deck = [(FIRST_SERIAL + i, tmp_path / f"cards-{name}" / f"{i}.state") for i in range(k, count, 4)]
        deck[0][1].parent.mkdir()
        procs[name] = start_station(tmp_path, name, jobfile=jobfile, queue=pg_url, latency_ms=8.0, readers=[deck])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # restart once a few jobs are loaded, well before the end
        loaded = sum(1 for j in shared_jobs(pg_url, "queue-batch").values() if j.status == jn.LOADED)
        if loaded >= 8:
            break
        time.sleep(0.1)
    assert all(p.poll() is None for p in procs.values()), "the batch ended before the restart"
    pg_cluster.restart()
    results = {name: station_result(proc) for name, proc in procs.items()}
    assert all(r["exit_code"] in (0, 1) for r in results.values())
    jobs = shared_jobs(pg_url, "queue-batch")
    assert {j.status for j in jobs.values()} == {jn.LOADED}, {j.job_id: j.status for j in jobs.values()}
    imports = import_stations(pg_url, "queue-batch")
    assert len(imports) == count and all(len(s) == 1 for s in imports.values())
    queue = PostgresQueue(pg_url, station="checker")
    try:  # the runs began before the restart and were finished after it, by the same processes
        assert sorted((r.status, r.seal is not None) for r in queue.runs()) == [("finished", True)] * len(stations)
    finally:
        queue.close()
    verified = provision_cli("audit", "verify", "--queue", pg_url, logs=tmp_path / "logs-push")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sqlite_url_is_the_same_interface_for_one_station(tmp_path: Path) -> None:
    from provision.errors import QueueError
    from provision.queue import JobQueue
    from provision.queue.sqlite import SqliteQueue

    queue = open_queue(f"sqlite:///{tmp_path}/j.sqlite3", logs=tmp_path / "logs", station="only")
    try:
        assert isinstance(queue, SqliteQueue) and isinstance(queue, JobQueue) and not queue.shared
        assert queue.claim("b", "j", "r", card_serial=1).granted
        assert queue.mirror_audit("audit") == "audit"
    finally:
        queue.close()
    assert isinstance(open_queue(None, logs=tmp_path / "logs"), SqliteQueue)
    with pytest.raises(QueueError) as refused:
        open_queue("mysql://root:hunter2@db/x", logs=tmp_path)
    assert "hunter2" not in refused.value.message


def test_walk_in_jobs_are_shared_out_between_stations(tmp_path: Path, canaries: Any, queue_ca: Any,
                                                      pg_url: str) -> None:  # fmt: skip
    jobfile = write_batch(tmp_path, canaries, queue_ca, 8, any_card=True)
    push(jobfile, pg_url, tmp_path / "logs-push")
    procs = [start_station(tmp_path, name, jobfile=jobfile, queue=pg_url, latency_ms=1.0,
                           readers=[[(FIRST_SERIAL + 100 * k + i, tmp_path / f"{name}-{i}.state") for i in range(4)]])
             for k, name in enumerate(["w-1", "w-2"])]  # fmt: skip
    results = [station_result(p) for p in procs]
    assert all(not r["refused"] for r in results)
    jobs = shared_jobs(pg_url, "queue-batch")
    assert {j.status for j in jobs.values()} == {jn.LOADED}
    assert len({j.card_serial for j in jobs.values()}) == 8  # eight different cards, one job each
