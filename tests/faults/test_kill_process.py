"""Family 2: the ``provision run`` process is killed (SIGKILL) at every journal step and at random
moments, then ``provision resume`` finishes: no write is done twice, the audit log verifies.

The kill points come from the test-only hook of ``provision/load.py`` (``_fault_point``):
``PROVISION_FAULT_KILL_AT=<action>:<phase>`` makes the process SIGKILL itself right after the
journal recorded that step's ``begin`` or ``end``; it is inert when the variable is unset. The card
is a SimCard in its own process behind a real pcscd, so it survives the runner's death.

The audit log's side: a line is one ``write()`` followed by ``fsync``, so a killed process leaves
either the whole line or none. Linux can still cut a ``write()`` that crosses a page boundary when
SIGKILL arrives between the pages; then the tail is *damaged* and the design holds: nothing is
appended until the operator accepts it with ``--accept-damaged-audit-tail REASON`` (recorded in
the chain, with the damaged bytes' SHA-256), after which ``audit verify`` passes. Both are tested.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults_common import (
    FULL,
    FaultJob,
    Material,
    Verdict,
    apdu_log,
    judge_final,
    judge_interrupted,
    judge_no_rewrite,
    new_card_state,
    record,
    run_cli,
)
from tests.helpers.pcsc_harness import Cards, PrivatePcscd
from tests.helpers.product import provision_cmd

pytestmark = [pytest.mark.pcsc, pytest.mark.slow]
FAMILY = "kill runner at journal step"
FAMILY_TIMER = "kill runner at random moment"
FAMILY_AUDIT = "kill during audit appends"
STEPS = ["preflight", "archive_replaced_certificate", "verify_pin", "authenticate_management_key", "import_key",
         "write_certificate", "write_slot_name", "verify_load", "commit", "export_pem"]  # fmt: skip
KILL_POINTS = [f"{step}:{phase}" for step in STEPS for phase in ("begin", "end")]


def _spawn_run(pcscd: PrivatePcscd, job: FaultJob, logs: Path, reader: str, kill_at: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in pcscd.env.items() if not k.startswith("PROVISION_")}
    if kill_at:
        env["PROVISION_FAULT_KILL_AT"] = kill_at
    return subprocess.Popen(
        [*provision_cmd(), "run", str(job.path), "--unattended", "--json", "--no-progress",
         "--logs", str(logs), "--reader", reader],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _one_case(case: str, family: str, *, pcscd: PrivatePcscd, cards: Cards, canaries: Any, job: FaultJob,
              tmp_path: Path, card_dir: Path, kill_at: str | None, delay: float | None) -> list[str]:  # fmt: skip
    reader = pcscd.reader_name(1)
    tag = case.replace(":", "-").replace(" ", "_").replace("/", "_")
    state, log, logs = card_dir / f"{tag}.json", card_dir / f"{tag}.jsonl", tmp_path / f"logs-{tag}"
    log.unlink(missing_ok=True)
    old = new_card_state(state, canaries, job.material)
    cards.insert(1, kind="sim", mode="process", state=state, options={"serial": job.serial, "apdu_log": str(log)})
    verdict = Verdict()
    proc = _spawn_run(pcscd, job, logs, reader, kill_at)
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    canaries.outputs += [out, err]
    killed = proc.returncode == -signal.SIGKILL
    if kill_at is not None:
        verdict.check(killed, f"the hook did not kill the run (exit {proc.returncode}): {err[-300:]}")
    else:
        verdict.check(killed or proc.returncode == 0, f"exit {proc.returncode}: {err[-300:]}")
    verdict.check("Traceback" not in err, f"traceback: {err[-300:]}")
    document = json.loads(out) if not killed and out.strip().startswith("{") else None
    mark = len(apdu_log(log))
    between = judge_interrupted(verdict, job=job, logs=logs, state=state, old=old, document=document)
    resumed = run_cli("resume", "--unattended", "--json", "--no-progress", "--logs", str(logs), "--reader", reader,
                      outputs=canaries.outputs)  # fmt: skip
    verdict.check(resumed.code == 0, f"resume exit {resumed.code}: {resumed.stderr[-300:]}")
    status = None
    if resumed.stdout.strip().startswith("{"):
        status = json.loads(resumed.stdout)["jobs"][0]["status"]
    elif "Nothing to resume" in resumed.stdout:
        again = run_cli("run", str(job.path), "--unattended", "--json", "--no-progress", "--logs", str(logs),
                        "--reader", reader, outputs=canaries.outputs)  # fmt: skip
        status = again.json()["jobs"][0]["status"] if again.stdout.strip().startswith("{") else None
    judge_final(verdict, job=job, logs=logs, state=state, old=old, report_status=status)
    judge_no_rewrite(verdict, job=job, between=between, after=apdu_log(log)[mark:])
    cards.pull_all()
    from tests.helpers.pcsc_harness import card_present, wait_for

    wait_for(lambda: not card_present(reader), 10, "the card to leave")
    record(family, case, consistent=verdict.consistent, lost=verdict.lost, why="; ".join(verdict.problems))
    return [f"{case}: {p}" for p in verdict.problems]


@pytest.mark.parametrize("key_type", ["p256", "rsa2048"] if FULL else ["p256"])
def test_kill_at_every_journal_step_then_resume(key_type: str, pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                material: Material, tmp_path: Path, card_dir: Path) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material, key_type=key_type)
    points = KILL_POINTS if FULL else [p for p in KILL_POINTS if p.endswith(":begin")] + [
        "import_key:end", "write_certificate:end", "commit:end"]  # fmt: skip
    failures: list[str] = []
    for point in points:
        failures += _one_case(f"{key_type} {point}", FAMILY, pcscd=pcscd, cards=cards, canaries=canaries, job=job,
                              tmp_path=tmp_path, card_dir=card_dir, kill_at=point, delay=None)  # fmt: skip
    assert not failures, "\n".join(failures)


def test_kill_at_random_moments_then_resume(pcscd: PrivatePcscd, cards: Cards, canaries: Any, material: Material,
                                            tmp_path: Path, card_dir: Path) -> None:  # fmt: skip
    job = FaultJob(tmp_path / "job", canaries, material)
    rng = random.Random(7)  # the moments are fixed; what the process reached by then varies a little
    failures: list[str] = []
    for index in range(16 if FULL else 4):
        delay = round(rng.uniform(0.4, 2.5), 3)
        failures += _one_case(f"timer {index} at {delay}s", FAMILY_TIMER, pcscd=pcscd, cards=cards,
                              canaries=canaries, job=job, tmp_path=tmp_path, card_dir=card_dir, kill_at=None,
                              delay=delay)  # fmt: skip
    assert not failures, "\n".join(failures)


_APPENDER = """
import sys
from pathlib import Path
from provision.audit.chain import AuditLog
from provision.secrets import Secret
log = AuditLog(Path(sys.argv[1]), key=Secret(bytes.fromhex(sys.argv[2])))
i = 0
while True:
    i += 1
    log.append("fault_probe", run_id="r", n=i, padding="x" * (50 + (i * 397) % 3500))
"""


def test_sigkill_during_heavy_audit_appends_never_corrupts_silently(tmp_path: Path, canaries: Any) -> None:
    from provision.audit.chain import AuditLog
    from provision.audit.verify import verify
    from provision.secrets import Secret

    rng = random.Random(11)
    key = canaries.audit_key
    torn = 0
    failures: list[str] = []
    for index in range(60 if FULL else 8):
        path = tmp_path / f"audit-{index % 4}" / "audit.jsonl"
        path.parent.mkdir(exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), key], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})  # fmt: skip
        time.sleep(0.35 + rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        verdict = Verdict()
        verdict.check(proc.returncode == -signal.SIGKILL, f"appender ended by itself: {err[-300:]!r}")
        log = AuditLog(path, key=Secret(bytes.fromhex(key)))
        tail = log.check_tail()
        if not tail.ok:
            torn += 1
            verdict.check(tail.problem == "truncated", f"a kill left {tail.problem}, not a cut last line")
            log.accept_damaged_tail("fault campaign: appender killed mid-write")
        result = verify(path.parent, key=Secret(bytes.fromhex(key)))
        verdict.check(result.ok, f"verify after the kill: {result.to_json()}")
        record(FAMILY_AUDIT, f"kill {index}", consistent=verdict.consistent, why="; ".join(verdict.problems))
        failures += [f"kill {index}: {p}" for p in verdict.problems]
    print(f"audit appender killed {60 if FULL else 8} times, {torn} torn last line(s)")
    assert not failures, "\n".join(failures)


def test_resume_after_a_damaged_audit_tail_says_what_to_do(pcscd: PrivatePcscd, cards: Cards, canaries: Any,
                                                           material: Material, tmp_path: Path,
                                                           card_dir: Path) -> None:  # fmt: skip
    """A half line (as a cut write leaves it): resume refuses with a sentence naming the remedy,
    writes nothing to the card; with --accept-damaged-audit-tail it finishes and the log verifies."""
    job = FaultJob(tmp_path / "job", canaries, material)
    reader = pcscd.reader_name(1)
    state, log, logs = card_dir / "tail.json", card_dir / "tail.jsonl", tmp_path / "logs-tail"
    log.unlink(missing_ok=True)
    old = new_card_state(state, canaries, material)
    cards.insert(1, kind="sim", mode="process", state=state, options={"serial": job.serial, "apdu_log": str(log)})
    proc = _spawn_run(pcscd, job, logs, reader, "import_key:end")
    out, err = proc.communicate(timeout=120)
    verdict = Verdict()
    verdict.check(proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}")
    with open(logs / "audit.jsonl", "ab") as handle:
        handle.write(b'{"event":"certificate_written","seq":')
    mark = len(apdu_log(log))
    refused = run_cli("resume", "--unattended", "--json", "--no-progress", "--logs", str(logs), "--reader", reader,
                      outputs=canaries.outputs)  # fmt: skip
    verdict.check(refused.code == 4, f"resume on a damaged tail exit {refused.code}")
    verdict.check("--accept-damaged-audit-tail" in refused.stderr, f"message: {refused.stderr!r}")
    verdict.check(len(apdu_log(log)) == mark, "resume touched the card although it refused")
    done = run_cli("resume", "--unattended", "--json", "--no-progress", "--logs", str(logs), "--reader", reader,
                   "--accept-damaged-audit-tail", "fault campaign: half line after a kill", outputs=canaries.outputs)  # fmt: skip
    verdict.check(done.code == 0, f"resume with acceptance exit {done.code}: {done.stderr[-300:]}")
    status = done.json()["jobs"][0]["status"] if done.stdout.strip().startswith("{") else None
    judge_final(verdict, job=job, logs=logs, state=state, old=old, report_status=status)
    record(FAMILY_AUDIT, "damaged tail then resume", consistent=verdict.consistent, why="; ".join(verdict.problems))
    assert verdict.consistent, verdict.problems
