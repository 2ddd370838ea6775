"""Many counters, one queue: jobs per second with 1, 2, 4, 8 stations on one PostgreSQL server.

Each station is its own process (tests/queue/station.py) with one in-process simulated reader and
its share of the cards (modelled latency per APDU); all of them claim from one queue in a private
cluster (tests/helpers/pg_cluster.py). Throughput is measured from the journal itself: from the
first step any station began to the last commit, so process start-up and PKCS#12 decryption do not
count. The claim overhead is claim + release against the same server, per job, without cards.
No asserts: it prints what it measured.

  python bench/queue_bench.py [--jobs 240] [--latency-ms 2] [--stations 1,2,4,8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision import fixtures  # noqa: E402
from provision.queue.postgres import PostgresQueue  # noqa: E402
from tests.helpers.pg_cluster import Cluster, pg_bin  # noqa: E402
from tests.queue.conftest import FIRST_SERIAL, start_station, station_result, write_batch  # noqa: E402


class _Secrets:
    """What write_batch needs from the tests' canaries: a password and owner-only secret files."""

    pkcs12_password = "4242424242424242"

    def write_secret_file(self, path: Path, value: str) -> Path:
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stations_run(cluster: Cluster, work: Path, jobfile: Path, stations: int, jobs: int, latency_ms: float) -> dict[str, float]:
    url = cluster.new_database()
    queue = PostgresQueue(url, station="bench")
    try:
        from provision.jobfile import load_jobfile

        queue.push(load_jobfile(jobfile, unattended=True))
    finally:
        queue.close()
    run_dir = work / f"run-{stations}"
    run_dir.mkdir()
    procs = []
    for k in range(stations):
        deck = [(FIRST_SERIAL + i, run_dir / f"card-{i}.state") for i in range(k, jobs, stations)]
        procs.append(start_station(run_dir, f"s{k}", jobfile=jobfile, queue=url, latency_ms=latency_ms, readers=[deck]))
    wall = time.perf_counter()
    for proc in procs:
        station_result(proc, timeout=900)
    wall = time.perf_counter() - wall
    queue = PostgresQueue(url, station="bench")
    try:
        with queue.raw() as conn:
            first, last = conn.execute(
                "SELECT min(time) FILTER (WHERE phase = 'begin'), max(time) FILTER (WHERE action = 'commit' "
                "AND phase = 'end') FROM provision_steps").fetchone()  # type: ignore[misc]
            loaded = conn.execute("SELECT count(*) FROM provision_jobs WHERE status = 'loaded'").fetchone()[0]  # type: ignore[index]
    finally:
        queue.close()
    span = _moment(last) - _moment(first)
    return {"stations": stations, "loaded": loaded, "span": span, "jobs_per_second": loaded / span, "wall": wall}


def claim_overhead(cluster: Cluster, work: Path, jobfile: Path, jobs: int, claimers: int) -> list[float]:
    """Seconds per claim + release, ``claimers`` threads (one connection each) over one queue."""
    from provision.jobfile import load_jobfile

    url = cluster.new_database()
    setup = PostgresQueue(url, station="setup")
    setup.push(load_jobfile(jobfile, unattended=True))
    setup.close()
    times: list[float] = []
    lock = threading.Lock()
    ids = [f"Q-{i:04d}" for i in range(jobs)]

    def claimer(k: int) -> None:
        queue = PostgresQueue(url, station=f"c{k}")
        mine = []
        for job_id in ids[k::claimers]:
            start = time.perf_counter()
            claim = queue.claim("queue-batch", job_id, f"run-{k}", card_serial=None)
            assert claim.granted
            queue.release("queue-batch", job_id)
            mine.append(time.perf_counter() - start)
        queue.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--stations", default="1,2,4,8")
    args = parser.parse_args()
    bin_dir = pg_bin()
    if bin_dir is None:
        print("PostgreSQL is not installed (apt-get install postgresql); nothing measured")
        return 0
    cluster = Cluster(bin_dir)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="provision-queue-bench-") as tmp:
            work = Path(tmp)
            (work / "batch").mkdir()
            jobfile = write_batch(work / "batch", _Secrets(), fixtures.make_ca("Queue Bench CA"), args.jobs)
            print(f"{args.jobs} jobs, simulated cards with {args.latency_ms:g} ms per APDU, one reader per station, "
                  f"one PostgreSQL {bin_dir.parent.name} on this machine")  # fmt: skip
            print(f"{'stations':>8}  {'loaded':>6}  {'jobs/s':>7}  {'speed-up':>8}  {'span s':>7}  {'wall s':>7}")
            base = None
            for n in (int(x) for x in args.stations.split(",")):
                r = stations_run(cluster, work, jobfile, n, args.jobs, args.latency_ms)
                base = base or r["jobs_per_second"]
                print(f"{n:>8}  {int(r['loaded']):>6}  {r['jobs_per_second']:>7.1f}  {r['jobs_per_second'] / base:>7.2f}x  "
                      f"{r['span']:>7.2f}  {r['wall']:>7.2f}")  # fmt: skip
            print()
            print("claim overhead per job (claim + release, no card):")
            for claimers in (1, 4, 8):
                times = claim_overhead(cluster, work, jobfile, args.jobs, claimers)
                q = statistics.quantiles(times, n=20)
                print(f"  {claimers} concurrent claimer(s): mean {statistics.mean(times) * 1000:.2f} ms, "
                      f"median {statistics.median(times) * 1000:.2f} ms, p95 {q[18] * 1000:.2f} ms")  # fmt: skip
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
