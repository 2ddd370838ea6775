"""The guides' pictures are the program's own: `make docs` records them from the real counter code
(tools/docgen.py), and this test renders them again and fails when a committed one differs, so the
guides cannot drift from the program.

What is compared: the SVG text of every counter screen exactly (rich's SVG export is text; the
screens are recorded on a fixed-width console with fixed serials, keys, dates and answers), the
plan's text exactly, and for the report's PNG the HTML that was rendered (report.html, exactly) and
the digest of that HTML written beside the PNG when Chromium rendered it. Pixels are not compared:
fonts, hinting and anti-aliasing differ from one machine to the next while the HTML does not, so a
pixel test would fail on a fresh machine for reasons that are not the program's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import docgen

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return docgen.generate()


def test_every_committed_picture_is_what_the_code_renders_now(generated: dict[str, str]) -> None:
    from importlib.metadata import version

    stale = docgen.stale(generated)
    # rich draws the SVG: a rich release that draws differently shows here too (the picture would
    # no longer be what users see), so the message names the version in use.
    assert not stale, f"stale pictures (run make docs and commit; rich {version('rich')}): {stale}"
    # Nothing committed under docs/pictures that the generator no longer makes (a renamed screen).
    committed = {f"pictures/{p.name}" for p in (DOCS / "pictures").iterdir() if p.suffix in (".svg", ".html", ".txt")}
    assert committed == {name for name in generated if name.startswith("pictures/")}


def test_the_counter_day_shows_every_moment_the_guide_describes(generated: dict[str, str]) -> None:
    """The recorded day really passes through the screens the guide names (in both languages)."""
    text = {name: svg for name, svg in generated.items() if name.endswith(".svg")}
    for suffix in ("", ".zh_Hant"):
        for screen in ("1-start", "2-holder", "3-confirm", "4-done", "5-wrong-card", "6-wrong-pin", "7-blocked",
                       "8-unblocked", "9-pulled", "10-back", "11-end-of-day"):  # fmt: skip
            assert f"pictures/counter-{screen}{suffix}.svg" in text

    def words(name: str) -> str:  # rich writes spaces as &#160;
        return text[name].replace("&#160;", " ")

    assert "REFUSED" in words("pictures/counter-5-wrong-card.svg")
    assert "Wrong PIN" in words("pictures/counter-6-wrong-pin.svg")
    assert "is blocked" in words("pictures/counter-7-blocked.svg")
    assert "PIN unblocked" in words("pictures/counter-8-unblocked.svg")
    assert "removed during the load" in words("pictures/counter-9-pulled.svg")
    assert "skipped today" in words("pictures/counter-11-end-of-day.svg")


def test_the_png_shows_the_html_the_code_renders_now(generated: dict[str, str]) -> None:
    png = DOCS / "pictures" / "report.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rendered_from = (DOCS / "pictures" / "report.png.sha256").read_text(encoding="utf-8").strip()
    assert rendered_from == docgen.html_digest(generated["pictures/report.html"]), "report.png is stale: run make docs"


def test_a_changed_screen_is_caught(generated: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is real: a committed picture that differs by one character is reported."""
    name = "pictures/counter-3-confirm.svg"
    monkeypatch.setattr(docgen, "DOCS", tmp_path)
    for path, content in generated.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content, encoding="utf-8")
    assert docgen.stale(generated) == []
    (tmp_path / name).write_text(generated[name].replace("Check", "Chekc", 1), encoding="utf-8")
    assert docgen.stale(generated) == [name]
