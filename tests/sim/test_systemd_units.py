"""contrib/systemd: the nightly renewal units stay valid and their command line stays one that
``provision`` accepts; the same command, on simulated cards, forwards its audit seal to syslog."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from provision.cli import build_parser
from tests.helpers.product import checkout_pythonpath, provision_cmd
from tests.helpers.tiers import require

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "contrib" / "systemd"


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_start() -> list[str]:
    (command,) = unit_settings("provision-renewal.service")["ExecStart"]
    return shlex.split(command)


def test_the_unit_runs_an_unattended_batch_that_provision_accepts() -> None:
    argv = exec_start()
    assert argv[0].endswith("/provision")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.unattended and args.wait == 600
    assert args.logs == "/var/lib/provision" and args.syslog == "/dev/log" and args.no_progress


def test_only_exit_0_is_success_and_a_stop_is_ctrl_c() -> None:
    service = unit_settings("provision-renewal.service")
    assert "SuccessExitStatus" not in service  # exit 1 (a card failed) must leave the unit failed
    assert service["Type"] == ["oneshot"] and service["KillSignal"] == ["SIGINT"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "User", "StateDirectory"):
        assert hardening in service
    timer = unit_settings("provision-renewal.timer")
    assert timer["Unit"] == ["provision-renewal.service"] and timer["Persistent"] == ["true"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    require(None if shutil.which("systemd-analyze") else "systemd-analyze is not installed (Debian: systemd)",
            "systemd unit check")  # fmt: skip
    # verify checks that ExecStart exists: point it at this checkout's provision.
    binary = REPO / ".venv" / "bin" / "provision"
    require(None if binary.exists() else "no .venv/bin/provision in this checkout (make setup)", "systemd unit check")
    text = (UNITS / "provision-renewal.service").read_text().replace(exec_start()[0], str(binary))
    (tmp_path / "provision-renewal.service").write_text(text)
    shutil.copy(UNITS / "provision-renewal.timer", tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", "provision-renewal.service",
                           "provision-renewal.timer"], cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_nightly_command_on_simulated_cards_forwards_the_seal(tmp_path: Path, canaries: Any) -> None:
    from provision import fixtures

    canaries.write_secret_file(tmp_path / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp_path / "card.pin", "123456")
    ca = fixtures.make_ca("Nightly CA")
    (tmp_path / "chan.p12").write_bytes(fixtures.holder_p12(ca, "CHAN Tai Man", canaries.pkcs12_password))
    (tmp_path / "renewal.yaml").write_text(
        'version: 1\nbatch: nightly\ndefaults:\n  slot: 9c\n  slot_name: "e-Cert"\n  pin: {file: card.pin}\n'
        "  renew: {when_expires_within: 30d}\ncards:\n  - id: HK-1\n    holder: CHAN Tai Man\n"
        "    card: {serial: 12345678}\n    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n"
    )
    log_socket = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(log_socket))
    server.settimeout(10)
    argv = exec_start()[1:]
    argv[argv.index("/etc/provision/renewal.yaml")] = str(tmp_path / "renewal.yaml")
    argv[argv.index("/var/lib/provision")] = str(tmp_path / "logs")
    argv[argv.index("/dev/log")] = str(log_socket)
    argv[argv.index("--wait") + 1] = "0"
    env = {**os.environ, **checkout_pythonpath()}
    try:
        done = subprocess.run([*provision_cmd(), *argv, "--sim"], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        # a seal after each job, then the run's: the last message carries the seal the run printed
        messages = [server.recv(65536).decode() for _ in range(2)]
    finally:
        server.close()
    seal = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("Audit seal: "))
    assert all(m.startswith("<") and " seal " in m for m in messages)  # RFC 5424, facility authpriv
    assert f"audit seal {seal}" in messages[-1]
