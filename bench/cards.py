"""Card benchmarks for bench/run.py: P1 (time per load vs the peers), P2 (APDUs and bytes), P3
(readers in parallel). Everything goes through a private pcscd + vpcd to a simulated card
(tests/helpers/pcsc_harness.py), except where a measure says otherwise.

``PCSCLITE_CSOCK_NAME`` must point at the private socket before anything in this process touches
PC/SC: ``bench/run.py`` sets it before it imports this module's PC/SC users.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PIN = "123456"
P12_PASSWORD = "bench-p12-password"
MANAGEMENT_KEY = "010203040506070801020304050607080102030405060708"
FIRMWARE = (5, 4, 3)  # 3DES default management key: yubico-piv-tool 2.2 knows only 3DES
SERIAL = 12_345_678
CHUID_TAG = bytes.fromhex("5C035FC102")  # GET DATA of the CHUID object: the last command of a card's identity
READER_PREFIX = "Yubico YubiKey CCID Bench"  # ykman only talks to readers named like a YubiKey's
BIN = Path(sys.executable).parent


# --- material ----------------------------------------------------------------------------------


@dataclass
class Material:
    """One RSA-2048 holder: a ~1.5 kB certificate in a PKCS#12 (PBES2/AES, OpenSSL's default), an
    old certificate that the card holds before the load (so the load archives it), a job file."""

    directory: Path
    p12: Path = field(init=False)
    job: Path = field(init=False)
    old_der: bytes = field(init=False)
    cert_der: bytes = field(init=False)

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from provision import fixtures

        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        ca = fixtures.make_ca("Bench Issuing CA")
        key = fixtures.generate_key("rsa2048")
        _, leaf = fixtures.make_leaf(ca, "CHAN Tai Man", key=key, not_before=now - timedelta(days=1),
                                     not_after=now + timedelta(days=365))  # fmt: skip
        # An e-Cert is about 1.5 kB: pad this one with subject alternative names to that size.
        builder = x509.CertificateBuilder(
            issuer_name=leaf.issuer, subject_name=leaf.subject, public_key=leaf.public_key(),
            serial_number=leaf.serial_number, not_valid_before=leaf.not_valid_before_utc,
            not_valid_after=leaf.not_valid_after_utc, extensions=list(leaf.extensions),
        )  # fmt: skip
        names = [x509.RFC822Name(f"holder.number.{i:03d}@bench.example.hk") for i in range(24)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        from cryptography.hazmat.primitives import hashes

        cert = builder.sign(ca.key, hashes.SHA256() if not hasattr(ca.key, "curve") else hashes.SHA256())  # type: ignore[arg-type]
        self.cert_der = cert.public_bytes(Encoding.DER)
        self.p12 = d / "holder.p12"
        self.p12.write_bytes(fixtures.pkcs12_bytes(key, cert, password=P12_PASSWORD, chain=[ca.certificate],
                                                   friendly_name="CHAN Tai Man"))  # fmt: skip
        _, old = fixtures.make_leaf(ca, "CHAN Tai Man", key_type="p256", serial=0x0BAD)
        self.old_der = old.public_bytes(Encoding.DER)
        secret(d / "p12.pass", P12_PASSWORD)
        secret(d / "card.pin", PIN)
        self.job = d / "job.yaml"
        self.job.write_text(
            "version: 1\nbatch: bench\ntimezone: Asia/Hong_Kong\ncards:\n"
            f"  - id: HK-1\n    holder: CHAN Tai Man\n    card: {{serial: {SERIAL}}}\n"
            "    pkcs12: {path: holder.p12, password: {file: p12.pass}}\n"
            '    slot: 9c\n    slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n    pin: {file: card.pin}\n'
            "    replace: archive\n"
        )


def secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


# --- the card and what it saw ------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    header: bytes  # CLA INS P1 P2
    data_head: bytes  # the first command data bytes (object IDs: 5C 03 5F C1 0A ...)
    command_bytes: int
    response_bytes: int
    sw: str
    seconds: float = 0.0  # the card's own time for this APDU (its latency included), measured at the card
    started: float = 0.0  # when the card got it (perf_counter)


class RecordingCard:
    """A SimCard as vpcd serves it, recording every APDU's length and its answer's length."""

    def __init__(self, card: Any) -> None:
        self.card = card
        self.log: list[Exchange] = []
        self.cpu_seconds = 0.0  # CPU the simulated card itself used (its latency is a sleep, not CPU)
        self.first_at: float | None = None  # when the first command came (perf_counter)

    @property
    def atr(self) -> bytes:
        return bytes(self.card.atr)

    def power_on(self) -> None:
        self.card.power_on()

    def reset(self) -> None:
        self.card.reset()

    def process(self, apdu: bytes) -> bytes:
        start, cpu = time.perf_counter(), time.thread_time()
        if self.first_at is None:
            self.first_at = start
        response = bytes(self.card.process(apdu))
        seconds = time.perf_counter() - start
        self.cpu_seconds += time.thread_time() - cpu
        apdu = bytes(apdu)
        self.log.append(Exchange(apdu[:4], _command_data(apdu)[:8], len(apdu), len(response), response[-2:].hex().upper(),
                                 seconds, start))  # fmt: skip
        return response

    def after_identity(self) -> float | None:
        """Seconds from the card's answer to the CHUID read (the last of the identity: SELECT, serial,
        CHUID) to the next command: the runner matching the card to its job, which waits for the
        cards being read in the other readers (the twin rule), then the job's first read."""
        for k, x in enumerate(self.log[:-1]):
            if x.header[1:2] == b"\xcb" and x.data_head.startswith(CHUID_TAG):
                return self.log[k + 1].started - x.started - x.seconds
        return None

    def card_seconds(self) -> float:
        """The card's own time over everything it answered: the floor no host software can beat."""
        return sum(x.seconds for x in self.log)


def _command_data(apdu: bytes) -> bytes:
    if len(apdu) <= 5:
        return b""
    if apdu[4] == 0 and len(apdu) > 7:  # extended Lc
        n = int.from_bytes(apdu[5:7], "big")
        return apdu[7 : 7 + n]
    return apdu[5 : 5 + apdu[4]]


CERT_OBJECTS = {bytes.fromhex(h) for h in ("5FC105", "5FC10A", "5FC10B", "5FC101")}


def operation(x: Exchange) -> str:
    """What a physical APDU was for, for the per-operation table."""
    ins, p2 = x.header[1], x.header[3]
    obj = x.data_head[2:5] if x.data_head[:1] == b"\x5c" else b""
    if ins == 0xA4:
        return "select"
    if ins in (0xFD, 0xF8):
        return "version, serial"
    if ins == 0x20:
        return "verify PIN"
    if (ins == 0x87 and p2 == 0x9B) or (ins == 0xF7 and p2 == 0x9B):
        return "management key auth"
    if ins == 0xFE:
        return "import RSA-2048 key"
    if ins == 0xDB:
        return "write certificate" if obj in CERT_OBJECTS else "write other objects"
    if ins == 0xCB:
        return "read certificate" if obj in CERT_OBJECTS else "read other objects"
    if ins == 0xF7:
        return "slot metadata"
    if ins == 0x87:
        return "test signature"
    if ins == 0xC0:
        return "GET RESPONSE"
    return f"INS {ins:02X}"


OPERATIONS = ("select", "version, serial", "verify PIN", "management key auth", "import RSA-2048 key",
              "write certificate", "read certificate", "slot metadata", "test signature",
              "read other objects", "write other objects", "GET RESPONSE")  # fmt: skip


def by_operation(log: list[Exchange]) -> dict[str, list[int]]:
    """operation → [APDUs, bytes both ways]. A command chain's blocks (CLA 10) and GET RESPONSEs
    count for the command they belong to."""
    out: dict[str, list[int]] = {}
    previous: Exchange | None = None
    op = ""
    for x in log:
        chained = previous is not None and previous.header[0] & 0x10 and previous.header[1] == x.header[1]
        if not chained and not (x.header[1] == 0xC0 and op):
            op = operation(x)
        previous = x
        entry = out.setdefault(op, [0, 0])
        entry[0] += 1
        entry[1] += x.command_bytes + x.response_bytes
    return out


# --- pcscd -------------------------------------------------------------------------------------


def bench_pcscd(workdir: Path, readers: int) -> Any:
    from tests.helpers.pcsc_harness import PrivatePcscd

    class YubiKeyNamedPcscd(PrivatePcscd):
        @staticmethod
        def _friendly(entry: int) -> str:
            return READER_PREFIX if entry == 0 else f"{READER_PREFIX} {chr(ord('A') + entry)}"

    daemon = YubiKeyNamedPcscd(workdir, readers)
    daemon.start()
    daemon.wait_ready()
    return daemon


def fresh_card(material: Material | None, latency_ms: float, serial: int = SERIAL) -> RecordingCard:
    """A new simulated YubiKey; with ``material``, slot 9C already holds the old certificate."""
    from provision.card.apdu import ApduChannel
    from provision.piv.session import PivSession
    from provision.secrets import Secret
    from provision.sim.card import SimCard, SimOptions
    from provision.sim.inprocess import SimTransport

    card = SimCard(SimOptions(serial=serial, firmware=FIRMWARE))
    if material is not None:
        card.power_on()
        session = PivSession(ApduChannel(SimTransport(card)))
        session.select()
        session.verify_pin(Secret(PIN.encode()))
        session.authenticate(bytes.fromhex(MANAGEMENT_KEY))
        session.write_certificate(0x9C, material.old_der)
    card.options = _with_latency(card.options, latency_ms)
    return RecordingCard(card)


def _with_latency(options: Any, latency_ms: float) -> Any:
    from dataclasses import replace

    return replace(options, latency_ms=latency_ms)


class Inserted:
    def __init__(self, daemon: Any, index: int, card: RecordingCard) -> None:
        from tests.helpers.pcsc_harness import start_card_server

        self.daemon, self.index, self.card = daemon, index, card
        self.reader = daemon.reader_name(index)
        self.server = start_card_server(daemon, index, card=card)
        self.present_at = wait_reader(self.reader, present=True, timeout=10)

    def pull(self) -> float:
        """Take the card out; returns when pcscd says the reader is empty (perf_counter)."""
        self.server.remove()
        return wait_reader(self.reader, present=False, timeout=10)


def wait_reader(reader: str, *, present: bool, timeout: float) -> float:
    """Wait until pcscd reports a card in ``reader`` (or none); returns that moment (perf_counter).

    Waits on SCardGetStatusChange, as an application would, instead of listing the readers every
    50 ms: sixteen card changers polling pcscd twenty times a second each were CPU taken from the
    run being measured (pcscd's and this process's), more at 16 readers than at one.
    """
    from smartcard import scard

    deadline = time.monotonic() + timeout
    rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rc != scard.SCARD_S_SUCCESS:
        raise RuntimeError(f"SCardEstablishContext: {scard.SCardGetErrorMessage(rc)}")
    try:
        state = scard.SCARD_STATE_UNAWARE
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise RuntimeError(
                    f"timed out after {timeout}s waiting for {reader} to be {'full' if present else 'empty'}"
                )
            rc, states = scard.SCardGetStatusChange(ctx, left_ms, [(reader, state)])
            if rc == scard.SCARD_E_TIMEOUT:
                continue
            if rc != scard.SCARD_S_SUCCESS:
                raise RuntimeError(f"SCardGetStatusChange: {scard.SCardGetErrorMessage(rc)}")
            state = states[0][1] & ~scard.SCARD_STATE_CHANGED
            if bool(state & scard.SCARD_STATE_PRESENT) == present:
                return time.perf_counter()
    finally:
        scard.SCardReleaseContext(ctx)


def timed_commands(argvs: list[list[str]], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    for argv in argvs:
        done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return time.perf_counter() - start


# --- P1 + P2 -----------------------------------------------------------------------------------


@dataclass
class ToolRun:
    seconds: list[float] = field(default_factory=list)
    log: list[Exchange] = field(default_factory=list)  # of the last run
    card_seconds: list[float] = field(default_factory=list)  # ours: the job's card time


def p1_p2(daemon: Any, work: Path, repeat: int, latencies: tuple[float, ...] = (20.0, 0.0)) -> dict[str, Any]:
    """Each tool loads the same PKCS#12 into slot 9C of a fresh card, ``repeat`` times per latency."""
    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile
    from provision.readers import PcscSource

    material = Material(work / "material")
    reader = daemon.reader_name(0)
    env = {**daemon.env, "HOME": str(work)}  # ykman writes its settings under HOME
    ykman = str(BIN / "ykman")
    provision = str(BIN / "provision")
    p12, pw = str(material.p12), P12_PASSWORD
    peers: dict[str, list[list[str]]] = {
        "yubico-piv-tool": [["yubico-piv-tool", "-r", reader, "-a", "import-key", "-a", "import-certificate",
                             "-s", "9c", "-i", p12, "-K", "PKCS12", "-p", pw]],
        "ykman": [[ykman, "--reader", reader, "piv", "keys", "import", "--management-key", MANAGEMENT_KEY,
                   "-p", pw, "9c", p12],
                  [ykman, "--reader", reader, "piv", "certificates", "import", "--management-key", MANAGEMENT_KEY,
                   "-p", pw, "9c", p12]],
    }  # fmt: skip
    readback: dict[str, list[list[str]]] = {
        "yubico-piv-tool": [["yubico-piv-tool", "-r", reader, "-a", "read-certificate", "-s", "9c", "-K", "DER",
                             "-o", str(work / "back-ypt.der")]],
        "ykman": [[ykman, "--reader", reader, "piv", "certificates", "export", "-F", "DER", "9c",
                   str(work / "back-ykman.der")]],
    }  # fmt: skip
    runs: dict[tuple[str, float], ToolRun] = {}
    readback_logs: dict[str, list[Exchange]] = {}
    counter = iter(range(1_000_000))

    def logs_dir() -> Path:
        path = work / f"logs-{next(counter)}"
        return path

    for latency in latencies:
        for _ in range(repeat):
            # ours, the whole command (interpreter start-up, PKCS#12 decryption, journal, audit, reports)
            slot = Inserted(daemon, 0, fresh_card(material, latency))
            argv = [provision, "run", str(material.job), "--unattended", "--no-progress", "--json",
                    "--logs", str(logs_dir()), "--reader", reader]  # fmt: skip
            run = runs.setdefault(("provision run (process)", latency), ToolRun())
            run.seconds.append(timed_commands([argv], env, material.directory))
            run.log = slot.card.log
            _check_loaded(slot.card, material)
            slot.pull()
            # ours, in this process: the same run without interpreter start-up and imports
            slot = Inserted(daemon, 0, fresh_card(material, latency))
            start = time.perf_counter()
            jobfile = load_jobfile(material.job, unattended=True)
            outcome = run_jobfile(jobfile, logs=logs_dir(), unattended=True, wait=0.0, source=PcscSource([reader]),
                                  progress=False, say=lambda _t: None)  # fmt: skip
            run = runs.setdefault(("provision run_jobfile (in-process)", latency), ToolRun())
            run.seconds.append(time.perf_counter() - start)
            run.card_seconds.append(float(outcome.document["jobs"][0]["seconds"]))
            run.log = slot.card.log
            if outcome.document["jobs"][0]["status"] != "loaded":
                raise RuntimeError(f"in-process load failed: {outcome.document['jobs'][0]}")
            _check_loaded(slot.card, material)
            if latency == 0.0 and "provision" not in readback_logs:
                before = len(slot.card.log)
                _our_readback(slot.reader)
                readback_logs["provision"] = slot.card.log[before:]
            slot.pull()
            for name, argvs in peers.items():
                slot = Inserted(daemon, 0, fresh_card(material, latency))
                run = runs.setdefault((name, latency), ToolRun())
                run.seconds.append(timed_commands(argvs, env, material.directory))
                run.log = list(slot.card.log)
                _check_loaded(slot.card, material)
                if latency == 0.0 and name not in readback_logs:
                    before = len(slot.card.log)
                    timed_commands(readback[name], env, material.directory)
                    readback_logs[name] = slot.card.log[before:]
                slot.pull()
    return {"runs": runs, "readback": readback_logs, "material": material}


def _check_loaded(card: RecordingCard, material: Material) -> None:
    """Every tool must really have loaded the certificate into 9C (read without the recorder)."""
    from provision.card.apdu import ApduChannel
    from provision.piv.session import PivSession
    from provision.sim.inprocess import SimTransport

    session = PivSession(ApduChannel(SimTransport(card.card)))
    session.select()
    if session.read_certificate(0x9C) != material.cert_der:
        raise RuntimeError("the certificate in 9C is not the one loaded")


def _our_readback(reader: str) -> None:
    """Our own read-back of the certificate (select + GET DATA), as `provision card info` reads it."""
    from provision.card.apdu import ApduChannel
    from provision.card.transport import connect
    from provision.piv.session import PivSession

    with connect(reader) as transport:
        session = PivSession(ApduChannel(transport))
        session.select()
        session.read_certificate(0x9C)


# --- P3 ----------------------------------------------------------------------------------------


def p3_pcscd(daemon: Any, work: Path, readers: int, per_reader: int, latency_ms: float,
             key_type: str = "p256") -> dict[str, Any]:  # fmt: skip
    """``per_reader`` cards through each of ``readers`` readers in one in-process run through pcscd.

    A changer thread per reader plays the operator: when the run says a job is done, it pulls the
    card and inserts the next one. The time is from the first card's identification to the last
    job's result, so the run's start (PKCS#12 decryption of every job) is not in it. Per card: from
    the moment the card is in its reader to its job's result, and the card's own time (P7).
    """
    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile
    from provision.readers import PcscSource

    d = work / f"p3-{readers}x{per_reader}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    _write_p3_material(d, readers * per_reader, key_type)
    jobfile = load_jobfile(d / "job.yaml", unattended=True)
    serials = [[20_000_000 + r * per_reader + k for k in range(per_reader)] for r in range(readers)]
    inserted_at: dict[int, float] = {}
    done_at: dict[int, float] = {}
    card_seconds: dict[int, float] = {}
    first_apdu: dict[int, float] = {}  # the card's first command (the runner noticed and connected)
    present: dict[int, float] = {}  # pcscd said the card is in
    empty_at: dict[int, float] = {}  # pcscd said the reader is empty after it
    change: dict[int, float] = {}  # the reader empty -> the next card seen by pcscd
    worker_ended: dict[int, float] = {}  # the runner's worker for the card ended
    matching: dict[int, float | None] = {}  # the card read -> its job's first command (RecordingCard.after_identity)
    reader_names = [daemon.reader_name(r) for r in range(readers)]
    done_events = {s: threading.Event() for row in serials for s in row}
    first: list[float] = []
    last: list[float] = [0.0]
    lock = threading.Lock()

    def say(text: str) -> None:
        now = time.perf_counter()
        with lock:
            if ": loading " in text and not first:
                first.append(now)
            for row in serials:
                for s in row:
                    if f"(HK-{s})" in text and (": loaded." in text or "FAILED" in text or "REFUSED" in text):
                        last[0] = max(last[0], now)
                        done_at.setdefault(s, now)
                        done_events[s].set()

    def changer(r: int, current: list[Inserted]) -> None:
        for k, s in enumerate(serials[r]):
            if not done_events[s].wait(120):
                return
            # The result line comes before the worker lets go of the card; the runner ignores an
            # insertion into a reader it is still busy with, so pull only once the worker ended.
            for worker in threading.enumerate():
                if worker.name == f"reader-{reader_names[r]}":
                    worker.join(30)
            worker_ended[s] = time.perf_counter()
            card_seconds[s] = current[0].card.card_seconds()
            matching[s] = current[0].card.after_identity()
            first_apdu[s] = current[0].card.first_at or done_at[s]
            present[s] = current[0].present_at
            empty_at[s] = current[0].pull()
            if k + 1 < per_reader:
                current[0] = Inserted(daemon, r, RecordingCard(_p3_card(serials[r][k + 1], latency_ms)))
                every_card.append(current[0].card)
                inserted_at[serials[r][k + 1]] = time.perf_counter()
                change[serials[r][k + 1]] = current[0].present_at - empty_at[s]

    slots = [[Inserted(daemon, r, RecordingCard(_p3_card(serials[r][0], latency_ms)))] for r in range(readers)]
    every_card = [slot[0].card for slot in slots]
    threads = [threading.Thread(target=changer, args=(r, slots[r]), daemon=True) for r in range(readers)]
    for t in threads:
        t.start()
    cpu_before, wall_before = _process_cpu(), time.perf_counter()
    pcscd_before = _pid_cpu(daemon.proc.pid)
    # wait: unattended runs otherwise stop at the first moment with no card (wait=None means 0)
    outcome = run_jobfile(jobfile, logs=d / "logs", unattended=True, wait=120.0,
                          source=PcscSource(reader_names), progress=False, say=say)  # fmt: skip
    for t in threads:
        t.join(30)
    cpu = _process_cpu() - cpu_before
    pcscd_cpu = _pid_cpu(daemon.proc.pid) - pcscd_before
    run_wall = time.perf_counter() - wall_before
    statuses = [j["status"] for j in outcome.document["jobs"]]
    if statuses.count("loaded") != readers * per_reader:
        raise RuntimeError(f"P3 run did not load every card: {statuses}")
    wall = last[0] - first[0]
    shutil.rmtree(d, ignore_errors=True)
    handed = sorted(inserted_at)  # the cards put in while the run was going (not the first ones)
    per_card = [done_at[s] - inserted_at[s] for s in handed if s in done_at]
    cards_cpu = sum(c.cpu_seconds for c in every_card)
    done = [s for row in serials for s in row if s in empty_at]
    phases = {  # medians in ms, over every card: where a reader's cycle goes
        "seen_to_first_apdu": _median_ms(first_apdu[s] - present[s] for s in done),
        "first_apdu_to_result": _median_ms(done_at[s] - first_apdu[s] for s in done),
        "matching": _median_ms(m for m in (matching.get(s) for s in done) if m is not None),
        "card_own": _median_ms(card_seconds[s] for s in done),
        "result_to_worker_end": _median_ms(worker_ended[s] - done_at[s] for s in done),
        "worker_end_to_empty": _median_ms(empty_at[s] - worker_ended[s] for s in done),
        "empty_to_next_seen": _median_ms(change.values()) if change else None,
    }
    return {"cards": readers * per_reader, "seconds": wall, "per_minute": readers * per_reader / wall * 60,
            "per_card_seconds": per_card, "card_seconds": [card_seconds[s] for s in handed if s in card_seconds],
            "phases_ms": phases, "pcscd_cpu_per_wall": round(pcscd_cpu / run_wall, 2),
            "pcscd_cpu_ms_per_card": round(pcscd_cpu / (readers * per_reader) * 1000, 1),
            **_cpu_fields(cpu, cards_cpu, run_wall, readers * per_reader)}  # fmt: skip


def _median_ms(values: Any) -> float:
    return round(median(list(values)) * 1000, 1)


def _pid_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used: for pcscd beside the run. Linux only,
    like the harness that starts it; 0.0 where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TimedRecords:
    """Times the records a card's worker writes (journal, audit log, store) while a run goes on,
    by wrapping their classes' methods for the duration (the product carries no timers)."""

    WRAPPED = (("provision.journal", "Journal", ("step", "set_job", "add_seal", "add_pending")),
               ("provision.audit.chain", "AuditLog", ("append",)),
               ("provision.store", "CertificateStore", ("archive", "prove")))  # fmt: skip

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> TimedRecords:
        import importlib

        for module_name, class_name, methods in self.WRAPPED:
            cls = getattr(importlib.import_module(module_name), class_name)
            for name in methods:
                original = cls.__dict__[name]
                self._saved.append((cls, name, original))
                setattr(cls, name, self._timed(f"{class_name}.{name}", original))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)

    def _timed(self, label: str, original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not threading.current_thread().name.startswith("reader-"):
                return original(*args, **kwargs)  # only the card's worker: what it does between APDUs
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
                    self.calls[label] = self.calls.get(label, 0) + 1

        return timed


def _process_cpu() -> float:
    """CPU seconds this whole process has used (every thread): user + system."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_fields(cpu: float, cards_cpu: float | None, wall: float, count: int) -> dict[str, float]:
    """Where the bench process's CPU went during a run: per card, the simulated cards' part (they
    run in this same interpreter, under the GIL provision's workers need), and the CPU used per
    second of the run (1.0 = one core's worth all the time: the run waited on the GIL or a core)."""
    fields = {"cpu_ms_per_card": round(cpu / count * 1000, 1), "cpu_per_wall": round(cpu / wall, 2)}
    if cards_cpu is not None:
        fields["cards_cpu_ms_per_card"] = round(cards_cpu / count * 1000, 1)
        fields["provision_cpu_ms_per_card"] = round((cpu - cards_cpu) / count * 1000, 1)
    return fields


def _p3_card(serial: int, latency_ms: float) -> Any:
    from provision.sim.card import SimCard, SimOptions

    return SimCard(SimOptions(serial=serial, firmware=FIRMWARE, latency_ms=latency_ms))


def _write_p3_material(d: Path, count: int, key_type: str = "p256") -> None:
    """``count`` jobs of one PKCS#12 each: P-256 for P3 (cheap to make; the card time is what P3
    measures), RSA-2048 for P7 (each bundle decrypted as a real batch would)."""
    from provision import fixtures

    now = datetime.now(UTC)
    ca = fixtures.make_ca("Bench P3 CA")
    secret(d / "p12.pass", P12_PASSWORD)
    secret(d / "card.pin", PIN)
    lines = ["version: 1", "batch: bench-p3", "timezone: Asia/Hong_Kong", "defaults:", "  slot: 9c",
             '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"', "  pin: {file: card.pin}", "cards:"]  # fmt: skip
    key = fixtures.generate_key(key_type)
    for n in range(count):
        serial = 20_000_000 + n
        data = fixtures.holder_p12(ca, f"HOLDER {n}", P12_PASSWORD, key=key, serial=0x1000 + n,
                                   not_before=now - timedelta(days=1), not_after=now + timedelta(days=365))  # fmt: skip
        (d / f"h{n}.p12").write_bytes(data)
        lines += [f"  - id: HK-{serial}", f"    holder: HOLDER {n}", f"    card: {{serial: {serial}}}",
                  f"    pkcs12: {{path: h{n}.p12, password: {{file: p12.pass}}}}"]  # fmt: skip
    (d / "job.yaml").write_text("\n".join(lines) + "\n")


def p3_inprocess(work: Path, readers: int, per_reader: int, latency_ms: float) -> dict[str, Any]:
    """The same with in-process simulated readers (SimSource): no pcscd, no card changes."""
    from provision.app import run_jobfile
    from provision.jobfile import load_jobfile
    from provision.sim.source import SimSource

    d = work / f"p3s-{readers}x{per_reader}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    _write_p3_material(d, readers * per_reader)
    jobfile = load_jobfile(d / "job.yaml", unattended=True)
    cards = [[_p3_card(20_000_000 + r * per_reader + k, latency_ms) for k in range(per_reader)] for r in range(readers)]
    marks: list[float] = []

    def say(text: str) -> None:
        marks.append(time.perf_counter())

    cpu_before, wall_before = _process_cpu(), time.perf_counter()
    outcome = run_jobfile(jobfile, logs=d / "logs", unattended=True, wait=None, source=SimSource(cards),
                          progress=False, say=say)  # fmt: skip
    cpu, run_wall = _process_cpu() - cpu_before, time.perf_counter() - wall_before
    statuses = [j["status"] for j in outcome.document["jobs"]]
    if statuses.count("loaded") != readers * per_reader:
        raise RuntimeError(f"P3 in-process run did not load every card: {statuses}")
    wall = marks[-1] - marks[0]
    shutil.rmtree(d, ignore_errors=True)
    return {"cards": readers * per_reader, "seconds": wall, "per_minute": readers * per_reader / wall * 60,
            **_cpu_fields(cpu, None, run_wall, readers * per_reader)}  # fmt: skip


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- P1 against the peers' same-checklist scripts, at one latency -------------------------------


def checklist_scripts(daemon: Any, work: Path, material: Material) -> dict[str, list[list[str]]]:
    """What each tool runs for one load. The checklists are what an operator would script with each
    peer to do what ``provision run`` does (look at the card, keep the old certificate, load, read
    back, prove the key); the bare imports are each peer's plain load."""
    reader = daemon.reader_name(0)
    ykman = str(BIN / "ykman")
    p12, pw = str(material.p12), P12_PASSWORD
    old, back = str(work / "old.pem"), str(work / "back.pem")
    ypt = ["yubico-piv-tool", "-r", reader]
    yk = [ykman, "--reader", reader, "piv"]
    mk = ["--management-key", MANAGEMENT_KEY]
    return {
        "yubico-piv-tool checklist (5 runs)": [
            [*ypt, "-a", "status"],
            [*ypt, "-a", "read-certificate", "-s", "9c", "-o", old],
            [*ypt, "-a", "import-key", "-a", "import-certificate", "-s", "9c", "-i", p12, "-K", "PKCS12", "-p", pw],
            [*ypt, "-a", "read-certificate", "-s", "9c", "-o", back],
            [*ypt, "-a", "verify-pin", "-P", PIN, "-a", "test-signature", "-s", "9c", "-i", back],
        ],
        "ykman checklist (5 runs, no test signature)": [
            [*yk, "info"],
            [*yk, "certificates", "export", "9c", old],
            [*yk, "keys", "import", *mk, "-p", pw, "9c", p12],
            [*yk, "certificates", "import", *mk, "-p", pw, "9c", p12],
            [*yk, "certificates", "export", "9c", back],
        ],
        "yubico-piv-tool bare import": [
            [*ypt, "-a", "import-key", "-a", "import-certificate", "-s", "9c", "-i", p12, "-K", "PKCS12", "-p", pw],
        ],
        "ykman bare import": [
            [*yk, "keys", "import", *mk, "-p", pw, "9c", p12],
            [*yk, "certificates", "import", *mk, "-p", pw, "9c", p12],
        ],
    }  # fmt: skip


def p1_checklist(daemon: Any, work: Path, repeat: int, latency_ms: float = 20.0) -> dict[str, Any]:
    """``provision run`` (the whole command) and each peer script, interleaved, ``repeat`` times each,
    every run on a fresh card (slot 9C holding an old certificate). Per tool: wall seconds, the card's
    own seconds (measured at the card), APDUs."""
    material = Material(work / "material-p1")
    env = {**daemon.env, "HOME": str(work)}
    tools: dict[str, list[list[str]]] = {}
    counter = iter(range(1_000_000))
    out: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeat):
        tools = {"provision run": [[str(BIN / "provision"), "run", str(material.job), "--unattended", "--no-progress",
                                    "--logs", str(work / f"p1-logs-{next(counter)}"), "--reader",
                                    daemon.reader_name(0)]],
                 **checklist_scripts(daemon, work, material)}  # fmt: skip
        for name, argvs in tools.items():
            slot = Inserted(daemon, 0, fresh_card(material, latency_ms))
            seconds = timed_commands(argvs, env, material.directory)
            _check_loaded(slot.card, material)
            entry = out.setdefault(name, {"seconds": [], "card_seconds": [], "apdus": []})
            entry["seconds"].append(seconds)
            entry["card_seconds"].append(slot.card.card_seconds())
            entry["apdus"].append(len(slot.card.log))
            slot.pull()
    return {name: {"seconds": median(v["seconds"]), "card_seconds": median(v["card_seconds"]),
                   "apdus": int(median(v["apdus"])), "runs": len(argvs_of(tools, name)), "samples": v["seconds"]}
            for name, v in out.items()}  # fmt: skip


def argvs_of(tools: dict[str, list[list[str]]], name: str) -> list[list[str]]:
    return tools[name]
