"""The interop tier's side of the harness: a pcscd whose readers look like a YubiKey's, the peer
tools (yubico-piv-tool, OpenSC's pkcs15-tool/pkcs11-tool, ykman) run against it, and the keys and
certificates both sides load.

Facts this module stands on (verified against the installed peers):

- ykman treats a PC/SC reader as a USB YubiKey only if its name contains "Yubico YubiKey"
  (``ykman/pcsc/__init__.py``: ``_pid_from_name``); any other reader with a USB-style ATR (``3B F.``)
  fails in ``read_info`` with "PID must be provided for non-NFC connections", which the CLI shows as
  "Failed to connect to YubiKey". So the interop pcscd names its vpcd readers like a YubiKey's
  ("Yubico YubiKey CCID Virtual 00 00"); yubico-piv-tool, which prefers readers named "Yubikey",
  then finds it by substring too.
- OpenSC's PIV driver lists a retired-slot certificate (82 ...) only when the Key History object
  (5FC10C, tag C1 = number of retired keys with on-card certificates) says so
  (``card-piv.c``: ``piv_process_history``); neither ykman nor yubico-piv-tool writes that object.
- yubico-piv-tool 2.2 (Debian bookworm) authenticates with a 3DES management key only: a card
  with the YubiKey 5.7 default (AES-192) refuses it, as a real 5.7 YubiKey does.
- OpenSC may cache card files on disk; the peers get a private ``OPENSC_CONF`` without caching, so
  one test's certificate can never be read back in another.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from provision.card.apdu import ApduChannel
from provision.card.transport import connect
from provision.fixtures import Issuer, generate_key, make_ca, make_leaf
from provision.piv.session import PivSession
from provision.secrets import Secret
from tests.helpers.pcsc_harness import CardServer, PrivatePcscd

DEFAULT_PIN = "123456"
DEFAULT_MANAGEMENT_KEY = "010203040506070801020304050607080102030405060708"

def _find_opensc_pkcs11() -> str:
    for candidate in sorted(Path("/usr/lib").glob("*/opensc-pkcs11.so")) + [Path("/usr/lib/opensc-pkcs11.so")]:
        if candidate.exists():
            return str(candidate)
    return "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


OPENSC_PKCS11 = _find_opensc_pkcs11()
YKMAN = str(Path(sys.executable).with_name("ykman"))
READER_PREFIX = "Yubico YubiKey CCID Virtual"
OBJECT_ID_KEY_HISTORY = 0x5FC10C

ALGORITHMS = ("rsa2048", "rsa1024", "p256", "p384")
SLOTS = (0x9A, 0x9C, 0x9D, 0x9E, 0x82)
# What the peers print for our algorithm names.
YUBICO_ALGORITHM_NAMES = {"rsa2048": "RSA2048", "rsa1024": "RSA1024", "p256": "ECCP256", "p384": "ECCP384"}
YKMAN_SLOT_TITLES = {0x9A: "AUTHENTICATION", 0x9C: "SIGNATURE", 0x9D: "KEY_MANAGEMENT", 0x9E: "CARD_AUTH"}


def missing_peers() -> str | None:
    """Why the system peer tools cannot run here, or None (ykman: see ``requires_ykman``)."""
    for tool in ("yubico-piv-tool", "pkcs11-tool", "pkcs15-tool"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            return f"{tool} is not installed (Debian: opensc, yubico-piv-tool)"
    if not Path(OPENSC_PKCS11).exists():
        return f"{OPENSC_PKCS11} is missing (Debian: opensc-pkcs11)"
    return None


def ykman_missing() -> bool:
    return not Path(YKMAN).exists()


def yubico_piv_tool_version() -> tuple[int, ...]:
    """``yubico-piv-tool --version`` as numbers: 2.2.0 → (2, 2, 0)."""
    text = subprocess.run(["yubico-piv-tool", "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    assert found is not None, text
    return tuple(int(part) for part in found.groups())


# yubico-piv-tool inflates gzip certificates (CertInfo 01) from 2.4 on (Yubico/yubico-piv-tool#437);
# before that read-certificate hands out the stored gzip stream as it is.
PIV_TOOL_INFLATES_FROM = (2, 4, 0)


def opensc_key_id(slot: int) -> str:
    """The PKCS#11/PKCS#15 object ID OpenSC gives a PIV slot: 9A 01 ... 9E 04, retired n → 04+n."""
    fixed = {0x9A: 0x01, 0x9C: 0x02, 0x9D: 0x03, 0x9E: 0x04}
    return f"{fixed.get(slot, slot - 0x7D):02x}"


def ykman_slot_header(slot: int) -> str:
    title = YKMAN_SLOT_TITLES.get(slot, f"RETIRED{slot - 0x81}")
    return f"Slot {slot:02X} ({title}):"


# --- pcscd --------------------------------------------------------------------------------------


@dataclass
class InteropPcscd(PrivatePcscd):
    """A private pcscd whose readers are named like a YubiKey's, on a socket path chosen by the caller.

    The socket path is the process's ``PCSCLITE_CSOCK_NAME`` (the client library reads it once), so
    this daemon can follow the pcsc tier's daemon on the same path; its files live in ``workdir``.
    """

    socket_file: Path = Path()

    @property
    def socket_path(self) -> Path:
        return self.socket_file

    @staticmethod
    def _friendly(entry: int) -> str:
        return READER_PREFIX if entry == 0 else f"{READER_PREFIX} {chr(ord('A') + entry)}"


# --- keys and certificates ----------------------------------------------------------------------


@dataclass
class Material:
    """One key per algorithm for the whole session (RSA is slow to make), certificates on demand."""

    ca: Issuer = field(default_factory=lambda: make_ca("Provision Interop CA"))
    keys: dict[str, PrivateKeyTypes] = field(default_factory=dict)
    certs: dict[tuple[str, int, str], x509.Certificate] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key(self, algorithm: str) -> PrivateKeyTypes:
        with self._lock:
            if algorithm not in self.keys:
                self.keys[algorithm] = generate_key(algorithm)  # type: ignore[arg-type]
            return self.keys[algorithm]

    def cert(self, algorithm: str, slot: int, writer: str = "provision") -> x509.Certificate:
        """A certificate for ``algorithm``'s key, distinct per slot and writer (serial and CN)."""
        index = (algorithm, slot, writer)
        if index not in self.certs:
            serial = 0x10000 + len(self.certs)
            cn = f"Interop {writer} {algorithm} {slot:02x}"
            self.certs[index] = make_leaf(self.ca, cn, key=self.key(algorithm), serial=serial)[1]
        return self.certs[index]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- our side -----------------------------------------------------------------------------------


def open_session(reader: str) -> tuple[Any, PivSession]:
    """A selected PivSession on ``reader``; the caller closes the transport (first item)."""
    transport = connect(reader)
    session = PivSession(ApduChannel(transport))
    session.select()
    return transport, session


def load_with_session(
    reader: str,
    slot: int,
    key: PrivateKeyTypes,
    cert: x509.Certificate,
    *,
    retired_in_history: int = 0,
    compress: bool = False,
) -> None:
    """What a provision load does on the card: PIN, management key, import key, write certificate.

    ``retired_in_history`` > 0 also writes a Key History object saying that many retired slots hold
    on-card certificates (OpenSC lists retired certificates only then).
    """
    transport, session = open_session(reader)
    try:
        session.verify_pin(Secret(DEFAULT_PIN.encode()))
        session.authenticate(bytes.fromhex(DEFAULT_MANAGEMENT_KEY))
        session.import_key(slot, key)  # type: ignore[arg-type]
        session.write_certificate(slot, der(cert), compress=compress)
        if retired_in_history:
            history = bytes([0xC1, 0x01, retired_in_history, 0xC2, 0x01, 0x00, 0xFE, 0x00])
            session.put_object(OBJECT_ID_KEY_HISTORY, history)
    finally:
        transport.close()


# --- peers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRun:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    apdus: int  # APDUs the simulated card answered during the run

    def check(self) -> PeerRun:
        assert self.returncode == 0, f"{' '.join(self.argv)} failed ({self.returncode}):\n{self.stdout}\n{self.stderr}"
        return self


# (peer, operation) → APDU counts seen; written as JSON at the end of the session when
# PROVISION_INTEROP_APDU_COUNTS names a file (for bench/).
APDU_COUNTS: dict[str, list[int]] = {}


def write_apdu_counts(path: Path) -> None:
    summary = {op: {"runs": len(v), "min": min(v), "max": max(v)} for op, v in sorted(APDU_COUNTS.items())}
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


@dataclass
class Peers:
    """Runs the peer tools against one reader of the interop pcscd, counting the card's APDUs."""

    pcscd: InteropPcscd
    reader: str
    card: Any  # the SimCard served in-process (thread mode), for its APDU counter
    workdir: Path

    @property
    def env(self) -> dict[str, str]:
        conf = self.pcscd.workdir / "opensc.conf"
        if not conf.exists():
            conf.write_text("app default {\n\tframework pkcs15 {\n\t\tuse_file_caching = no;\n\t}\n}\n")
        return {**self.pcscd.env, "OPENSC_CONF": str(conf), "HOME": str(self.pcscd.workdir)}

    def run(self, label: str, argv: Sequence[str], timeout: float = 60) -> PeerRun:
        before = self.card.apdu_count
        done = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, cwd=self.workdir,
        )
        apdus = self.card.apdu_count - before
        if done.returncode == 0:
            APDU_COUNTS.setdefault(label, []).append(apdus)
        return PeerRun(tuple(argv), done.returncode, done.stdout, done.stderr, apdus)

    def load(
        self,
        slot: int,
        key: PrivateKeyTypes,
        cert: x509.Certificate,
        *,
        retired_in_history: int = 0,
        compress: bool = False,
    ) -> int:
        """``load_with_session`` on this reader; returns (and records) the APDUs it took."""
        before = self.card.apdu_count
        load_with_session(
            self.reader, slot, key, cert, retired_in_history=retired_in_history, compress=compress
        )
        apdus = int(self.card.apdu_count - before)
        label = "provision load (verify, auth, import, write cert"
        label += ", gzip" if compress else ""
        label += ", key history)" if retired_in_history else ")"
        APDU_COUNTS.setdefault(label, []).append(apdus)
        return apdus

    def file(self, name: str, data: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        return path

    # yubico-piv-tool --------------------------------------------------------------------------

    def piv_tool(self, label: str, *args: str) -> PeerRun:
        return self.run(f"yubico-piv-tool {label}", ["yubico-piv-tool", "-r", self.reader, *args])

    # OpenSC ----------------------------------------------------------------------------------

    def pkcs15_tool(self, label: str, *args: str) -> PeerRun:
        return self.run(f"pkcs15-tool {label}", ["pkcs15-tool", "--reader", "0", *args])

    def pkcs11_tool(self, label: str, *args: str) -> PeerRun:
        return self.run(f"pkcs11-tool {label}", ["pkcs11-tool", "--module", OPENSC_PKCS11, *args])

    # ykman -----------------------------------------------------------------------------------

    def ykman(self, label: str, *args: str) -> PeerRun:
        return self.run(f"ykman {label}", [YKMAN, "--reader", self.reader, *args])


# The ``insert_card`` fixture: sim options in, (card server, peers on its reader) out.
InsertCard = Callable[..., tuple[CardServer, Peers]]


def parse_pkcs11_objects(listing: str) -> list[dict[str, str]]:
    """``pkcs11-tool --list-objects`` output → one dict per object (``kind`` is its first line)."""
    objects: list[dict[str, str]] = []
    for line in listing.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            objects.append({"kind": line.strip()})
        elif objects and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return objects


def parse_ykman_info(text: str) -> dict[str, dict[str, str]]:
    """``ykman piv info`` output → {"Slot 9A (AUTHENTICATION):": {"Private key type": ...}}."""
    slots: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if re.match(r"^Slot [0-9A-F]{2} \(", line):
            current = slots.setdefault(line.strip(), {})
        elif current is not None and line.startswith("  ") and ":" in line:
            name, _, value = line.strip().partition(":")
            current[name.strip()] = value.strip()
        elif line and not line.startswith(" "):
            current = None
    return slots


def sign_input(public_key: PublicKeyTypes, message: bytes) -> tuple[str, bytes]:
    """The PKCS#11 mechanism and input for signing ``message`` with ``pkcs11-tool --sign``."""
    if isinstance(public_key, rsa.RSAPublicKey):
        digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
        h = hashes.Hash(hashes.SHA256())
        h.update(message)
        return "RSA-PKCS", digest_info + h.finalize()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = hashes.SHA256() if public_key.curve.key_size == 256 else hashes.SHA384()
    h = hashes.Hash(algorithm)
    h.update(message)
    return "ECDSA", h.finalize()


def verify_pkcs11_signature(public_key: PublicKeyTypes, message: bytes, signature: bytes) -> None:
    """Raises InvalidSignature unless ``signature`` (PKCS#11 format: RSA block, EC r||s) is good."""
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        return
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = hashes.SHA256() if public_key.curve.key_size == 256 else hashes.SHA384()
    half = len(signature) // 2
    r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    h = hashes.Hash(algorithm)
    h.update(message)
    public_key.verify(encode_dss_signature(r, s), h.finalize(), ec.ECDSA(Prehashed(algorithm)))
