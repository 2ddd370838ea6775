"""The files the program reads at run time: one list, inside the package, read through importlib."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from provision import resources

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_published_schema_is_byte_identical_to_the_packaged_one() -> None:
    assert (REPO / "schemas" / "job.schema.json").read_bytes() == resources.job_schema_bytes(), (
        "schemas/job.schema.json is the published copy of provision/data/job.schema.json: "
        "change the package's file and copy it (cp provision/data/job.schema.json schemas/)"
    )


def test_every_listed_data_file_is_in_the_package_and_nothing_else_is() -> None:
    on_disk = {p.name for p in (REPO / "provision" / "data").iterdir() if p.is_file()}
    assert on_disk == set(resources.DATA_FILES)
    for name in resources.DATA_FILES:
        assert resources.read_bytes(name)
    json.loads(resources.job_schema_bytes())


def test_an_unlisted_name_is_refused() -> None:
    with pytest.raises(KeyError):
        resources.read_bytes("../../etc/passwd")


def test_no_module_finds_files_next_to_its_source() -> None:
    """``__file__``-relative paths work in a checkout and break in a zip or the one-file build."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "provision").rglob("*.py")
                 if re.search(r"\b__file__\b", p.read_text(encoding="utf-8"))]  # fmt: skip
    assert not offenders
