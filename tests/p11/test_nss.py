"""The PKCS#11 backend on a second, independent implementation: Mozilla NSS's softoken.

Two implementations are tested in this tier: SoftHSM2 (``libsofthsm2.so``, loaded directly,
``tests/p11/test_softhsm.py``) and NSS 3's softoken (``libsoftokn3.so``) served by ``p11-kit
server`` and reached through p11-kit's RPC client module (``tests/helpers/nss_token.py``), here.
They differ where a vendor's middleware differs from SoftHSM2:

- the mechanism list (``test_the_two_implementations_offer_different_mechanism_lists`` prints and
  compares them): NSS signs EC keys with raw ``CKM_ECDSA`` and ``CKM_ECDSA_SHA1`` but no hashed
  ECDSA with SHA-2, so the test signature of an EC key is hashed by provision; it offers no hashed
  RSA-PSS (``CKM_SHA256_RSA_PKCS_PSS``) where SoftHSM2 does;
- PIN reporting: NSS keeps no PIN try counter and never sets a ``CKF_USER_PIN_*`` flag; a wrong PIN
  is ``CKR_PIN_INCORRECT`` however often it is sent (SoftHSM2 sets ``CKF_USER_PIN_COUNT_LOW`` and
  blocks);
- the token's serial is sixteen zeros for every NSS database, so tokens are told apart by label;
- NSS's own tools write keys too: a PKCS#12 imported with ``pk12util`` (NSS's CKA_ID, the friendly
  name as label) is found by provision's CKA_ID rule and adopted under the slot name.

Every load here is ``provision run`` (the CLI in a child process), as an operator runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from provision import fixtures
from provision.p11.objects import key_id
from tests.helpers.nss_token import NssToken
from tests.helpers.p11_records import audit, journal_mechanisms, verified_mechanisms
from tests.p11.test_softhsm import TokenBatch, slot_name
from tests.p11.test_softhsm import (
    test_replace_refuse_and_a_wrong_pin_leave_the_token_unchanged as test_nss_refuse,
)
from tests.p11.test_softhsm import (
    test_rerun_changes_nothing_and_a_new_certificate_replaces_the_old_one_with_archive as test_nss_replace,
)
from tests.p11.test_softhsm import test_resume_after_the_process_died_between_writes as test_nss_resume

# The SoftHSM2 tests above run here again, on NSS (this module's ``batch`` is an NSS token)
__all__ = ["test_nss_refuse", "test_nss_replace", "test_nss_resume"]


@pytest.fixture(scope="module")
def issuer() -> fixtures.Issuer:
    return fixtures.make_ca("PKCS#11 NSS CA")


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, issuer: fixtures.Issuer, nss: NssToken) -> TokenBatch:
    return TokenBatch(tmp_path, canaries, issuer, nss)


@pytest.mark.parametrize(("key_type", "mechanism"), [("p256", "CKM_ECDSA"), ("p384", "CKM_ECDSA"),
                                                     ("rsa2048", "CKM_SHA256_RSA_PKCS")])  # fmt: skip
def test_provision_run_loads_and_verifies_then_skips_only_after_verifying(batch: TokenBatch, key_type: str,
                                                                          mechanism: str) -> None:  # fmt: skip
    batch.hsm.init_token("chan")
    cert = batch.p12("chan", "CHAN Tai Man", key_type)
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    done = batch.cli()
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["jobs"][0]
    assert job["status"] == "loaded", job
    # chosen from NSS's C_GetMechanismList and checked with cryptography: no hashed SHA-2 ECDSA there
    assert verified_mechanisms(batch) == [mechanism] and journal_mechanisms(batch) == [mechanism]
    assert f"test signature verified with {mechanism}" in job["notes"]
    assert job["pin_tries_left"] is None
    assert any("the token does not report PIN tries left" in note for note in job["notes"]), job
    # OpenSC's pkcs11-tool, through the same client module, sees what provision wrote
    listed = batch.objects("chan")
    assert sorted(o["kind"].split()[0] for o in listed) == ["Certificate", "Private", "Public"]
    assert {o["label"] for o in listed} == {slot_name(cert)}
    assert {o["ID"] for o in listed} == {key_id(cert.public_key()).hex()}
    out = batch.tmp / "read.der"
    read = batch.hsm.pkcs11_tool("--token-label", "chan", "--read-object", "--type", "cert", "--label",
                                 slot_name(cert), "--output-file", str(out))  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert x509.load_der_x509_certificate(out.read_bytes()) == cert
    again = batch.cli()
    assert again.returncode == 0, again.stderr
    job = json.loads(again.stdout)["jobs"][0]
    assert job["status"] == "skipped", job
    assert verified_mechanisms(batch) == [mechanism, mechanism]  # skipped only after a second test signature
    assert any(e.get("event") == "skipped" and e.get("outcome") == "verified" for e in audit(batch))
    assert len(batch.objects("chan")) == 3


def test_a_wrong_pin_on_a_token_without_a_try_counter(batch: TokenBatch, canaries: Any) -> None:
    """NSS never sets a CKF_USER_PIN_* flag and answers every wrong PIN with CKR_PIN_INCORRECT: one
    C_Login, the sentence says the tries left are unknown, and the PIN is held for later runs."""
    batch.hsm.init_token("chan")
    batch.p12("chan", "CHAN Tai Man", "p256")
    canaries.write_secret_file(batch.tmp / "token.pin", "654321")
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    done = batch.cli()
    assert done.returncode == 1, done.stderr
    job = json.loads(done.stdout)["jobs"][0]
    assert job["status"] == "failed" and job["pin_tries_left"] is None, job
    assert "CKR_PIN_INCORRECT" in job["error"] and "the token does not report PIN tries left" in job["error"], job
    again = json.loads(batch.cli().stdout)["jobs"][0]
    assert again["status"] == "failed" and "on PIN hold; no PIN was sent" in again["error"], again
    assert batch.objects("chan") == []


def _offer(module: Path, label: str) -> tuple[list[str], int, int]:
    """(the names of the signing mechanisms, the token's flags before and after one wrong C_Login)."""
    import pkcs11

    from provision.p11 import mechanisms
    from provision.p11.module import open_module

    lib = open_module(module).lib
    [token] = [t for t in lib.get_tokens() if t.label == label]
    before = int(token.flags)
    with pytest.raises(pkcs11.PinIncorrect):
        token.open(user_pin="000000")
    [token] = [t for t in lib.get_tokens() if t.label == label]
    return [mechanisms.mechanism_name(c) for c in mechanisms.signing_mechanisms(token.slot)], before, int(token.flags)


def test_the_two_implementations_offer_different_mechanism_lists(softhsm: Any, nss: NssToken,
                                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """What this tier relies on: the same loads pass on two tokens that sign with different lists,
    and one of them reports no PIN state at all."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from provision.p11 import mechanisms
    from provision.p11.pins import PinFlags

    softhsm.init_token("chan")
    nss.init_token("chan")
    soft, soft_before, soft_after = _offer(softhsm.module, "chan")
    mozilla, nss_before, nss_after = _offer(nss.module, "chan")
    with capsys.disabled():
        print(f"\nSoftHSM2 signs with: {', '.join(soft)}\nNSS softoken signs with: {', '.join(mozilla)}")
    assert set(soft) != set(mozilla)
    sha2_ecdsa = {"CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384", "CKM_ECDSA_SHA512"}
    assert "CKM_ECDSA" in soft and "CKM_ECDSA" in mozilla
    assert not sha2_ecdsa & set(mozilla)  # NSS: the EC test signature is hashed by provision
    assert "CKM_ECDSA_SHA1" in mozilla and "CKM_ECDSA_SHA1" not in soft
    assert "CKM_SHA256_RSA_PKCS_PSS" in soft and "CKM_SHA256_RSA_PKCS_PSS" not in mozilla
    # the candidates provision would try differ for both key types
    codes = {name: code for name, code in ((mechanisms.mechanism_name(m.code), m.code)
                                           for m in (*mechanisms.EC_ORDER, *mechanisms.RSA_ORDER))}  # fmt: skip
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    for key in (ec_key, rsa_key):
        on_soft = mechanisms.usable(key, [codes[n] for n in soft if n in codes])
        on_nss = mechanisms.usable(key, [codes[n] for n in mozilla if n in codes])
        assert on_soft and on_nss and on_soft != on_nss
    # PIN reporting: SoftHSM2 counts a wrong PIN (CKF_USER_PIN_COUNT_LOW), NSS reports nothing, ever
    assert not PinFlags.of(soft_before).any and PinFlags.of(soft_after).count_low
    assert not PinFlags.of(nss_before).any and not PinFlags.of(nss_after).any


def test_a_pkcs12_imported_by_nss_itself_is_found_by_its_cka_id_and_adopted(batch: TokenBatch, nss: NssToken) -> None:
    """``pk12util`` (as Firefox imports a PKCS#12) gives the key NSS's CKA_ID and the friendly name
    as label: provision finds the certificate and key by that ID (``objects.key_id`` is NSS's rule),
    proves the key with a test signature, puts the slot name on them and writes nothing else."""
    nss.init_token("chan")
    cert = batch.p12("chan", "CHAN Tai Man", "p256", serial=7)  # NSS refuses the CA's issuer and serial (1) twice
    nss.import_pkcs12(batch.tmp / "chan.p12", batch.tmp / "p12.pass", batch.tmp / "token.pin")
    kid = key_id(cert.public_key()).hex()
    imported = batch.objects("chan")  # the holder's key and certificate, and the CA's certificate
    ours = [o for o in imported if o.get("ID") == kid]
    assert {o["kind"].split()[0] for o in ours} >= {"Certificate", "Private"}
    assert slot_name(cert) not in {o.get("label") for o in imported}
    batch.job("HK-1", "CHAN Tai Man", "chan", batch.token_card("chan"))
    done = batch.cli()
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["jobs"][0]
    assert job["status"] == "loaded" and "test signature verified with CKM_ECDSA" in job["notes"], job
    listed = batch.objects("chan")
    assert len(listed) == len(imported)  # nothing written but labels
    assert {o["label"] for o in listed if o.get("ID") == kid} == {slot_name(cert)}
    assert [o for o in listed if o.get("ID") != kid] == [o for o in imported if o.get("ID") != kid]
    again = json.loads(batch.cli().stdout)["jobs"][0]
    assert again["status"] == "skipped", again
