"""Reports: JSON, CSV (no formula injection) and one self-contained, escaped HTML page."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from provision.report import CSV_COLUMNS, JOB_COLUMNS, counts, render_csv, render_html, write_reports


def run_document() -> dict[str, Any]:
    def job(n: int, holder: str, status: str, **extra: Any) -> dict[str, Any]:
        base: dict[str, Any] = dict.fromkeys(JOB_COLUMNS)
        base.update(id=f"HK-{n:04d}", holder=holder, status=status, card_serial=str(1000 + n), slot="9c",
                    slot_name="e-Cert20251125", apdus=42, seconds=4.5, pin_tries_left=3)  # fmt: skip
        base.update(extra)
        return base

    return {
        "run_id": "20251125T020000Z-a1b2",
        "batch": "hk-2025-11",
        "started": "2025-11-25T02:00:00Z",
        "finished": "2025-11-25T02:03:10Z",
        "seal": "cf3e80bc6b76df716f798a9b796f843bfab74f2f1f400a354987597a57ed2387",
        "jobs": [
            job(
                0,
                "CHAN Tai Man",
                "loaded",
                fingerprint_sha256="ab" * 32,
                not_after="2027-11-24T23:59:59Z",
                replaced_sha256="cd" * 32,
                archived_to="logs/store/1000/9c-20241125.pem",
            ),  # fmt: skip
            job(1, "陳大文", "skipped", fingerprint_sha256="ef" * 32, not_after="2027-11-24T23:59:59Z"),
            job(2, "<script>alert('x')</script> & Co", "failed", error="the PIN was refused; 2 tries left"),
            job(
                3,
                '=HYPERLINK("http://evil")',
                "refused",
                card_serial="-9999",
                error={"class": "WrongCardError", "message": "card 9999 is not HK-0003's card 1003"},
            ),  # fmt: skip
            job(4, "@SUM(A1)", "pending", card_serial=None, apdus=None, seconds=None, pin_tries_left=None),
        ],
    }


def test_write_reports_writes_three_files(tmp_path: Path) -> None:
    doc = run_document()
    paths = write_reports(doc, tmp_path / "reports")
    assert {k: p.name for k, p in paths.items()} == {
        "json": "20251125T020000Z-a1b2.json", "csv": "20251125T020000Z-a1b2.csv", "html": "20251125T020000Z-a1b2.html",
    }  # fmt: skip
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == doc
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]  # no temp left
    with pytest.raises(ValueError):
        write_reports({**doc, "run_id": "../../etc/passwd"}, tmp_path)


def test_csv_has_the_columns_and_no_formulas() -> None:
    rows = list(csv.reader(io.StringIO(render_csv(run_document()))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 6
    by_id = {row[0]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]}
    assert by_id["HK-0003"]["holder"] == '\'=HYPERLINK("http://evil")'
    assert by_id["HK-0003"]["card_serial"] == "'-9999"
    assert by_id["HK-0004"]["holder"] == "'@SUM(A1)"
    assert by_id["HK-0003"]["error"] == "card 9999 is not HK-0003's card 1003 (WrongCardError)"
    assert by_id["HK-0001"]["holder"] == "陳大文" and by_id["HK-0000"]["not_after"] == "2027-11-24T23:59:59Z"
    for row in rows[1:]:
        assert not any(cell[:1] in ("=", "+", "-", "@") for cell in row)


def test_html_is_self_contained_and_escaped() -> None:
    page = render_html(run_document())
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; Co" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "@media print" in page
    for text in ("hk-2025-11", "20251125T020000Z-a1b2", "cf3e80bc6b76df716f798a9b796f843bfab74f2f1f400a354987597a57ed2387",
                 "Refused: wrong card", "logs/store/1000/9c-20241125.pem", 'expires <time datetime="2027-11-24T23:59:59Z">24 Nov 2027, 23:59:59</time>',
                 "the PIN was refused; 2 tries left"):  # fmt: skip
        assert text in page


def test_counts_from_jobs_or_document() -> None:
    doc = run_document()
    assert counts(doc) == {"loaded": 1, "skipped": 1, "failed": 1, "refused": 1, "pending": 1, "in-doubt": 0}
    assert counts({**doc, "counts": {"loaded": 7}}) == {"loaded": 7}


def test_reports_are_all_or_none_when_the_disk_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while the third report is written: none of the new reports replaces an old one,
    and no temporary file is left behind."""
    import errno
    import os

    from provision import fsutil

    doc = run_document()
    old = write_reports(doc, tmp_path / "reports")
    before = {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()}
    real_fsync, calls = os.fsync, []

    def filling(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", filling)
    changed = {**doc, "batch": "a later batch"}
    with pytest.raises(OSError, match="No space"):
        write_reports(changed, tmp_path / "reports")
    assert {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()} == before
    assert json.loads(old["json"].read_text(encoding="utf-8")) == doc


def test_reports_are_synced_file_by_file_and_the_directory_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    from provision import fsutil

    synced: list[str] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", counting)
    write_reports(run_document(), tmp_path / "reports")
    assert synced == ["file", "file", "file", "dir"]  # every file on disk before any rename, then one dir sync
