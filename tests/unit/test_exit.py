"""The command's own exit (``provision.cli.exit_after``): everything an ordinary interpreter exit does
that matters still happens (threads waited for, ``atexit`` functions, every byte of output, the exit
status), what only costs time is skipped, and anything unusual falls back to the ordinary exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provision.errors import EXIT_OK
from tests.helpers.product import REPO, installed_cli, product_env, provision_cmd

PRELUDE = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from provision.cli import exit_after

    class Finalized:
        def __del__(self):
            sys.stderr.write("module freed\\n")

    KEPT = Finalized()
    """
)


def run_script(body: str, *, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_status_output_threads_and_atexit_survive_and_teardown_is_skipped() -> None:
    done = run_script(
        """
        atexit.register(lambda: sys.stdout.write("atexit ran\\n"))
        def late():
            time.sleep(0.3)
            sys.stdout.write("thread finished\\n")
        threading.Thread(target=late).start()  # not a daemon: the interpreter would wait for it
        sys.stdout.write("y" * 1_000_000 + "\\n")  # more than any pipe buffer: all of it must arrive
        exit_after(5)
        """
    )
    assert done.returncode == 5
    lines = done.stdout.splitlines()
    assert lines[0] == "y" * 1_000_000
    assert lines[1:] == ["thread finished", "atexit ran"]  # threads first, then atexit, as Python does
    assert "module freed" not in done.stderr  # the teardown that costs 60-90 ms was skipped


def test_slow_exit_on_request_is_the_interpreters_own() -> None:
    done = run_script("atexit.register(lambda: print('atexit ran'))\nexit_after(3)", env={"PROVISION_SLOW_EXIT": "1"})
    assert done.returncode == 3
    assert done.stdout == "atexit ran\n"
    assert "module freed" in done.stderr  # the ordinary exit freed the module's objects


def test_output_that_cannot_be_flushed_ends_as_the_ordinary_exit_would() -> None:
    """stdout whose reader has gone (flushing fails): the ordinary exit runs, with Python's own
    report and status, exactly as without ``exit_after``."""
    body = textwrap.dedent(
        """
        import io
        class Gone(io.TextIOWrapper):
            def flush(self):
                raise BrokenPipeError(32, "Broken pipe")
        sys.stdout = Gone(io.BytesIO())
        sys.stdout.write("x" * 10)
        """
    )
    ours = run_script(body + "exit_after(0)")
    plain = run_script(body + "sys.exit(0)")
    assert ours.returncode == plain.returncode == 120  # Python's status for output it could not flush
    assert "BrokenPipeError" in ours.stderr and "module freed" in ours.stderr  # the ordinary exit ran
    assert ours.stderr == plain.stderr


def entry_points() -> list[list[str]]:
    """Every way the command starts: the installed console script (installed tier) or ``python -m
    provision`` (checkout), the one-file build when one was built, and its script in the checkout."""
    commands = [provision_cmd()]
    if os.environ.get("PROVISION_ONEFILE"):
        commands.append([os.environ["PROVISION_ONEFILE"]])
    if not installed_cli():
        commands.append([sys.executable, str(REPO / "packaging" / "provision_main.py")])
    return commands


@pytest.mark.parametrize("entry", entry_points(), ids=lambda words: Path(words[-1]).name)
def test_every_entry_point_ends_through_it(entry: list[str], tmp_path: Path) -> None:
    """Each entry point keeps the exit status and the whole output."""
    job = tmp_path / "broken.yaml"
    job.write_text("version: 1\njobs: [\n", encoding="utf-8")
    env = product_env(dict(os.environ))
    done = subprocess.run([*entry, "validate", str(job)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip
    assert done.returncode not in (EXIT_OK, 70, 120)
    assert "broken.yaml" in done.stderr and done.stderr.endswith("\n")
    done = subprocess.run([*entry, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == EXIT_OK and done.stdout.startswith("provision ")


def test_commands_leave_nothing_to_the_exit(tmp_path: Path) -> None:
    """What the fast exit would lose, a command must not leave open: with the interpreter's own exit
    (``PROVISION_SLOW_EXIT``) and ResourceWarning shown, a whole simulated batch (validate, plan,
    run, reports) and the commands an auditor runs after it leave no file unclosed, and the journal
    is closed (SQLite has folded its write-ahead log back). A future change that leaves a file to
    the interpreter's teardown fails here."""
    env = {**product_env(dict(os.environ)), "PROVISION_SLOW_EXIT": "1", "PYTHONWARNINGS": "always::ResourceWarning",
           "PROVISION_LOGS": str(tmp_path / "logs")}  # fmt: skip
    commands = [
        ["demo", "--dir", str(tmp_path / "jobs")],
        ["status"],
        ["report", "--format", "csv"],
        ["audit", "verify"],
        ["audit", "show"],
        ["validate", str(tmp_path / "jobs" / "demo.yaml")],
        ["plan", str(tmp_path / "jobs" / "demo.yaml"), "--sim"],
    ]
    for words in commands:
        done = subprocess.run([*provision_cmd(), *words], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=env, stdin=subprocess.DEVNULL)  # fmt: skip
        assert done.returncode in (0, 2), (words, done.returncode, done.stderr[-2000:])
        assert "ResourceWarning" not in done.stderr, (words, done.stderr[-2000:])
        assert not (tmp_path / "logs" / "journal.sqlite3-wal").exists(), words
    assert (tmp_path / "logs" / "audit.jsonl").stat().st_size > 0


@pytest.mark.parametrize("signal_name", ["TERM", "HUP"])
def test_a_signal_before_any_run_ends_the_command_as_ctrl_c_does(signal_name: str, tmp_path: Path) -> None:
    """SIGTERM or SIGHUP while a command starts (here: while 'plan' obtains a PKCS#12 password from
    a program, which sends the signal to provision) ends it with exit 130 and one sentence, as
    CLI.md says, never killed by the signal's default action (exit 143/129, not a word said)."""
    from provision import fixtures

    ca = fixtures.make_ca()
    (tmp_path / "h.p12").write_bytes(fixtures.holder_p12(ca, "CHAN Tai Man", "pw"))
    (tmp_path / "job.yaml").write_text(
        "version: 1\nbatch: sig\ncards:\n  - id: J1\n    holder: CHAN Tai Man\n    card: {serial: 12345678}\n"
        f'    pkcs12: {{path: h.p12, password: {{command: [sh, -c, "kill -{signal_name} $PPID; sleep 1"]}}}}\n'
        '    slot: 9c\n    slot_name: "x"\n    pin: {value: "123456"}\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    done = subprocess.run([*provision_cmd(), "plan", "job.yaml", "--logs", str(tmp_path / "logs")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=product_env(env))  # fmt: skip
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stderr.splitlines()[-1].startswith("provision: interrupted")
