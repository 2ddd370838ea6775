"""bench/readme_table.py: the README's performance table is made from the bench's JSON, not typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_table", REPO / "bench" / "readme_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(p1: float, p7: float) -> dict[str, object]:
    return {"quick": False, "card_model": "simulated", "results": [
        {"id": "P1", "measure": "ours / peer", "value": p1, "target": "<= 0.5x", "met": p1 <= 0.5, "detail": f"run {p1}"},
        {"id": "P7", "measure": "per card / card", "value": p7, "target": "<= 1.05x", "met": p7 <= 1.05, "detail": ""},
        {"id": "P2", "measure": "APDUs", "value": "17/21", "target": "<= 1", "met": True, "detail": "counts"},
    ]}  # fmt: skip


def test_several_runs_give_each_row_its_median_and_judge_it_again() -> None:
    table = _module()
    merged = table.merge([_run(0.77, 1.2), _run(0.45, 1.04), _run(0.48, 1.1)])
    rows = {r["id"]: r for r in merged["results"]}
    assert rows["P1"]["value"].startswith("0.48 (runs: 0.77, 0.45, 0.48)")
    assert rows["P1"]["met"] is True and rows["P1"]["detail"] == "run 0.48"  # the median run's detail
    assert rows["P7"]["value"].startswith("1.1 ") and rows["P7"]["met"] is False
    assert rows["P2"]["value"] == "17/21"
    text = table.table(merged)
    assert "the median of 3 runs" in text and "| P7 | per card / card | <= 1.05x | 1.1 (runs: 1.2, 1.04, 1.1) | **no** |" in text


def test_write_replaces_only_between_the_markers(tmp_path: Path) -> None:
    table = _module()
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{table.START}\nold table\n{table.END}\nafter\n")
    (tmp_path / "r.json").write_text(json.dumps(_run(0.6, 1.0)))
    table.replace_in(readme, table.table(table.merge([json.loads((tmp_path / "r.json").read_text())])))
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert "| P1 | ours / peer | <= 0.5x | 0.6 | **no** |" in text


def test_the_readme_summary_has_every_row_without_its_detail() -> None:
    table = _module()
    merged = table.merge([_run(0.77, 1.2), _run(0.45, 1.04), _run(0.48, 1.1)])
    text = table.summary(merged)
    assert "the median of 3 runs" in text and "docs/development.md#performance" in text
    assert "| P1 | ours / peer | <= 0.5x | 0.48 (runs: 0.77, 0.45, 0.48) | yes |" in text
    assert "| P7 | per card / card | <= 1.05x | 1.1 (runs: 1.2, 1.04, 1.1) | **no** |" in text
    assert "run 0.48" not in text  # the detail stays in the full table
