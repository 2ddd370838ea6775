"""The guides under docs/ and the README: the job-file reference is generated from the schema and
current, every schema field says what it is for, and every relative link and anchor resolves.

The link check is a test rather than a static-site build: it covers README.md (outside docs/) as
well as the guides, needs nothing installed, and fails with the file, the link and what is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tools import docgen

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_every_schema_field_has_a_description() -> None:
    missing = docgen.undocumented_fields(docgen.SCHEMA.read_text(encoding="utf-8"))
    assert not missing, f"schema fields without a description (add one to schemas/job.schema.json): {missing}"


def test_a_field_without_description_is_caught() -> None:
    schema = json.loads(docgen.SCHEMA.read_text(encoding="utf-8"))
    del schema["$defs"]["cardFields"]["properties"]["slot"]["description"]
    assert "cards[].slot" in docgen.undocumented_fields(json.dumps(schema))


def test_the_job_file_reference_is_generated_from_the_current_schema() -> None:
    committed = (ROOT / "docs" / "jobfile.md").read_text(encoding="utf-8")
    assert committed == docgen.jobfile_reference(docgen.SCHEMA.read_text(encoding="utf-8")), "docs/jobfile.md is stale: run make docs"


def test_the_reference_names_every_card_field() -> None:
    schema = json.loads(docgen.SCHEMA.read_text(encoding="utf-8"))
    reference = (ROOT / "docs" / "jobfile.md").read_text(encoding="utf-8")
    for field in schema["$defs"]["cardFields"]["properties"]:
        assert f"| `cards[].{field}` |" in reference


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            base = slug(match.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(re.findall(r'<a (?:name|id)="([^"]+)"', line))
    return found


def links(page: Path) -> list[str]:
    """Every link target of a page, links that wrap over two lines included (code left out)."""
    kept: list[str] = []
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    text = re.sub(r"`[^`\n]*`", "", "\n".join(kept))
    return LINK.findall(text)


def broken(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check offline
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{page.relative_to(ROOT)}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken(page) == []


def test_the_link_check_catches_a_broken_link_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## The `logs` directory\n\n[ok](#the-logs-directory) [x](b.md) [y\nz](#nowhere)\n"
                                   "```\n[in code](c.md)\n```\n")
    page = tmp_path / "a.md"
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        problems = broken(page)
    finally:
        ROOT = saved
    assert problems == ["a.md: b.md: no such file", "a.md: #nowhere: no heading #nowhere in a.md"]


def test_the_readme_links_each_guide() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for guide in ("counter.md", "counter.zh_Hant.md", "batch.md", "auditor.md", "admin.md", "jobfile.md", "development.md"):
        assert f"(docs/{guide})" in readme, guide
