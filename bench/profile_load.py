"""Where the time of one load goes: ``provision run`` of one card, by phase, next to the card's own time.

  python bench/profile_load.py                  # 20 ms/APDU, 5 runs, medians
  python bench/profile_load.py --latency-ms 0 --repeat 3 --json out.json

One private pcscd with one vpcd reader serves a fresh simulated YubiKey 5.4.3 per run (slot 9C holds
an old certificate, so the load archives it), loaded from the same RSA-2048 PKCS#12 as bench/run.py's
P1. Each run is the real command line (``provision run --unattended --no-progress``) started through
bench/trace_run.py, which times the phases from outside the product. The card's own time is measured
at the card (the simulator's answer time, its per-APDU latency included): what no host software can
go below. Every run is followed by one without the early card read (``PROVISION_EARLY_READ=0``,
provision/early.py), whose medians are printed too. Then, untimed: one run under ``strace -f -c`` counts every fsync/fdatasync (SQLite's
included), and one under ``python -X importtime`` lists the heaviest imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

ORDER = [
    "interpreter start", "imports", "argument parsing", "job file", "open audit log",
    "PKCS#12 read + decryption", "PC/SC connect", "card APDUs", "journal", "audit", "store", "reports",
    "process exit", "other (runner, checks, threads)",
]  # fmt: skip


def one_run(daemon: object, material: object, latency_ms: float, work: Path, index: int) -> dict[str, object]:
    from bench import cards

    slot = cards.Inserted(daemon, 0, cards.fresh_card(material, latency_ms))  # type: ignore[arg-type]
    trace = work / f"trace-{index}.json"
    argv = [sys.executable, str(HERE / "trace_run.py"), "run", str(material.job), "--unattended",  # type: ignore[attr-defined]
            "--no-progress", "--json", "--logs", str(work / f"logs-{index}"), "--reader", slot.reader]  # fmt: skip
    env = {**daemon.env, "PROVISION_TRACE_OUT": str(trace)}  # type: ignore[attr-defined]
    spawned = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=material.directory, stdin=subprocess.DEVNULL,  # type: ignore[attr-defined]
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    ended = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"provision run failed ({done.returncode}): {done.stdout}{done.stderr}")
    data = json.loads(trace.read_text())
    marks, phases = data["marks"], data["phases"]
    log = slot.card.log
    slot.pull()
    parsing = phases.get("argument parsing", [0.0, 0])[0]
    row: dict[str, float] = {
        "interpreter start": marks["started"] - spawned,
        # Everything from the first statement to the job file but the argument parsing: the imports.
        "imports": marks["job file"] - marks["started"] - parsing,
        "process exit": ended - marks["ended"],
    }
    for name, (seconds, _calls) in phases.items():
        if name in ("PKCS#12 decryption", "fsync (Python-level)") or name.endswith("(early)"):
            continue  # inside other phases, or overlapped with them (the early card read): shown as details
        row[name] = seconds
    wall = ended - spawned
    row["other (runner, checks, threads)"] = wall - sum(row.values())
    return {
        "wall": wall, "phases": row, "calls": {k: v[1] for k, v in phases.items()},
        "decryption": phases.get("PKCS#12 decryption", [0.0, 0])[0],
        "fsync_python": phases.get("fsync (Python-level)", [0.0, 0]),
        "card_seconds": sum(x.seconds for x in log), "apdus": len(log),
        "first_apdu": marks.get("first APDU", ended) - spawned,
        "early": {k: v for k, v in phases.items() if k.endswith("(early)")},
    }  # fmt: skip


def syscall_fsyncs(daemon: object, material: object, work: Path) -> dict[str, int] | None:
    """fsync/fdatasync calls of one whole run (SQLite's too), counted by strace."""
    from bench import cards

    if shutil.which("strace") is None:
        return None
    slot = cards.Inserted(daemon, 0, cards.fresh_card(material, 0.0))  # type: ignore[arg-type]
    out = work / "strace.txt"
    argv = ["strace", "-f", "-c", "-o", str(out), "-e", "trace=fsync,fdatasync,sync_file_range",
            str(Path(sys.executable).with_name("provision")), "run", str(material.job), "--unattended",  # type: ignore[attr-defined]
            "--no-progress", "--logs", str(work / "logs-strace"), "--reader", slot.reader]  # fmt: skip
    done = subprocess.run(argv, env=daemon.env, cwd=material.directory, capture_output=True, text=True, timeout=120)  # type: ignore[attr-defined]
    slot.pull()
    if done.returncode != 0 or not out.exists():
        return None
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync", "sync_file_range"):
            counts[parts[-1]] = int(parts[3])
    return counts


def heaviest_imports(daemon: object, material: object, work: Path, top: int = 8) -> dict[str, object]:
    """One run under ``-X importtime``: the total of the top-level imports and the heaviest ones."""
    from bench import cards

    slot = cards.Inserted(daemon, 0, cards.fresh_card(material, 0.0))  # type: ignore[arg-type]
    argv = [sys.executable, "-X", "importtime", "-m", "provision", "run", str(material.job), "--unattended",  # type: ignore[attr-defined]
            "--no-progress", "--logs", str(work / "logs-importtime"), "--reader", slot.reader]  # fmt: skip
    done = subprocess.run(argv, env=daemon.env, cwd=material.directory, capture_output=True, text=True, timeout=120)  # type: ignore[attr-defined]
    slot.pull()
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((depth, int(self_us), int(cumulative), name.strip()))
    total = sum(c for d, _, c, _ in rows if d == 0)
    heavy = sorted((r for r in rows if r[0] == 0), key=lambda r: -r[2])[:top]
    return {"total_ms": round(total / 1000, 1), "top_level": [(n, round(c / 1000, 1)) for _, _, c, n in heavy],
            "imported_modules": len(rows)}  # fmt: skip


NEEDED = "cryptography.x509, cryptography.hazmat.primitives.serialization.pkcs12, yaml, smartcard.scard, sqlite3, json"


def python_floor(samples: int = 9) -> dict[str, float]:
    """What any Python tool pays before its own code: the interpreter, the interpreter with only the
    libraries a load cannot do without (X.509 and PKCS#12, YAML, PC/SC, SQLite), and, for scale,
    with every module ``provision run`` imports. Interleaved, so a busy machine slows all alike."""
    codes = {"python -c pass": "pass", "python importing only the libraries": f"import {NEEDED}",
             "python importing provision run's modules": "import provision.app, provision.report, provision.plan, "
             "provision.audit.verify, provision.readers, provision.card.transport, smartcard.scard"}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(samples):
        for name, code in codes.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def profile(latency_ms: float, repeat: int) -> dict[str, object]:
    from bench import cards

    work = Path(tempfile.mkdtemp(prefix="provision-profile-"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(work / "pcscd" / "pcscd.comm")
    (work / "pcscd").mkdir()
    import compileall

    compileall.compile_dir(REPO / "provision", quiet=1)  # as installed: bytecode compiled
    daemon = cards.bench_pcscd(work / "pcscd", readers=1)
    try:
        material = cards.Material(work / "material")
        one_run(daemon, material, latency_ms, work, -1)  # warm the page cache and pcscd
        # Each run with the early card read (the product's way) is followed by one without it
        # (PROVISION_EARLY_READ=0): interleaved, so a machine that gets busier slows both alike.
        runs, without = [], []
        for i in range(repeat):
            runs.append(one_run(daemon, material, latency_ms, work, i))
            os.environ["PROVISION_EARLY_READ"] = "0"
            try:
                without.append(one_run(daemon, material, latency_ms, work, repeat + i))
            finally:
                del os.environ["PROVISION_EARLY_READ"]
        fsyncs = syscall_fsyncs(daemon, material, work)
        imports = heaviest_imports(daemon, material, work)
        floor = python_floor()
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    phases = {name: med(float(r["phases"].get(name, 0.0)) for r in runs) for name in ORDER}  # type: ignore[attr-defined]
    return {
        "latency_ms": latency_ms, "repeat": repeat, "card_model": f"simulated YubiKey {'.'.join(map(str, cards.FIRMWARE))} "
        "through pcscd + vpcd", "wall": med(r["wall"] for r in runs),  # type: ignore[misc]
        "card_seconds": med(r["card_seconds"] for r in runs), "apdus": med(r["apdus"] for r in runs),  # type: ignore[misc]
        "first_apdu": med(r["first_apdu"] for r in runs), "decryption": med(r["decryption"] for r in runs),  # type: ignore[misc]
        "phases": phases, "calls": runs[-1]["calls"], "fsync_python": runs[-1]["fsync_python"],
        "early_apdus": med(float(r["early"].get("card APDUs (early)", [0.0, 0])[1]) for r in runs),  # type: ignore[attr-defined]
        "early_apdu_seconds": med(float(r["early"].get("card APDUs (early)", [0.0, 0])[0]) for r in runs),  # type: ignore[attr-defined]
        "fsync_syscalls": fsyncs, "imports": imports, "floor": floor,
        "without_early": {"wall": med(r["wall"] for r in without), "card_seconds": med(r["card_seconds"] for r in without),  # type: ignore[misc]
                          "first_apdu": med(r["first_apdu"] for r in without),  # type: ignore[misc]
                          "walls": [r["wall"] for r in without], "phases": [r["phases"] for r in without]},
        "walls": [r["wall"] for r in runs],
    }  # fmt: skip


def render(p: dict[str, object]) -> str:
    wall, card = float(p["wall"]), float(p["card_seconds"])  # type: ignore[arg-type]
    calls: dict[str, int] = p["calls"]  # type: ignore[assignment]
    phases: dict[str, float] = p["phases"]  # type: ignore[assignment]
    early = (f" after the {p['early_apdus']:g} sent early ({float(p['early_apdu_seconds']) * 1000:.0f} ms, overlapped "  # type: ignore[arg-type]
             "with the start-up: provision.early)") if p.get("early_apdus") else ""  # fmt: skip
    counts = {"card APDUs": f"{calls.get('card APDUs', 0)} APDUs{early}", "journal": f"{calls.get('journal', 0)} calls",
              "audit": f"{calls.get('audit', 0)} records", "store": f"{calls.get('store', 0)} calls",
              "PKCS#12 read + decryption": f"decryption itself {float(p['decryption']) * 1000:.0f} ms"}  # type: ignore[arg-type]  # fmt: skip
    lines = [f"One `provision run` of one card ({p['card_model']}, {p['latency_ms']:g} ms/APDU), "
             f"median of {p['repeat']} runs:", "", f"{'phase':34}{'ms':>8}{'share':>8}  detail"]  # fmt: skip
    for name in ORDER:
        ms = phases.get(name, 0.0) * 1000
        lines.append(f"{name:34}{ms:8.1f}{ms / (wall * 1000):8.0%}  {counts.get(name, '')}")
    lines.append(f"{'wall (spawn to exit)':34}{wall * 1000:8.1f}{1:8.0%}")
    lines.append("")
    lines.append(f"the card's own APDU time: {card * 1000:.0f} ms for {p['apdus']:g} APDUs "
                 f"(measured at the card); wall / card = {wall / card:.2f}x" if card else "card time: 0")  # fmt: skip
    lines.append(f"software's share: {(wall - card) * 1000:.0f} ms; the first APDU {float(p['first_apdu']) * 1000:.0f} ms "  # type: ignore[arg-type]
                 "after the process was started")  # fmt: skip
    off: dict[str, float] = p["without_early"]  # type: ignore[assignment]
    lines.append(f"without the early card read (PROVISION_EARLY_READ=0, runs interleaved with these): wall "
                 f"{off['wall'] * 1000:.0f} ms, {off['wall'] / off['card_seconds']:.2f}x the card's "
                 f"{off['card_seconds'] * 1000:.0f} ms; the first APDU {off['first_apdu'] * 1000:.0f} ms after the start; "
                 f"run by run, the early read saved {statistics.median(b - a for a, b in zip(p['walls'], off['walls'])) * 1000:.0f} ms "  # type: ignore[call-overload]
                 "(median of the pairs)")  # fmt: skip
    fp = p["fsync_python"]
    lines.append(f"fsync from Python (audit, store, directories): {fp[1]} calls, {fp[0] * 1000:.1f} ms"  # type: ignore[index]
                 + (f"; all fsync-family syscalls (strace -f, SQLite included): {p['fsync_syscalls']}" if p["fsync_syscalls"] else ""))  # fmt: skip
    imp: dict[str, object] = p["imports"]  # type: ignore[assignment]
    lines.append(f"imports (-X importtime, one run): {imp['total_ms']} ms over {imp['imported_modules']} modules; heaviest: "
                 + ", ".join(f"{n} {ms}" for n, ms in imp["top_level"]))  # type: ignore[attr-defined]  # fmt: skip
    floor: dict[str, float] = p["floor"]  # type: ignore[assignment]
    lines.append("floor of any Python tool: " + "; ".join(f"{k} {v * 1000:.0f} ms" for k, v in floor.items())
                 + f" ({NEEDED})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    p = profile(args.latency_ms, args.repeat)
    print(render(p))
    if args.json:
        args.json.write_text(json.dumps(p, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
