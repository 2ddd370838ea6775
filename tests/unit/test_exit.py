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


@pytest.mark.parametrize("entry", [["-m", "provision"], ["packaging/provision_main.py"]])
def test_every_entry_point_ends_through_it(entry: list[str], tmp_path: Path) -> None:
    """``python -m provision`` and the one-file build's script keep the status and the whole output
    (the console script is checked by the installed tier, which runs the installed command)."""
    repo = Path(__file__).resolve().parents[2]
    job = tmp_path / "broken.yaml"
    job.write_text("version: 1\njobs: [\n", encoding="utf-8")
    done = subprocess.run([sys.executable, *entry, "validate", str(job)], cwd=repo, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode not in (EXIT_OK, 70, 120)
    assert "broken.yaml" in done.stderr and done.stderr.endswith("\n")
    done = subprocess.run([sys.executable, *entry, "--version"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OK and done.stdout.startswith("provision ")
