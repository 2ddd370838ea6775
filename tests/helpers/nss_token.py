"""A second PKCS#11 implementation beside SoftHSM2: Mozilla NSS's softoken, served by ``p11-kit server``.

NSS's softoken (``libsoftokn3.so``) is a complete software token (the one Firefox and Thunderbird
keep their keys in), written independently of SoftHSM2. Its ``C_Initialize`` needs the database
directory in ``CK_C_INITIALIZE_ARGS.pReserved``, which python-pkcs11 cannot pass; p11-kit passes it
from a module configuration (``x-init-reserved``). p11-kit ignores user configuration in a process
running as root (CI runs as root), so the token is served by ``p11-kit server`` (which drops to
``nobody`` first and then reads ``$HOME/.config/pkcs11/modules``), and provision reaches it through
p11-kit's RPC client module, ``p11-kit-client.so``, with ``P11_KIT_SERVER_ADDRESS`` naming the
socket: a remote token, as a token forwarded into a container is reached. The server starts one
``p11-kit-remote`` per connection (so no login outlives a ``provision`` process); the other modules
the system registers with p11-kit are disabled there, so the server serves NSS's token alone.

Every token gets its own directory under the system temporary directory (the server's user must
reach it) and its own server, started here and stopped by ``close``; nothing global is touched.
p11-kit's client module reads ``P11_KIT_SERVER_ADDRESS`` once, when the library is loaded, so every
server of one test process listens on the same socket path (one server at a time).
"""

from __future__ import annotations

import atexit
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

USER_PIN = "123456"
_SOCKETS = Path(tempfile.gettempdir()) / f"provision-nss-sockets-{os.getpid()}"
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def _find(*names: str) -> Path | None:
    for directory in _LIB_DIRS:
        for name in names:
            if Path(directory, name).is_file():
                return Path(directory, name)
    return None


def find_softokn() -> Path | None:
    return _find("libsoftokn3.so", "nss/libsoftokn3.so")


def find_client() -> Path | None:
    return _find("pkcs11/p11-kit-client.so")


def missing() -> str | None:
    if find_softokn() is None:
        return "NSS's softoken is not installed (Debian: libnss3)"
    if shutil.which("certutil") is None:
        return "certutil is not installed (Debian: libnss3-tools)"
    if shutil.which("p11-kit") is None or find_client() is None:
        return "p11-kit's server and client module are not installed (Debian: p11-kit, p11-kit-modules)"
    if shutil.which("pkcs11-tool") is None:
        return "pkcs11-tool is not installed (Debian: opensc)"
    return None


class NssToken:
    """One NSS database token named ``label``, served on a private socket (the same surface as
    ``tests.helpers.softhsm.SoftHsm`` where the tests share code: ``module``, ``env``,
    ``init_token``, ``pkcs11_tool``)."""

    def __init__(self) -> None:
        softokn, client = find_softokn(), find_client()
        assert softokn is not None and client is not None
        self.softokn, self.module = softokn, client
        self.workdir = Path(tempfile.mkdtemp(prefix="provision-nss-"))
        self.workdir.chmod(0o755)
        if not _SOCKETS.is_dir():
            _SOCKETS.mkdir(mode=0o755)
            atexit.register(shutil.rmtree, _SOCKETS, True)
        self.socket = _SOCKETS / "server.sock"
        assert not self.socket.exists(), "one NSS token server at a time in a test process"
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "P11_KIT_SERVER_ADDRESS": self.address}

    def init_token(self, label: str, pin: str = USER_PIN) -> str:
        """A fresh NSS database whose token is labelled ``label`` (user PIN ``pin``), and its server.
        Returns the token's serial (NSS: always sixteen zeros)."""
        assert self.server is None, "one token per NssToken"
        db, home = self.workdir / "db", self.workdir / "home"
        modules = home / ".config" / "pkcs11" / "modules"
        db.mkdir()
        modules.mkdir(parents=True)
        password = self.workdir / "password"
        password.write_text(pin + "\n")
        done = subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "-f", str(password)], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        password.unlink()
        assert done.returncode == 0, done.stderr
        for system in ("/etc/pkcs11/modules", "/usr/share/p11-kit/modules"):  # the server serves NSS alone
            for config in Path(system).glob("*.module"):
                (modules / config.name).write_text("disable-in: p11-kit-remote\n")
        (modules / "provision-nss.module").write_text(
            f"module: {self.softokn}\n"
            f"x-init-reserved: configdir='sql:{db}' certPrefix='' keyPrefix='' secmod='secmod.db' "
            f"flags=optimizeSpace dbTokenDescription='{label}'\n"
        )
        command = ["p11-kit", "server", "--foreground", "--name", str(self.socket)]
        if os.geteuid() == 0:  # p11-kit reads no user configuration as root: the server drops to nobody
            nobody = pwd.getpwnam("nobody")
            for path in [_SOCKETS, self.workdir, *self.workdir.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            command += ["--run-as-user", "nobody", "--run-as-group", grp.getgrgid(nobody.pw_gid).gr_name, "--user", "root"]
        command.append(f"pkcs11:token={label}")
        self.server = subprocess.Popen(command, env={**os.environ, "HOME": str(home)}, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                err = self.server.stderr.read().decode(errors="replace") if self.server.stderr else ""
                self.close()
                raise AssertionError(f"p11-kit server did not start: {err}")
            time.sleep(0.05)
        return "0000000000000000"

    def import_pkcs12(self, p12: Path, password_file: Path, pin_file: Path) -> None:
        """What a Firefox user does: NSS's own ``pk12util`` imports the key and certificate into the
        token's database (NSS's CKA_ID, the PKCS#12 friendly name as label)."""
        done = subprocess.run(["pk12util", "-i", str(p12), "-d", f"sql:{self.workdir / 'db'}", "-w",
                               str(password_file), "-k", str(pin_file)], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        if os.geteuid() == 0:  # the server's user keeps the database's files
            nobody = pwd.getpwnam("nobody")
            for path in (self.workdir / "db").rglob("*"):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def pkcs11_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pkcs11-tool", "--module", str(self.module), *args], env=self.env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)
            if self.server.stderr:
                self.server.stderr.close()
            self.server = None
        self.socket.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
