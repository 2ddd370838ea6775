"""A private PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` on a temporary
directory, a free local port, its unix socket in the same directory, trust authentication.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` system user
(the Debian package creates it) and its commands run through ``runuser``; no terminal, no stdin.
Never a mock: the tests drive the server every office runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14", "13")]
SERVICE_USER = "postgres"


def pg_bin() -> Path | None:
    found = os.environ.get("PROVISION_PG_BIN")
    if found:
        return Path(found)
    return next((p for p in PG_BIN_CANDIDATES if (p / "initdb").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="provision-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, SERVICE_USER, SERVICE_USER)

    def _cmd(self, *argv: str) -> list[str]:
        return ["runuser", "-u", SERVICE_USER, "--", *argv] if self.as_root else list(argv)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(self._cmd(*argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "provision",
                  "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
        self._pg_ctl("start")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=200 -c full_page_writes=off")  # fmt: skip
        self._run(str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, *extra)  # fmt: skip

    def restart(self) -> None:
        """pg_ctl restart -m fast: every connection is cut, the server comes back on the same port."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://provision@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh database for one test; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                return self.url(name)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
