"""Family: hostile inputs and environments (issue 19). Promises that must hold when the input is
built to hurt, each tried through the real CLI as a child process (the ``cli`` fixture, whose
outputs are searched for secret canaries):

* every input has a bound, checked before the work: endless sources (/dev/zero, `yes`), huge files
  and format widths end with one sentence and exit 2;
* configured outputs are checked up front: an unreachable syslog is exit 3 before any card,
  nonsense durations are usage errors;
* nothing from a name, id, subject or path steers the terminal: control characters and bidi
  overrides are shown as escapes in every human output, JSON keeps the exact values;
* an empty password is a password when the job says so ({empty: true}, inspect --no-password),
  and never for a PIN, PUK or management key.

Tests with endless sources are guarded by pytest-timeout and assert that the error arrives.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from tests.helpers.faults_common import record
from tests.helpers.p12_openssl import write_certs, write_key

FAMILY = "hostile inputs and environments"
def wait_until_writing(fifo: Path, holder: int) -> None:
    """Until the writer has put bytes into the FIFO (seen through the held read end, without
    taking more than a byte: the pipe stays full for provision's read)."""
    import select

    ready, _, _ = select.select([holder], [], [], 10)
    assert ready, f"nothing was written into {fifo}"


posix_only = pytest.mark.posix_only  # /dev/zero, `yes` and unix sockets are POSIX (not collected on Windows: tests/conftest.py)

ESC_HOLDER = "CHAN\x1b[2J\x1b]0;owned\x07\u202eX\r[bold red]Tai\x9b31m"
ESC_HOLDER_YAML = '"CHAN\\e[2J\\e]0;owned\\a\\u202eX\\r[bold red]Tai\\x9b31m"'  # the same, as YAML escapes
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


def _no_raw_controls(text: str) -> bool:
    return not any(c in text for c in RAW_CONTROLS)


def _one_sentence_error(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) >= 1 and "Traceback" not in stderr


def _judge(case: str, ok: bool, why: str) -> None:
    record(FAMILY, case, consistent=ok, why=why)
    assert ok, why


class Batch:
    """One job's material in ``tmp_path``: a PKCS#12 and owner-only secret files."""

    def __init__(self, tmp_path: Path, canaries: Any, *, holder: str = "CHAN Tai Man", password: str | None = None,
                 cn: str = "CHAN Tai Man") -> None:  # fmt: skip
        self.dir = tmp_path
        self.password = canaries.pkcs12_password if password is None else password
        ca = fixtures.make_ca("Hostile CA")
        (tmp_path / "chan.p12").write_bytes(fixtures.holder_p12(ca, cn, self.password))
        if self.password:
            canaries.write_secret_file(tmp_path / "p12.pass", self.password)
        canaries.write_secret_file(tmp_path / "card.pin", "123456")

    def job(self, *, holder_yaml: str = '"CHAN Tai Man"', slot_name: str = '"e-Cert"', password: str = "{file: p12.pass}",
            pin: str = "{file: card.pin}", pkcs12: str = "chan.p12", extra: str = "") -> Path:  # fmt: skip
        path = self.dir / "job.yaml"
        path.write_text(
            f"version: 1\nbatch: hostile\ndefaults:\n  slot: 9c\n  slot_name: {slot_name}\n  pin: {pin}\n"
            f"cards:\n  - id: HK-1\n    holder: {holder_yaml}\n    card: {{serial: 12345678}}\n"
            f"    pkcs12: {{path: {pkcs12}, password: {password}}}\n{extra}"
        )
        return path


# ----------------------------------------------------------------------------------------------
# 19.2 bounded resources


def _sparse(path: Path, size: int, *, mode: int = 0o600) -> Path:
    path.write_bytes(b"")
    os.chmod(path, mode)
    with open(path, "r+b") as handle:
        handle.truncate(size)
    return path


FIELD_CASES = ("validate a 999999999 format width", "validate a 999999999 precision", "validate a strftime width",
               "validate a 600-character template", "validate a 2000-character secret value")  # fmt: skip
# "validate 20,001 cards" names huge.yaml:LINE of the first card over the bound


@posix_only
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case",
    [
        "validate /dev/zero",
        "plan /dev/zero",
        "inspect /dev/zero",
        "validate a 17 MiB job file",
        "validate a PKCS#12 path of /dev/zero",
        "validate a 20 MiB PKCS#12 file",
        "plan a 10 GB secret file",
        "inspect --password-file of 10 GB",
        "plan a secret program printing without end",
        "validate a 999999999 format width",
        "plan a 999999999 format width",
        "validate a 999999999 precision",
        "validate a strftime width",
        "inspect --slot-name with a 999999999 width",
        "validate a 600-character template",
        "validate a 2000-character secret value",
        "validate a FIFO fed without end",
        "inspect a FIFO fed without end",
        "validate 20,001 cards",
        "plan a 200,000-character holder in a template",
    ],
)
def test_every_input_is_bounded(case: str, cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    env = {"P12_PASSWORD": canaries.pkcs12_password}
    if case == "validate /dev/zero":
        args: tuple[str, ...] = ("validate", "/dev/zero")
    elif case == "plan /dev/zero":
        args = ("plan", "/dev/zero")
    elif case == "inspect /dev/zero":
        args = ("inspect", "/dev/zero", "--password-env", "P12_PASSWORD")
    elif case == "validate a 17 MiB job file":
        args = ("validate", str(_sparse(tmp_path / "huge.yaml", 17 * 1024 * 1024)))
    elif case == "validate a PKCS#12 path of /dev/zero":
        args = ("validate", str(batch.job(pkcs12="/dev/zero")))
    elif case == "validate a 20 MiB PKCS#12 file":
        _sparse(tmp_path / "huge.p12", 20 * 1024 * 1024)
        args = ("validate", str(batch.job(pkcs12="huge.p12")))
    elif case == "plan a 10 GB secret file":
        _sparse(tmp_path / "huge.pass", 10 * 1024**3)
        args = ("plan", str(batch.job(password="{file: huge.pass}")))
    elif case == "inspect --password-file of 10 GB":
        args = ("inspect", str(tmp_path / "chan.p12"), "--password-file", str(_sparse(tmp_path / "huge.pass", 10 * 1024**3)))
    elif case == "plan a secret program printing without end":
        args = ("plan", str(batch.job(password="{command: [yes]}")))
    elif case == "validate a 999999999 format width":
        args = ("validate", str(batch.job(slot_name='"{holder:>999999999}"')))
    elif case == "plan a 999999999 format width":
        args = ("plan", str(batch.job(slot_name='"{holder:>999999999}"')))
    elif case == "validate a 999999999 precision":
        args = ("validate", str(batch.job(slot_name='"{cert.subject_cn:.999999999}"')))
    elif case == "validate a strftime width":
        args = ("validate", str(batch.job(slot_name='"{cert.not_before:%999999999Y}"')))
    elif case == "inspect --slot-name with a 999999999 width":
        args = ("inspect", str(tmp_path / "chan.p12"), "--password-env", "P12_PASSWORD", "--slot-name", "{holder:>999999999}")
    elif case == "validate a 600-character template":
        args = ("validate", str(batch.job(slot_name='"' + "n" * 600 + '"')))
    elif case == "validate a 2000-character secret value":
        args = ("validate", str(batch.job(password="{value: '" + "7" * 2000 + "'}")))
    elif "FIFO" in case:
        fifo = tmp_path / "huge.fifo"
        os.mkfifo(fifo)
        # A read end held here lets `yes` open and start writing before provision opens the FIFO
        # (a FIFO opened before any writer reads as an empty file, which would prove nothing).
        holder = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        feeder = subprocess.Popen(["sh", "-c", 'exec yes > "$0"', str(fifo)])
        wait_until_writing(fifo, holder)
        args = ("validate", str(fifo)) if case.startswith("validate") else ("inspect", str(fifo), "--password-env", "P12_PASSWORD")
    elif case == "validate 20,001 cards":
        cards = "".join(f"  - id: HK-{n}\n    holder: H {n}\n    card: {{serial: {10_000_000 + n}}}\n"
                        f"    pkcs12: {{path: chan.p12, password: {{file: p12.pass}}}}\n" for n in range(20_001))  # fmt: skip
        (tmp_path / "huge.yaml").write_text("version: 1\nbatch: many\ndefaults: {slot: 9c, slot_name: x, pin: {file: card.pin}}\n"
                                            "cards:\n" + cards)  # fmt: skip
        args = ("validate", str(tmp_path / "huge.yaml"))
    else:
        args = ("plan", str(batch.job(holder_yaml="H" * 200_000, slot_name='"{holder}{holder}"')))
    try:
        done = cli(*args, env=env)
    finally:
        if "FIFO" in case:
            feeder.kill()
            feeder.wait()
            os.close(holder)
        for huge in tmp_path.glob("huge.*"):  # the canary search reads every file the test leaves
            huge.unlink()
    if case.startswith("plan") and "/dev/zero" not in case and "format" not in case:
        # the job file is valid; plan names the job's problem and exits 2 before any run
        ok = done.returncode == 2 and any(w in done.stdout for w in ("larger than", "printed more than", "more than 1024"))
    else:
        ok = done.returncode == 2 and _one_sentence_error(done.stderr)
    if "FIFO" in case or "/dev/zero" in case:
        # the bound stopped it (or the path was refused unread), not an empty read
        ok = ok and any(w in done.stderr + done.stdout for w in ("larger than", "is not a file"))
    if case in FIELD_CASES:
        ok = ok and "job.yaml:" in done.stderr  # file:line of the offending field
    if case == "validate 20,001 cards":
        ok = ok and f"huge.yaml:{4 + 4 * 20_000 + 1}: cards[20000]: more than 20000 cards" in done.stderr
    _judge(case, ok, f"exit {done.returncode}: {done.stderr[-400:]}")


def test_a_plan_with_a_bounded_template_still_works(cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    done = cli("plan", "--json", str(batch.job(slot_name='"{holder:>40}"')))
    plan = json.loads(done.stdout) if done.returncode == 0 else {}
    ok = done.returncode == 0 and plan["jobs"][0]["slot_name"] == "CHAN Tai Man".rjust(40)
    _judge("plan with a width of 40", ok, f"exit {done.returncode}: {done.stderr[-300:]}")


# ----------------------------------------------------------------------------------------------
# 19.8 configured outputs checked up front


@pytest.mark.parametrize(
    "option",
    [("--wait", "nan"), ("--wait", "-1"), ("--wait", "inf"), ("--wait", "1e999"), ("--wait", "NaN"),
     ("--wait", "5e9"), ("--lease", "-5"), ("--lease", "0"), ("--lease", "nan"), ("--wait", "soon")],  # fmt: skip
)
def test_nonsense_durations_are_usage_errors(option: tuple[str, str], cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    done = cli("run", str(batch.job()), "--sim", "--unattended", *option)
    ok = done.returncode == 2 and f"argument {option[0]}" in done.stderr and not (tmp_path / "logs").exists()
    _judge(f"run {' '.join(option)}", ok, f"exit {done.returncode}: {done.stderr[-300:]}")


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@posix_only
@pytest.mark.parametrize("where", ["--syslog missing socket", "--syslog closed UDP port", "--syslog unknown host",
                                   "audit.syslog missing socket", "--syslog a plain file"])  # fmt: skip
def test_an_unreachable_syslog_stops_the_run_before_any_card(where: str, cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    (tmp_path / "plain").write_text("")
    address = {
        "--syslog missing socket": str(tmp_path / "no-such-dir" / "log"),
        "--syslog closed UDP port": f"127.0.0.1:{_closed_udp_port()}",
        "--syslog unknown host": "no-such-host.invalid:514",
        "audit.syslog missing socket": str(tmp_path / "nowhere.sock"),
        "--syslog a plain file": str(tmp_path / "plain"),
    }[where]
    if where.startswith("audit."):
        done = cli("run", str(batch.job(extra=f"audit: {{syslog: {address}}}\n")), "--sim", "--unattended", "--json")
    else:
        done = cli("run", str(batch.job()), "--sim", "--unattended", "--json", "--syslog", address)
    audit_log = tmp_path / "logs" / "audit.jsonl"
    untouched = not (audit_log.exists() and audit_log.stat().st_size) and not (tmp_path / "logs" / "reports").exists()
    ok = done.returncode == 3 and "syslog" in done.stderr and untouched and done.stdout == ""
    _judge(where, ok, f"exit {done.returncode}, untouched {untouched}: {done.stderr[-300:]}")


@posix_only
def test_a_listening_syslog_gets_the_seal(cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    log_socket = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(log_socket))
    server.settimeout(30)
    try:
        done = cli("run", str(batch.job()), "--sim", "--unattended", "--no-progress", "--syslog", str(log_socket))
        message = server.recv(65536).decode() if done.returncode == 0 else ""
    finally:
        server.close()
    _judge("--syslog listening socket", done.returncode == 0 and "audit seal" in message, f"exit {done.returncode}: {done.stderr[-300:]}")


# ----------------------------------------------------------------------------------------------
# 19.8 terminal control characters never reach the screen raw


def test_control_characters_in_names_are_shown_not_obeyed(cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries, cn=ESC_HOLDER)
    job = batch.job(holder_yaml=ESC_HOLDER_YAML, extra=f"    expect: {{subject_cn: {ESC_HOLDER_YAML}}}\n")
    failures: list[str] = []
    for args in (("validate", str(job)), ("plan", str(job)),
                 ("run", str(job), "--sim", "--unattended", "--no-progress"), ("status",), ("audit", "show"),
                 ("inspect", str(tmp_path / "chan.p12"), "--password-file", str(tmp_path / "p12.pass"))):  # fmt: skip
        done = cli(*args)
        if done.returncode not in (0, 1) or not (_no_raw_controls(done.stdout) and _no_raw_controls(done.stderr)):
            failures.append(f"{args[0]}: exit {done.returncode}, stdout {done.stdout[-200:]!r}, stderr {done.stderr[-200:]!r}")
        elif args[0] in ("plan", "run", "status", "audit") and "CHAN\\x1b[2J" not in done.stdout:
            failures.append(f"{args[0]}: the holder is not shown with visible escapes: {done.stdout[-300:]!r}")
    done = cli("inspect", str(tmp_path / "chan.p12"), "--password-file", str(tmp_path / "p12.pass"))
    if "\\u202e" not in done.stdout or "[bold red]" not in done.stdout:
        failures.append(f"inspect: the subject is not shown as written: {done.stdout!r}")
    _judge("control characters in holder and subject (text views)", not failures, "; ".join(failures))


def test_json_keeps_the_exact_values(cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries, cn=ESC_HOLDER)
    job = batch.job(holder_yaml=ESC_HOLDER_YAML)
    plan = cli("plan", "--json", str(job))
    run = cli("run", str(job), "--sim", "--unattended", "--no-progress", "--json")
    audit = cli("audit", "show", "--json")
    ok = (json.loads(plan.stdout)["jobs"][0]["holder"] == ESC_HOLDER
          and json.loads(plan.stdout)["jobs"][0]["certificate"]["subject_cn"] == ESC_HOLDER
          and json.loads(run.stdout)["jobs"][0]["holder"] == ESC_HOLDER
          and any(e.get("holder") == ESC_HOLDER for e in json.loads(audit.stdout)["events"]))  # fmt: skip
    _judge("control characters (JSON views exact)", ok, f"plan {plan.returncode}, run {run.returncode}, audit {audit.returncode}")


def test_control_characters_in_paths_and_errors(cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    failures = []
    for args in (("inspect", "evil\x1b[2J\u202e.p12", "--password-env", "NOPE"),
                 ("validate", str(batch.job(pkcs12='"evil\\e[2J\\u202e.p12"'))),
                 ("validate", "missing\x1b]0;title\x07.yaml")):  # fmt: skip
        done = cli(*args)
        if done.returncode != 2 or not (_no_raw_controls(done.stdout) and _no_raw_controls(done.stderr)) or "\\x1b" not in done.stderr:
            failures.append(f"{args[:2]!r}: exit {done.returncode}, stderr {done.stderr[-200:]!r}")
    _judge("control characters in paths (error messages)", not failures, "; ".join(failures))


# ----------------------------------------------------------------------------------------------
# 19.10 an empty password is a password


def _openssl_without_password(workdir: Path) -> bytes:
    ca = fixtures.make_ca("OpenSSL CA")
    key, cert = fixtures.make_leaf(ca, "LEE Siu Ming")
    out = workdir / "openssl.p12"
    argv = ["openssl", "pkcs12", "-export", "-passout", "pass:", "-out", str(out),
            "-inkey", str(write_key(workdir / "key.pem", key)), "-in", str(write_certs(workdir / "cert.pem", [cert]))]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    (workdir / "key.pem").unlink()
    return out.read_bytes()


@pytest.mark.parametrize("producer", ["openssl -passout pass:", "cryptography NoEncryption"])
def test_a_file_without_a_password_opens_when_said_so(producer: str, cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries, password="")
    if producer.startswith("openssl"):
        (tmp_path / "chan.p12").write_bytes(_openssl_without_password(tmp_path))
    inspect = cli("inspect", "--json", str(tmp_path / "chan.p12"), "--no-password")
    job = batch.job(password="{empty: true}")
    validate = cli("validate", str(job))
    plan = cli("plan", "--json", str(job))
    run = cli("run", str(job), "--sim", "--unattended", "--no-progress", "--json")
    ok = (inspect.returncode == 0 and json.loads(inspect.stdout)["status"] == "ok" and validate.returncode == 0
          and plan.returncode == 0 and json.loads(plan.stdout)["jobs"][0]["bundle_status"] == "ok"
          and run.returncode == 0 and json.loads(run.stdout)["jobs"][0]["status"] == "loaded")  # fmt: skip
    _judge(f"empty password: {producer}", ok,
           f"inspect {inspect.returncode}, validate {validate.returncode} {validate.stderr[-200:]}, plan {plan.returncode}, run {run.returncode}")  # fmt: skip


def test_no_password_does_not_open_a_protected_file(cli: Any, canaries: Any, tmp_path: Path) -> None:
    Batch(tmp_path, canaries)
    done = cli("inspect", "--json", str(tmp_path / "chan.p12"), "--no-password")
    ok = done.returncode == 2 and json.loads(done.stdout)["status"] == "wrong-password"
    _judge("inspect --no-password of a protected file", ok, f"exit {done.returncode}: {done.stdout[-200:]}")


@pytest.mark.parametrize(
    "where",
    ["pin", "management_key", "audit.key", "pkcs12.password value ''", "pin value ''", "empty: false",
     "inspect --password-env empty", "inspect --password-file empty", "card PIN env empty at run"],  # fmt: skip
)
def test_an_empty_secret_is_still_refused_elsewhere(where: str, cli: Any, canaries: Any, tmp_path: Path) -> None:
    batch = Batch(tmp_path, canaries)
    canaries.write_secret_file(tmp_path / "empty.pass", "")
    env = {"EMPTY": ""}
    expect_code, words = 2, "empty"
    if where == "pin":
        args: tuple[str, ...] = ("validate", str(batch.job(pin="{empty: true}")))
        words = "only for pkcs12.password"
    elif where == "management_key":
        args = ("validate", str(batch.job(extra="    management_key: {empty: true}\n")))
        words = "only for pkcs12.password"
    elif where == "audit.key":
        args = ("validate", str(batch.job(extra="audit: {key: {empty: true}}\n")))
        words = "only for pkcs12.password"
    elif where == "pkcs12.password value ''":
        args = ("validate", str(batch.job(password="{value: ''}")))
        words = "{empty: true}"
    elif where == "pin value ''":
        args = ("validate", str(batch.job(pin="{value: ''}")))
    elif where == "empty: false":
        args = ("validate", str(batch.job(password="{empty: false}")))
        words = "empty: true"
    elif where == "inspect --password-env empty":
        args = ("inspect", str(tmp_path / "chan.p12"), "--password-env", "EMPTY")
    elif where == "inspect --password-file empty":
        args = ("inspect", str(tmp_path / "chan.p12"), "--password-file", str(tmp_path / "empty.pass"))
    else:
        args = ("run", str(batch.job(pin="{env: EMPTY}")), "--sim", "--unattended", "--no-progress")
        expect_code = 1
    done = cli(*args, env=env)
    ok = done.returncode == expect_code and words in (done.stderr + done.stdout) and "Traceback" not in done.stderr
    _judge(f"empty secret refused: {where}", ok, f"exit {done.returncode}: {(done.stderr + done.stdout)[-300:]}")
