"""The interop tier's side of the harness: a pcscd whose readers look like a YubiKey's, the peer
tools (yubico-piv-tool, OpenSC's pkcs15-tool/pkcs11-tool, ykman) run against it, and the keys and
certificates both sides load.

Facts this module stands on (verified against the installed peers):

- ykman treats a PC/SC reader as a USB YubiKey only if its name contains "Yubico YubiKey"
  (``ykman/pcsc/__init__.py``: ``_pid_from_name``); any other reader with a USB-style ATR (``3B F.``)
  fails in ``read_info`` with "PID must be provided for non-NFC connections", which the CLI shows as
  "Failed to connect to YubiKey". So two of the interop pcscd's vpcd readers are named like a
  YubiKey's ("Yubico YubiKey CCID Virtual 00 00"), where the card gives a USB YubiKey's ATR;
  yubico-piv-tool, which prefers readers named "Yubikey", finds them by substring. The other two
  are plain vpcd readers ("Virtual PCD 00 00"), where `provision sim serve` gives a YubiKey 5
  NFC's ATR (``3B 8D ...``, T0 high nibble not F): ykman then reads it as an NFC YubiKey, with no
  product id needed.
- The cards the peers judge are loaded by the product itself: a job file per load and the real
  ``provision run`` CLI through the same pcscd (``Peers.load``), never a test-side loader.
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
from provision.fixtures import Issuer, generate_key, make_ca, make_leaf, pkcs12_bytes
from provision.piv.session import PivSession
from provision.piv.slots import slot_by_ref
from tests.helpers.pcsc_harness import SLOTS_PER_ENTRY, CardServer, PrivatePcscd
from tests.helpers.product import product_env, provision_cmd
from tests.helpers.tiers import require

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
PLAIN_READER_PREFIX = "Virtual PCD"
PLAIN_READER = 2  # the first plain reader of the interop pcscd
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
        # Entry 0 (readers 0 and 1) looks like a YubiKey's USB reader; entry 1 (readers 2 and 3) is a
        # plain vpcd reader, as `provision sim serve` finds it on any machine.
        return READER_PREFIX if entry == 0 else PLAIN_READER_PREFIX

    def is_plain(self, index: int) -> bool:
        return index // SLOTS_PER_ENTRY >= 1


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


def large_certificate(material: Material, algorithm: str, names: int = 150) -> x509.Certificate:
    """A certificate for ``algorithm``'s key with many subject alternative names: more than the
    ~2.9 kB above which the product stores certificates gzipped (CertInfo 01), as ykman does."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"Interop large {algorithm}")]))
        .issuer_name(material.ca.certificate.subject)
        .public_key(material.key(algorithm).public_key())  # type: ignore[arg-type]
        .serial_number(0x20000 + names)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"host-{i:04d}.interop.example") for i in range(names)]),
            critical=False,
        )
    )
    return builder.sign(material.ca.key, hashes.SHA256())  # type: ignore[arg-type]


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


P12_PASSWORD = "interop-p12-password"


def provision_run_job(
    workdir: Path, *, serial: int, slot: int, key: PrivateKeyTypes, cert: x509.Certificate, job_id: str
) -> Path:
    """A job file for ``provision run``: ``key`` and ``cert`` as PKCS#12 into ``slot`` of card ``serial``.

    The PIN and PKCS#12 password come from files only their owner can read (JOBFILE.md: secrets);
    the management key is omitted, i.e. the card's factory default, as on a fresh card.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{job_id}.p12").write_bytes(pkcs12_bytes(key, cert, password=P12_PASSWORD))
    for name, value in (("p12.pass", P12_PASSWORD), ("card.pin", DEFAULT_PIN)):
        secret = workdir / name
        secret.write_text(value + "\n")
        secret.chmod(0o600)
    job = workdir / f"{job_id}.yaml"
    job.write_text(
        f"version: 1\nbatch: interop\ncards:\n"
        f"  - id: {job_id}\n    holder: Interop Holder\n    card: {{serial: {serial}}}\n"
        f"    pkcs12: {{path: {job_id}.p12, password: {{file: p12.pass}}}}\n"
        f"    slot: {slot:02x}\n    slot_name: \"interop-{{slot}}\"\n    pin: {{file: card.pin}}\n"
    )
    return job


def run_provision(env: dict[str, str], job: Path, reader: str, logs: Path) -> dict[str, Any]:
    """``provision run JOB --unattended --reader READER`` (the product's CLI, in its own process,
    through the private pcscd); the job's entry of the run's JSON, which must say ``loaded``."""
    done = subprocess.run(
        [*provision_cmd(), "run", str(job), "--unattended", "--json", "--no-progress", "--logs", str(logs),
         "--reader", reader],
        env=product_env(env), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        cwd=job.parent,
    )  # fmt: skip
    assert done.returncode == 0, f"provision run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    entry: dict[str, Any] = json.loads(done.stdout)["jobs"][0]
    assert entry["status"] == "loaded", entry
    return entry


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
    card: Any  # the SimCard served in-process (thread mode), for its APDU counter; None: another process
    workdir: Path
    # OpenSC's --reader: the reader's name (None: ``reader``). An index would depend on the order pcscd
    # read its reader configs in, which is the file system's directory order (tmpfs reverses it).
    opensc_reader: str | None = None
    loads: int = 0

    @property
    def env(self) -> dict[str, str]:
        conf = self.pcscd.workdir / "opensc.conf"
        if not conf.exists():
            conf.write_text("app default {\n\tframework pkcs15 {\n\t\tuse_file_caching = no;\n\t}\n}\n")
        return {**self.pcscd.env, "OPENSC_CONF": str(conf), "HOME": str(self.pcscd.workdir)}

    def apdu_count(self) -> int:
        return int(self.card.apdu_count) if self.card is not None else 0

    def run(self, label: str, argv: Sequence[str], timeout: float = 60) -> PeerRun:
        before = self.apdu_count()
        done = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, cwd=self.workdir,
        )
        apdus = self.apdu_count() - before
        if done.returncode == 0 and self.card is not None:
            APDU_COUNTS.setdefault(label, []).append(apdus)
        return PeerRun(tuple(argv), done.returncode, done.stdout, done.stderr, apdus)

    def load(self, slot: int, key: PrivateKeyTypes, cert: x509.Certificate, *, serial: int | None = None) -> int:
        """``key`` and ``cert`` into ``slot`` by the product's own loader: a job file and the real
        ``provision run`` CLI on this reader. Returns (and records) the APDUs the run took."""
        if serial is None:
            serial = int(self.card.serial)
        self.loads += 1
        job = provision_run_job(self.workdir / "jobs", serial=serial, slot=slot, key=key, cert=cert,
                                job_id=f"interop-{self.loads}")  # fmt: skip
        entry = run_provision(self.pcscd.env, job, self.reader, self.workdir / "logs")
        assert str(entry["slot"]).lower() in (slot_by_ref(slot).hex, slot_by_ref(slot).name), entry
        assert entry["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex(), entry
        apdus = int(entry["apdus"])
        APDU_COUNTS.setdefault("provision run (one job)", []).append(apdus)
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
        return self.run(f"pkcs15-tool {label}", ["pkcs15-tool", "--reader", self.opensc_reader or self.reader, *args])

    def pkcs11_tool(self, label: str, *args: str) -> PeerRun:
        return self.run(f"pkcs11-tool {label}", ["pkcs11-tool", "--module", OPENSC_PKCS11, *args])

    # ykman -----------------------------------------------------------------------------------

    def ykman(self, label: str, *args: str) -> PeerRun:
        # ykman comes from PyPI with make setup: missing, it fails under make test, never skips there.
        require("ykman is not installed (pip install yubikey-manager)" if ykman_missing() else None,
                "interop tier (ykman)")  # fmt: skip
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
