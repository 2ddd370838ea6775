"""The one-file build for counter PCs without Python, run from an empty directory with nothing on
``PATH``: no venv, no interpreter, no tool of ours. ``make dist`` and ``make test-installed`` build it
(packaging/provision.spec) and point ``PROVISION_ONEFILE`` at it; alone, the fixture builds it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.artifact import build_onefile

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def onefile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    chosen = os.environ.get("PROVISION_ONEFILE")
    if chosen:
        yield Path(chosen).resolve()
    else:
        root = tmp_path_factory.mktemp("onefile")
        yield build_onefile(root / "dist", root / "work")


def run(binary: Path, where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    empty = where / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(empty), "HOME": str(where), "LANG": "C.UTF-8", "PROVISION_CACHE_DIR": "off"}
    return subprocess.run([str(binary), *args], cwd=where, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_one_file_build_does_a_day_alone(onefile: Path, tmp_path: Path) -> None:
    version = run(onefile, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("provision ")
    demo = run(onefile, tmp_path, "demo", "--dir", "d", "--holders", "2")
    assert demo.returncode == 0, demo.stderr
    assert "ran as designed" in demo.stdout
    assert run(onefile, tmp_path, "validate", "d/demo.yaml").returncode == 0
    inspected = run(onefile, tmp_path, "inspect", "d/certs/lee-siu-ming.p12", "--password-file",
                    "d/certs/lee-siu-ming.pass", "--json")  # fmt: skip
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["status"] == "ok"
    again = run(onefile, tmp_path, "run", "d/demo.yaml", "--sim", "--unattended", "--json", "--no-progress",
                "--logs", "second")  # fmt: skip
    assert again.returncode == 1, again.stderr  # the demo's expired e-Cert fails by design
    statuses = [j["status"] for j in json.loads(again.stdout)["jobs"]]
    assert statuses.count("loaded") == 2 and statuses.count("failed") == 1
    for logs in ("logs", "second"):
        verified = run(onefile, tmp_path, "audit", "verify", "--logs", logs)
        assert verified.returncode == 0, verified.stderr
    assert "Traceback" not in demo.stderr + again.stderr
    # The catalogs and Babel's locale data travel inside the one file: a report in Chinese, dates too.
    chinese = run(onefile, tmp_path, "--lang", "zh_Hant", "report", "--last", "--format", "html", "--logs", "second")
    assert chinese.returncode == 0, chinese.stderr
    assert "智能卡證書載入報告" in chinese.stdout and "年" in chinese.stdout
