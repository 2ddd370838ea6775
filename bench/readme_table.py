"""The README's performance table, made from bench/results.json (what ``make bench`` wrote).

  python bench/readme_table.py              # print the table
  python bench/readme_table.py --write      # replace the table in README.md between its markers

The table sits in README.md between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``;
nothing else in the README is touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(data: dict[str, object]) -> str:
    results: list[dict[str, object]] = data["results"]  # type: ignore[assignment]
    kind = "quick run (`--quick`)" if data.get("quick") else "full run"
    lines = [
        f"Card model: {data.get('card_model', 'see each row')}. From one {kind} of `make bench`; "
        "regenerate with `python bench/readme_table.py --write`.",
        "",
        "| id | measure | target | measured | met | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "yes" if r.get("met") else "**no**"
        lines.append(f"| {cell(r['id'])} | {cell(r['measure'])} | {cell(r['target'])} | {cell(r['value'])} | {met} | "
                     f"{cell(r.get('detail', ''))} |")  # fmt: skip
    return "\n".join(lines)


def replace_in(readme: Path, text: str) -> None:
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str]) -> int:
    source = HERE / "results.json"
    rest = [a for a in argv if a != "--write"]
    if rest:
        source = Path(rest[0])
    text = table(json.loads(source.read_text(encoding="utf-8")))
    if "--write" in argv:
        replace_in(HERE.parent / "README.md", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
