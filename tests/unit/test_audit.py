"""The audit log: chain, HMAC, tampering matrix, concurrency, rotation, damaged tails, syslog, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provision.audit.chain import AuditLog
from provision.audit.forward import SyslogTarget
from provision.audit.records import GENESIS, canonical, chain_files
from provision.audit.verify import show, verify
from provision.cli_audit import cmd_audit_show, cmd_audit_verify
from provision.errors import AuditError, LogsError, SecretInAuditError, UsageError
from provision.secrets import Secret

REPO = Path(__file__).resolve().parents[2]
KEY = Secret("audit-key-for-tests-0123456789abcdef")

# ----------------------------------------------------------------------------------------------
# a realistic batch


def write_batch(path: Path, *, key: Secret | None = None, cards: int = 4) -> tuple[list[bytes], str]:
    """A simulated batch's events (about 40 with cards=4); returns (lines, seal)."""
    log = AuditLog(path, key=key, run_id="20251125T020000Z-a1b2")
    log.append("run_started", batch="hk-2025-11", jobs=cards, job_file=Path("jobs/hk.yaml"), unattended=False)
    log.append("validation", batch="hk-2025-11", outcome="ok", warnings=["slot 9c template uses local time"])
    holders = ["CHAN Tai Man", "陳大文", 'O\'Brien, "Pat"', "Zoë Ångström"]
    for n in range(cards):
        job = {
            "batch": "hk-2025-11",
            "job_id": f"HK-{n:04d}",
            "holder": holders[n % 4],
            "card_serial": str(1000 + n),
        }
        log.append("card_inserted", **job, reader="Virtual PCD 00 00")
        log.append("card_identified", **job, firmware="5.7.1", version=[5, 7, 1])
        if n == 2:
            log.append(
                "wrong_card", **job, expected_serial="9999", outcome="refused", error_class="WrongCardError"
            )
            continue
        log.append("preflight", **job, slot="9c", slot_name="e-Cert20251125", free_bytes=2987, ratio=0.73)
        log.append(
            "archive", **job, slot="9c", replaced_sha256=hashlib.sha256(b"old%d" % n).hexdigest(),
            store_path=f"logs/store/{1000 + n}/9c.pem", details={"subject_cn": holders[n % 4], "serial": n},
        )  # fmt: skip
        log.append("pin_verify", **job, outcome="ok", pin_tries_left=3)
        log.append("management_key_auth", **job, outcome="ok", algorithm="AES192")
        log.append("key_imported", **job, slot="9c", algorithm="RSA2048", touch=None)
        log.append(
            "certificate_written",
            **job,
            slot="9c",
            fingerprint_sha256=hashlib.sha256(b"new%d" % n).hexdigest(),
        )
        log.append("slot_name_written", **job, slot="9c", slot_name="e-Cert20251125")
        log.append("verification", **job, outcome="ok", checked=True)
        log.append("commit", **job, outcome="loaded", seconds=4.25)
    log.append("run_finished", batch="hk-2025-11", counts={"loaded": 3, "refused": 1}, outcome="partial")
    seal = log.seal(batch="hk-2025-11")
    return path.read_bytes().splitlines(keepends=True), seal


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], str]:
    return write_batch(tmp_path_factory.mktemp("plain") / "audit.jsonl")


@pytest.fixture(scope="module")
def keyed_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], str]:
    return write_batch(tmp_path_factory.mktemp("keyed") / "audit.jsonl", key=KEY)


def check(
    tmp_path: Path, data: bytes, *, key: Secret | None = None, seals: tuple[str, ...] = ()
) -> tuple[bool, str | None, int | None]:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(data)
    result = verify(tmp_path, key=key, seals=seals)
    if not result.ok:
        assert result.message and str(path) in result.message or result.problem == "seal-mismatch"
    return result.ok, result.problem, result.first_bad_line


# ----------------------------------------------------------------------------------------------
# format


def test_records_are_canonical_chained_and_complete(batch: tuple[list[bytes], str]) -> None:
    lines, seal = batch
    assert 35 <= len(lines) <= 45
    prev = GENESIS
    for seq, raw in enumerate(lines, start=1):
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1
        record = json.loads(raw)
        digest = record.pop("hash")
        assert raw == canonical(record)[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
        assert hashlib.sha256(canonical(record)).hexdigest() == digest  # an auditor's own check
        assert record["seq"] == seq and record["prev"] == prev
        assert record["time"].endswith("Z") and datetime.fromisoformat(record["time"]).tzinfo is not None
        assert record["operator"] and record["host"] and record["tool_version"]
        assert record["run_id"] == "20251125T020000Z-a1b2"
        prev = digest
    assert seal == prev and json.loads(lines[-1])["event"] == "seal"
    assert "陳大文" in lines[0:20][5].decode() or any("陳大文".encode() in raw for raw in lines)


def test_keyed_records_are_hmac(keyed_batch: tuple[list[bytes], str]) -> None:
    import hmac

    lines, _ = keyed_batch
    record = json.loads(lines[3])
    digest = record.pop("hash")
    assert record["mac"] == "hmac-sha256"
    assert hmac.new(KEY.reveal(), canonical(record), "sha256").hexdigest() == digest
    assert hashlib.sha256(canonical(record)).hexdigest() != digest


def test_intact_log_verifies(tmp_path: Path, batch: tuple[list[bytes], str]) -> None:
    lines, seal = batch
    assert check(tmp_path, b"".join(lines), seals=(seal,)) == (True, None, None)
    result = verify(tmp_path, seals=[seal])
    assert result.records == len(lines) and result.last_hash == seal and result.seals_checked == 1


# ----------------------------------------------------------------------------------------------
# the tampering matrix


def _positions(raw: bytes) -> list[int]:
    """Every 5th byte, the first byte of every key and value, and the last 80 bytes (hash, newline)."""
    positions = set(range(0, len(raw), 5))
    for i, byte in enumerate(raw):
        if byte in b'":,[]{}' and i + 1 < len(raw):
            positions.add(i + 1)
    positions.update(range(max(0, len(raw) - 80), len(raw)))
    return sorted(positions)


@pytest.mark.parametrize("keyed", [False, True])
def test_every_single_byte_change_is_detected(
    tmp_path: Path, keyed: bool, batch: tuple[list[bytes], str], keyed_batch: tuple[list[bytes], str]
) -> None:
    lines, seal = keyed_batch if keyed else batch
    key = KEY if keyed else None
    tried = 0
    for index, raw in enumerate(lines):
        before, after = b"".join(lines[:index]), b"".join(lines[index + 1 :])
        for pos in _positions(raw) if index % 3 else range(len(raw)):  # every byte of every 3rd line
            changed = bytearray(raw)
            changed[pos] ^= 0x01 if raw[pos] != 0x0B else 0x02
            ok, problem, line = check(tmp_path, before + bytes(changed) + after, key=key, seals=(seal,))
            last_newline = index == len(lines) - 1 and pos == len(raw) - 1
            expected = "truncated" if last_newline else "modified"
            assert (ok, problem, line) == (False, expected, index + 1), (index, pos, chr(raw[pos]))
            tried += 1
    assert tried > 2000


def test_every_deleted_line_is_detected(tmp_path: Path, batch: tuple[list[bytes], str]) -> None:
    lines, seal = batch
    for index in range(len(lines)):
        data = b"".join(lines[:index] + lines[index + 1 :])
        if index == len(lines) - 1:
            assert check(tmp_path, data, seals=(seal,))[:2] == (False, "seal-mismatch")
            assert check(tmp_path, data)[0]  # without a seal, a cut at a line boundary is invisible
        else:
            assert check(tmp_path, data, seals=(seal,)) == (False, "deleted", index + 1), index


def test_every_adjacent_swap_and_some_distant_ones_are_detected(
    tmp_path: Path, batch: tuple[list[bytes], str]
) -> None:
    lines, seal = batch
    pairs = [(i, i + 1) for i in range(len(lines) - 1)] + [(0, 5), (3, 17), (10, len(lines) - 1), (1, 3)]
    for i, j in pairs:
        swapped = list(lines)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert check(tmp_path, b"".join(swapped), seals=(seal,)) == (False, "reordered", i + 1), (i, j)


@pytest.mark.parametrize(("source", "at"), [(4, 5), (4, 10), (20, 3), (0, 0), (7, None), (30, 31)])
def test_inserted_copy_is_detected(
    tmp_path: Path, batch: tuple[list[bytes], str], source: int, at: int | None
) -> None:
    lines, seal = batch
    where = len(lines) if at is None else at
    data = lines[:where] + [lines[source]] + lines[where:]
    # two identical lines side by side: the second one is the extra
    expected_line = where + 2 if source == where else where + 1
    assert check(tmp_path, b"".join(data), seals=(seal,)) == (False, "inserted", expected_line)


def test_forged_plain_line_in_keyed_log_is_detected(
    tmp_path: Path, keyed_batch: tuple[list[bytes], str]
) -> None:
    lines, seal = keyed_batch
    original = json.loads(lines[10])
    forged = {k: v for k, v in original.items() if k not in ("hash", "mac")}
    forged["holder"] = "MALLORY"
    forged["prev"] = json.loads(lines[9])["hash"]
    body = canonical(forged)
    forged_line = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
    inserted = lines[:10] + [forged_line] + lines[10:]
    assert check(tmp_path, b"".join(inserted), key=KEY, seals=(seal,)) == (False, "inserted", 11)
    replaced = lines[:10] + [forged_line] + lines[11:]
    ok, problem, line = check(tmp_path, b"".join(replaced), key=KEY, seals=(seal,))
    assert (ok, problem, line) == (False, "modified", 11)
    # and a forged line carrying the mac marker with a plain hash fails its HMAC
    forged["mac"] = "hmac-sha256"
    body = canonical(forged)
    fake = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
    assert check(tmp_path, b"".join(lines[:10] + [fake] + lines[11:]), key=KEY)[:2] == (False, "modified")


def test_truncated_tail_is_detected(tmp_path: Path, batch: tuple[list[bytes], str]) -> None:
    lines, seal = batch
    data = b"".join(lines)
    last_start = len(data) - len(lines[-1])
    for cut in (last_start + 1, last_start + 40, len(data) - 1):
        assert check(tmp_path, data[:cut], seals=(seal,)) == (False, "truncated", len(lines))
    # cut in the middle of an earlier line: the last line left is incomplete
    cut = len(b"".join(lines[:20])) + 30
    assert check(tmp_path, data[:cut]) == (False, "truncated", 21)
    # cut exactly at a line boundary: only the seal shows it
    assert check(tmp_path, b"".join(lines[:30]), seals=(seal,))[:2] == (False, "seal-mismatch")


def test_foreign_files_are_not_audit_logs(tmp_path: Path) -> None:
    for content in (
        b"hello world\n",
        b"\x00\xff\xfe binary",
        b"a,b,c\n1,2,3\n",
        b'{"event":"x"}\n',
        b"[1,2]\n",
    ):
        ok, problem, line = check(tmp_path, content)
        assert not ok and problem in ("not-an-audit-log", "truncated") and line == 1, content
    assert check(tmp_path, b"hello world\n")[1] == "not-an-audit-log"


# ----------------------------------------------------------------------------------------------
# keys


def test_keyed_chain_needs_the_right_key(tmp_path: Path, keyed_batch: tuple[list[bytes], str]) -> None:
    lines, seal = keyed_batch
    assert check(tmp_path, b"".join(lines), key=KEY, seals=(seal,)) == (True, None, None)
    assert check(tmp_path, b"".join(lines)) == (False, "key-required", 1)
    ok, problem, line = check(tmp_path, b"".join(lines), key=Secret("not the key"))
    assert not ok and problem == "key-required" and line == 1
    assert "not the key this log was written with" in verify(tmp_path, key=Secret("wrong")).message


def test_appending_to_a_keyed_log_needs_the_key(tmp_path: Path) -> None:
    AuditLog(tmp_path / "audit.jsonl", key=KEY).append("run_started")
    before = (tmp_path / "audit.jsonl").read_bytes()
    with pytest.raises(UsageError, match="HMAC-chained .* nothing was appended"):
        AuditLog(tmp_path / "audit.jsonl").append("run_started")
    with pytest.raises(UsageError, match="HMAC-chained"):
        AuditLog(tmp_path / "audit.jsonl").check_tail()
    assert (tmp_path / "audit.jsonl").read_bytes() == before


def test_a_plain_chain_is_not_continued_keyed(tmp_path: Path) -> None:
    """With a key every record has a MAC: a keyed run does not append to a plain chain."""
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append("a")
    before = path.read_bytes()
    with pytest.raises(UsageError, match="started without an audit key"):
        AuditLog(path, key=KEY).append("b")
    assert path.read_bytes() == before


def test_a_keyed_chain_is_not_continued_plain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path, key=KEY).append("a")
    AuditLog(path, key=KEY).append("b")
    assert verify(tmp_path, key=KEY).ok
    good = path.read_bytes()
    # a plain record after keyed ones, even with a correct plain hash and prev, is refused
    record = json.loads(good.splitlines()[-1])
    plain = {"event": "c", "seq": 3, "prev": record["hash"], "time": record["time"]}
    body = canonical(plain)
    path.write_bytes(good + body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n')
    assert verify(tmp_path, key=KEY).problem == "modified"


# ----------------------------------------------------------------------------------------------
# secrets


def test_secrets_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("run_started")
    before = path.read_bytes()
    pin = Secret("482913")
    for fields in (
        {"pin_value_source": pin},
        {"details": {"nested": [1, pin]}},
        {"items": (pin,)},
        {"pin": "482913"},
        {"management_key": "010203"},
        {"raw": b"\x01\x02"},
    ):
        with pytest.raises(SecretInAuditError):
            log.append("pin_verify", **fields)
    with pytest.raises(ValueError):
        log.append("x", prev=GENESIS)
    with pytest.raises(ValueError):
        log.append("x", details={"hash": "1"})
    with pytest.raises(ValueError):
        log.append("x", ratio=float("nan"))
    assert path.read_bytes() == before and b"482913" not in before
    log.append("pin_verify", pin_tries_left=2, outcome="wrong-pin")
    assert b"482913" not in path.read_bytes()


# ----------------------------------------------------------------------------------------------
# concurrency


def test_threads_do_not_interleave_or_fork(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    shared = AuditLog(path, key=KEY)

    def worker(n: int) -> None:
        log = shared if n < 2 else AuditLog(path, key=KEY)  # one shared writer, two of their own
        for i in range(250):
            log.append("apdu_batch", reader=f"reader {n}", i=i, holder="x" * (i % 300))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(tmp_path, key=KEY)
    assert result.ok and result.records == 1000, result.message
    seqs = [json.loads(raw)["seq"] for raw in path.read_bytes().splitlines()]
    assert seqs == list(range(1, 1001))


_WRITER = """
import sys
from pathlib import Path
from provision.audit.chain import AuditLog
from provision.secrets import Secret
log = AuditLog(Path(sys.argv[1]), key=Secret(sys.argv[2]))
sys.stdin.readline()  # start together
for i in range(200):
    log.append("apdu_batch", process=sys.argv[3], i=i, padding="p" * (i * 7 % 500))
"""


def test_processes_do_not_interleave_or_fork(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), KEY.reveal().decode(), str(n)],
            stdin=subprocess.PIPE,
            env=env,
        )
        for n in range(3)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    result = verify(tmp_path, key=KEY)
    assert result.ok and result.records == 600, result.message
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, 601))
    assert {r["process"] for r in records} == {"0", "1", "2"}


# ----------------------------------------------------------------------------------------------
# rotation


def test_rotation_by_size_keeps_the_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY, rotate_bytes=4000)
    hashes = [log.append("card_inserted", job_id=f"J{i}", holder="CHAN Tai Man").hash for i in range(60)]
    files = chain_files(tmp_path / "audit.jsonl")
    assert len(files) >= 3 and files[-1].name == "audit.jsonl"
    for older, newer in zip(files, files[1:], strict=False):
        last = json.loads(older.read_bytes().splitlines()[-1])
        first = json.loads(newer.read_bytes().splitlines()[0])
        assert first["prev"] == last["hash"] and first["rotated_from"] == older.name
        assert first["seq"] == last["seq"] + 1
    result = verify(tmp_path, key=KEY, seals=[hashes[-1], hashes[10]])
    assert result.ok and result.records == 60 and result.last_hash == hashes[-1]
    assert verify(files[-1], key=KEY).ok  # one file alone: it starts where its rolled file ended
    files[1].unlink()
    result = verify(tmp_path, key=KEY)
    assert (result.ok, result.problem, result.file) == (False, "deleted", str(files[2]))
    files[0].unlink()
    assert verify(tmp_path, key=KEY).problem == "deleted"  # the chain no longer starts at seq 1


def test_rotation_by_day(tmp_path: Path) -> None:
    now = [datetime(2025, 11, 25, 23, 59, 58, tzinfo=UTC)]
    log = AuditLog(tmp_path / "audit.jsonl", rotate_daily=True, clock=lambda: now[0])
    for _ in range(3):
        log.append("tick")
        now[0] += timedelta(seconds=1)
    names = [p.name for p in chain_files(tmp_path / "audit.jsonl")]
    assert len(names) == 2 and names[0].startswith("audit-20251126T000000") and names[1] == "audit.jsonl"
    assert verify(tmp_path).ok and verify(tmp_path).records == 3


def test_crash_between_rename_and_first_record_continues(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, rotate_bytes=10**9)
    log.append("a")
    os.replace(path, tmp_path / "audit-20251125T000000000000Z.jsonl")  # rotated, new file not yet written
    record = log.append("b")
    assert record.record["rotated_from"] == "audit-20251125T000000000000Z.jsonl" and record.seq == 2
    assert verify(tmp_path).ok


# ----------------------------------------------------------------------------------------------
# damaged tails


@pytest.mark.parametrize("damage", ["half-line", "broken-record", "garbage-lines"])
def test_damaged_tail_blocks_appends_until_accepted(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    for i in range(5):
        log.append("card_inserted", job_id=f"J{i}")
    good = path.read_bytes()
    if damage == "half-line":
        path.write_bytes(good + b'{"card_serial":"1000","event":"pin_ver')
    elif damage == "broken-record":
        path.write_bytes(good[:-20] + b"0" * 19 + b"\n")
    else:
        path.write_bytes(good + b"\x00\x00\x00\n<<corrupt>>\n")
    assert not verify(tmp_path, key=KEY).ok
    assert not log.check_tail().ok
    with pytest.raises(AuditError, match="accepts the damage"):
        log.append("card_inserted", job_id="J5")
    with pytest.raises(UsageError):
        log.accept_damaged_tail("  ")
    accepted = log.accept_damaged_tail("power cut at the counter PC; ticket 4711")
    assert accepted is not None and accepted.event == "audit_tail_accepted"
    assert accepted.record["reason"] == "power cut at the counter PC; ticket 4711"
    assert accepted.record["damaged_from_line"] == (5 if damage == "broken-record" else 6)
    log.append("card_inserted", job_id="J5")
    result = verify(tmp_path, key=KEY)
    assert result.ok and result.accepted_damage, result.message
    assert log.accept_damaged_tail("nothing to accept") is None
    # the accepted bytes are pinned by their hash: changing them afterwards is detected
    data = bytearray(path.read_bytes())
    at = data.index(b"card_inserted", len(good) - 200 if damage == "broken-record" else len(good))
    data[at - 5] ^= 0x01
    path.write_bytes(bytes(data))
    assert not verify(tmp_path, key=KEY).ok


def test_foreign_audit_file_is_refused_for_append(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_text("some,csv,file\n")
    with pytest.raises(AuditError, match="not an audit record"):
        AuditLog(tmp_path / "audit.jsonl").append("run_started")


# ----------------------------------------------------------------------------------------------
# syslog


def _next_message(server: socket.socket) -> str:
    """The next syslog message; the empty datagram of the reachability check is not one."""
    while not (data := server.recv(8192)):
        pass
    return data.decode("utf-8")


def test_seal_is_forwarded_to_syslog_rfc5424(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    try:
        target = SyslogTarget(("127.0.0.1", server.getsockname()[1]))
        with AuditLog(tmp_path / "audit.jsonl", syslog=target, run_id="r1") as log:
            log.append("run_started")  # only seals are forwarded by default
            seal = log.seal()
        message = _next_message(server)
    finally:
        server.close()
    assert message.startswith("<86>1 ")  # authpriv.info, RFC 5424 version 1
    header = message.split(" ", 7)
    assert header[1].endswith("Z") and header[3] == "provision" and header[5] == "seal"
    assert f'hash="{seal}"' in message and 'run_id="r1"' in message and "[audit@32473 " in message
    assert not message.endswith("\x00")


def test_all_events_can_be_forwarded(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    try:
        target = SyslogTarget(("127.0.0.1", server.getsockname()[1]), all_events=True)
        with AuditLog(tmp_path / "audit.jsonl", syslog=target) as log:
            log.append("pin_verify", outcome="wrong-pin", error_class="PinError", pin_tries_left=1)
        message = _next_message(server)
    finally:
        server.close()
    assert message.startswith("<84>1 ") and '"pin_tries_left":1' in message  # authpriv.warning


# ----------------------------------------------------------------------------------------------
# show and the CLI handlers


def test_show_filters(tmp_path: Path, batch: tuple[list[bytes], str]) -> None:
    lines, _ = batch
    (tmp_path / "audit.jsonl").write_bytes(b"".join(lines))
    assert {r["job_id"] for r in show(tmp_path, job="HK-0001")} == {"HK-0001"}
    assert [r["event"] for r in show(tmp_path, card="1002")] == [
        "card_inserted",
        "card_identified",
        "wrong_card",
    ]
    assert len(list(show(tmp_path, event="commit"))) == 3
    today = datetime.now(UTC).date()
    assert len(list(show(tmp_path, since=today.isoformat(), until=today.isoformat()))) == len(lines)
    assert not list(show(tmp_path, until=(today - timedelta(days=1)).isoformat()))
    assert not list(show(tmp_path, since=datetime.now(UTC) + timedelta(hours=1)))
    with pytest.raises(UsageError):
        list(show(tmp_path, since="yesterday"))


def test_cmd_audit_verify(tmp_path: Path, batch: tuple[list[bytes], str]) -> None:
    lines, seal = batch
    out: list[str] = []
    (tmp_path / "audit.jsonl").write_bytes(b"".join(lines))
    assert cmd_audit_verify(tmp_path, None, [seal], False, out.append) == 0
    assert "intact" in out[0]
    tampered = list(lines)
    index = next(i for i, raw in enumerate(lines) if b"HK-0001" in raw)
    tampered[index] = tampered[index].replace(b"HK-0001", b"HK-0009")
    (tmp_path / "audit.jsonl").write_bytes(b"".join(tampered))
    out.clear()
    assert cmd_audit_verify(tmp_path, None, [seal], False, out.append) == 4
    assert f"line {index + 1}:" in out[0] and "modified" in out[0]
    out.clear()
    assert cmd_audit_verify(tmp_path, None, [], True, out.append) == 4
    document = json.loads("\n".join(out))
    assert document["problem"] == "modified" and document["first_bad_line"] == index + 1
    out.clear()
    assert cmd_audit_verify(tmp_path / "nowhere", None, [], False, out.append) == 2
    assert "does not exist" in out[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cmd_audit_verify(empty, None, [], False, out.append) == 2
    (empty / "audit.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    out.clear()
    assert cmd_audit_verify(empty, None, [], False, out.append) == 4
    assert "not a provision audit log" in out[0]


def test_cmd_audit_show(tmp_path: Path, batch: tuple[list[bytes], str]) -> None:
    lines, _ = batch
    (tmp_path / "audit.jsonl").write_bytes(b"".join(lines) + b"half a li")
    out: list[str] = []
    err: list[str] = []
    assert cmd_audit_show(tmp_path, job="HK-0000", out=out.append, err=err.append) == 0
    assert all("job_id=HK-0000" in line for line in out) and len(out) == 11
    assert err and "not audit records" in err[0]
    out.clear()
    assert cmd_audit_show(tmp_path, event="commit", as_json=True, out=out.append, err=err.append) == 0
    assert [e["job_id"] for e in json.loads("\n".join(out))["events"]] == ["HK-0000", "HK-0001", "HK-0003"]
    (tmp_path / "audit.jsonl").write_text("not a log\n")
    err.clear()
    assert (
        cmd_audit_show(tmp_path, out=out.append, err=err.append) == 4
        and "not a provision audit log" in err[0]
    )
    assert cmd_audit_show(tmp_path, since="soon", out=out.append, err=err.append) in (2, 4)


# ----------------------------------------------------------------------------------------------
# issue 15: a key means every record is keyed; anchors outside the logs directory; show verifies


def _rechain_plain(lines: list[bytes]) -> bytes:
    """An attacker without the key: every MAC dropped, the chain recomputed with plain SHA-256."""
    out, prev = [], GENESIS
    for raw in lines:
        record = json.loads(raw)
        record.pop("mac", None)
        record.pop("hash", None)
        record["prev"] = prev
        body = canonical(record)
        prev = hashlib.sha256(body).hexdigest()
        out.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
    return b"".join(out)


def test_with_a_key_a_record_without_mac_fails(tmp_path: Path, keyed_batch: tuple[list[bytes], str]) -> None:
    lines, _ = keyed_batch
    stripped = _rechain_plain(lines)
    ok, problem, line = check(tmp_path, stripped, key=KEY)
    assert (ok, problem, line) == (False, "mac-missing", 1)
    assert "no MAC" in verify(tmp_path, key=KEY).message
    # only the last record stripped (prev kept): still refused, at that line
    last = json.loads(lines[-1])
    last.pop("mac")
    last.pop("hash")
    body = canonical(last)
    forged = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
    assert check(tmp_path, b"".join(lines[:-1]) + forged, key=KEY)[:2] == (False, "modified")
    # a plain log given a key: refused too (a key means every record is keyed)
    plain = tmp_path / "plain"
    AuditLog(plain / "audit.jsonl").append("run_started")
    assert verify(plain, key=KEY).problem == "mac-missing"
    assert verify(plain).ok


def _anchored_log(tmp_path: Path, *, key: Secret | None = KEY, jobs: int = 3) -> tuple[Path, Path, AuditLog]:
    logs, anchor = tmp_path / "logs", tmp_path / "witness" / "seals.jsonl"
    anchor.parent.mkdir(parents=True)
    log = AuditLog(logs / "audit.jsonl", key=key, anchor=anchor, seal_each_job=True, run_id="r1", operator="Ann")
    log.check_anchor()
    log.append("run_started")
    for i in range(jobs):
        log.append("committed", job_id=f"J{i}")
        log.append("job_loaded", job_id=f"J{i}")
    log.append("run_finished")
    log.seal()
    return logs, anchor, log


def test_a_seal_after_every_job_and_every_seal_anchored(tmp_path: Path) -> None:
    logs, anchor, _ = _anchored_log(tmp_path)
    records = [json.loads(line) for line in (logs / "audit.jsonl").read_bytes().splitlines()]
    events = [r["event"] for r in records]
    assert events == ["run_started"] + ["committed", "job_loaded", "seal"] * 3 + ["run_finished", "seal"]
    seals = [r for r in records if r["event"] == "seal"]
    assert all(s["anchored"] is True and s["mac"] == "hmac-sha256" for s in seals)
    assert [s.get("job_id") for s in seals] == ["J0", "J1", "J2", None]
    entries = [json.loads(line) for line in anchor.read_bytes().splitlines()]
    assert [(e["seq"], e["hash"]) for e in entries] == [(s["seq"], s["hash"]) for s in seals]
    assert all(set(e) == {"seq", "hash", "time", "run_id"} and e["run_id"] == "r1" for e in entries)
    result = verify(logs, key=KEY, anchor=anchor)
    assert result.ok and result.seals_checked == 4


def test_anchor_catches_a_cut_a_rollback_a_removed_and_a_reordered_seal(tmp_path: Path) -> None:
    logs, anchor, _ = _anchored_log(tmp_path)
    path = logs / "audit.jsonl"
    good, good_anchor = path.read_bytes(), anchor.read_bytes()
    lines = good.splitlines(keepends=True)
    # cut after the first job's seal (a killed run's tail, or a deliberate cut)
    path.write_bytes(b"".join(lines[:4]))
    result = verify(logs, key=KEY, anchor=anchor)
    assert (result.ok, result.problem) == (False, "truncated") and "log ends at seq 4" in result.message
    assert verify(logs, key=KEY).ok  # NOT caught without the anchor (no journal here)
    # rolled back and continued: the same seqs now hold other records
    path.write_bytes(b"".join(lines[:4]))
    later = AuditLog(path, key=KEY, seal_each_job=True)
    for i in range(4):
        later.append("job_failed", job_id=f"X{i}")
    result = verify(logs, key=KEY, anchor=anchor)
    assert (result.ok, result.problem) == (False, "anchor-mismatch") and "rolled back" in result.message
    # a seal removed from the anchor
    path.write_bytes(good)
    entries = good_anchor.splitlines(keepends=True)
    anchor.write_bytes(b"".join(entries[:1] + entries[2:]))
    result = verify(logs, key=KEY, anchor=anchor)
    assert (result.ok, result.problem) == (False, "anchor-mismatch")
    assert "removed from the anchor" in result.message
    # reordered
    anchor.write_bytes(b"".join([entries[1], entries[0], *entries[2:]]))
    result = verify(logs, key=KEY, anchor=anchor)
    assert (result.ok, result.problem) == (False, "reordered") and "out of order" in result.message
    # an anchor line that is not a seal
    anchor.write_bytes(good_anchor + b"garbage\n")
    with pytest.raises(AuditError, match="line 5 is not a seal"):
        verify(logs, key=KEY, anchor=anchor)
    anchor.write_bytes(good_anchor)
    assert verify(logs, key=KEY, anchor=anchor).ok


def test_held_seals_must_be_in_the_chain(tmp_path: Path) -> None:
    logs, _, log = _anchored_log(tmp_path, key=None)
    held = log.seal()
    assert verify(logs, held=[held.upper()]).ok
    path = logs / "audit.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    result = verify(logs, held=[held])
    assert not result.ok and "you hold (--seal)" in result.message
    with pytest.raises(UsageError, match="not a seal"):
        verify(logs, held=["abc"])


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_missing_or_emptied_log_with_known_seals_fails(tmp_path: Path, damage: str) -> None:
    logs, anchor, log = _anchored_log(tmp_path)
    seal = log.seal()
    path = logs / "audit.jsonl"
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")
    for kwargs in ({"seals": [seal]}, {"held": [seal]}, {"anchor": anchor}):
        result = verify(logs, key=KEY, **kwargs)  # type: ignore[arg-type]
        assert not result.ok and result.problem in ("deleted", "truncated"), (kwargs, result)
    if damage == "deleted":
        with pytest.raises(UsageError, match="no audit log"):
            verify(logs, key=KEY)  # NOT caught without a seal or an anchor: nothing says it existed
    else:
        assert verify(logs, key=KEY).ok


def test_a_new_chain_over_a_deleted_log_needs_an_operator(tmp_path: Path) -> None:
    logs, anchor, log = _anchored_log(tmp_path)
    journal_seal = log.seal()
    (logs / "audit.jsonl").unlink()
    fresh = AuditLog(logs / "audit.jsonl", key=KEY, anchor=anchor, seal_each_job=True)
    status = fresh.check_tail([journal_seal])
    assert not status.ok and status.problem == "deleted" and "missing or empty" in status.message
    assert "the journal and the anchor" in status.message
    written = fresh.accept_damaged_tail("disk replaced, ticket 9", [journal_seal])
    assert written is not None and written.seq == 1
    assert journal_seal in written.record["lost_seals"] and written.record["problem"] == "deleted"
    assert fresh.check_tail([journal_seal]).ok
    fresh.append("job_loaded", job_id="J9")
    result = verify(logs, key=KEY, seals=[journal_seal], anchor=anchor)
    assert result.ok, result.message
    assert any("accepted as lost" in note and "disk replaced" in note for note in result.accepted_damage)


def test_operator_and_os_user_are_recorded_and_names_are_checked(tmp_path: Path) -> None:
    from provision.audit.records import operator_name, os_user

    record = AuditLog(tmp_path / "audit.jsonl", operator="  CHAN Siu Ling ").append("run_started").record
    assert record["operator"] == "CHAN Siu Ling" and record["os_user"] == os_user() and record["host"]
    assert AuditLog(tmp_path / "audit.jsonl").append("x").record["operator"] == os_user()
    for bad in ("Ann\nforged line", "Ann\x1b[31m", "Ann\u202eeoD", "", "   "):
        with pytest.raises(UsageError):
            operator_name(bad)
    with pytest.raises(ValueError, match="set by the audit log"):
        AuditLog(tmp_path / "audit.jsonl").append("x", os_user="mallory")


def test_show_verifies_every_record_it_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, operator="Ann")
    for i in range(5):
        log.append("committed", job_id=f"J{i}", fingerprint_sha256="ab" * 32)
    assert all(r["verified"] for r in show(tmp_path))
    lines = path.read_bytes().splitlines(keepends=True)
    # record 3 changed and its hash recomputed: its own hash is right, the next record no longer follows
    record = json.loads(lines[2])
    record["job_id"] = "FORGED"
    record.pop("hash")
    body = canonical(record)
    lines[2] = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
    path.write_bytes(b"".join(lines))
    shown = list(show(tmp_path))
    assert [r["seq"] for r in shown if not r["verified"]] == [3, 4]
    assert "recomputed" in shown[2]["verify_problem"]
    out: list[str] = []
    assert cmd_audit_show(tmp_path, job="FORGED", out=out.append) == 4
    assert out[0].startswith("BAD") and "NOT VERIFIED" in out[0]
    out = []
    assert cmd_audit_show(tmp_path, job="J0", out=out.append) == 0
    assert out[0].startswith("ok") and "operator='Ann'" in out[0] and "fingerprint=" + "ab" * 32 in out[0]
    out = []
    assert cmd_audit_show(tmp_path, job="J0", as_json=True, out=out.append) == 0
    assert json.loads(out[0])["events"][0]["verified"] is True
    # a deleted record: the records on both sides of the gap are flagged
    path.write_bytes(b"".join(lines[:1] + lines[3:]))
    assert [r["seq"] for r in show(tmp_path) if not r["verified"]] == [1, 4]
    # keyed records shown without the key cannot be verified; with it they are
    keyed = tmp_path / "keyed"
    AuditLog(keyed / "audit.jsonl", key=KEY).append("run_started")
    assert [r["verified"] for r in show(keyed)] == [False]
    assert [r["verified"] for r in show(keyed, key=KEY)] == [True]
    errors: list[str] = []
    assert cmd_audit_show(tmp_path, event="no_such", out=out.append, err=errors.append) == 2
    assert "known events" in errors[0] and "job_loaded" in errors[0]


def test_an_anchor_missing_its_first_seals_or_another_logs_anchor_fails(tmp_path: Path) -> None:
    logs, anchor, _ = _anchored_log(tmp_path)
    entries = anchor.read_bytes().splitlines(keepends=True)
    anchor.write_bytes(b"".join(entries[2:]))  # the head cut
    result = verify(logs, key=KEY, anchor=anchor)
    assert (result.ok, result.problem) == (False, "anchor-mismatch") and "seal seq 4 " in result.message
    anchor.write_bytes(b"")
    assert verify(logs, key=KEY, anchor=anchor).problem == "anchor-mismatch"


def test_a_whole_logs_directory_gone_is_caught_by_the_anchor(tmp_path: Path) -> None:
    logs, anchor, _ = _anchored_log(tmp_path)
    for path in logs.iterdir():
        path.unlink()
    logs.rmdir()
    result = verify(logs, key=KEY, anchor=anchor)
    assert (result.ok, result.problem) == (False, "deleted") and "the anchor" in result.message
    with pytest.raises(UsageError):
        verify(logs, key=KEY)


def test_an_accepted_damaged_tail_excuses_the_anchored_seals_it_lost(tmp_path: Path) -> None:
    logs, anchor, _ = _anchored_log(tmp_path)
    path = logs / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b'"seal"', b'"sael"'))  # the last seal damaged
    assert verify(logs, key=KEY, anchor=anchor).problem == "modified"
    log = AuditLog(path, key=KEY, anchor=anchor, seal_each_job=True)
    assert log.check_tail().problem == "modified"
    written = log.accept_damaged_tail("last line corrupted by a disk fault, ticket 12")
    assert written is not None and written.record["lost_seals"] == [json.loads(lines[-1])["hash"]]
    log.append("job_loaded", job_id="J7")
    result = verify(logs, key=KEY, anchor=anchor)
    assert result.ok, result.message
    assert any("accepted as lost" in note for note in result.accepted_damage)


# ----------------------------------------------------------------------------------------------
# RFC 3161 time-stamps of seals


def test_every_seal_is_time_stamped_and_verify_checks_the_tokens(tmp_path: Path) -> None:
    import base64

    from tests.helpers.tsa import Tsa, serving_tsa

    with serving_tsa() as tsa:
        log = AuditLog(tmp_path / "audit.jsonl", key=KEY, seal_each_job=True, timestamp=tsa.url)
        log.append("run_started")
        log.append("job_loaded", job_id="J1")
        final = log.seal()
    stamps = tmp_path / "audit-timestamps.jsonl"
    entries = [json.loads(line) for line in stamps.read_bytes().splitlines()]
    assert len(entries) == 2 and entries[-1]["hash"] == final and entries[-1]["tsa"] == "CN=Test TSA"
    result = verify(tmp_path, key=KEY, timestamps=True, tsa_certs=[tsa.cert_der])
    assert result.ok and "2 seal(s) time-stamped by a TSA you trust" in result.message
    assert "not checked" in verify(tmp_path, key=KEY, timestamps=True).message
    # another TSA's certificate: refused
    other = verify(tmp_path, key=KEY, timestamps=True, tsa_certs=[Tsa("Other TSA").cert_der])
    assert (other.ok, other.problem) == (False, "timestamp-invalid") and "not by a trusted TSA" in other.message
    # a token changed
    good = stamps.read_bytes()
    token = bytearray(base64.b64decode(entries[0]["token"]))
    token[-1] ^= 1
    entries[0]["token"] = base64.b64encode(bytes(token)).decode()
    stamps.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
    changed = verify(tmp_path, key=KEY, timestamps=True)
    assert (changed.ok, changed.problem, changed.first_bad_line) == (False, "timestamp-invalid", 1)
    # the log cut before a time-stamped seal: the token outlives the cut
    stamps.write_bytes(good)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    cut = verify(tmp_path, key=KEY, timestamps=True)
    assert not cut.ok and "time-stamped by a TSA" in cut.message


def test_a_tsa_that_fails_does_not_stop_the_log_and_is_recorded(tmp_path: Path) -> None:
    from tests.helpers.tsa import serving_tsa

    with serving_tsa() as tsa:
        tsa.refuse = True
        log = AuditLog(tmp_path / "audit.jsonl", timestamp=tsa.url)
        log.seal()
    assert log.timestamp_failures == 1
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [r["event"] for r in records] == ["seal", "timestamp_failed"]
    assert "refused" in records[1]["error"] and records[1]["seal_seq"] == 1
    assert verify(tmp_path).ok


def _stamped_log(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """A keyed log of two jobs, each seal time-stamped: (tokens file, its bytes after the first
    seal, its bytes at the end)."""
    from tests.helpers.tsa import serving_tsa

    with serving_tsa() as tsa:
        log = AuditLog(tmp_path / "audit.jsonl", key=KEY, seal_each_job=True, timestamp=tsa.url, run_id="R1")
        log.append("run_started")
        log.append("job_loaded", job_id="J1")
        stamps = tmp_path / "audit-timestamps.jsonl"
        early = stamps.read_bytes()
        log.append("job_loaded", job_id="J2")
        log.seal()
    return stamps, early, stamps.read_bytes()


def test_every_time_stamped_seal_says_so_under_its_hash(tmp_path: Path) -> None:
    stamps, _, full = _stamped_log(tmp_path)
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    seals = [r for r in records if r["event"] == "seal"]
    assert len(seals) == 3 and all(r["timestamp_requested"] is True for r in seals)
    assert [json.loads(line)["hash"] for line in full.splitlines()] == [r["hash"] for r in seals]
    result = verify(tmp_path, key=KEY)  # no false alarm: every token is there
    assert result.ok, result.message
    # without a TSA, seals claim nothing and no tokens file is needed
    plain = tmp_path / "plain"
    log = AuditLog(plain / "audit.jsonl", key=KEY, seal_each_job=True)
    log.append("job_loaded", job_id="J1")
    log.seal()
    assert not any("timestamp_requested" in json.loads(line) for line in (plain / "audit.jsonl").read_bytes().splitlines())
    assert verify(plain, key=KEY).ok and not (plain / "audit-timestamps.jsonl").exists()


@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated", "last token cut", "rolled back", "first token cut"])
def test_time_stamps_deleted_emptied_truncated_or_rolled_back_are_caught(tmp_path: Path, damage: str) -> None:
    stamps, early, full = _stamped_log(tmp_path)
    lines = full.splitlines(keepends=True)
    if damage == "deleted":
        stamps.unlink()
    else:
        stamps.write_bytes({"emptied": b"", "truncated": full[: len(full) - len(lines[-1]) // 2],
                            "last token cut": b"".join(lines[:-1]), "rolled back": early,
                            "first token cut": b"".join(lines[1:])}[damage])  # fmt: skip
    for checked in (verify(tmp_path, key=KEY), verify(tmp_path, key=KEY, timestamps=True)):
        if damage == "truncated" and checked.problem == "timestamp-invalid":
            assert "line 3" in checked.message  # --timestamps names the cut line itself
            continue
        assert (checked.ok, checked.problem) == (False, "timestamp-missing"), checked.message
        assert "no token in" in checked.message and "deleted, emptied, truncated or rolled back" in checked.message
    # the log itself is intact, and says what is missing
    assert verify(tmp_path, key=KEY).file == str(stamps)


def test_a_killed_runs_missing_tokens_are_excused_only_at_its_end(tmp_path: Path) -> None:
    """settle_stamps (a later run, for a run killed outright) records why a token never came, but
    only for the run's trailing seals: a token missing before one that was kept is never excused."""
    stamps, _, full = _stamped_log(tmp_path)
    lines = full.splitlines(keepends=True)
    stamps.write_bytes(lines[0] + lines[2])  # the middle seal's token removed
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY, run_id="R2")
    assert log.settle_stamps([]) == 0
    run_id = json.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[0])["run_id"]
    assert log.settle_stamps([str(run_id)]) == 0
    assert verify(tmp_path, key=KEY).problem == "timestamp-missing"
    stamps.write_bytes(b"".join(lines[:2]))  # the last seal's token never came: the process was killed
    assert log.settle_stamps([str(run_id)]) == 1
    result = verify(tmp_path, key=KEY)
    assert result.ok, result.message
    assert log.settle_stamps([str(run_id)]) == 0  # once


def test_a_planted_link_for_the_time_stamps_is_neither_read_nor_written(tmp_path: Path) -> None:
    from provision.errors import LogsError
    from tests.helpers.tsa import serving_tsa

    stamps, _, full = _stamped_log(tmp_path)
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_bytes(full)
    stamps.unlink()
    stamps.symlink_to(copy)
    with pytest.raises(LogsError, match="symbolic link"):
        verify(tmp_path, key=KEY)
    with serving_tsa() as tsa:  # a run that finds the link keeps no token through it, and says so
        log = AuditLog(tmp_path / "audit.jsonl", key=KEY, timestamp=tsa.url)
        log.seal()
    assert copy.read_bytes() == full
    last = json.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[-1])
    assert last["event"] == "timestamp_failed" and "symbolic link" in last["error"]


def test_a_token_that_cannot_be_kept_is_recorded_and_no_false_alarm(tmp_path: Path) -> None:
    from tests.helpers.tsa import serving_tsa

    (tmp_path / "audit-timestamps.jsonl").mkdir()  # cannot be appended to, even by root
    with serving_tsa() as tsa:
        log = AuditLog(tmp_path / "audit.jsonl", timestamp=tsa.url, seal_each_job=True)
        log.append("job_loaded", job_id="J1")
    assert log.timestamp_failures == 1
    last = json.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[-1])
    assert last["event"] == "timestamp_failed" and "is a directory where provision keeps a regular file" in last["error"]
    with pytest.raises(LogsError, match="audit-timestamps.jsonl is a directory"):  # where the tokens should be: exit 3
        verify(tmp_path)


def test_the_wrong_key_cannot_accept_a_keyed_log_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    log.append("run_started")
    log.seal()
    before = path.read_bytes()
    wrong = AuditLog(path, key=Secret("not the key of this log"))
    assert not wrong.check_tail().ok
    with pytest.raises(UsageError, match="probably not the key"):
        wrong.accept_damaged_tail("trying to continue")
    assert path.read_bytes() == before


def test_a_seal_listener_that_fails_does_not_leave_the_seal_without_its_time_stamp(tmp_path: Path) -> None:
    """The runner keeps every seal in its journal (a listener). A journal write that fails there
    (disk full, locked) is the run's error, but the seal is already in the log saying a token was
    asked for: the token must still be asked for, or verify reports it lost, for ever (the run was
    not killed, so no later run excuses it)."""
    from provision.errors import JournalError
    from tests.helpers.tsa import serving_tsa

    def failing(_record: object) -> None:
        raise JournalError("the journal cannot be written")

    with serving_tsa() as tsa:
        log = AuditLog(tmp_path / "audit.jsonl", key=KEY, seal_each_job=True, timestamp=tsa.url, run_id="R1")
        log.add_seal_listener(failing)
        log.append("run_started")
        with pytest.raises(JournalError):
            log.append("job_loaded", job_id="J1")
    result = verify(tmp_path, key=KEY, timestamps=True, tsa_certs=[tsa.cert_der])
    assert result.ok, result.message


def test_an_endless_line_is_read_in_bounded_pieces_and_fails_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged or planted audit file that is one huge line (no newline) is never held whole:
    reading stops at MAX_RECORD_BYTES per line, and verify reports the damage (exit 4)."""
    import io

    from provision.audit import records

    assert list(records.bounded_lines(io.BytesIO(b"a\nbb\n" + b"c" * 50 + b"\nd"))) == [b"a\n", b"bb\n", b"c" * 50 + b"\n", b"d"]
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 16)
    pieces = list(records.bounded_lines(io.BytesIO(b"x" * 100 + b"\nshort\n" + b"y" * 40)))
    assert pieces == [b"x" * 16, b"short\n", b"y" * 16]  # the rest of each long line skipped
    monkeypatch.undo()
    lines, _seal = write_batch(tmp_path / "audit.jsonl")
    with open(tmp_path / "audit.jsonl", "ab") as handle:
        handle.write(b"z" * (3 * records.MAX_RECORD_BYTES))  # 3 MiB, never a newline
    result = verify(tmp_path)
    assert not result.ok and result.first_bad_line == len(lines) + 1


def test_the_tail_check_never_reads_an_endless_last_line_whole(tmp_path: Path) -> None:
    """Before every append the log's last line is read; a planted last line of 256 MiB (no newline)
    is judged damaged from its last MiB, never held whole."""
    import tracemalloc

    path = tmp_path / "audit.jsonl"
    write_batch(path)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size + 256 * 1024 * 1024)  # sparse zeros: one endless line
    before = path.stat().st_size
    tracemalloc.start()
    try:
        status = AuditLog(path).check_tail()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not status.ok and "incomplete" in status.message
    assert peak < 16 * 1024 * 1024, f"{peak} bytes held to read the last line"
    with pytest.raises(AuditError):
        AuditLog(path).append("job_loaded", job_id="J1")
    assert path.stat().st_size == before


def test_settling_a_killed_run_refuses_a_planted_rolled_file(tmp_path: Path) -> None:
    """The next run after a kill reads the rolled audit files for seals waiting on a time-stamp: a
    link planted as a rolled file is refused (exit 3), never followed, and nothing is appended."""
    from provision.errors import LogsError

    write_batch(tmp_path / "audit.jsonl")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not an audit log\n")
    (tmp_path / "audit-20240101T000000000000Z.jsonl").symlink_to(victim)
    before = (tmp_path / "audit.jsonl").read_bytes()
    log = AuditLog(tmp_path / "audit.jsonl", run_id="20251125T030000Z-c3d4")
    with pytest.raises(LogsError) as raised:
        log.settle_stamps(["20251125T020000Z-a1b2"])
    assert raised.value.exit_code == 3 and "audit-20240101T000000000000Z.jsonl" in raised.value.message
    assert (tmp_path / "audit.jsonl").read_bytes() == before
    assert victim.read_bytes() == b"not an audit log\n"


def test_a_huge_tokens_file_or_anchor_is_read_in_bounded_lines(tmp_path: Path) -> None:
    """audit-timestamps.jsonl and an anchor file were each read whole: a damaged or planted one of
    a few GB (here sparse, one endless line) took that much memory or ended in MemoryError. Now both
    are read line by line with the log's bound; under a 1 GiB address-space limit a 1.1 GiB file gives
    the verdict (the line is not an entry), not a crash."""
    import subprocess
    import sys

    write_batch(tmp_path / "audit.jsonl")
    for name in ("audit-timestamps.jsonl", "anchor.jsonl"):
        with open(tmp_path / name, "wb") as handle:
            handle.truncate((1 << 30) + (1 << 27))
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from provision.audit.records import kept_stamps_in, read_anchor\n"
        "from provision.audit.verify import verify\n"
        "from provision.errors import AuditError\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "d = Path(sys.argv[1])\n"
        "print(sorted(kept_stamps_in(d / 'audit-timestamps.jsonl')))\n"
        "r = verify(d, timestamps=True)\n"
        "print(r.ok, r.first_bad_line, r.message)\n"
        "try:\n"
        "    read_anchor(d / 'anchor.jsonl')\n"
        "except AuditError as exc:\n"
        "    print(exc.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    kept, verdict, anchor = done.stdout.splitlines()
    assert kept == "[]"
    assert verdict.startswith("False 1 ") and "not a time-stamp entry" in verdict
    assert anchor.endswith("line 1 is not a seal (it was changed)")


def test_the_queue_mirror_catches_up_from_the_files_in_bounded_lines(tmp_path: Path) -> None:
    """A station's first record in the shared database copies what its files hold first: a rolled
    file with a planted 256 MiB line is read in bounded lines (that line is skipped), never whole."""
    import tracemalloc

    from provision.queue.audit_mirror import MirroredAudit

    class Queue:
        station = "s1"
        rows: list[tuple[int, str, str, str]] = []

        def audit_max_seq(self, _station: str) -> int:
            return 0

        def add_audit_records(self, _station: str, rows: list[tuple[int, str, str, str]]) -> None:
            self.rows += rows

    path = tmp_path / "audit.jsonl"
    lines, _seal = write_batch(path)
    with open(tmp_path / "audit-20240101T000000000000Z.jsonl", "wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse zeros: one endless line in a rolled file
    queue = Queue()
    tracemalloc.start()
    try:
        MirroredAudit(AuditLog(path), queue).append("job_loaded", job_id="J1")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [row[0] for row in queue.rows] == list(range(1, len(lines) + 2))
    assert peak < 16 * 1024 * 1024, f"{peak} bytes held to catch up"


@pytest.mark.parametrize("where, name", [("open_read", "audit.jsonl"), ("open_nofollow", "audit.jsonl"),
                                         ("open_nofollow", ".audit.jsonl.lock")])  # fmt: skip
def test_an_audit_log_this_user_cannot_open_is_a_sentence_not_a_bug(where: str, name: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """audit.jsonl without read (mode 000) or write permission (444) for the run's user made
    'provision run' end in exit 70 (PermissionError); it is the environment's: exit 3, one sentence.
    (Root ignores modes, so the refusal the system gives such a user is given here.)"""
    from provision.audit import chain
    from provision.errors import EXIT_ENVIRONMENT, RecordsError

    path = tmp_path / "audit.jsonl"
    write_batch(path)

    real = getattr(chain, where)

    def refuse(target: Path, *args: object, **kwargs: object) -> object:
        if Path(target) == tmp_path / name:  # that file only; the other stays the user's
            raise PermissionError(13, "Permission denied")
        return real(target, *args, **kwargs)

    monkeypatch.setattr(chain, where, refuse)
    with pytest.raises(RecordsError) as caught:
        AuditLog(path).append("job_loaded", job_id="J1")
    assert caught.value.exit_code == EXIT_ENVIRONMENT and "cannot be opened (Permission denied)" in caught.value.message
