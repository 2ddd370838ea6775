"""SoftHSM2 with a private token directory: each test gets its own ``softhsm2.conf``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SO_PIN = "12345678"
USER_PIN = "123456"


def find_softhsm() -> Path | None:
    for candidate in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                      "/usr/local/lib/softhsm/libsofthsm2.so", "/opt/homebrew/lib/softhsm/libsofthsm2.so"):  # fmt: skip
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def missing() -> str | None:
    if find_softhsm() is None or shutil.which("softhsm2-util") is None:
        return "SoftHSM2 is not installed (Debian: softhsm2)"
    if shutil.which("pkcs11-tool") is None:
        return "pkcs11-tool is not installed (Debian: opensc)"
    return None


@dataclass
class SoftHsm:
    workdir: Path

    def __post_init__(self) -> None:
        self.tokens = self.workdir / "tokens"
        self.tokens.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "softhsm2.conf"
        self.offer_mechanisms(None)
        module = find_softhsm()
        assert module is not None
        self.module = module

    def offer_mechanisms(self, names: list[str] | None) -> None:
        """Restrict ``C_GetMechanismList`` (``slots.mechanisms``) to ``names`` (None: all). Read at
        ``C_Initialize``: call ``provision.p11.module.finalize_modules()`` before the next in-process use."""
        offered = f"slots.mechanisms = {','.join(names)}\n" if names is not None else ""
        self.conf.write_text(f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                             + offered)  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, pin: str = USER_PIN) -> str:
        """A fresh token; returns its serial (as CK_TOKEN_INFO shows it)."""
        done = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN,
                               "--pin", pin], env=self.env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return self.serial_of(label)

    def serial_of(self, label: str) -> str:
        shown = subprocess.run(["softhsm2-util", "--show-slots"], env=self.env, capture_output=True, text=True,
                               timeout=60).stdout  # fmt: skip
        for block in shown.split("Slot ")[1:]:
            if re.search(rf"Label:\s+{re.escape(label)}\s*$", block, re.M):
                found = re.search(r"Serial number:\s+(\S+)", block)
                assert found
                return found.group(1)
        raise AssertionError(f"no token {label!r} in {shown}")

    def pkcs11_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pkcs11-tool", "--module", str(self.module), *args], env=self.env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
