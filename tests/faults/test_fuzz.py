"""Family 3: fuzzing through the CLI entry point (``provision.cli.main`` in-process).

* generated and mutated job files (structure and text) → ``validate``: exit 0 or 2, never 70, never
  a traceback, every error a located sentence;
* mutated PKCS#12 files (bit flips, truncations, garbage, re-encodings) → ``inspect``: exit 0 or 2
  with one of the nine statuses;
* a fuzzed card (random status words, cut and garbled TLVs, 61xx with nothing behind) → ``run``:
  only typed card errors; the job ends loaded (and then really is on the card), failed, or in doubt;
  never an internal error, a crashed worker or a hang.

Full mode: 10,000 job files, 1,000 PKCS#12 files, 400 fuzzed loads. Reduced: a few hundred,
derandomized so that two runs do the same thing.
"""

from __future__ import annotations

import base64
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provision import fixtures
from provision.sim.card import SimCard, SimOptions
from tests.helpers.faults_common import (
    FULL,
    FaultJob,
    Material,
    Verdict,
    new_card_state,
    record,
    run_cli,
    thread_errors,
    view_card,
)
from tests.helpers.jobfile_strategies import mutate

FAMILY_JOBS = "fuzz job files (validate)"
FAMILY_P12 = "fuzz PKCS#12 files (inspect)"
FAMILY_CARD = "fuzz card responses (run)"
STATUSES = {"ok", "wrong-password", "corrupt", "key-cert-mismatch", "no-key", "no-cert", "unsupported-key", "expired",
            "not-yet-valid"}  # fmt: skip

JOB_EXAMPLES = 10_000 if FULL else 500
P12_EXAMPLES = 1_000 if FULL else 250
CARD_CASES = 400 if FULL else 60


def _settings(examples: int) -> Any:
    return settings(max_examples=examples, deadline=None, derandomize=not FULL, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])  # fmt: skip


# ----------------------------------------------------------------------------------------------
# job files

BASE: dict[str, Any] = {
    "version": 1,
    "batch": "b1",
    "timezone": "Asia/Hong_Kong",
    "x-common": {"slot": "9c"},
    "audit": {"key": {"file": "p12.pass"}},
    "defaults": {"slot": "9c", "slot_name": "e-Cert{cert.not_before:%Y%m%d}", "pin": {"file": "p12.pass"},
                 "min_pin_retries": 2, "replace": "archive"},
    "cards": [
        {"id": "A", "holder": "CHAN Tai Man", "card": {"serial": 1}, "pkcs12": {"path": "a.p12", "password": {"file": "p12.pass"}},
         "expect": {"serial": "1001", "not_after_after": "2027-01-01"}, "export": {"pem": "out/{job.id}.pem"},
         "management_key": {"env": "FAULTS_MGMT"}, "management_key_type": "aes192"},
        {"id": "B", "holder": "LEE", "card": {"guid": "00112233445566778899aabbccddeeff"},
         "pkcs12": {"path": "a.p12", "password": {"command": ["cat", "p12.pass"]}}, "slot": "retired3"},
        {"id": "C", "holder": "No", "card": {"any": True}, "pkcs12": {"path": "a.p12", "password": {"value": "x"}},
         "pin_policy": "always", "touch_policy": "never"},
    ],
}
KEYS = ["version", "batch", "timezone", "defaults", "cards", "id", "holder", "card", "serial", "guid", "any", "pkcs12",
        "path", "password", "slot", "slot_name", "pin", "management_key", "management_key_type", "replace",
        "min_pin_retries", "pin_policy", "touch_policy", "expect", "export", "pem", "nssdb", "env", "file", "prompt",
        "command", "value", "x-anchor", "audit", "key", "renew", "subject_cn", "not_after_after"]  # fmt: skip
ODD_TEXT = ["", " ", "9f", "82", "0x9c", "{job.id}", "{cert.not_before.year}", "{holder!r}", "{{", "}", "../..",
            "/etc/passwd", "\x00", "e-Cert{cert.not_before:%Y%m%d}", "no", "yes", "1:20", "012", "0x00BC614E",
            "2027-02-30", "Asia/Nowhere", "a" * 300, "\u202e", "\ud7ff", "~", "null", "*a", "&a", "<<"]  # fmt: skip
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.sampled_from(ODD_TEXT)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


@st.composite
def job_texts(draw: st.DrawFn) -> str:
    doc = mutate(draw, BASE, KEYS, values, st.integers(0, 4))
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    mode = draw(st.sampled_from(["as-is", "as-is", "bytes", "lines", "yaml-tokens", "anchors"]))
    if mode == "bytes":
        data = bytearray(text.encode())
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        text = data.decode("utf-8", errors="replace")
    elif mode == "lines":
        lines = text.splitlines()
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(["drop", "dup", "indent", "dedent"]))
            if op == "drop":
                lines.pop(i)
            elif op == "dup":
                lines.insert(i, lines[i])
            elif op == "indent":
                lines[i] = "  " + lines[i]
            else:
                lines[i] = lines[i].lstrip()
            if not lines:
                break
        text = "\n".join(lines) + "\n"
    elif mode == "yaml-tokens":
        token = draw(st.sampled_from(["&a ", "*a", "!!python/object:os.system ", "<<: *a\n", "---\n", "? ", "|\n",
                                      "%YAML 1.1\n", "{", "[", "'", '"', "\t", "\\", "!!binary "]))  # fmt: skip
        at = draw(st.integers(0, len(text)))
        text = text[:at] + token + text[at:]
    elif mode == "anchors":
        text = "x-a: &a [" + ", ".join(["*b"] * 3) + "]\n" if draw(st.booleans()) else text
        text = "x-b: &b [1, 2, 3]\n" + text
    return text


@pytest.fixture
def job_dir(tmp_path: Path, canaries: Any, material: Material, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "jobs"
    d.mkdir()
    data = fixtures.holder_p12(material.ca, "CHAN Tai Man", canaries.pkcs12_password)
    (d / "a.p12").write_bytes(data)
    canaries.write_secret_file(d / "p12.pass", canaries.pkcs12_password)
    monkeypatch.setenv("FAULTS_MGMT", canaries.management_key)
    return d


def test_fuzzed_job_files_give_exit_0_or_2_never_a_traceback(job_dir: Path, canaries: Any) -> None:
    path = job_dir / "job.yaml"
    failures: list[str] = []
    counter = [0]

    @_settings(JOB_EXAMPLES)
    @given(text=job_texts())
    def check(text: str) -> None:
        counter[0] += 1
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        done = run_cli("validate", str(path), "--json")
        verdict = Verdict()
        verdict.check(done.code in (0, 2), f"exit {done.code}: {done.stderr[-300:]}")
        verdict.check("Traceback" not in done.stderr and "provision: internal error" not in done.stderr, done.stderr[-300:])
        try:
            document = json.loads(done.stdout)
        except ValueError:
            verdict.check(False, f"--json printed no JSON: {done.stdout[:200]!r}")
        else:
            errors = document["files"][0]["errors"]
            verdict.check((done.code == 0) == (not errors), "exit code and errors disagree")
            verdict.check(all(isinstance(e["message"], str) and e["message"] for e in errors), "an empty error")
        leaked = bool(canaries.leaks_in((done.stdout + done.stderr).encode()))
        verdict.check(not leaked, "a secret in the output")
        record(FAMILY_JOBS, f"job file #{counter[0]}", consistent=verdict.consistent, leaked=leaked,
               why="; ".join(verdict.problems))  # fmt: skip
        if not verdict.consistent and len(failures) < 10:
            failures.append(f"{verdict.problems}\n{text[:600]}")

    check()
    assert counter[0] >= JOB_EXAMPLES * 0.9
    assert not failures, "\n\n".join(failures)


# ----------------------------------------------------------------------------------------------
# PKCS#12


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _reencode_outer(data: bytes, extra: int) -> bytes:
    """The outer SEQUENCE's length in a longer (non-minimal, BER) form."""
    if len(data) < 2 or data[0] != 0x30:
        return data
    first = data[1]
    if first < 0x80:
        head, body = 2, data[2:]
    else:
        n = first & 0x7F
        head, body = 2 + n, data[2 + n:]
    length = int.from_bytes(data[2:head], "big") if head > 2 else first
    encoded = length.to_bytes(max(1, (length.bit_length() + 7) // 8), "big")
    encoded = b"\x00" * extra + encoded
    return b"\x30" + bytes([0x80 | len(encoded)]) + encoded + body


@st.composite
def p12_mutations(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "garbage", "zero-run", "reencode", "base64", "pem",
                                 "splice", "length-byte"]))  # fmt: skip
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "garbage":
        data += bytes(draw(st.binary(min_size=1, max_size=64)))
    elif kind == "zero-run":
        i = draw(st.integers(0, len(data) - 1))
        n = draw(st.integers(1, 32))
        data[i:i + n] = bytes(len(data[i:i + n]))
    elif kind == "reencode":
        data = bytearray(_reencode_outer(bytes(data), draw(st.integers(0, 2))))
    elif kind == "base64":
        data = bytearray(base64.b64encode(bytes(data)))
    elif kind == "pem":
        data = bytearray(b"-----BEGIN PKCS12-----\n" + base64.encodebytes(bytes(data)) + b"-----END PKCS12-----\n")
    elif kind == "splice":
        other = draw(st.sampled_from(bases))
        cut = draw(st.integers(0, min(len(data), len(other)) - 1))
        data = data[:cut] + bytearray(other[cut:])
    else:  # a length byte of some inner TLV
        positions = [i for i in range(1, len(data) - 1) if data[i - 1] in (0x30, 0x04, 0x02, 0x06, 0xA0)]
        i = draw(st.sampled_from(positions))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


def test_mutated_pkcs12_files_give_a_status_never_a_traceback(tmp_path: Path, canaries: Any, material: Material,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    password = canaries.pkcs12_password
    key, cert = fixtures.make_leaf(material.ca, "CHAN Tai Man", key_type="p256", seed=b"fuzz")
    bases = [
        fixtures.pkcs12_bytes(key, cert, password=password, chain=[material.ca.certificate], iterations=64),
        fixtures.pkcs12_bytes(key, cert, password=password, encryption="legacy", iterations=64),
        fixtures.pkcs12_bytes(key, cert, password=password, leaf_with_key=False, chain=[material.ca.certificate],
                              iterations=64),  # fmt: skip
        fixtures.pkcs12_bytes(key, None, password=password, iterations=64),
        fixtures.pkcs12_bytes(None, cert, password=password, iterations=64),
        fixtures.pkcs12_bytes(key, cert, password="", encryption="none"),
    ]
    monkeypatch.setenv("FAULTS_P12_PW", password)
    path = tmp_path / "fuzzed.p12"
    failures: list[str] = []
    counter = [0]

    @_settings(P12_EXAMPLES)
    @given(data=p12_mutations(bases))
    def check(data: bytes) -> None:
        counter[0] += 1
        path.write_bytes(data)
        done = run_cli("inspect", str(path), "--password-env", "FAULTS_P12_PW", "--json")
        verdict = Verdict()
        verdict.check(done.code in (0, 2), f"exit {done.code}: {done.stderr[-300:]}")
        verdict.check("Traceback" not in done.stderr and "provision: internal error" not in done.stderr, done.stderr[-300:])
        try:
            status = json.loads(done.stdout)["status"]
        except (ValueError, KeyError):
            verdict.check(False, f"no JSON status: {done.stdout[:200]!r} {done.stderr[-200:]!r}")
        else:
            verdict.check(status in STATUSES, f"status {status!r}")
            verdict.check((status == "ok") == (done.code == 0), f"status {status} with exit {done.code}")
        leaked = bool(canaries.leaks_in((done.stdout + done.stderr).encode()))
        verdict.check(not leaked, "the password in the output")
        record(FAMILY_P12, f"p12 #{counter[0]}", consistent=verdict.consistent, leaked=leaked,
               why="; ".join(verdict.problems))  # fmt: skip
        if not verdict.consistent and len(failures) < 10:
            failures.append(f"{verdict.problems} {data[:40].hex()}")

    check()
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------------------------
# the card

ODD_SW = [0x6A80, 0x6982, 0x6983, 0x63C0, 0x63C1, 0x63C9, 0x6300, 0x6700, 0x6D00, 0x6E00, 0x6F00, 0x9000, 0x6A82,
          0x6A84, 0x6A86, 0x6A88, 0x6581, 0x6100, 0x61FF, 0x6C10, 0x6283, 0x9100, 0x0000, 0xFFFF]  # fmt: skip


class FuzzedCard(SimCard):
    """A SimCard whose answers are mutated at random (its stored state stays truthful)."""

    def __init__(self, options: SimOptions, state: Path, seed: int, rate: float) -> None:
        super().__init__(options, state)
        self.rng = random.Random(seed)
        self.rate = rate
        self.mutations: list[str] = []

    def process(self, apdu: bytes) -> bytes:
        response = super().process(apdu)
        if self.rng.random() >= self.rate:
            return response
        data, sw = response[:-2], response[-2:]
        kind = self.rng.choice(["sw", "sw", "truncate", "flip", "garbage", "tlv-length", "61xx", "empty", "short"])
        self.mutations.append(kind)
        if kind == "sw":
            choice = self.rng.choice(ODD_SW + [self.rng.randrange(0x10000)])
            return data + choice.to_bytes(2, "big")
        if kind == "truncate" and data:
            return data[: self.rng.randrange(len(data))] + sw
        if kind == "flip" and data:
            i = self.rng.randrange(len(data))
            return data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1:] + sw
        if kind == "garbage":
            return self.rng.randbytes(self.rng.randrange(1, 80)) + b"\x90\x00"
        if kind == "tlv-length" and len(data) > 2:
            return data[:1] + bytes([self.rng.randrange(256)]) + data[2:] + sw
        if kind == "61xx":
            return data + bytes([0x61, self.rng.randrange(256)])
        if kind == "short":
            return sw[:1]
        return sw if kind != "empty" else b"\x90\x00"


def test_fuzzed_card_gives_typed_errors_only(tmp_path: Path, canaries: Any, material: Material, card_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import provision.sim.batch as simulated

    job = FaultJob(tmp_path / "job", canaries, material, export=False)
    failures: list[str] = []
    for case in range(CARD_CASES):
        rate = (0.02, 0.05, 0.15)[case % 3]
        state, logs = card_dir / f"fuzz-{case}.json", tmp_path / f"logs-{case}"
        old = new_card_state(state, canaries, material, old_cert=case % 2 == 0)
        card = FuzzedCard(SimOptions(serial=job.serial), state, seed=1000 + case, rate=rate)
        monkeypatch.setattr(simulated, "sim_cards_for", lambda _jobfile, c=card: [c])
        box: dict[str, Any] = {}
        verdict = Verdict()
        with thread_errors() as crashed:
            worker = threading.Thread(target=lambda: box.setdefault("done", run_cli(
                "run", str(job.path), "--sim", "--unattended", "--json", "--no-progress", "--logs", str(logs))),
                daemon=True)  # fmt: skip
            worker.start()
            worker.join(60)
        verdict.check(not worker.is_alive(), "the run hung (60 s)")
        done = box.get("done")
        verdict.check(not crashed, f"a worker thread crashed: {crashed}")
        if done is not None:
            canaries.outputs += [done.stdout, done.stderr]
            verdict.check(done.code in (0, 1), f"exit {done.code}: {done.stderr[-300:]}")
            verdict.check("Traceback" not in done.stderr and "provision: internal error" not in done.stderr, done.stderr[-300:])
            if done.stdout.strip().startswith("{"):
                entry = done.json()["jobs"][0]
                verdict.check(entry["status"] in ("loaded", "skipped", "failed", "pending", "refused", "in-doubt"), str(entry))
                if entry["status"] in ("loaded", "skipped"):
                    view = view_card(state, serial=job.serial)
                    verdict.check(view.cert_sha256 == job.sha256 and view.key_matches is True,
                                  "claimed loaded, but the card does not hold the pair")  # fmt: skip
                if old is not None:
                    import hashlib

                    view = view_card(state, serial=job.serial)
                    if view.cert_sha256 != hashlib.sha256(old).hexdigest():
                        stored = (logs / "store" / f"{hashlib.sha256(old).hexdigest()}.pem").exists()
                        verdict.check(stored, "the old certificate left the card and is not in the store")
                        verdict.lost = not stored
            else:
                verdict.check(False, f"no run document: {done.stderr[-300:]}")
        record(FAMILY_CARD, f"seed {1000 + case} rate {rate} ({len(card.mutations)} mutations)",
               consistent=verdict.consistent, lost=verdict.lost, why="; ".join(verdict.problems))  # fmt: skip
        if not verdict.consistent:
            failures.append(f"seed {1000 + case}: {verdict.problems} mutations {card.mutations}")
    assert not failures, "\n".join(failures[:15])
