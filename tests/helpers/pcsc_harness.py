"""A private pcscd with vpcd virtual readers, and simulated cards to put in them.

Why it looks like this (all verified on Debian bookworm, pcsc-lite 1.9.9):

- pcscd 1.9.9 has no option for its socket path: the *server* always binds the compiled-in
  ``/run/pcscd/pcscd.comm`` and only *clients* read ``PCSCLITE_CSOCK_NAME``. But it accepts a listening
  socket from systemd (``LISTEN_FDS=1``, ``LISTEN_PID=<its pid>``, the socket on fd 3). So we bind a
  Unix socket at a private path ourselves and hand it over; a system pcscd keeps its own socket.
- The client library caches the socket name on its first call: ``PCSCLITE_CSOCK_NAME`` must be in
  the environment before the process first touches PC/SC, and the path must stay the same for the
  life of the process (a restarted pcscd gets a fresh socket at the same path).
- pcscd still writes and, on exit, deletes ``/run/pcscd/pcscd.pid``. As root we run it in a
  private mount namespace with a tmpfs on ``/run/pcscd`` so a system pcscd's pid file survives.
- ``-c DIR`` replaces ``/etc/reader.conf.d``. One vpcd entry gives *two* readers (slots) on ports
  CHANNELID and CHANNELID+1, named ``FRIENDLYNAME 00 00`` and ``FRIENDLYNAME 00 01``. A second
  entry needs its own copy of ``libifdvpcd.so`` (the driver keeps its sockets in static variables,
  and pcscd loads one library path once) and a different FRIENDLYNAME (pcscd would name it
  ``... 00 00`` again).
- vpcd listens on all interfaces with SO_REUSEADDR; ports are chosen free at start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.tiers import require as require  # re-exported: the tiers' conftests use it

REPO = Path(__file__).resolve().parents[2]
SLOTS_PER_ENTRY = 2  # VPCDSLOTS as Debian builds the driver
DEFAULT_CONF = Path("/etc/reader.conf.d/vpcd")

# Runs as pcscd's parent and becomes pcscd: moves the inherited socket to fd 3 and says so in the
# systemd socket-activation variables (LISTEN_PID must be pcscd's own pid: exec keeps it).
_LAUNCHER = (
    "import os,sys\n"
    "fd=int(sys.argv[1])\n"
    "if fd!=3:\n os.dup2(fd,3); os.close(fd)\n"
    "os.set_inheritable(3,True)\n"
    "os.environ['LISTEN_PID']=str(os.getpid()); os.environ['LISTEN_FDS']='1'\n"
    "os.environ.pop('LISTEN_FDNAMES',None)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)


class HarnessError(RuntimeError):
    pass


def find_vpcd_driver() -> Path:
    """The vpcd driver library, from the package's reader.conf entry (LIBPATH)."""
    candidates = [DEFAULT_CONF, *Path("/etc/reader.conf.d").glob("*")] if Path("/etc/reader.conf.d").is_dir() else []
    for conf in candidates:
        try:
            text = conf.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] == "LIBPATH" and "vpcd" in parts[1]:
                lib = Path(parts[1].strip().strip('"'))
                if lib.exists():
                    return lib.resolve()
    for lib in Path("/usr/lib/pcsc/drivers/serial").glob("libifdvpcd.so*"):
        return lib.resolve()
    raise HarnessError("vpcd driver not found: install vsmartcard-vpcd")


def missing_tools() -> str | None:
    """Why the harness cannot run here, or None."""
    if shutil.which("pcscd") is None:
        return "pcscd is not installed (Debian: pcscd)"
    try:
        find_vpcd_driver()
    except HarnessError as exc:
        return str(exc)
    if os.geteuid() != 0 and not Path("/run/pcscd").is_dir():
        return "pcscd needs /run/pcscd, which a non-root user cannot create (install pcscd's systemd socket)"
    try:
        import smartcard.scard  # noqa: F401
    except ImportError as exc:
        return f"pyscard is missing: {exc}"
    return None


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def pick_base_port(count: int, preferred: int = 35963) -> int:
    """``count`` consecutive free TCP ports, starting at vpcd's usual port if it is free."""
    base = preferred
    for _ in range(200):
        if _ports_free(list(range(base, base + count))):
            return base
        base += 2 * count + 7
        if base + count > 65000:
            base = 20000
    raise HarnessError("no free TCP ports for vpcd")


def _can_isolate_mounts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True, timeout=10, check=False,
    )
    return probe.returncode == 0


def _kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL, wait: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=wait)


@dataclass
class PrivatePcscd:
    """pcscd in the foreground with ``readers`` vpcd readers, on a private socket in ``workdir``."""

    workdir: Path
    readers: int = 4
    base_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _listener: socket.socket | None = None
    _isolate: bool | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.entries = -(-self.readers // SLOTS_PER_ENTRY)
        if not self.base_port:
            self.base_port = pick_base_port(self.entries * SLOTS_PER_ENTRY)
        self._write_config()

    # --- layout -------------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.workdir / "pcscd.comm"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pcscd.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a PC/SC client (subprocess) that should use this pcscd."""
        return {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    def port(self, index: int) -> int:
        return self.base_port + index

    def reader_name(self, index: int) -> str:
        entry, slot = divmod(index, SLOTS_PER_ENTRY)
        return f"{self._friendly(entry)} 00 {slot:02X}"

    @property
    def reader_names(self) -> list[str]:
        return [self.reader_name(i) for i in range(self.entries * SLOTS_PER_ENTRY)]

    @staticmethod
    def _friendly(entry: int) -> str:
        return "Virtual PCD" if entry == 0 else f"Virtual PCD {chr(ord('A') + entry)}"

    def _write_config(self) -> None:
        driver = find_vpcd_driver()
        conf = self.workdir / "reader.conf.d"
        libs = self.workdir / "drivers"
        conf.mkdir(exist_ok=True)
        libs.mkdir(exist_ok=True)
        for entry in range(self.entries):
            lib = libs / f"libifdvpcd-{entry}.so"
            shutil.copyfile(driver, lib)
            channel = self.base_port + entry * SLOTS_PER_ENTRY
            (conf / f"vpcd-{entry}").write_text(
                f'FRIENDLYNAME "{self._friendly(entry)}"\n'
                f"DEVICENAME   /dev/null:0x{channel:04X}\n"
                f"LIBPATH      {lib}\n"
                f"CHANNELID    0x{channel:04X}\n"
            )

    # --- life ---------------------------------------------------------------------------------

    def start(self, debug: bool = False) -> None:
        if self.running:
            return
        if self._isolate is None:
            self._isolate = _can_isolate_mounts()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(64)
        os.chmod(self.socket_path, 0o666)
        fd = listener.fileno()
        cmd = ["pcscd", "--foreground", "--config", str(self.workdir / "reader.conf.d")]
        if debug:
            cmd.append("--debug")
        cmd = [sys.executable, "-c", _LAUNCHER, str(fd), *cmd]
        if self._isolate:
            cmd = [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mkdir -p /run/pcscd && mount -t tmpfs -o mode=0755 tmpfs /run/pcscd && exec "$@"',
                "sh", *cmd,
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        # pcscd owns the listening socket now; ours would keep accepting into a dead backlog.
        listener.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until pcscd answers and lists all our readers."""
        from provision.card.transport import list_readers
        from provision.errors import ProvisionError

        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running:
                raise HarnessError(f"pcscd exited ({self._exit()}):\n{self.log_tail()}")
            try:
                names = {r.name for r in list_readers()}
            except ProvisionError as exc:
                last = exc
            else:
                if set(self.reader_names) <= names:
                    return
                last = sorted(names)
            time.sleep(0.05)
        raise HarnessError(f"pcscd not ready in {timeout}s (last: {last}):\n{self.log_tail()}")

    def _exit(self) -> str:
        return "running" if self.proc is None else f"exit {self.proc.poll()}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash would: the socket file stays, nobody answers on it."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM)
            self.proc = None


# --- cards ------------------------------------------------------------------------------------

# A YubiKey 5's ATR: T=1, historical bytes with card capabilities C0 21 C0 (extended Lc/Le).
YUBIKEY_ATR = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
STUB_INS_ECHO_LENGTH = 0xEE  # answers P1P2 bytes of pattern + 9000
STUB_INS_VANISH = 0xDD  # the card disappears on this command


class StubCard:
    """A tiny stand-in for SimCard with the same duck-typed interface (atr, process, power_on, reset)."""

    def __init__(self, atr: bytes = YUBIKEY_ATR, vanish_after: int | None = None) -> None:
        self._atr = atr
        self.vanish_after = vanish_after
        self.apdus: list[bytes] = []
        self.powered = 0
        self.resets = 0

    @property
    def atr(self) -> bytes:
        return self._atr

    def power_on(self) -> None:
        self.powered += 1

    def reset(self) -> None:
        self.resets += 1

    def process(self, apdu: bytes) -> bytes:
        from provision.sim.vpcd import _card_vanished_type

        self.apdus.append(apdu)
        if apdu[1:2] == bytes([STUB_INS_VANISH]) or (
            self.vanish_after is not None and len(self.apdus) > self.vanish_after
        ):
            raise _card_vanished_type()("stub card pulled")
        if apdu[1] == 0xA4:
            return bytes.fromhex("61114F0600001000010079074F05A0000003089000")
        if apdu[1] == STUB_INS_ECHO_LENGTH:
            n = (apdu[2] << 8) | apdu[3]
            return bytes(i & 0xFF for i in range(n)) + b"\x90\x00"
        return b"\x6d\x00"


def make_card(kind: str, options: dict[str, Any], state: Path | None) -> Any:
    if kind == "stub":
        return StubCard(vanish_after=options.get("vanish_after"))
    from provision.sim.card import SimCard
    from provision.sim.vpcd import sim_options

    return SimCard(sim_options(options), state)


def _pull_event() -> threading.Event:
    from provision.sim.vpcd import PullEvent

    return PullEvent()  # pulling the card closes its connection at once, as a real reader reports it


@dataclass
class CardServer:
    """One card served into one reader, in a thread or in a subprocess."""

    reader: str
    port: int
    mode: str
    card: Any = None
    thread: threading.Thread | None = None
    stop_event: threading.Event = field(default_factory=_pull_event)
    proc: subprocess.Popen[bytes] | None = None
    outcome: str | None = None
    log_path: Path | None = None

    @property
    def alive(self) -> bool:
        if self.mode == "thread":
            return self.thread is not None and self.thread.is_alive()
        return self.proc is not None and self.proc.poll() is None

    def remove(self, timeout: float = 5.0) -> None:
        """Pull the card (close its socket), waiting for the server to end."""
        if self.mode == "thread":
            self.stop_event.set()
            if self.thread is not None:
                self.thread.join(timeout)
            if not (self.thread is not None and self.thread.is_alive()):
                getattr(self.stop_event, "close", lambda: None)()
        elif self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM, wait=timeout)

    def kill(self) -> None:
        """SIGKILL the card process (subprocess mode): the card is pulled without warning."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)
        else:
            self.remove()


def start_card_server(
    pcscd: PrivatePcscd,
    index: int,
    *,
    mode: str = "thread",
    kind: str = "stub",
    card: Any = None,
    options: dict[str, Any] | None = None,
    state: Path | None = None,
) -> CardServer:
    """Insert a card into reader ``index``: ``mode`` "thread" (fast) or "process" (killable)."""
    from provision.sim.vpcd import serve

    port = pcscd.port(index)
    server = CardServer(pcscd.reader_name(index), port, mode)
    if mode == "thread":
        server.card = card if card is not None else make_card(kind, options or {}, state)

        def run() -> None:
            server.outcome = serve(server.card, "127.0.0.1", port, stop_event=server.stop_event,
                                   reconnect=False, connect_timeout=10)

        server.thread = threading.Thread(target=run, name=f"card-{port}", daemon=True)
        server.thread.start()
        return server
    args = {"port": port, "kind": kind, "options": options or {}, "state": str(state) if state else None}
    server.log_path = pcscd.workdir / f"card-{port}-{time.monotonic_ns()}.log"
    with open(server.log_path, "wb") as log:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.pcsc_harness", json.dumps(args)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return server


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise HarnessError(f"timed out after {timeout}s waiting for {what}")


def card_present(reader: str) -> bool:
    from provision.card.transport import list_readers

    return any(r.name == reader and r.card_present for r in list_readers())


class Cards:
    """Insert and pull cards for one test; everything is pulled afterwards."""

    def __init__(self, daemon: PrivatePcscd) -> None:
        self.pcscd = daemon
        self.servers: list[CardServer] = []

    def insert(self, index: int = 0, *, wait: bool = True, **kwargs: Any) -> CardServer:
        server = start_card_server(self.pcscd, index, **kwargs)
        self.servers.append(server)
        if wait:
            wait_for(lambda: card_present(server.reader), 10, f"a card in {server.reader}")
        return server

    def pull_all(self) -> None:
        for server in self.servers:
            server.remove()
        self.servers.clear()



@contextlib.contextmanager
def serving(daemon: PrivatePcscd, workdir: Path) -> Iterator[PrivatePcscd]:
    """Start ``daemon``, wait until it is ready, and always stop it and remove ``workdir``.

    The vpcd ports are free when picked but another process on the machine (a second test run) can
    take them before vpcd binds them: then vpcd says "Address already in use" and the readers never
    come up. That is retried on other ports, twice; any other failure is not."""
    try:
        for attempt in range(3):
            daemon.start()
            try:
                daemon.wait_ready()
                break
            except HarnessError as exc:
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise
                daemon.stop()
                daemon.base_port = pick_base_port(daemon.entries * SLOTS_PER_ENTRY,
                                                  preferred=random.randrange(20000, 60000, 2))  # fmt: skip
                daemon._write_config()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def inserted_cards(daemon: PrivatePcscd) -> Iterator[Cards]:
    """The body of every tier's ``cards`` fixture: all cards are pulled afterwards, a pcscd that a
    test killed is restarted, and the next test starts with every reader empty."""
    from provision.card.transport import list_readers

    if not daemon.running:
        daemon.start()
        daemon.wait_ready()
    helper = Cards(daemon)
    try:
        yield helper
    finally:
        helper.pull_all()
        if not daemon.running:
            daemon.stop()
            daemon.start()
            daemon.wait_ready()
        else:
            wait_for(lambda: not any(r.card_present for r in list_readers()), 10, "all readers empty")


def _card_process_main(argv: list[str]) -> int:
    """The subprocess side of ``start_card_server(mode="process")``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    spec = json.loads(parser.parse_args(argv).spec)
    from provision.sim.vpcd import run_sim_server, serve

    if spec["kind"] == "sim":
        opts = spec["options"]
        return run_sim_server(
            spec["port"], state=Path(spec["state"]) if spec["state"] else None, host="127.0.0.1", **opts
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _n, _f: stop.set())
    serve(make_card("stub", spec["options"], None), "127.0.0.1", spec["port"], stop_event=stop,
          reconnect=False, connect_timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(_card_process_main(sys.argv[1:]))
