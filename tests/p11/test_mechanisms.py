"""The test signature's mechanism and the PIN on tokens that differ from SoftHSM2's defaults.

SoftHSM2's ``slots.mechanisms`` gives real tokens with another ``C_GetMechanismList`` (RSA with
only raw PKCS#1, only PSS; EC with no ECDSA at all). A shim over SoftHSM2 (a slot and key proxy
in front of ``mechanisms.check_key``, as a vendor's middleware hashes in software before a raw
ECDSA on the card) gives a token with only hashed ECDSA, and a token proxy gives one that never
reports PIN flags and answers a blocked PIN with CKR_PIN_INCORRECT."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.p11 import mechanisms
from provision.p11.module import finalize_modules
from provision.p11.source import Pkcs11Token
from tests.helpers.p11_records import audit, journal_mechanisms, verified_mechanisms
from tests.helpers.product import provision_cmd
from tests.helpers.softhsm import SoftHsm
from tests.p11.test_softhsm import TokenBatch

pkcs11 = pytest.importorskip("pkcs11")


@pytest.fixture(scope="module")
def issuer() -> fixtures.Issuer:
    return fixtures.make_ca("PKCS#11 Mechanisms CA")


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, issuer: fixtures.Issuer, softhsm: SoftHsm) -> TokenBatch:
    return TokenBatch(tmp_path, canaries, issuer, softhsm)


def restrict(batch: TokenBatch, names: list[str] | None) -> None:
    batch.hsm.offer_mechanisms(names)
    finalize_modules()  # SoftHSM2 reads its configuration at the next C_Initialize


@pytest.mark.parametrize(("key_type", "expected"), [("p256", {"CKM_ECDSA_SHA256", "CKM_ECDSA"}),
                                                    ("rsa2048", {"CKM_SHA256_RSA_PKCS"})])  # fmt: skip
def test_the_mechanism_used_is_recorded_and_a_rerun_verifies_before_it_skips(batch: TokenBatch, key_type: str,
                                                                             expected: set[str]) -> None:  # fmt: skip
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", key_type)
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    first = batch.run()
    job = first.document["jobs"][0]
    assert first.exit_code == 0 and job["status"] == "loaded", job
    [used] = verified_mechanisms(batch)
    assert used in expected  # SoftHSM2 2.6 signs EC only with raw CKM_ECDSA; later versions also hashed
    assert journal_mechanisms(batch) == [used]
    assert f"test signature verified with {used}" in job["notes"]
    again = batch.run()
    job = again.document["jobs"][0]
    assert again.exit_code == 0 and job["status"] == "skipped", job
    assert verified_mechanisms(batch) == [used, used]  # skipped only after a second test signature
    assert any(e.get("event") == "skipped" and e.get("outcome") == "verified" for e in audit(batch))


@pytest.mark.parametrize("offered", [["CKM_RSA_PKCS"], ["CKM_SHA256_RSA_PKCS_PSS"], ["CKM_RSA_PKCS_PSS"],
                                     ["CKM_SHA512_RSA_PKCS", "CKM_SHA384_RSA_PKCS_PSS"]])  # fmt: skip
def test_an_rsa_token_with_another_mechanism_list_loads_and_verifies(batch: TokenBatch, offered: list[str]) -> None:
    restrict(batch, offered)
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "rsa2048")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    outcome = batch.run()
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0 and job["status"] == "loaded", job
    assert verified_mechanisms(batch) == [offered[0]]


def test_a_key_the_token_cannot_check_is_never_written(batch: TokenBatch) -> None:
    """An EC key for a token that signs with no ECDSA mechanism (opencryptoki's software token
    stores such a key and can never use it): refused from the mechanism list, before the PIN and
    before any write, on every run; loaded once the module can check it."""
    restrict(batch, ["CKM_RSA_PKCS", "CKM_SHA256_RSA_PKCS"])
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "p256")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    for _ in range(2):
        outcome = batch.run()
        job = outcome.document["jobs"][0]
        assert outcome.exit_code == 1 and job["status"] == "failed", job
        assert ("the token offers no signing mechanism provision can check for this key (offered: CKM_RSA_PKCS, "
                "CKM_SHA256_RSA_PKCS), so a key loaded there could not be verified; nothing was written and no PIN "
                "was sent") in job["error"], job  # fmt: skip
        assert batch.objects("chan") == []
    events = audit(batch)
    assert not any(e.get("event") in ("pin_verify", "verified", "skipped") for e in events)
    assert [e.get("outcome") for e in events if e.get("event") == "preflight"][-1] == "refused"
    restrict(batch, None)
    outcome = batch.run()
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0 and job["status"] == "loaded", job
    assert len(batch.objects("chan")) == 3


class DecliningKey:
    """A key whose C_Sign refuses every mechanism the token lists (``refusing``), as a token that
    lists ECDSA but not for this key's curve: the load is written and cannot be checked."""

    refusing = True

    def __init__(self, key: Any) -> None:
        self.key = key

    def __getitem__(self, attribute: Any) -> Any:
        return self.key[attribute]

    def sign(self, data: bytes, *, mechanism: Any, mechanism_param: Any = None, pin: Any = None) -> bytes:
        if DecliningKey.refusing:
            raise pkcs11.MechanismInvalid()
        return bytes(self.key.sign(data, mechanism=mechanism, mechanism_param=mechanism_param, pin=pin))


def test_a_load_whose_signature_cannot_be_checked_is_never_reported_skipped(batch: TokenBatch,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Written, not verified, failed on every run (issue 21: the second run said ``skipped``, exit
    0) until the token signs the test message."""
    real = mechanisms.check_key
    monkeypatch.setattr(mechanisms, "check_key", lambda slot, key, *a, **kw: real(slot, DecliningKey(key), *a, **kw))
    monkeypatch.setattr(DecliningKey, "refusing", True)
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "p256")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    for attempt in range(3):
        if attempt == 2:
            (batch.logs / "journal.sqlite3").rename(batch.tmp / "journal.kept")  # another journal: the token alone
        outcome = batch.run()
        job = outcome.document["jobs"][0]
        assert outcome.exit_code == 1 and job["status"] == "failed", (attempt, job)
        assert "the token offers no signing mechanism provision can check for this key" in job["error"], job
        assert "C_Sign refused CKM_ECDSA" in job["error"] and "is not verified, so the job is not done" in job["error"]
        assert len(batch.objects("chan")) == 3  # what was written stays (no key is lost)
    assert verified_mechanisms(batch) == []
    assert not any(e.get("event") == "skipped" for e in audit(batch))
    monkeypatch.setattr(DecliningKey, "refusing", False)  # the token signs now
    outcome = batch.run()  # this journal knows of no write: the key verified, already on the token
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0 and job["status"] == "skipped", job
    assert len(verified_mechanisms(batch)) == 1
    (batch.tmp / "journal.kept").replace(batch.logs / "journal.sqlite3")
    outcome = batch.run()  # the journal that saw the writes: the load is finished, not skipped
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0 and job["status"] == "loaded", job


class HashedEcdsaSlot:
    """A slot as a vendor's middleware shows it: ECDSA only with hashing, raw CKM_ECDSA not offered."""

    OFFERED = (pkcs11.Mechanism.ECDSA_SHA256, pkcs11.Mechanism.ECDSA_SHA384, pkcs11.Mechanism.SHA256_RSA_PKCS)

    def __init__(self, slot: Any) -> None:
        self.slot = slot

    def get_mechanisms(self) -> set[Any]:
        return set(self.OFFERED)

    def get_mechanism_info(self, mechanism: Any) -> Any:
        return type("Info", (), {"flags": mechanisms.CKF_SIGN | 0x2000})()


class HashedEcdsaKey:
    """Hashes in software, signs raw on the token (what such middleware do): refuses raw CKM_ECDSA."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.mechanisms: list[str] = []

    def __getitem__(self, attribute: Any) -> Any:
        return self.key[attribute]

    def sign(self, data: bytes, *, mechanism: Any, mechanism_param: Any = None, pin: Any = None) -> bytes:
        self.mechanisms.append(pkcs11.Mechanism(mechanism).name)
        algorithm = {pkcs11.Mechanism.ECDSA_SHA256: "sha256", pkcs11.Mechanism.ECDSA_SHA384: "sha384"}.get(mechanism)
        if algorithm is None:
            raise pkcs11.MechanismInvalid()
        return bytes(self.key.sign(hashlib.new(algorithm, data).digest(), mechanism=pkcs11.Mechanism.ECDSA, pin=pin))


def test_a_token_offering_only_hashed_ecdsa_loads_and_verifies_ec(batch: TokenBatch,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    keys: list[HashedEcdsaKey] = []
    real = mechanisms.check_key

    def through_middleware(slot: Any, key: Any, *args: Any, **kw: Any) -> str:
        keys.append(HashedEcdsaKey(key))
        return real(HashedEcdsaSlot(slot), keys[-1], *args, **kw)

    monkeypatch.setattr(mechanisms, "check_key", through_middleware)
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "p256")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    outcome = batch.run()
    job = outcome.document["jobs"][0]
    assert outcome.exit_code == 0 and job["status"] == "loaded", job
    assert verified_mechanisms(batch) == ["CKM_ECDSA_SHA256"]
    again = batch.run()
    assert again.document["jobs"][0]["status"] == "skipped"
    assert [k.mechanisms for k in keys] == [["ECDSA_SHA256"], ["ECDSA_SHA256"]]  # raw ECDSA never asked for


class SilentToken:
    """A token whose CK_TOKEN_INFO never carries PIN flags; its C_Login answers ``refuse`` if given."""

    PIN_FLAGS = 0x00010000 | 0x00020000 | 0x00040000

    def __init__(self, token: Any, logins: list[str], refuse: type[Exception] | None) -> None:
        self._token, self._logins, self._refuse = token, logins, refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(self._token, name)

    @property
    def flags(self) -> Any:
        return type(self._token.flags)(int(self._token.flags) & ~self.PIN_FLAGS)

    def open(self, *, rw: bool = False, user_pin: Any = None) -> Any:
        if user_pin is not None:
            self._logins.append("login")
            if self._refuse is not None:
                raise self._refuse()
        return self._token.open(rw=rw, user_pin=user_pin)


@pytest.mark.parametrize("refuse", [None, pkcs11.PinLocked], ids=["good", "locked"])
def test_a_token_that_reports_no_pin_flags(batch: TokenBatch, monkeypatch: pytest.MonkeyPatch,
                                           refuse: type[Exception] | None) -> None:  # fmt: skip
    logins: list[str] = []
    real = Pkcs11Token.token
    monkeypatch.setattr(Pkcs11Token, "token", lambda self: SilentToken(real(self), logins, refuse))
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "p256")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    outcome = batch.run()
    job = outcome.document["jobs"][0]
    assert logins == ["login"]  # one C_Login, never a second
    if refuse is None:
        assert job["status"] == "loaded" and job["pin_tries_left"] is None, job
        assert any("the token does not report PIN tries left" in note for note in job["notes"]), job
        return
    assert outcome.exit_code == 1 and job["status"] == "failed", job
    assert batch.objects("chan") == []
    assert job["pin_tries_left"] == 0 and "blocked (CKR_PIN_LOCKED)" in job["error"], job


def test_a_refused_pin_on_a_token_without_pin_flags_is_never_sent_again_until_the_hold_is_cleared(
        batch: TokenBatch, monkeypatch: pytest.MonkeyPatch, canaries: Any) -> None:  # fmt: skip
    logins: list[str] = []
    real = Pkcs11Token.token
    monkeypatch.setattr(Pkcs11Token, "token", lambda self: SilentToken(real(self), logins, None))
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "p256")
    canaries.write_secret_file(batch.tmp / "token.pin", "654321")  # wrong: SoftHSM2 answers CKR_PIN_INCORRECT
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    first = batch.run()
    job = first.document["jobs"][0]
    assert first.exit_code == 1 and job["status"] == "failed" and job["pin_tries_left"] is None, job
    assert "CKR_PIN_INCORRECT" in job["error"] and "the token does not report PIN tries left" in job["error"]
    assert "may already be blocked" in job["error"] and "--list-token-slots" in job["error"]
    held = re.search(r"clear-pin-hold ([0-9a-f]{32})", job["error"])
    assert held is not None and logins == ["login"], job
    for _ in range(2):  # the same PIN file in later runs: nothing is sent
        again = batch.run()
        job = again.document["jobs"][0]
        assert job["status"] == "failed" and "on PIN hold; no PIN was sent" in job["error"], job
    assert logins == ["login"] and batch.objects("chan") == []
    canaries.write_secret_file(batch.tmp / "token.pin", "123456")  # corrected, then the hold is cleared
    cleared = subprocess.run([*provision_cmd(), "card", "clear-pin-hold", held.group(1), "--reason", "PIN file fixed",
                              "--logs", str(batch.logs), "--json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    done = batch.run()
    assert done.document["jobs"][0]["status"] == "loaded" and logins == ["login", "login"]


def test_a_token_whose_user_pin_was_never_set(batch: TokenBatch) -> None:
    """Initialised by the SO without a user PIN (``pkcs11-tool --init-token`` alone; opencryptoki's
    state after C_InitToken): CKR_USER_PIN_NOT_INITIALIZED is said as such, not as a wrong PIN, and
    no PIN hold is made (no PIN was checked)."""
    made = batch.hsm.pkcs11_tool("--init-token", "--slot-index", "0", "--label", "chan", "--so-pin", "12345678")
    assert made.returncode == 0, made.stderr
    batch.p12("chan", "CHAN Tai Man", "p256")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    for _ in range(2):  # no hold: the next run tries again, and says the same
        outcome = batch.run()
        job = outcome.document["jobs"][0]
        assert outcome.exit_code == 1 and job["status"] == "failed", job
        assert "the token has no user PIN (CKR_USER_PIN_NOT_INITIALIZED)" in job["error"], job
        assert "--init-pin --login --login-type so" in job["error"] and "hold" not in job["error"]
    assert [e["outcome"] for e in audit(batch) if e.get("event") == "pin_verify"] == ["no_user_pin", "no_user_pin"]
