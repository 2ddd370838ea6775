"""provision benchmarks: ratios against a baseline measured in the same run (machines are noisy).

Prints one table and writes bench/results.json. Nothing here is an assert: targets are reported
as met or not, with the measured numbers, so a slow machine never fails a build.

  python bench/run.py            # everything (about 12 minutes on 2 cores)
  python bench/run.py --quick    # fewer repeats, a 1,000-card P6, 100,000 audit events (about 2 minutes)
  python bench/run.py P4 P5      # selected measures (P1 P7 P2 P3 P4 P5 P6 RTT AUDIT)

The card measures (P1, P7, P2, P3) run a private pcscd with 16 vpcd readers (pcscd's limit) named
like a YubiKey's (so that ykman talks to them) and serve simulated cards (YubiKey 5.4.3 model: 3DES
default management key, which yubico-piv-tool 2.2 needs) from this process, each measuring its own
answer time; every tool gets a fresh card per measurement. bench/readme_table.py turns
bench/results.json (or several copies of it) into the table in docs/development.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


QUICK = False


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_big_jobfile(directory: Path, cards: int) -> Path:
    (directory / "c.p12").write_bytes(b"x")
    lines = [
        "version: 1",
        "batch: big",
        "timezone: Asia/Hong_Kong",
        "defaults:",
        "  slot: 9c",
        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"',
        "  pin: {env: BENCH_PIN}",
        "  replace: archive",
        "cards:",
    ]
    for n in range(cards):
        lines += [
            f"  - id: HK-{n:08d}",
            f"    holder: HOLDER Number {n}",
            f"    card: {{serial: {10_000_000 + n}}}",
            "    pkcs12:",
            "      path: c.p12",
            "      password: {env: BENCH_P12}",
            f"    expect: {{subject_cn: HOLDER Number {n}, not_after_after: 2027-01-01}}",
            '    export: {pem: "out/{job.id}.pem"}',
        ]
    path = directory / "big.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def p4_validate_ratio() -> dict[str, object]:
    import yaml

    from provision.jobfile import load_jobfile

    os.environ.setdefault("BENCH_PIN", "0")
    os.environ.setdefault("BENCH_P12", "0")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_big_jobfile(Path(tmp), 10_000)
        text = path.read_text()
        cache = os.environ.get("PROVISION_CACHE_DIR")
        os.environ["PROVISION_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            load_jobfile(path)  # warm caches (schema compile) as a long-running process would have
            baseline = best_of(lambda: yaml.load(text, Loader=yaml.CSafeLoader), 3)
            repeat = best_of(lambda: load_jobfile(path), 3)  # the text passed before: no schema check
            os.environ["PROVISION_CACHE_DIR"] = "off"
            ours = best_of(lambda: load_jobfile(path), 3)  # the measure: every card checked
        finally:
            if cache is None:
                os.environ.pop("PROVISION_CACHE_DIR", None)
            else:
                os.environ["PROVISION_CACHE_DIR"] = cache
    ratio = ours / baseline
    return {"id": "P4", "measure": "validate of a 10,000-card job file / bare yaml.CSafeLoader parse",
            "value": round(ratio, 2), "target": "<= 3x", "met": ratio <= 3.0,
            "detail": f"{ours:.3f} s vs {baseline:.3f} s; the same text again (schema check remembered) {repeat:.3f} s"}  # fmt: skip


def p5_help_ratio() -> dict[str, object]:
    import compileall

    # An installed package has its bytecode compiled; PYTHONDONTWRITEBYTECODE may be set here.
    compileall.compile_dir(REPO / "provision", quiet=1)
    script = Path(sys.executable).with_name("provision")
    provision = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "provision", "--help"]
    bare = [sys.executable, "-c", "pass"]

    def run(argv: list[str]) -> float:
        samples = []
        for _ in range(15):
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, cwd=REPO)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    ours, baseline = run(provision), run(bare)
    ratio = ours / baseline
    return {"id": "P5", "measure": "provision --help start-up / python -c pass", "value": round(ratio, 2),
            "detail": f"{ours * 1000:.1f} ms vs {baseline * 1000:.1f} ms", "target": "<= 2x", "met": ratio <= 2.0}  # fmt: skip


# --- card measures (P1, P2, P3): one private pcscd for all of them ---------------------------------

_CARD_CACHE: dict[str, object] = {}
PCSCD_READERS = 16


def _daemon_and_work() -> tuple[object, Path]:
    if "daemon" not in _CARD_CACHE:
        from bench import cards

        work = _CARD_CACHE["work_root"]  # PCSCLITE_CSOCK_NAME is work/pcscd/pcscd.comm (see main)
        assert isinstance(work, Path)
        # pcscd serves at most 16 readers (PCSCLITE_MAX_READERS_CONTEXTS in Debian's build)
        _CARD_CACHE["daemon"] = cards.bench_pcscd(work / "pcscd", readers=PCSCD_READERS)
    return _CARD_CACHE["daemon"], _CARD_CACHE["work_root"]  # type: ignore[return-value]


def _p1_p2_data() -> dict[str, object]:
    if "p1p2" not in _CARD_CACHE:
        from bench import cards

        daemon, work = _daemon_and_work()
        data = cards.p1_p2(daemon, work, repeat=1, latencies=(0.0,))
        _CARD_CACHE["p1p2"] = data
    return _CARD_CACHE["p1p2"]  # type: ignore[return-value]


CARD_MODEL = "simulated YubiKey 5.4.3 (RSA-2048 PKCS#12 into 9C over an old certificate) behind pcscd + vpcd"


def p1_load_time() -> list[dict[str, object]]:
    """P1: the whole ``provision run`` of one card against each peer's same-checklist script and
    bare import, and against the card's own APDU time, all at 20 ms/APDU, interleaved in one run."""
    from bench import cards

    daemon, work = _daemon_and_work()
    t = cards.p1_checklist(daemon, work, repeat=3 if QUICK else 7)
    ours = t["provision run"]
    checklists = {n: v for n, v in t.items() if "checklist" in n}
    fastest_name = min(checklists, key=lambda n: checklists[n]["seconds"])
    fastest = checklists[fastest_name]
    ratio = ours["seconds"] / fastest["seconds"]
    card_ratio = ours["seconds"] / ours["card_seconds"]
    detail = "; ".join(f"{n} {v['seconds'] * 1000:.0f} ms ({v['apdus']} APDUs, card {v['card_seconds'] * 1000:.0f} ms)"
                       for n, v in t.items())  # fmt: skip
    common = {"seconds": {n: round(v["seconds"], 4) for n, v in t.items()}, "tools": t, "latency_ms": 20.0,
              "card_model": CARD_MODEL}  # fmt: skip
    floor = _p1_floor(work)
    budget_ms = (1.25 - 1) * ours["card_seconds"] * 1000
    why = (f"; the floor of any Python tool doing this load, measured in this run: the interpreter with the "
           f"libraries it cannot do without {floor['libraries_ms']:.0f} ms + opening the PKCS#12 "
           f"{floor['pkcs12_ms']:.0f} ms (of it cryptography's RSA key check {floor['rsa_check_ms']:.0f} ms) = "
           f"{floor['libraries_ms'] + floor['pkcs12_ms']:.0f} ms, where 1.25x leaves {budget_ms:.0f} ms to all software")  # fmt: skip
    return [
        {"id": "P1", "measure": "provision run, card 20 ms/APDU: ours / fastest peer's same-checklist script",
         "value": round(ratio, 2), "target": "<= 0.5x", "met": ratio <= 0.5, "fastest_peer": fastest_name,
         "detail": detail, **common},
        {"id": "P1", "measure": "same: ours / the card's own APDU time", "value": round(card_ratio, 2),
         "target": "<= 1.25x", "met": card_ratio <= 1.25,
         "detail": f"{ours['seconds'] * 1000:.0f} ms vs {ours['card_seconds'] * 1000:.0f} ms for {ours['apdus']} APDUs "
                   "(measured at the card)" + why, "floor": floor, "latency_ms": 20.0, "card_model": CARD_MODEL},
    ]  # fmt: skip


def _p1_floor(work: Path) -> dict[str, float]:
    """What any Python tool pays for this load before its own code: the interpreter importing the
    libraries (bench/profile_load.py's floor), and opening the same RSA-2048 PKCS#12 in process,
    with the part of it that is cryptography checking the RSA key (its primality tests)."""
    import statistics

    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        load_der_private_key,
        pkcs12,
    )

    from bench import cards
    from bench.profile_load import python_floor

    libraries = python_floor(samples=5)["python importing only the libraries"]
    material = cards.Material(work / "floor")
    data, password = material.p12.read_bytes(), cards.P12_PASSWORD.encode()

    def median_ms(fn: object, n: int = 9) -> float:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    key = pkcs12.load_pkcs12(data, password).key
    assert key is not None
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    checked = median_ms(lambda: load_der_private_key(der, None))
    unchecked = median_ms(lambda: load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True))
    return {"libraries_ms": round(libraries * 1000, 1), "pkcs12_ms": round(median_ms(lambda: pkcs12.load_pkcs12(data, password)), 1),
            "rsa_check_ms": round(checked - unchecked, 1)}  # fmt: skip


def ratio_allowance(card_seconds: float) -> float:
    """Milliseconds of software a card may take at P7's 1.05x of ``card_seconds``."""
    return card_seconds * 0.05 * 1000


def p7_steady_batch() -> list[dict[str, object]]:
    """P7: one reader, 20 RSA-2048 cards handed in one after another (20 ms/APDU): per card, from the
    card being in the reader to its result, against the card's own APDU time."""
    from bench import cards

    daemon, work = _daemon_and_work()
    count = 10 if QUICK else 20
    with cards.TimedRecords() as records:
        r = cards.p3_pcscd(daemon, work, 1, count, 20.0, key_type="rsa2048")
    per_card = cards.median(r["per_card_seconds"])
    card = cards.median(r["card_seconds"])
    ratio = per_card / card
    phases = r["phases_ms"]
    software = phases["first_apdu_to_result"] - phases["card_own"]
    in_records = sum(records.seconds.values()) / count * 1000
    calls = {k: v / count for k, v in records.calls.items()}
    why = (f"; of each card's time, {phases['seen_to_first_apdu']:.0f} ms from pcscd showing the card to its first "
           f"command, then {software:.0f} ms of software between the card's answers (median), of it "
           f"{in_records:.0f} ms (mean) writing its records: {calls.get('AuditLog.append', 0):.0f} audit records "
           f"(each fsynced and hash-chained), {calls.get('Journal.step', 0):.0f} journal steps (the begin of each "
           f"step that changes the card on disk before it) and {calls.get('Journal.set_job', 0):.0f} job results a "
           f"card, and the store's copy of the replaced certificate; {ratio_allowance(card):.0f} ms is what 1.05x "
           "leaves to all software")  # fmt: skip
    return [{"id": "P7", "measure": f"steady batch, 1 reader, {count} cards, 20 ms/APDU: time per card / card's own time",
             "value": round(ratio, 2), "target": "<= 1.05x", "met": ratio <= 1.05,
             "detail": (f"median {per_card * 1000:.0f} ms per card (card in the reader to its result) vs "
                        f"{card * 1000:.0f} ms of card time; whole batch {r['seconds']:.2f} s "
                        f"({r['per_minute']:.0f}/min)" + why),
             "result": r, "card_model": CARD_MODEL}]  # fmt: skip


VERIFY_READS = 4
ARCHIVE_READS = 2


def p2_apdus() -> list[dict[str, object]]:
    from bench.cards import OPERATIONS, by_operation

    data = _p1_p2_data()
    runs = data["runs"]
    logs = {name: run.log for (name, lat), run in runs.items() if lat == 0.0}  # type: ignore[attr-defined]
    counts = {name: (len(log), sum(x.command_bytes + x.response_bytes for x in log)) for name, log in logs.items()}
    fastest = min(("yubico-piv-tool", "ykman"), key=lambda n: counts[n][0])
    # What our load does that a bare import does not: the verify (read the certificate back, the
    # slot's metadata, the VERIFY that PIN policy "always" wants right before the key is used, the
    # test signature) and the archive (read the old certificate, the slot names it had): 4 + 2.
    extra_reads = VERIFY_READS + ARCHIVE_READS
    budget = counts[fastest][0] + extra_reads
    per_op: dict[str, dict[str, list[int]]] = {name: by_operation(log) for name, log in logs.items()}
    readback = {name: by_operation(log) for name, log in data["readback"].items()}  # type: ignore[attr-defined]
    detail = "; ".join(f"{n} {c} APDUs {b} B" for n, (c, b) in sorted(counts.items()) if "in-process" not in n)
    rows: list[dict[str, object]] = [{
        "id": "P2", "measure": "APDUs per load: ours / (fastest peer's + 4 verify + 2 archive reads)",
        "value": f"{counts['provision run (process)'][0]}/{budget}", "target": "<= 1",
        "met": counts["provision run (process)"][0] <= budget, "detail": detail,
        "apdus": {n: c for n, (c, _) in counts.items()}, "bytes": {n: b for n, (_, b) in counts.items()},
        "per_operation": {"load": per_op, "read back": readback}, "operations": list(OPERATIONS),
    }]  # fmt: skip
    return rows


def _p3_phases(one: dict[str, Any], top: dict[str, Any], n: int) -> str:
    """Where one reader's cycle goes, at 1 reader and at ``n`` (medians), and what that explains."""
    names = (("seen_to_first_apdu", "pcscd shows the card -> its first command"),
             ("first_apdu_to_result", "first command -> the job's result"),
             ("card_own", "of it the card's own time"),
             ("matching", "of it the card read -> its job's first command (matching, which waits for the cards "
                          "being read in the other readers: two with one serial are never written)"),
             ("result_to_worker_end", "result -> the run's worker for the card ended"),
             ("worker_end_to_empty", "-> the card pulled and pcscd shows the reader empty"),
             ("empty_to_next_seen", "empty -> pcscd shows the next card"))  # fmt: skip
    a, b = one["phases_ms"], top["phases_ms"]
    parts = [f"{label} {a[key]:.0f} -> {b[key]:.0f} ms" for key, label in names if a.get(key) is not None and b.get(key) is not None]
    steps = ("seen_to_first_apdu", "first_apdu_to_result", "result_to_worker_end", "worker_end_to_empty", "empty_to_next_seen")
    cycle_one, cycle_top = sum(a[k] or 0 for k in steps), sum(b[k] or 0 for k in steps)
    loads = n * a["first_apdu_to_result"] / b["first_apdu_to_result"]
    return (f"; a reader's cycle at 1 -> {n} readers (medians): " + ", ".join(parts)
            + f"; pcscd used {top['pcscd_cpu_per_wall']:.0%} of one core ({top['pcscd_cpu_ms_per_card']} ms per card)"
            + f". pcscd sees vpcd's card come and go only when it polls, every 400 ms (PCSCLITE_STATUS_POLL_RATE; "
              f"a USB reader reports at once), so a reader's cycle is a whole number of polls: {cycle_one:.0f} ms "
              f"({cycle_one / 400:.0f} polls) at one reader, {cycle_top:.0f} ms ({cycle_top / 400:.0f}) at {n}, "
              f"with the load {a['first_apdu_to_result']:.0f} -> {b['first_apdu_to_result']:.0f} ms (where the "
              f"loads fall between two polls moves this ratio either way); the loads alone scale {loads:.2f}x, "
              f"and without the wait for the cards in "
              f"the other readers {n * a['first_apdu_to_result'] / (b['first_apdu_to_result'] - b['matching'] + a['matching']):.2f}x")  # fmt: skip


def p3_readers() -> list[dict[str, object]]:
    from bench import cards

    daemon, work = _daemon_and_work()
    per_reader = 2 if QUICK else 4
    rows: list[dict[str, object]] = []
    for kind, counts in (("pcscd", (1, 4, PCSCD_READERS)), ("in-process", (1, 8, 32))):
        results = {}
        for n in counts:
            if kind == "pcscd":
                results[n] = cards.p3_pcscd(daemon, work, n, per_reader, 20.0)
            else:
                results[n] = cards.p3_inprocess(work, n, per_reader, 20.0)
        base = results[1]["per_minute"]
        scale = {n: round(r["per_minute"] / base, 2) for n, r in results.items()}
        top = counts[-1]
        goal = 28.0 * top / 32  # 28x at 32 readers; pcscd stops at 16 readers: the same share, 14x
        at_top = results[top]
        one_card_ms = 60_000 / base  # one reader: a card every this many ms
        cpu_why = (f"; at {top} readers the bench process used {at_top['cpu_per_wall']} s of CPU per second "
                   f"({at_top['cpu_ms_per_card']} ms per card"
                   + (f", of it {at_top['cards_cpu_ms_per_card']} ms the simulated cards, served from this same "
                      f"interpreter, and {at_top['provision_cpu_ms_per_card']} ms provision"
                      if "cards_cpu_ms_per_card" in at_top else ", the simulated cards in this interpreter included")
                   + f"); the goal needs a card every {one_card_ms / goal:.1f} ms"
                   + (f", and one interpreter (one GIL) cannot give a card less than its {at_top['cpu_ms_per_card']} ms "
                      "of CPU: bound by the CPU" if at_top["cpu_ms_per_card"] > one_card_ms / goal
                      else f", more than the {at_top['cpu_ms_per_card']} ms of CPU a card takes here: not the CPU; "
                      f"this process used {at_top['cpu_per_wall']:.0%} of one core"))  # fmt: skip
        if kind == "pcscd":
            cpu_why += _p3_phases(results[1], at_top, top)
        rows.append({
            "id": "P3", "measure": f"throughput {top} readers / 1 reader, card 20 ms/APDU ({kind})",
            "value": scale[top], "target": f">= {goal:g}x", "met": scale[top] >= goal,
            "detail": ", ".join(f"{n}: {results[n]['per_minute']:.0f}/min ({scale[n]}x)" for n in results)
                      + f"; {per_reader} cards per reader" + cpu_why,
            "results": {n: {k: v for k, v in r.items() if k in ("cards", "seconds", "per_minute", "cpu_ms_per_card",
                                                                "cpu_per_wall", "cards_cpu_ms_per_card",
                                                                "provision_cpu_ms_per_card", "phases_ms",
                                                                "pcscd_cpu_per_wall", "pcscd_cpu_ms_per_card")}
                        for n, r in results.items()},
            "card_model": "simulated YubiKey 5.4.3, P-256 PKCS#12 into 9C",
        })  # fmt: skip
    return rows


def p6_rss() -> list[dict[str, object]]:
    count = 1000 if QUICK else 10_000
    done = subprocess.run([sys.executable, str(HERE / "p6_rss.py"), str(count)], capture_output=True, text=True,
                          check=True, cwd=REPO)  # fmt: skip
    r = json.loads(done.stdout.strip().splitlines()[-1])
    flat = r["growth_10pct_to_last_card_mb"] <= 5.0  # over the batch; the end adds the N-job report
    met = flat and r["peak_mb"] <= 100 and r["loaded"] == count
    return [{
        "id": "P6", "measure": f"peak RSS over a {count:,}-card simulated batch (MB)", "value": r["peak_mb"],
        "target": "<= 100, flat", "met": met,
        "detail": (f"peak (VmHWM) {r['peak_mb']} MB, including making the {count:,} PKCS#12 files; RSS {r['baseline_mb']} MB before the batch, {r['rss_at_first_card_mb']} "
                   f"at the first card, {r['rss_at_10pct_mb']} at 10 %, {r['rss_at_last_card_mb']} at the last "
                   f"card ({r['growth_10pct_to_last_card_mb']:+} MB over the batch), {r['rss_at_end_mb']} writing "
                   "the reports; "
                   f"{r['loaded']} loaded in {r['seconds']} s"),
        "result": r,
    }]  # fmt: skip


def rtt() -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, str(HERE / "apdu_rtt.py"), "--count", "300" if QUICK else "1000"],
                          capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
    line = done.stdout.strip().splitlines()[-1]
    median_ms = float(line.split("median ")[1].split(" ms")[0])
    return [{"id": "RTT", "measure": "APDU round trip through pcscd + vpcd (median ms)", "value": median_ms,
             "target": "< 1 ms", "met": median_ms < 1.0, "detail": line.split(": ", 1)[1]}]  # fmt: skip


def audit() -> list[dict[str, object]]:
    count = 100_000 if QUICK else 1_000_000
    done = subprocess.run([sys.executable, str(HERE / "audit_verify.py"), str(count)], capture_output=True,
                          text=True, check=True, cwd=REPO)  # fmt: skip
    line = done.stdout.strip().splitlines()[-1]
    seconds = float(line.split(" in ")[1].split(" s")[0])
    limit = 10.0 * count / 1_000_000
    return [{"id": "AUDIT", "measure": f"audit verify of {count:,} events (s)", "value": seconds,
             "target": f"<= {limit:g} s", "met": seconds <= limit, "detail": line.split(": ", 1)[1]}]  # fmt: skip


def _one(fn: Callable[[], dict[str, object]]) -> Callable[[], list[dict[str, object]]]:
    return lambda: [fn()]


MEASURES: dict[str, Callable[[], list[dict[str, object]]]] = {
    "P1": p1_load_time, "P7": p7_steady_batch, "P2": p2_apdus, "P3": p3_readers, "P4": _one(p4_validate_ratio),
    "P5": _one(p5_help_ratio), "P6": p6_rss, "RTT": rtt, "AUDIT": audit,
}  # fmt: skip


def per_operation_table(row: dict[str, object]) -> str:
    """APDUs / bytes per operation for us and the peers (P2's detail)."""
    per_op = row["per_operation"]["load"]  # type: ignore[index]
    readback = row["per_operation"]["read back"]  # type: ignore[index]
    tools = [
        ("provision run (process)", "provision"),
        ("ykman", "ykman"),
        ("yubico-piv-tool", "yubico-piv-tool"),
    ]
    lines = [f"{'operation (APDUs / bytes)':26}" + "".join(f"{short:>18}" for _, short in tools)]
    for op in row["operations"]:  # type: ignore[attr-defined]
        cells = [per_op[name].get(op) for name, _ in tools]  # type: ignore[index]
        if not any(cells):
            continue
        lines.append(f"{op:26}" + "".join(f"{(f'{c[0]} / {c[1]}' if c else '-'):>18}" for c in cells))
    lines.append(f"{'whole load':26}" + "".join(
        f"{sum(v[0] for v in per_op[name].values())} / {sum(v[1] for v in per_op[name].values())}".rjust(18)  # type: ignore[index]
        for name, _ in tools))  # fmt: skip
    cells = [readback.get(short) for _, short in tools]  # type: ignore[union-attr]
    lines.append(f"{'read the cert back':26}" + "".join(
        (f"{sum(v[0] for v in c.values())} / {sum(v[1] for v in c.values())}" if c else "-").rjust(18) for c in cells))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    global QUICK
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    unknown = [a for a in argv if a.startswith("-") and a != "--quick"] + [
        a for a in argv if not a.startswith("-") and a.upper() not in MEASURES
    ]
    if unknown:
        print(
            f"bench/run.py: unknown {' '.join(unknown)}; measures are {' '.join(MEASURES)}", file=sys.stderr
        )
        return 2
    QUICK = "--quick" in argv
    wanted = [a.upper() for a in argv if not a.startswith("--")] or list(MEASURES)
    # The PC/SC client library reads the socket name once: set it before anything touches PC/SC.
    if any(k in wanted for k in ("P1", "P2", "P3", "P7")):
        sock_dir = Path(tempfile.mkdtemp(prefix="provision-bench-"))
        os.environ["PCSCLITE_CSOCK_NAME"] = str(sock_dir / "pcscd" / "pcscd.comm")
        (sock_dir / "pcscd").mkdir()
        _CARD_CACHE["work_root"] = sock_dir
    import compileall

    # An installed package has its bytecode compiled (PYTHONDONTWRITEBYTECODE may be set here):
    # without it every `provision run` below would compile its modules first.
    compileall.compile_dir(REPO / "provision", quiet=1)
    results: list[dict[str, object]] = []
    try:
        for key in wanted:
            started = time.perf_counter()
            try:
                rows = MEASURES[key]()
            except Exception as exc:  # noqa: BLE001 - a measure that cannot run is reported, the others still run
                rows = [{"id": key, "measure": "(could not run)", "value": "-", "target": "-", "met": False,
                         "detail": f"{type(exc).__name__}: {exc}"}]  # fmt: skip
            for row in rows:
                row["bench_seconds"] = round(time.perf_counter() - started, 1)
            results.extend(rows)
    finally:
        daemon = _CARD_CACHE.get("daemon")
        if daemon is not None:
            daemon.stop()  # type: ignore[attr-defined]
        for key in ("work_root",):
            if key in _CARD_CACHE:
                shutil.rmtree(_CARD_CACHE[key], ignore_errors=True)  # type: ignore[arg-type]
    width = max(len(str(r["measure"])) for r in results)
    print(f"{'id':5} {'measure':{width}} {'value':>9} {'target':>13}  met  detail")
    for r in results:
        print(f"{r['id']!s:5} {r['measure']!s:{width}} {r['value']!s:>9} {r['target']!s:>13}  "
              f"{'yes' if r['met'] else 'NO ':3}  {r['detail']}")  # fmt: skip
    for r in results:
        if r["id"] == "P2" and "per_operation" in r:
            print("\nP2 per operation (through pcscd, card latency 0; bytes = command + response):")
            print(per_operation_table(r))
    out = {"quick": QUICK, "card_model": CARD_MODEL, "results": results}
    (HERE / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
