"""Under PROVISION_REQUIRE_ALL_TIERS (make test) nothing may skip: a skip there is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CASES = '''
import sys

import pytest

from tests.helpers.tiers import require


def test_calls_skip():
    pytest.skip("no such tool here")


@pytest.mark.skipif(True, reason="a skipif that means the same")
def test_marked_skipif():
    pass


def test_requires_a_missing_tool():
    require("the tool is missing", "some tier")


@pytest.mark.posix_only
def test_posix_only():
    assert sys.platform != "win32"


@pytest.mark.xfail(reason="a known bug is not a skip")
def test_xfails():
    assert False


def test_passes():
    pass
'''


def _pytest(tmp_path: Path, require_all: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "PROVISION_REQUIRE_ALL_TIERS"}
    env["PYTHONPATH"] = str(REPO)
    if require_all:
        env["PROVISION_REQUIRE_ALL_TIERS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rA",
         "--rootdir", str(tmp_path), "-o", "markers=posix_only", str(tmp_path / "test_cases.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_skip_fails_when_all_tiers_are_required(tmp_path: Path) -> None:
    done = _pytest(tmp_path, require_all=True)
    assert done.returncode == 1, done.stdout
    summary = done.stdout.splitlines()[-1]
    # A skip in the test is a failure, a skip before it (skipif, a fixture) an error: never a pass.
    assert "2 failed" in summary and "1 error" in summary, done.stdout
    assert "2 passed" in summary and "1 xfailed" in summary, done.stdout
    assert "skipped" not in summary, done.stdout
    assert "the some tier cannot run: the tool is missing" in done.stdout
    assert "skipped under PROVISION_REQUIRE_ALL_TIERS" in done.stdout


def test_elsewhere_a_missing_tool_skips(tmp_path: Path) -> None:
    done = _pytest(tmp_path, require_all=False)
    assert done.returncode == 0, done.stdout
    assert "3 skipped" in done.stdout.splitlines()[-1], done.stdout
