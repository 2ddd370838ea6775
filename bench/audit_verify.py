"""Time ``provision.audit.verify`` over 1,000,000 events (target: 10 s). Prints, never asserts.

  python bench/audit_verify.py [EVENTS] [--keyed]

The events are written with the log's own encoder (not through AuditLog.append, whose fsync per
event would make generating a million of them take minutes); their fields are those of a real run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision import __version__  # noqa: E402
from provision.audit.records import GENESIS, MAC_NAME, Hasher, encode_line, rfc3339  # noqa: E402
from provision.audit.verify import verify  # noqa: E402
from provision.secrets import Secret  # noqa: E402

EVENTS = ("card_inserted", "card_identified", "preflight", "archive", "pin_verify", "key_imported",
          "certificate_written", "slot_name_written", "verification", "commit")  # fmt: skip


def generate(path: Path, count: int, key: Secret | None) -> None:
    from datetime import UTC, datetime, timedelta

    hasher = Hasher(key)
    prev, start = GENESIS, datetime(2025, 11, 25, 2, 0, tzinfo=UTC)
    with open(path, "wb", buffering=1 << 20) as out:
        for seq in range(1, count + 1):
            job = seq // len(EVENTS)
            record = {
                "seq": seq, "time": rfc3339(start + timedelta(milliseconds=seq * 37)),
                "run_id": "20251125T020000Z-bench", "event": EVENTS[seq % len(EVENTS)],
                "batch": "hk-2025-11", "job_id": f"HK-{job:08d}", "holder": f"HOLDER Number {job}",
                "card_serial": str(10_000_000 + job), "slot": "9c", "slot_name": "e-Cert20251125",
                "fingerprint_sha256": f"{seq:064x}", "replaced_sha256": None, "pin_tries_left": 3,
                "outcome": "ok", "operator": "clerk", "host": "counter-pc-01", "tool_version": __version__,
                "prev": prev,
            }  # fmt: skip
            if key is not None:
                record["mac"] = MAC_NAME
            line, prev = encode_line(record, hasher)
            out.write(line)


def main(argv: list[str]) -> int:
    count = int(next((a for a in argv if a.isdigit()), "1000000"))
    key = Secret("bench-audit-key-" + "x" * 16) if "--keyed" in argv else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        started = time.perf_counter()
        generate(path, count, key)
        generated = time.perf_counter() - started
        size = path.stat().st_size
        started = time.perf_counter()
        result = verify(Path(tmp), key=key)
        elapsed = time.perf_counter() - started
    kind = "HMAC-SHA256" if key else "SHA-256"
    print(f"audit verify: {count:,} events ({size / 1e6:.0f} MB, {kind}) in {elapsed:.2f} s "
          f"({elapsed / count * 1e6:.2f} µs/event; target 10 s: {'met' if elapsed <= 10 else 'NOT met'}); "
          f"ok={result.ok}; generating took {generated:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
