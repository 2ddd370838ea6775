"""Build what users install and install it the way they do, outside the checkout.

``python -m tests.helpers.artifact DIR`` (run by ``make test-installed``) writes ``DIR/dist`` (the
sdist, and the wheel built *from that sdist*, as ``python -m build`` does), a fresh virtual
environment ``DIR/venv`` with the wheel installed like ``pipx install`` would (no editable install,
no checkout on its path), and an empty working directory ``DIR/work`` for the tests to run in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Artifact:
    root: Path

    @property
    def dist(self) -> Path:
        return self.root / "dist"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def cli(self) -> Path:
        return self.venv / ("Scripts/provision.exe" if os.name == "nt" else "bin/provision")

    @property
    def python(self) -> Path:
        return self.venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    @property
    def work(self) -> Path:
        return self.root / "work"

    def wheel(self) -> Path:
        (found,) = self.dist.glob("provision-*.whl")
        return found

    def sdist(self) -> Path:
        (found,) = self.dist.glob("provision-*.tar.gz")
        return found

    @property
    def onefile(self) -> Path:
        return self.dist / ("provision.exe" if os.name == "nt" else "provision")


def _run(argv: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def build_and_install(root: Path) -> Artifact:
    artifact = Artifact(root)
    root.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "build", "--outdir", str(artifact.dist), str(REPO)], cwd=root)
    # A user's venv is made from the base interpreter, not from ours (which has the editable install).
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(artifact.venv)], cwd=root)
    _run([str(artifact.python), "-m", "pip", "install", "-q", str(artifact.wheel())], cwd=root)
    artifact.work.mkdir(exist_ok=True)
    return artifact


def build_onefile(dist: Path, work: Path) -> Path:
    """The PyInstaller one-file build of packaging/provision.spec, into ``dist``."""
    _run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
          "--distpath", str(dist), "--workpath", str(work), str(REPO / "packaging" / "provision.spec")],
         cwd=REPO)  # fmt: skip
    return dist / ("provision.exe" if os.name == "nt" else "provision")


if __name__ == "__main__":
    made = build_and_install(Path(sys.argv[1]).resolve())
    if "--onefile" in sys.argv[2:]:
        build_onefile(made.dist, made.root / "pyinstaller")
    print(made.cli)
