"""P6: resident memory over a simulated batch of N cards (default 10,000), in its own process.

    .venv/bin/python bench/p6_rss.py [N] [--readers R] [--json]

Makes N PKCS#12 files (one shared P-256 key, a certificate each, a cheap KDF: the memory, not the
decryption, is measured here), a job file for them, and runs the batch in this process on R
in-process simulated readers (SimSource) whose cards are made only when inserted, as a counter's
queue would bring them. A thread samples the RSS every 0.2 s. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 1e6


def peak_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a
    child of a big parent (bench/run.py after P4) would report the parent's peak as its own."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch(directory: Path, count: int) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    from provision import fixtures

    now = datetime.now(UTC)
    ca = fixtures.make_ca("Bench P6 CA")
    key = fixtures.generate_key("p256")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(1)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .build(b"p6")
    )
    fd = os.open(directory / "p12.pass", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"p6\n")
    os.close(fd)
    fd = os.open(directory / "card.pin", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"123456\n")
    os.close(fd)
    lines = ["version: 1", "batch: bench-p6", "timezone: Asia/Hong_Kong", "defaults:", "  slot: 9c",
             '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"', "  pin: {file: card.pin}", "cards:"]  # fmt: skip
    for n in range(count):
        _, cert = fixtures.make_leaf(ca, f"HOLDER Number {n}", key=key, serial=0x10000 + n,
                                     not_before=now - timedelta(days=1), not_after=now + timedelta(days=365))  # fmt: skip
        data = pkcs12.serialize_key_and_certificates(None, key, cert, None, encryption)  # type: ignore[arg-type]
        (directory / f"h{n}.p12").write_bytes(data)
        lines += [f"  - id: HK-{n:08d}", f"    holder: HOLDER Number {n}", f"    card: {{serial: {30_000_000 + n}}}",
                  f"    pkcs12: {{path: h{n}.p12, password: {{file: p12.pass}}}}"]  # fmt: skip
    path = directory / "batch.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str]) -> int:
    count = int(next((a for a in argv if a.isdigit()), "10000"))
    readers = int(argv[argv.index("--readers") + 1]) if "--readers" in argv else 4

    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile
    from provision.sim.card import SimCard, SimOptions
    from provision.sim.source import SimSource

    class LazySimSource(SimSource):
        """SimSource whose cards are made when inserted (a queue of N ready cards is not the tool's)."""

        def __init__(self, serials: list[list[int]]) -> None:
            super().__init__([[] for _ in serials])
            self._serials = {name: list(row) for name, row in zip(self.names, serials, strict=True)}
            for name in self.names:
                self._insert_lazy(name)

        def _insert_lazy(self, reader: str) -> None:
            pending = self._serials.get(reader)
            if pending:
                self._queues[reader].append(SimCard(SimOptions(serial=pending.pop(0))))
            self._insert_next(reader)

        def done_with(self, reader: str) -> None:
            from provision.backend import CardEvent

            self._events.put(CardEvent("removed", reader))
            self._insert_lazy(reader)

    with tempfile.TemporaryDirectory(prefix="provision-p6-") as tmp:
        d = Path(tmp)
        started = time.perf_counter()
        path = make_batch(d, count)
        generated = time.perf_counter() - started
        baseline = rss_mb()  # the interpreter, cryptography, PyYAML: before the batch
        samples: list[tuple[float, float, int]] = []  # (seconds, MB, cards done)
        done = [0]
        stop = threading.Event()
        t0 = time.perf_counter()

        def sampler() -> None:
            while not stop.wait(0.2):
                samples.append((time.perf_counter() - t0, rss_mb(), done[0]))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        jobfile = load_jobfile(path, unattended=True)
        serials = [[30_000_000 + n for n in range(r, count, readers)] for r in range(readers)]

        def say(text: str) -> None:
            if ": loaded." in text or "FAILED" in text:
                done[0] += 1

        outcome = run_jobfile(jobfile, logs=d / "logs", unattended=True, wait=None, source=LazySimSource(serials),
                              progress=False, say=say)  # fmt: skip
        elapsed = time.perf_counter() - t0
        stop.set()
        thread.join()
    loaded = sum(1 for j in outcome.document["jobs"] if j["status"] == "loaded")
    peak = peak_mb()
    loading = [s for s in samples if s[2] > 0]
    first = loading[0] if loading else (0.0, 0.0, 0)
    tenth = next((s for s in loading if s[2] >= count // 10), first)
    last = loading[-1] if loading else first
    # The batch itself: up to the last sample taken while cards were still being loaded. After it
    # come the run's document and its reports for all N jobs (part of the peak, not of the batch).
    last_card = next((s for s in reversed(loading) if s[2] < count), last)
    result: dict[str, Any] = {
        "cards": count, "loaded": loaded, "readers": readers, "seconds": round(elapsed, 1),
        "generate_seconds": round(generated, 1), "baseline_mb": round(baseline, 1), "peak_mb": round(peak, 1),
        "rss_at_first_card_mb": round(first[1], 1), "rss_at_10pct_mb": round(tenth[1], 1),
        "rss_at_last_card_mb": round(last_card[1], 1), "cards_at_last_card_sample": last_card[2],
        "rss_at_end_mb": round(last[1], 1), "max_sampled_mb": round(max((s[1] for s in samples), default=0), 1),
        "growth_10pct_to_last_card_mb": round(last_card[1] - tenth[1], 1),
        "growth_10pct_to_end_mb": round(last[1] - tenth[1], 1),
        "samples": [(round(s, 1), round(m, 1), n) for s, m, n in samples[:: max(1, len(samples) // 40)]],
    }  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
