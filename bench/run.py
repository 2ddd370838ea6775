"""provision benchmarks: ratios against a baseline measured in the same run (machines are noisy).

Prints one table and writes bench/results.json. Nothing here is an assert: targets are reported
as met or not, with the measured numbers, so a slow machine never fails a build.

  python bench/run.py            # everything available
  python bench/run.py P4 P5      # selected measures
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_big_jobfile(directory: Path, cards: int) -> Path:
    (directory / "c.p12").write_bytes(b"x")
    lines = [
        "version: 1",
        "batch: big",
        "timezone: Asia/Hong_Kong",
        "defaults:",
        "  slot: 9c",
        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"',
        "  pin: {env: BENCH_PIN}",
        "  replace: archive",
        "cards:",
    ]
    for n in range(cards):
        lines += [
            f"  - id: HK-{n:08d}",
            f"    holder: HOLDER Number {n}",
            f"    card: {{serial: {10_000_000 + n}}}",
            "    pkcs12:",
            "      path: c.p12",
            "      password: {env: BENCH_P12}",
            f"    expect: {{subject_cn: HOLDER Number {n}, not_after_after: 2027-01-01}}",
            '    export: {pem: "out/{job.id}.pem"}',
        ]
    path = directory / "big.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def p4_validate_ratio() -> dict[str, object]:
    import yaml

    from provision.jobfile import load_jobfile

    os.environ.setdefault("BENCH_PIN", "0")
    os.environ.setdefault("BENCH_P12", "0")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_big_jobfile(Path(tmp), 10_000)
        text = path.read_text()
        load_jobfile(path)  # warm caches (schema compile) as a long-running process would have
        baseline = best_of(lambda: yaml.load(text, Loader=yaml.CSafeLoader), 3)
        ours = best_of(lambda: load_jobfile(path), 3)
    ratio = ours / baseline
    return {"id": "P4", "measure": "validate of a 10,000-card job file / bare yaml.CSafeLoader parse",
            "value": round(ratio, 2), "detail": f"{ours:.3f} s vs {baseline:.3f} s", "target": "<= 3x",
            "met": ratio <= 3.0}  # fmt: skip


def p5_help_ratio() -> dict[str, object]:
    import compileall

    # An installed package has its bytecode compiled; PYTHONDONTWRITEBYTECODE may be set here.
    compileall.compile_dir(REPO / "provision", quiet=1)
    script = Path(sys.executable).with_name("provision")
    provision = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "provision", "--help"]
    bare = [sys.executable, "-c", "pass"]

    def run(argv: list[str]) -> float:
        samples = []
        for _ in range(15):
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, cwd=REPO)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    ours, baseline = run(provision), run(bare)
    ratio = ours / baseline
    return {"id": "P5", "measure": "provision --help start-up / python -c pass", "value": round(ratio, 2),
            "detail": f"{ours * 1000:.1f} ms vs {baseline * 1000:.1f} ms", "target": "<= 2x", "met": ratio <= 2.0}  # fmt: skip


MEASURES: dict[str, Callable[[], dict[str, object]]] = {"P4": p4_validate_ratio, "P5": p5_help_ratio}


def main(argv: list[str]) -> int:
    wanted = argv or list(MEASURES)
    results = []
    for key in wanted:
        results.append(MEASURES[key]())
    width = max(len(str(r["measure"])) for r in results)
    print(f"{'id':4} {'measure':{width}} {'value':>7} {'target':>7}  met  detail")
    for r in results:
        print(f"{r['id']:4} {r['measure']!s:{width}} {r['value']!s:>7} {r['target']!s:>7}  "
              f"{'yes' if r['met'] else 'NO ':3}  {r['detail']}")  # fmt: skip
    (HERE / "results.json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
