"""bench/readme_table.py: the performance tables of docs/development.md and README.md, from bench/results.json.

  python bench/readme_table.py              # print the table
  python bench/readme_table.py --write      # replace the tables in docs/development.md (every row with its
                                            # detail) and README.md (the summary) between their markers
  python bench/readme_table.py --write a.json b.json c.json   # several runs: the median of each row

With several runs (copies of bench/results.json), a row measured in more than one of them shows the
median value, whether that median meets the target, and every run's value; its detail is the
median run's.

Each table sits between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``; nothing
else in either page is touched.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def meets(value: float, target: str) -> bool | None:
    """``<= 1.25x`` / ``>= 14x`` / ``< 1 ms`` against a value; None when the target says otherwise."""
    parts = target.replace("x", " ").split()
    if len(parts) < 2:
        return None
    try:
        limit = float(parts[1].rstrip(","))
    except ValueError:
        return None
    return {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit}.get(parts[0])


def merge(runs: list[dict[str, object]]) -> dict[str, object]:
    """One result list from several runs: rows in run order, numeric values by their median."""
    if len(runs) == 1:
        return runs[0]
    rows: dict[tuple[str, str], list[dict[str, object]]] = {}
    for run in runs:
        for r in run["results"]:  # type: ignore[attr-defined]
            rows.setdefault((str(r["id"]), str(r["measure"])), []).append(r)
    merged = []
    for same in rows.values():
        values = [r["value"] for r in same]
        if len(same) > 1 and all(isinstance(v, (int, float)) for v in values):
            ordered = sorted(same, key=lambda r: float(r["value"]))  # type: ignore[arg-type]
            middle = dict(ordered[(len(ordered) - 1) // 2])
            median = statistics.median(float(v) for v in values)  # type: ignore[arg-type]
            met = meets(median, str(middle["target"]))
            middle["value"] = f"{median:g} (runs: {', '.join(f'{v:g}' for v in values)})"  # type: ignore[str-format]
            middle["met"] = middle["met"] if met is None else met
            merged.append(middle)
        else:
            merged.append(same[-1])
    return {"quick": any(r.get("quick") for r in runs), "card_model": runs[0].get("card_model"),
            "results": merged, "runs": len(runs)}  # fmt: skip


def table(data: dict[str, object]) -> str:
    results: list[dict[str, object]] = data["results"]  # type: ignore[assignment]
    kind = "quick run (`--quick`)" if data.get("quick") else "full run"
    runs = int(data.get("runs", 1))  # type: ignore[call-overload]
    source = f"the median of {runs} runs" if runs > 1 else f"one {kind}"
    lines = [
        f"Card model: {data.get('card_model', 'see each row')}. From {source} of `make bench` (rows measured "
        "once come from one full run); regenerate with `python bench/readme_table.py --write`.",
        "",
        "| id | measure | target | measured | met | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "yes" if r.get("met") else "**no**"
        lines.append(f"| {cell(r['id'])} | {cell(r['measure'])} | {cell(r['target'])} | {cell(r['value'])} | {met} | "
                     f"{cell(r.get('detail', ''))} |")  # fmt: skip
    return "\n".join(lines)


def summary(data: dict[str, object]) -> str:
    """The README's table: each goal, its target, what was measured and whether it is met."""
    results: list[dict[str, object]] = data["results"]  # type: ignore[assignment]
    runs = int(data.get("runs", 1))  # type: ignore[call-overload]
    lines = [
        f"From {f'the median of {runs} runs' if runs > 1 else 'one run'} of `make bench` on a 2-core machine "
        "(ratios measured side by side in one run); every row's measurements and reasons are in "
        "[the full table](docs/development.md#performance).",
        "",
        "| id | measure | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {cell(r['id'])} | {cell(r['measure'])} | {cell(r['target'])} | {cell(r['value'])} | "
                     f"{'yes' if r.get('met') else '**no**'} |")  # fmt: skip
    return "\n".join(lines)


def replace_in(readme: Path, text: str) -> None:
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str]) -> int:
    sources = [Path(a) for a in argv if a != "--write"] or [HERE / "results.json"]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        print(f"bench/readme_table.py: {', '.join(missing)} not found; run make bench first", file=sys.stderr)
        return 2
    data = merge([json.loads(p.read_text(encoding="utf-8")) for p in sources])
    if "--write" in argv:
        replace_in(HERE.parent / "docs" / "development.md", table(data))
        replace_in(HERE.parent / "README.md", summary(data))
    else:
        print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
