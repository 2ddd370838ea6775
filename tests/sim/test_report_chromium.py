"""The HTML report as a person sees it: rendered by a real headless Chromium (Debian package chromium)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

from provision.report import write_reports
from tests.helpers.tiers import require
from tests.unit.test_report import run_document

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]  # fmt: skip


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    require(None if CHROMIUM else "chromium is not installed (Debian package chromium)", "HTML report check")
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def _visible_text(dom: str) -> str:
    body = dom.split("<body", 1)[1]
    body = re.sub(r"<style.*?</style>", "", body, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def test_report_renders_every_card(tmp_path: Path) -> None:
    doc = run_document()
    page = write_reports(doc, tmp_path / "reports")["html"]
    done = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    text = _visible_text(done.stdout)
    assert "Card provisioning report" in text and "hk-2025-11" in text and doc["seal"] in text
    words = {"loaded": "Loaded", "skipped": "Already on the card", "failed": "Failed",
             "refused": "Refused: wrong card", "pending": "Pending: card never inserted"}  # fmt: skip
    rows = re.findall(r"<tr>(.*?)</tr>", done.stdout, flags=re.S)
    for job in doc["jobs"]:
        row = next(_visible_text("<body>" + r) for r in rows if f">{job['id']}<" in r)
        assert job["holder"] in row and words[job["status"]] in row, row
    assert "<script>alert" not in done.stdout  # the hostile holder name stayed text


def test_report_screenshot(tmp_path: Path) -> None:
    page = write_reports(run_document(), tmp_path / "reports")["html"]
    shot = Path(os.environ.get("PROVISION_REPORT_SCREENSHOT", tmp_path / "report.png"))
    done = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1400,900", "--hide-scrollbars", page.as_uri()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
