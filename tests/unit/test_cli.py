"""The command line, run as a user runs it: a child process, exit codes, JSON, no secrets out."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provision import fixtures

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Test e-Cert CA")


def make_job(tmp_path: Path, canaries, ca: fixtures.Issuer, *, cn: str = "CHAN Tai Man", expect_cn: str | None = None) -> Path:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    data = fixtures.holder_p12(ca, cn, canaries.pkcs12_password, key_type="p256",
                               not_before=now - timedelta(days=1), not_after=now + timedelta(days=365))
    (tmp_path / "chan.p12").write_bytes(data)
    canaries.write_secret_file(tmp_path / "p12.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp_path / "card.pin", canaries.pin)
    canaries.write_secret_file(tmp_path / "mgmt.key", canaries.management_key)
    job = tmp_path / "job.yaml"
    job.write_text(
        "version: 1\nbatch: b1\ntimezone: Asia/Hong_Kong\ncards:\n"
        "  - id: HK-1\n    holder: CHAN Tai Man\n    card: {serial: 12345678}\n"
        "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n"
        "    slot: 9c\n    slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n"
        "    pin: {file: card.pin}\n    management_key: {file: mgmt.key}\n"
        f"    expect: {{subject_cn: {expect_cn or cn}}}\n"
        "    export: {pem: \"out/{job.id}.pem\"}\n"
    )
    return job


def test_validate_ok_and_json(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = make_job(tmp_path, canaries, ca)
    run = cli("validate", str(job))
    assert run.returncode == 0, run.stderr
    assert "valid, batch b1, 1 job(s)" in run.stdout
    run = cli("validate", "--json", str(job))
    doc = json.loads(run.stdout)
    assert doc["valid"] is True and doc["files"][0]["jobs"] == 1


def test_validate_invalid_exits_2_with_file_line_path(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nbatch: b\ncards:\n  - id: A\n    holder: h\n    slot: 9f\n")
    run = cli("validate", str(bad))
    assert run.returncode == 2
    assert f"{bad}:4: cards[0]: 'pkcs12' is missing; add it" in run.stderr
    assert "Traceback" not in run.stderr
    doc = json.loads(cli("validate", "--json", str(bad)).stdout)
    assert doc["valid"] is False and doc["files"][0]["errors"][0]["line"] == 4


def test_inspect_ok_json_and_slot_name(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_job(tmp_path, canaries, ca)
    run = cli("inspect", "chan.p12", "--password-file", "p12.pass", "--timezone", "Asia/Hong_Kong", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "ok" and doc["piv_algorithm"] == "ECCP256"
    assert doc["certificate"]["subject_cn"] == "CHAN Tai Man"
    assert doc["slot_name"].startswith("e-Cert")
    text = cli("inspect", "chan.p12", "--password-file", "p12.pass").stdout
    assert "subject:" in text and "slot name:" in text


def test_inspect_wrong_password_exits_2(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_job(tmp_path, canaries, ca)
    run = cli("inspect", "chan.p12", "--password-env", "WRONG_PW", "--json", env={"WRONG_PW": "1111222233334444"})
    assert run.returncode == 2
    assert json.loads(run.stdout)["status"] == "wrong-password"


def test_inspect_without_password_and_terminal_says_what_to_do(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_job(tmp_path, canaries, ca)
    run = cli("inspect", "chan.p12")
    assert run.returncode == 2 and "no terminal" in run.stderr


def test_plan_json_shape(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = make_job(tmp_path, canaries, ca)
    run = cli("plan", "--json", str(job))
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    entry = doc["jobs"][0]
    assert doc["batch"] == "b1"
    assert set(entry) >= {"id", "holder", "slot", "slot_name", "fingerprint_sha256", "bundle_status", "problems", "steps"}
    assert entry["bundle_status"] == "ok" and entry["problems"] == []
    actions = [s["action"] for s in entry["steps"]]
    assert actions.index("archive_replaced_certificate") < actions.index("verify_pin") < actions.index("import_key")
    assert actions[-1] == "export_pem"


def test_plan_sim_reads_a_fresh_simulated_card_and_says_which_steps_it_needs(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = make_job(tmp_path, canaries, ca)
    doc = json.loads(cli("plan", "--json", "--sim", str(job)).stdout)
    entry = doc["jobs"][0]
    assert entry["card"] == {"serial": 12345678}  # the job's card as the file names it, kept
    assert entry["card_seen"]["serial"] == 12345678 and entry["card_seen"]["slot_action"] == "empty"
    applies = {s["action"]: s["applies"] for s in entry["steps"]}
    assert applies["archive_replaced_certificate"] is False
    assert applies["import_key"] is applies["write_certificate"] is applies["commit"] is True
    assert doc["cards"] == {"read": True, "unavailable": None, "without_job": [], "for_any_if_presented": []}
    assert entry["card_choice"] == "named"


def test_plan_without_pcsc_says_so_once_and_plans_any_card(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = make_job(tmp_path, canaries, ca)
    env = {"PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    run = cli("plan", str(job), env=env)
    assert run.returncode == 0, run.stderr
    said = [line for line in run.stdout.splitlines() if "no card was read" in line]
    assert len(said) == 1 and said[0].startswith("Cards: ")
    doc = json.loads(cli("plan", "--json", str(job), env=env).stdout)
    assert doc["cards"]["unavailable"] and doc["jobs"][0]["card_seen"] is None
    assert all(s["applies"] is None for s in doc["jobs"][0]["steps"])


def test_plan_reports_expect_mismatch_as_a_problem(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = make_job(tmp_path, canaries, ca, expect_cn="Someone Else")
    run = cli("plan", "--json", str(job))
    assert run.returncode == 2
    problems = json.loads(run.stdout)["jobs"][0]["problems"]
    assert any("expect.subject_cn" in p for p in problems)


def test_usage_errors_exit_2(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("no-such-command").returncode == 2
    assert cli("inspect").returncode == 2


def test_help_does_not_import_heavy_modules() -> None:
    code = "import sys; from provision.cli import build_parser; build_parser().format_help(); " \
           "print(sorted(m for m in ('cryptography', 'jsonschema', 'smartcard', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_runs_the_batch_as_designed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = cli("demo", "--dir", str(tmp_path / "demo"), "--holders", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ran as designed" in run.stdout
    assert (tmp_path / "demo" / "demo.yaml").exists()
    report = json.loads(next((tmp_path / "logs" / "reports").glob("*.json")).read_text())
    statuses = sorted(job["status"] for job in report["jobs"])
    assert statuses == ["failed", "loaded", "loaded"] and len(report["refused_cards"]) == 1
    assert len(list((tmp_path / "logs" / "store").glob("*.pem"))) == 1  # the old e-Cert, On Disk


def test_fast_help_lists_every_command_of_the_parser() -> None:
    from provision.cli import build_parser, fast_help

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    names = set(subparsers.choices)  # type: ignore[attr-defined]
    assert names and all(f"  {name} " in fast_help() for name in names)


def test_help_exits_0_without_argparse() -> None:
    code = "import sys; from provision.cli import main; rc = main(['--help']); " \
           "print(rc, 'argparse' in sys.modules, file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "0 False"
    assert "usage: provision" in done.stdout


def test_run_sim_status_store_and_resume(cli, canaries, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = make_job(tmp_path, canaries, ca)
    text = job.read_text().replace("{file: card.pin}", "{env: SIM_PIN}").replace("    management_key: {file: mgmt.key}\n", "")
    job.write_text(text)
    run = cli("run", str(job), "--sim", "--unattended", "--json", "--no-progress", env={"SIM_PIN": "123456"})
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["jobs"][0]["status"] == "loaded" and doc["jobs"][0]["card_serial"] == 12345678
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"][0]["status"] == "loaded" and status["runs"][0]["status"] == "finished"
    assert json.loads(cli("store", "list", "--json").stdout) == {"certificates": []}
    assert "Nothing to resume" in cli("resume", "--unattended").stdout
    assert (tmp_path / "out" / "HK-1.pem").exists()


def test_run_with_invalid_job_file_touches_nothing(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nbatch: b\ncards: []\n")
    run = cli("run", str(bad), "--sim")
    assert run.returncode == 2 and not (tmp_path / "logs").exists()


def test_operator_from_option_environment_or_one_question(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import io

    from provision import cli
    from provision.errors import UsageError

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("PROVISION_OPERATOR", raising=False)
    asked = Terminal()
    monkeypatch.setattr(sys, "stdin", Terminal("CHAN Siu Ling\n"))
    monkeypatch.setattr(sys, "stderr", asked)
    assert cli._operator(argparse.Namespace(operator=None, unattended=False)) == "CHAN Siu Ling"
    assert "Operator" in asked.getvalue()
    assert cli._operator(argparse.Namespace(operator=None, unattended=True)) is None  # the OS user
    monkeypatch.setenv("PROVISION_OPERATOR", "LEE Ka Yan")
    assert cli._operator(argparse.Namespace(operator=None, unattended=True)) == "LEE Ka Yan"
    assert cli._operator(argparse.Namespace(operator="WONG", unattended=True)) == "WONG"
    with pytest.raises(UsageError, match="control characters"):
        cli._operator(argparse.Namespace(operator="WONG\r\nforged", unattended=True))


def test_a_stopped_run_claims_a_seal_only_when_its_end_was_written(capsys: pytest.CaptureFixture[str]) -> None:
    from provision.app import RunOutcome
    from provision.cli import _warn_if_stopped
    from provision.errors import JournalError

    full = JournalError("the disk of the journal is full")
    _warn_if_stopped(RunOutcome(3, {}, {}, full, sealed=True))
    assert "provision: the disk of the journal is full; the run was recorded as interrupted and sealed" in capsys.readouterr().err
    _warn_if_stopped(RunOutcome(3, {}, {}, full, sealed=False))
    said = capsys.readouterr().err
    assert "sealed" not in said and "still calls it running" in said
    # The failure stays an exception until here; the reports' own failure is added to its sentence.
    _warn_if_stopped(RunOutcome(3, {}, {}, full, sealed=True, reports_failure=OSError(28, "No space left on device")))
    assert "full; the reports could not be written either (No space left on device); the run was" in capsys.readouterr().err
