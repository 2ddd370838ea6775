"""Family 1: the card is pulled after APDU k, for every k of a full load, through a real pcscd.

The card is a SimCard served over vpcd by its own process, with a state file (its EEPROM) and
``vanish_after=k``; slot 9C already holds an old e-Cert to archive. After the interrupted run the
same state is inserted again and ``provision resume`` finishes. Each case is judged twice: after
the interruption (nothing claimed that is not on the card, a half-loaded slot is reported in doubt,
the old certificate is On Disk whenever it left the card, the audit log verifies) and after the
resume (the new key and certificate are on the card and verified, journal, report and audit log
agree, no write was done twice: neither in the journal nor in the APDUs the card received).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults_common import (
    FULL,
    FaultJob,
    Material,
    Verdict,
    apdu_log,
    journal_job,
    judge_final,
    judge_interrupted,
    judge_no_rewrite,
    new_card_state,
    record,
    run_cli,
    sample,
)
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, card_present, wait_for

pytestmark = [pytest.mark.pcsc, pytest.mark.slow]
FAMILY = "pull card at APDU k (pcscd)"


def _run(job: FaultJob, logs: Path, reader: str, outputs: list[str], *command: str) -> Any:
    return run_cli(*command, "--unattended", "--json", "--no-progress", "--logs", str(logs), "--reader", reader,
                   outputs=outputs)  # fmt: skip


def _write_positions(log: list[dict[str, Any]]) -> list[int]:
    """APDU numbers (1-based) of every write segment: where the interesting boundaries are."""
    return [e["n"] for e in log if e.get("ins") in ("FE", "DB")]


@pytest.mark.parametrize("key_type", ["p256", "rsa2048"])
def test_pull_the_card_after_every_apdu(key_type: str, pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                        material: Material, tmp_path: Path, card_dir: Path) -> None:  # fmt: skip
    reader_index = 0
    reader = pcscd.reader_name(reader_index)
    job = FaultJob(tmp_path / "job", canaries, material, key_type=key_type)

    # A probe: the whole load once, to count its APDUs and find where the writes are.
    probe_state, probe_log, probe_logs = card_dir / "probe.json", card_dir / "probe-apdu.jsonl", tmp_path / "probe-logs"
    new_card_state(probe_state, canaries, material)
    probe_log.unlink(missing_ok=True)
    cards.insert(reader_index, kind="sim", mode="process", state=probe_state,
                 options={"serial": job.serial, "apdu_log": str(probe_log)})  # fmt: skip
    done = _run(job, probe_logs, reader, canaries.outputs, "run", str(job.path))
    assert done.code == 0, done.stderr
    cards.pull_all()
    wait_for(lambda: not card_present(reader), 10, "the probe card to leave")
    log = apdu_log(probe_log)
    total = len(log)
    assert total > 15, total
    boundaries = [k + d for k in _write_positions(log) for d in (-1, 0)]
    ks = sample(total, boundaries)
    if not FULL:
        assert len(ks) <= 40, len(ks)

    failures: list[str] = []
    for k in ks:
        verdict = Verdict()
        case = f"{key_type} k={k}/{total}"
        state, logs = card_dir / f"card-{key_type}-{k}.json", tmp_path / f"logs-{k}"
        first_log, second_log = card_dir / f"first-{key_type}-{k}.jsonl", card_dir / f"second-{key_type}-{k}.jsonl"
        old = new_card_state(state, canaries, material)
        cards.insert(reader_index, kind="sim", mode="process", state=state,
                     options={"serial": job.serial, "vanish_after": k, "apdu_log": str(first_log)})  # fmt: skip
        first = _run(job, logs, reader, canaries.outputs, "run", str(job.path))
        document = json.loads(first.stdout) if first.stdout.strip() else None
        verdict.check(first.code in (0, 1), f"first run exit {first.code}: {first.stderr[-300:]}")
        if k >= total:
            verdict.check(first.code == 0, "a load that the card survived did not end loaded")
        cards.pull_all()
        wait_for(lambda: not card_present(reader), 10, "the pulled card to leave the reader")
        between = judge_interrupted(verdict, job=job, logs=logs, state=state, old=old, document=document)

        cards.insert(reader_index, kind="sim", mode="process", state=state,
                     options={"serial": job.serial, "apdu_log": str(second_log)})  # fmt: skip
        resumed = _run(job, logs, reader, canaries.outputs, "resume")
        verdict.check(resumed.code == 0, f"resume exit {resumed.code}: {resumed.stderr[-300:]}")
        if "Nothing to resume" in resumed.stdout:
            # The card left before it was identified: the job never started and is not in the
            # journal, so the operator runs the job file again.
            started = journal_job(logs, job.batch, job.job_id)
            verdict.check(started is None or started.status in ("loaded", "skipped"), "resume ignored a started job")
            resumed = _run(job, logs, reader, canaries.outputs, "run", str(job.path))
            verdict.check(resumed.code == 0, f"second run exit {resumed.code}: {resumed.stderr[-300:]}")
        status = json.loads(resumed.stdout)["jobs"][0]["status"] if resumed.stdout.strip().startswith("{") else None
        judge_final(verdict, job=job, logs=logs, state=state, old=old, report_status=status)
        judge_no_rewrite(verdict, job=job, between=between, after=apdu_log(second_log))
        cards.pull_all()
        wait_for(lambda: not card_present(reader), 10, "the card to leave")
        record(FAMILY, case, consistent=verdict.consistent, lost=verdict.lost, why="; ".join(verdict.problems))
        if not verdict.consistent:
            failures.append(f"{case}: {verdict.problems}")
    assert not failures, "\n".join(failures)
