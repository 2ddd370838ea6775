"""Family 4: secret canaries. Every tier's representative flows run as real child processes with
unique PIN, PUK, management key, PKCS#12 password and audit key values (the ``canaries`` fixture);
everything they print, every file under the test's directory (journal, audit log, store,
reports, exports) and the argv of the provision process and of its children, sampled from
/proc while they run, are searched for the values in plain text, hex and base64.

Card state files (a card's EEPROM holds its PIN and management key, as a real card does) are kept
outside the searched directory.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults_common import FaultJob, Material, new_card_state, record
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, card_present, wait_for
from tests.helpers.product import provision_cmd

pytestmark = [pytest.mark.pcsc]
FAMILY = "secret canaries (flows)"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


class Flows:
    """Runs ``provision …`` children, sampling their argv (and their children's) until they end."""

    def __init__(self, canaries: Any, env: dict[str, str], cwd: Path) -> None:
        self.canaries, self.env, self.cwd = canaries, env, cwd
        self.argvs: list[bytes] = []
        self.results: list[tuple[str, int]] = []

    def _sample(self, pid: int) -> None:
        for child in _descendants(pid):
            try:
                self.argvs.append(Path(f"/proc/{child}/cmdline").read_bytes())
            except OSError:
                pass

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in self.env.items() if not k.startswith("PROVISION_")}
        return subprocess.Popen([*provision_cmd(), *args], cwd=self.cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def run(self, name: str, *args: str, expect: tuple[int, ...] = (0,)) -> tuple[int, str, str]:
        proc = self.spawn(*args)
        while proc.poll() is None:
            self._sample(proc.pid)
            time.sleep(0.01)
        out, err = proc.communicate(timeout=120)
        self.canaries.outputs += [out, err]
        leaks = self.canaries.leaks_in((out + err).encode()) + self.leaks_in_argv()
        record(FAMILY, name, consistent=proc.returncode in expect and not leaks, leaked=bool(leaks),
               why=f"exit {proc.returncode} {leaks} {err[-200:]}")  # fmt: skip
        assert proc.returncode in expect, (name, proc.returncode, err[-600:])
        assert "Traceback" not in err, (name, err[-600:])
        return proc.returncode, out, err

    def leaks_in_argv(self) -> list[str]:
        found = [name for argv in self.argvs for name in self.canaries.leaks_in(argv)]
        self.argvs.clear()
        return found


def test_no_secret_escapes_any_flow(pcscd: PrivatePcscd, cards: Cards, canaries: Any, material: Material,
                                    tmp_path: Path, card_dir: Path) -> None:  # fmt: skip
    env = {**pcscd.env, "CANARY_P12_PW": canaries.pkcs12_password}
    flows = Flows(canaries, env, tmp_path)
    logs = str(tmp_path / "logs")
    common = ("--logs", logs)

    # Offline tiers: validate, plan, inspect (right and wrong password).
    job = FaultJob(tmp_path / "card-job", canaries, material,
                   management_key="{command: [cat, mgmt.key]}")  # a child process whose argv is sampled
    flows.run("validate", "validate", str(job.path), *common)
    flows.run("validate --json", "validate", "--json", str(job.path), *common)
    flows.run("plan", "plan", str(job.path), *common)
    flows.run("inspect", "inspect", str(job.directory / "chan.p12"), "--password-env", "CANARY_P12_PW", *common)
    wrong = tmp_path / "wrong-p12"
    wrong.mkdir()
    from provision import fixtures

    (wrong / "chan.p12").write_bytes(fixtures.holder_p12(material.ca, "CHAN Tai Man", "a-different-password"))
    flows.run("inspect wrong password", "inspect", str(wrong / "chan.p12"), "--password-env", "CANARY_P12_PW",
              "--json", *common, expect=(2,))  # fmt: skip

    # run --sim: fresh cards with the factory PIN: a good load, then the canary PIN and the canary
    # management key as the wrong ones, and a PKCS#12 with another password than the canary.
    good = FaultJob(tmp_path / "sim-good", canaries, material, pin="123456", management_key="", batch="sim-good")
    flows.run("run --sim", "run", str(good.path), "--sim", "--unattended", "--no-progress", *common)
    bad_pin = FaultJob(tmp_path / "sim-pin", canaries, material, management_key="", batch="sim-pin")
    flows.run("run --sim wrong PIN", "run", str(bad_pin.path), "--sim", "--unattended", "--no-progress", *common,
              expect=(1,))  # fmt: skip
    bad_key = FaultJob(tmp_path / "sim-key", canaries, material, pin="123456", batch="sim-key")
    flows.run("run --sim wrong management key", "run", str(bad_key.path), "--sim", "--unattended", "--no-progress",
              "--json", *common, expect=(1,))  # fmt: skip
    bad_pw = FaultJob(tmp_path / "sim-pw", canaries, material, pin="123456", management_key="", batch="sim-pw")
    (bad_pw.directory / "chan.p12").write_bytes((wrong / "chan.p12").read_bytes())
    flows.run("run --sim wrong PKCS#12 password", "run", str(bad_pw.path), "--sim", "--unattended", "--no-progress",
              *common, expect=(1, 2))  # fmt: skip

    # Through pcscd: a card with the canary PIN and management key, pulled mid-load, then resumed.
    state = card_dir / "canary-card.json"
    new_card_state(state, canaries, material)
    server = cards.insert(0, kind="sim", mode="process", state=state, options={"serial": job.serial, "vanish_after": 14})
    flows.run("run via pcscd (card pulled)", "run", str(job.path), "--unattended", "--no-progress", "--reader",
              server.reader, *common, expect=(1,))  # fmt: skip
    cards.pull_all()
    wait_for(lambda: not card_present(server.reader), 10, "the pulled card to leave")

    # The card comes back through `provision sim serve` itself (its argv is sampled too).
    serve = flows.spawn("sim", "serve", "--port", str(pcscd.port(0)), "--host", "127.0.0.1", "--serial",
                        str(job.serial), "--state", str(state))  # fmt: skip
    try:
        wait_for(lambda: card_present(pcscd.reader_name(0)), 15, "sim serve's card")
        flows._sample(serve.pid)
        flows.run("resume via pcscd", "resume", "--unattended", "--no-progress", "--reader", pcscd.reader_name(0),
                  *common)  # fmt: skip
        flows.run("card info", "card", "info", "--reader", pcscd.reader_name(0), *common)
        flows.run("card info --json", "card", "info", "--json", "--reader", pcscd.reader_name(0), *common)
        flows.run("readers", "readers", *common)
    finally:
        serve.terminate()
        out, err = serve.communicate(timeout=30)
        canaries.outputs += [out, err]
    assert not flows.leaks_in_argv()

    # Reading back: status, store, audit, reports.
    key_args = ("--key-file", str(job.audit_key_file))
    flows.run("audit verify", "audit", "verify", *key_args, *common)
    flows.run("audit verify --json", "audit", "verify", "--json", *key_args, *common)
    flows.run("audit show", "audit", "show", *key_args, *common)  # keyed records verify only with the key
    flows.run("audit show --json", "audit", "show", "--json", *key_args, *common)
    flows.run("status", "status", "--json", *common)
    flows.run("store list", "store", "list", "--json", *common)
    for fmt in ("json", "csv", "html"):
        flows.run(f"report {fmt}", "report", "--last", "--format", fmt, *common)
    flows.run("report -o", "report", "--last", "--format", "html", "-o", str(tmp_path / "report.html"), *common)
    # Every file the flows wrote (the canaries fixture searches them again at teardown).
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.resolve() not in canaries.secret_files]
    leaks = [f"{name} in {p}" for p in written for name in canaries.leaks_in(p.read_bytes())]
    record(FAMILY, f"files written ({len(written)})", consistent=not leaks, leaked=bool(leaks), why=str(leaks))
    assert written and not leaks, leaks
