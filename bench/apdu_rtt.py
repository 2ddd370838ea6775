"""Median APDU round trip through a private pcscd + vpcd to a simulated card (not a test).

    .venv/bin/python bench/apdu_rtt.py [--count N] [--card stub|sim] [--no-quickack]

Starts its own pcscd on a private socket (see tests/helpers/pcsc_harness.py), serves one card in a
thread, sends SELECT N times and prints the median. ``--no-quickack`` shows what TCP_QUICKACK buys.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--card", choices=["stub", "sim"], default="sim")
    parser.add_argument("--no-quickack", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="provision-bench-"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(workdir / "pcscd.comm")  # before any PC/SC call

    if args.no_quickack:
        from provision.sim import vpcd

        vpcd._Peer.quickack = lambda self: None  # type: ignore[method-assign]

    from provision.card.transport import connect
    from tests.helpers.pcsc_harness import PrivatePcscd, card_present, start_card_server, wait_for

    daemon = PrivatePcscd(workdir, readers=2)
    try:
        daemon.start()
        daemon.wait_ready()
        server = start_card_server(daemon, 0, kind=args.card)
        wait_for(lambda: card_present(daemon.reader_name(0)), 10, "the card")
        select = bytes.fromhex("00A4040009A0000003080000100000")
        with connect(daemon.reader_name(0)) as card:
            for _ in range(20):
                card.transmit(select)
            times = []
            for _ in range(args.count):
                start = time.perf_counter()
                card.transmit(select)
                times.append(time.perf_counter() - start)
        server.remove()
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    times.sort()
    print(
        f"APDU round trip ({args.card} card, {'no ' if args.no_quickack else ''}TCP_QUICKACK, "
        f"n={args.count}): median {statistics.median(times) * 1000:.3f} ms, "
        f"p90 {times[int(len(times) * 0.9)] * 1000:.3f} ms, max {times[-1] * 1000:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
