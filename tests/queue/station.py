"""One station as its own process: ``python -m tests.queue.station SPEC.json``.

SPEC: jobfile, queue, station, logs, lease, latency_ms, readers (lists of [serial, state file])
The simulated cards keep their state in the named files (a card moved to another station is the
same file). Prints one JSON line: exit code, per-serial write commands, refused cards, reconnects.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> int:
    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile
    from provision.sim.card import SimCard, SimOptions
    from provision.sim.source import SimSource

    spec = json.loads(Path(spec_path).read_text())
    readers = [[SimCard(SimOptions(serial=serial, latency_ms=spec.get("latency_ms", 0.0)), state_path=Path(state))
                for serial, state in reader] for reader in spec["readers"]]  # fmt: skip
    jobfile = load_jobfile(Path(spec["jobfile"]), unattended=True)
    outcome = run_jobfile(jobfile, logs=Path(spec["logs"]), unattended=True, wait=0, source=SimSource(readers),
                          progress=False, say=lambda _: None, queue=spec["queue"], station=spec["station"],
                          lease_seconds=spec.get("lease", 30.0))  # fmt: skip
    writes: dict[int, int] = {}
    for reader in readers:
        for card in reader:
            writes[card.options.serial] = writes.get(card.options.serial, 0) + card.write_attempt_count
    print(json.dumps({"station": spec["station"], "exit_code": outcome.exit_code, "writes": writes,
                      "refused": outcome.document["refused_cards"],
                      "jobs": {j["id"]: [j["status"], j["error"]] for j in outcome.document["jobs"]}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
