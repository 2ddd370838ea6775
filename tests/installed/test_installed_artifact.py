"""What a user installs, judged from outside the checkout: the wheel's contents, its version, and a
whole day with the installed ``provision`` in an empty directory. The CLI-level tests of the other
tiers run against the same installed command under ``make test-installed``."""

from __future__ import annotations

import csv
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from provision.resources import CATALOG_FILES, DATA_FILES, JOB_SCHEMA
from tests.helpers.artifact import Artifact
from tests.helpers.product import REPO


def _package_files_in_checkout() -> set[str]:
    """Every file of the package in the checkout that is not a byte-compiled leftover."""
    tracked = subprocess.run(["git", "ls-files", "provision"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        names = tracked.stdout.split()
    else:  # a source tree without git (an unpacked sdist)
        names = [str(p.relative_to(REPO)) for p in (REPO / "provision").rglob("*") if p.is_file()]
    return {n for n in names if "__pycache__" not in n and not n.endswith(".pyc")}


def test_the_wheel_holds_every_file_of_the_package(artifact: Artifact) -> None:
    wheel = set(zipfile.ZipFile(artifact.wheel()).namelist())
    for name in DATA_FILES:
        assert f"provision/data/{name}" in wheel, f"{name} is missing from the wheel"
    for name in CATALOG_FILES:
        assert f"provision/{name}" in wheel, f"{name} is missing from the wheel"
    missing = _package_files_in_checkout() - wheel
    assert not missing, f"files of the package that the wheel does not carry: {sorted(missing)}"


def test_the_sdist_builds_the_same_package(artifact: Artifact) -> None:
    with tarfile.open(artifact.sdist()) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert _package_files_in_checkout() <= names
    assert "schemas/job.schema.json" in names  # the published contract travels with the source


def test_the_published_schema_is_the_one_the_program_reads(artifact: Artifact) -> None:
    published = (REPO / "schemas" / "job.schema.json").read_bytes()
    packaged = zipfile.ZipFile(artifact.wheel()).read(f"provision/data/{JOB_SCHEMA}")
    assert published == packaged, "schemas/job.schema.json and provision/data/job.schema.json differ"


def _installed_python(artifact: Artifact, code: str) -> str:
    done = subprocess.run([str(artifact.python), "-c", code], cwd=artifact.work, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_installed_command_runs_the_installed_package(artifact: Artifact) -> None:
    where = Path(_installed_python(artifact, "import provision; print(provision.__file__)"))
    assert where.is_relative_to(artifact.venv) and not where.is_relative_to(REPO)


def test_version_comes_from_the_installed_metadata(cli: Any, artifact: Artifact) -> None:
    metadata = _installed_python(artifact, "import importlib.metadata as m; print(m.version('provision'))")
    assert artifact.wheel().name.startswith(f"provision-{metadata}-")
    run = cli("--version")
    assert run.returncode == 0 and run.stdout == f"provision {metadata}\n"
    assert f"Version {metadata}." in cli("--help").stdout


def test_a_day_from_an_empty_directory(cli: Any, canaries: Any, tmp_path: Path) -> None:
    """demo, validate, inspect, plan, run --sim, report, audit verify, status, store list, jobs new."""
    demo = cli("demo", "--dir", "d", "--holders", "2")
    assert demo.returncode == 0, demo.stderr
    assert "ran as designed" in demo.stdout
    assert cli("audit", "verify").returncode == 0

    job = "d/demo.yaml"
    valid = cli("validate", "--json", job)
    assert valid.returncode == 0, valid.stderr
    inspected = json.loads(cli("inspect", "d/certs/lee-siu-ming.p12", "--password-file",
                               "d/certs/lee-siu-ming.pass", "--json").stdout)  # fmt: skip
    assert inspected["status"] == "ok" and inspected["certificate"]["subject_cn"] == "LEE Siu Ming"
    plan = json.loads(cli("plan", "--json", job).stdout)
    assert {j["id"]: j["bundle_status"] for j in plan["jobs"]}["HK-B2345678"] == "ok"

    logs = tmp_path / "day"
    run = cli("run", job, "--sim", "--unattended", "--json", "--no-progress", "--logs", str(logs))
    assert run.returncode == 1, run.stderr  # the demo's expired e-Cert fails by design
    document = json.loads(run.stdout)
    statuses = {j["id"]: j["status"] for j in document["jobs"]}
    assert statuses["HK-A1234567"] == "loaded" and statuses["HK-B2345678"] == "loaded"
    assert "failed" in statuses.values()

    html = cli("report", "--last", "--format", "html", "-o", "day.html", "--logs", str(logs))
    assert html.returncode == 0, html.stderr
    assert "LEE Siu Ming" in (tmp_path / "day.html").read_text(encoding="utf-8")
    rows = list(csv.DictReader(cli("report", document["run_id"], "--format", "csv", "--logs", str(logs)).stdout
                               .splitlines()))  # fmt: skip
    assert {r["id"]: r["status"] for r in rows} == statuses
    assert cli("audit", "verify", "--logs", str(logs)).returncode == 0
    status = json.loads(cli("status", "--json", "--logs", str(logs)).stdout)
    assert document["run_id"] in json.dumps(status)
    assert cli("store", "list", "--json", "--logs", str(logs)).returncode == 0

    (tmp_path / "holders.csv").write_text("id,holder,card serial,pkcs12\nHK-9,CHAN Tai Man,12345678,a.p12\n")
    (tmp_path / "template.yaml").write_text(
        "version: 1\nbatch: from-csv\ndefaults:\n  slot: 9c\n  slot_name: \"e-Cert{cert.not_before:%Y%m%d}\"\n"
        "  pin: {env: CARD_PIN}\n"
    )
    made = cli("jobs", "new", "--csv", "holders.csv", "--template", "template.yaml", "-o", "batch.yaml",
               "--no-file-checks")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "HK-9" in (tmp_path / "batch.yaml").read_text()


def test_the_installed_command_speaks_chinese(cli: Any, tmp_path: Path) -> None:
    """The compiled catalog is read from the installed package: an error in Traditional Chinese, and
    the same --json as in English."""
    chinese = cli("--lang", "zh_Hant", "report", "--last", "--logs", str(tmp_path / "none"))
    assert chinese.returncode == 2 and "尚未有任何執行的報告" in chinese.stderr, chinese.stderr
    assert "Traceback" not in chinese.stderr
