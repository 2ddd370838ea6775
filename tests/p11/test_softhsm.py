"""The PKCS#11 backend on SoftHSM2: import under the slot name, common CKA_ID, idempotent re-runs,
replacement with archive, refusal, a wrong PIN, and resume after the process died between writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from provision import fixtures
from provision.app import run_jobfile
from provision.jobfile import load_jobfile
from provision.p11.objects import key_id
from tests.helpers.interop_peers import parse_pkcs11_objects
from tests.helpers.nss_token import NssToken
from tests.helpers.product import provision_cmd
from tests.helpers.softhsm import SoftHsm

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("PKCS#11 Test CA")


class TokenBatch:
    def __init__(self, tmp: Path, canaries: Any, ca: fixtures.Issuer, hsm: SoftHsm | NssToken) -> None:
        self.tmp, self.canaries, self.ca, self.hsm = tmp, canaries, ca, hsm
        self.logs = tmp / "logs"
        canaries.write_secret_file(tmp / "p12.pass", canaries.pkcs12_password)
        canaries.write_secret_file(tmp / "token.pin", "123456")
        self.cards: list[str] = []

    def p12(self, name: str, cn: str, key_type: str = "p256", serial: int = 1,
            not_before: datetime | None = None) -> x509.Certificate:  # fmt: skip
        data = fixtures.holder_p12(self.ca, cn, self.canaries.pkcs12_password, key_type=key_type,  # type: ignore[arg-type]
                                   serial=serial, not_before=not_before or NOW - timedelta(days=1),
                                   not_after=NOW + timedelta(days=365))  # fmt: skip
        (self.tmp / f"{name}.p12").write_bytes(data)
        from cryptography.hazmat.primitives.serialization import pkcs12

        loaded = pkcs12.load_pkcs12(data, self.canaries.pkcs12_password.encode())
        assert loaded.cert is not None
        return loaded.cert.certificate

    def job(self, job_id: str, cn: str, p12: str, card: str, extra: str = "") -> None:
        self.cards.append(f"  - id: {job_id}\n    holder: {cn}\n    card: {card}\n"
                          f"    pkcs12: {{path: {p12}.p12, password: {{file: p12.pass}}}}\n{extra}")  # fmt: skip

    def token_card(self, label: str) -> str:
        return f"{{pkcs11: {{module: {self.hsm.module}, token_label: {label}}}}}"

    def write(self, defaults: str = "") -> Path:
        path = self.tmp / "batch.yaml"
        path.write_text("version: 1\nbatch: p11-batch\ntimezone: Asia/Hong_Kong\ndefaults:\n  slot: 9c\n"
                        '  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {file: token.pin}\n'
                        + defaults + "cards:\n" + "".join(self.cards))  # fmt: skip
        return path

    def run(self, **kw: Any) -> Any:
        jobfile = load_jobfile(self.write(kw.pop("defaults", "")), unattended=True)
        return run_jobfile(jobfile, logs=self.logs, unattended=True, wait=0, progress=False, say=lambda _: None, **kw)

    def cli(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*provision_cmd(), "run", str(self.write()), "--unattended", "--json",
                               "--no-progress", "--logs", str(self.logs), *extra],
                              env=env or self.hsm.env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)  # fmt: skip

    def objects(self, token: str) -> list[dict[str, str]]:
        listed = self.hsm.pkcs11_tool("--token-label", token, "--login", "--pin", "123456", "--list-objects")
        assert listed.returncode == 0, listed.stderr
        return parse_pkcs11_objects(listed.stdout)


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer, softhsm: SoftHsm) -> TokenBatch:
    return TokenBatch(tmp_path, canaries, ca, softhsm)


def slot_name(cert: x509.Certificate) -> str:
    return "e-Cert" + cert.not_valid_before_utc.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Hong_Kong")).strftime("%Y%m%d")


@pytest.mark.parametrize("key_type", ["p256", "rsa2048", "p384"])
def test_load_puts_the_slot_name_on_key_public_key_and_certificate(batch: TokenBatch, key_type: str) -> None:
    batch.hsm.init_token("chan")
    cert = batch.p12("chan", "CHAN Tai Man", key_type)
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    outcome = batch.run()
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0, job
    assert job["status"] == "loaded" and job["apdus"] > 0
    # pkcs11-tool (OpenSC) sees three objects labelled with the slot name, one CKA_ID
    listed = batch.objects("chan")
    name = slot_name(cert)
    assert sorted(o["kind"].split()[0] for o in listed) == ["Certificate", "Private", "Public"]
    assert {o["label"] for o in listed} == {name}
    assert {o["ID"] for o in listed} == {key_id(cert.public_key()).hex()}
    # the certificate on the token is the job's
    out = batch.tmp / "read.der"
    read = batch.hsm.pkcs11_tool("--token-label", "chan", "--read-object", "--type", "cert", "--label", name,
                                 "--output-file", str(out))  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert x509.load_der_x509_certificate(out.read_bytes()) == cert
    events = [json.loads(line) for line in (batch.logs / "audit.jsonl").read_text().splitlines()]
    verified = [e for e in events if e.get("event") == "verified"]
    assert verified and verified[0]["token_label"] == "chan"


def test_rerun_changes_nothing_and_a_new_certificate_replaces_the_old_one_with_archive(batch: TokenBatch) -> None:
    batch.hsm.init_token("chan")
    old = batch.p12("chan", "CHAN Tai Man", "p256", serial=11)
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    assert batch.run().exit_code == 0
    again = batch.run()
    assert again.exit_code == 0 and again.document["jobs"][0]["status"] == "skipped"
    # renewal: a new key and certificate under the same slot name (same not_before day)
    new = batch.p12("chan", "CHAN Tai Man", "p256", serial=12, not_before=old.not_valid_before_utc)
    assert slot_name(new) == slot_name(old)
    (batch.logs / "journal.sqlite3").unlink()  # a new batch day: the old job is not in this journal
    outcome = batch.run()
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0 and job["status"] == "loaded", job
    old_sha = hashlib.sha256(old.public_bytes(Encoding.DER)).hexdigest()
    assert job["replaced_sha256"] == old_sha
    archived = Path(job["archived_to"])
    assert archived.is_file() and x509.load_pem_x509_certificate(archived.read_bytes()) == old
    listed = batch.objects("chan")
    assert len(listed) == 3 and {o["ID"] for o in listed} == {key_id(new.public_key()).hex()}


def test_replace_refuse_and_a_wrong_pin_leave_the_token_unchanged(batch: TokenBatch, canaries: Any) -> None:
    batch.hsm.init_token("chan")
    old = batch.p12("old", "CHAN Tai Man", "p256", serial=21)
    batch.job("HK-1", "CHAN Tai Man", "old", batch.token_card("chan"))
    assert batch.run().exit_code == 0
    before = batch.objects("chan")
    batch.p12("new", "CHAN Tai Man", "p256", serial=22, not_before=old.not_valid_before_utc)
    batch.cards = []
    batch.job("HK-2", "CHAN Tai Man", "new", batch.token_card("chan"), extra="    replace: refuse\n")
    refused = batch.run()
    assert refused.document["jobs"][0]["status"] == "refused"
    assert batch.objects("chan") == before
    batch.cards = []
    canaries.write_secret_file(batch.tmp / "wrong.pin", "654321")
    batch.job("HK-3", "CHAN Tai Man", "new", batch.token_card("chan"), extra="    pin: {file: wrong.pin}\n")
    failed = batch.run()
    job = failed.document["jobs"][0]
    assert job["status"] == "failed" and "refused the PIN" in job["error"] and "not tried again" in job["error"]
    assert batch.objects("chan") == before


def test_a_job_for_another_token_is_never_written(batch: TokenBatch) -> None:
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man")
    batch.job("HK-1", "CHAN Tai Man", "chan",
              f"{{pkcs11: {{module: {batch.hsm.module}, token_label: chan, token_serial: '0000000000000000'}}}}")
    outcome = batch.run()
    assert outcome.document["jobs"][0]["status"] == "pending"
    assert outcome.document["refused_cards"] and outcome.document["refused_cards"][0]["token_label"] == "chan"
    assert batch.objects("chan") == []


@pytest.mark.parametrize("kill_at", ["import_key:end", "write_certificate:end", "delete_replaced_certificate:end"])
def test_resume_after_the_process_died_between_writes(batch: TokenBatch, kill_at: str) -> None:
    batch.hsm.init_token("chan")
    old = batch.p12("chan", "CHAN Tai Man", "p256", serial=31)
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    assert batch.cli().returncode == 0
    (batch.logs / "journal.sqlite3").unlink()
    new = batch.p12("chan", "CHAN Tai Man", "p256", serial=32, not_before=old.not_valid_before_utc)
    killed = batch.cli(env={**batch.hsm.env, "PROVISION_FAULT_KILL_AT": kill_at})
    assert killed.returncode < 0, killed.stderr  # SIGKILL
    resumed = batch.cli()
    assert resumed.returncode == 0, resumed.stderr
    job = json.loads(resumed.stdout)["jobs"][0]
    assert job["status"] == "loaded"
    assert job["replaced_sha256"] == hashlib.sha256(old.public_bytes(Encoding.DER)).hexdigest()
    assert job["archived_to"] and Path(job["archived_to"]).is_file()
    listed = batch.objects("chan")
    assert len(listed) == 3 and {o["ID"] for o in listed} == {key_id(new.public_key()).hex()}
    assert job["in_doubt"] is False


def test_job_file_checks_the_module_and_the_token_name(tmp_path: Path, canaries: Any) -> None:
    from provision.errors import JobFileError

    canaries.write_secret_file(tmp_path / "p.pass", "x")
    (tmp_path / "a.p12").write_bytes(b"0")
    path = tmp_path / "j.yaml"
    path.write_text("version: 1\nbatch: b\ncards:\n  - id: A\n    holder: A\n"
                    "    card: {pkcs11: {module: /nonexistent/libvendor.so}}\n"
                    "    pkcs12: {path: a.p12, password: {file: p.pass}}\n    slot: 9c\n"
                    "    slot_name: x\n    pin: {file: p.pass}\n")  # fmt: skip
    with pytest.raises(JobFileError) as raised:
        load_jobfile(path, unattended=True)
    text = str(raised.value) + " ".join(p.message for p in raised.value.problems)
    assert "does not exist" in text and "token_label, token_serial" in text
    assert os.path.exists(path)


def test_provision_run_loads_one_batch_onto_softhsm_tokens_and_simulated_piv_cards(batch: TokenBatch) -> None:
    """The same holders, PKCS#12 files and slot names: two on PIV cards (--sim), two on tokens."""
    for index, (cn, label) in enumerate([("CHAN Tai Man", "chan"), ("LEE Siu Ming", "lee")]):
        batch.hsm.init_token(label)
        batch.p12(label, cn, "p256" if index == 0 else "rsa2048", serial=40 + index)
        batch.job(f"PIV-{label}", cn, label, f"{{serial: {1000 + index}}}")
        batch.job(f"TOKEN-{label}", cn, label, batch.token_card(label))
    done = batch.cli("--sim")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert {j["id"]: j["status"] for j in document["jobs"]} == {
        "PIV-chan": "loaded", "TOKEN-chan": "loaded", "PIV-lee": "loaded", "TOKEN-lee": "loaded"}
    by_id = {j["id"]: j for j in document["jobs"]}
    assert by_id["PIV-chan"]["card_serial"] == 1000 and by_id["TOKEN-chan"]["card_serial"] is None
    assert by_id["PIV-chan"]["slot_name"] == by_id["TOKEN-chan"]["slot_name"]
    for label in ("chan", "lee"):
        assert {o["label"] for o in batch.objects(label)} == {by_id[f"TOKEN-{label}"]["slot_name"]}
    again = batch.cli("--sim")
    assert {j["status"] for j in json.loads(again.stdout)["jobs"]} <= {"skipped", "loaded"}


def test_two_tokens_that_both_answer_to_one_job_are_both_refused_and_neither_written(batch: TokenBatch) -> None:
    # Two tokens with one label (two NSS databases alike all say serial 0000000000000000): which one
    # is the holder's cannot be told, so the job is written to neither.
    batch.hsm.init_token("chan")
    batch.hsm.init_token("chan")
    batch.hsm.init_token("lee")
    batch.p12("chan", "CHAN Tai Man")
    batch.p12("lee", "LEE Siu Ming", serial=2)
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    batch.job("HK-2", "LEE Siu Ming", "lee", batch.token_card("lee"))
    outcome = batch.run()
    assert {j["id"]: j["status"] for j in outcome.document["jobs"]} == {"HK-1": "pending", "HK-2": "loaded"}
    shown = subprocess.run(["softhsm2-util", "--show-slots"], env=batch.hsm.env, capture_output=True, text=True,
                           timeout=60).stdout  # fmt: skip
    parts = re.split(r"^Slot (\d+)\s*$", shown, flags=re.M)
    chans = [f"{slot} {block}" for slot, block in zip(parts[1::2], parts[2::2], strict=True)
             if re.search(r"Label:\s+chan\s*$", block, re.M)]  # fmt: skip
    serials = sorted(re.search(r"Serial number:\s+(\S+)", block).group(1) for block in chans)  # type: ignore[union-attr]
    assert len(set(serials)) == 2
    refused = outcome.document["refused_cards"]
    assert sorted(c["token_serial"] for c in refused) == serials
    for card in refused:
        assert "all answer to job HK-1 (CHAN Tai Man)" in card["reason"] and "none is written" in card["reason"]
    audit = [json.loads(line) for line in (batch.logs / "audit.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in audit if e["event"] == "card_refused"] == [c["reason"] for c in refused]
    assert not any(e["event"] == "job_loaded" and e["job_id"] == "HK-1" for e in audit)
    for slot in [block.split()[0] for block in chans]:
        listed = batch.hsm.pkcs11_tool("--slot", slot, "--login", "--pin", "123456", "--list-objects")
        assert listed.returncode == 0, listed.stderr
        assert parse_pkcs11_objects(listed.stdout) == []
