"""The Chinese report as a counter clerk sees it: rendered by headless Chromium (Debian chromium),
and every character of every text checked to be drawn by a font that has it (no tofu).

Chromium tells, per element, which platform fonts drew its text (CDP ``CSS.getPlatformFontsForNode``);
fontTools reads those fonts' character maps. A character that none of them maps was drawn as a
missing-glyph box. The check is shown to fail: the same page rendered with a fontconfig that has only
a Latin font (DejaVu Sans) is caught with the Chinese characters it could not draw.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from provision import i18n
from provision.report import write_reports
from tests.helpers.tiers import require
from tests.unit.test_report import run_document

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip


@pytest.fixture
def chinese_report(tmp_path: Path) -> Path:
    doc = run_document()
    doc["timezone"] = "Asia/Hong_Kong"
    i18n.set_language(i18n.CHINESE)
    try:
        return write_reports(doc, tmp_path / "reports")["html"]
    finally:
        i18n.set_language(i18n.ENGLISH)


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require(None if sync_playwright else "playwright is not installed (pip, dev dependency)", "report glyph check")
    require(None if CHROMIUM else "chromium is not installed (Debian package chromium)", "report glyph check")
    require(None if shutil.which("fc-list") else "fontconfig's fc-list is missing", "report glyph check")
    return sync_playwright


@cache
def _font_file(postscript_name: str, family: str) -> tuple[str, int] | None:
    """The file (and index in a collection) fontconfig has for a font Chromium named."""
    for pattern in (f":postscriptname={postscript_name}", f"{family}"):
        out = subprocess.run(["fc-list" if pattern.startswith(":") else "fc-match", pattern, "-f", "%{file}|%{index}\n"],
                             capture_output=True, text=True, check=False).stdout.split("\n")[0]  # fmt: skip
        if out and "|" in out:
            path, index = out.split("|", 1)
            return path, int(index or 0)
    return None


@cache
def _cmap(postscript_name: str, family: str) -> frozenset[int]:
    from fontTools.ttLib import TTCollection, TTFont

    found = _font_file(postscript_name, family)
    if found is None:
        return frozenset()
    path, index = found
    if path.lower().endswith((".ttc", ".otc")):
        font = TTCollection(path, lazy=True).fonts[index]
    else:
        font = TTFont(path, lazy=True)
    return frozenset(font.getBestCmap() or {})


def _elements_with_text(node: dict[str, Any]) -> Iterator[tuple[int, str]]:
    own = "".join(child.get("nodeValue", "") for child in node.get("children", []) if child.get("nodeType") == 3)
    if node.get("nodeType") == 1 and own.strip() and node.get("nodeName") not in ("STYLE", "TITLE", "SCRIPT"):
        yield node["nodeId"], own
    for child in node.get("children", []):
        yield from _elements_with_text(child)


def missing_glyphs(page: Path, profile: Path, env: dict[str, str] | None = None) -> tuple[dict[str, list[str]], int]:
    """{text: [characters no drawing font has]} for every element of the rendered page, and how many
    CJK characters were checked."""
    sync_playwright = _playwright()
    problems: dict[str, list[str]] = {}
    checked = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, env=env)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.goto(page.as_uri())
            cdp = tab.context.new_cdp_session(tab)
            cdp.send("DOM.enable")
            cdp.send("CSS.enable")
            root = cdp.send("DOM.getDocument", {"depth": -1})["root"]
            for node_id, text in _elements_with_text(root):
                fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node_id})["fonts"]
                covered: set[int] = set()
                for font in fonts:
                    covered |= _cmap(font.get("postScriptName", ""), font["familyName"])
                lost = [c for c in text if not c.isspace() and ord(c) not in covered]
                checked += sum(1 for c in text if ord(c) >= 0x2E80)
                if lost:
                    problems[text.strip()[:60]] = lost
        finally:
            browser.close()
    return problems, checked


def test_chinese_report_has_every_glyph(chinese_report: Path, tmp_path: Path) -> None:
    problems, checked = missing_glyphs(chinese_report, tmp_path / "profile")
    assert checked > 200  # the page really is in Chinese (labels, statuses, the holders' names)
    assert problems == {}, f"drawn without a glyph (tofu): {problems}"


def test_the_glyph_check_catches_tofu(chinese_report: Path, tmp_path: Path) -> None:
    """Only DejaVu Sans (Latin) visible to Chromium: the Chinese characters have no font and the check
    must say so, or the test above proves nothing."""
    dejavu = _font_file("DejaVuSans", "DejaVu Sans")
    require(None if dejavu else "the DejaVu fonts are missing (Debian fonts-dejavu-core)", "tofu proof")
    assert dejavu is not None
    fonts_dir = tmp_path / "latin-only"
    fonts_dir.mkdir()
    (fonts_dir / Path(dejavu[0]).name).symlink_to(dejavu[0])
    config = tmp_path / "fonts.conf"
    config.write_text(f"""<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><dir>{fonts_dir}</dir><cachedir>{tmp_path / "fc-cache"}</cachedir></fontconfig>
""", encoding="utf-8")  # fmt: skip
    import os

    env = {**os.environ, "FONTCONFIG_FILE": str(config)}
    problems, _checked = missing_glyphs(chinese_report, tmp_path / "profile", env=env)
    lost = {c for chars in problems.values() for c in chars}
    assert "陳" in lost and "證" in lost, problems
