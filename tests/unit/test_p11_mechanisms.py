"""The PKCS#11 test signature's mechanism choice and the PIN sentences, against fake python-pkcs11
slots and keys: a middleware that signs EC keys only with hashed ECDSA (as a vendor's card module
did), one that lists raw ECDSA without CKF_SIGN, one without a mechanism list, tokens that never
report PIN flags."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from provision.errors import CardError
from provision.p11 import mechanisms, pins
from provision.p11.mechanisms import CKF_SIGN

pkcs11 = pytest.importorskip("pkcs11")
M = pkcs11.Mechanism
CKF_VERIFY = 0x2000
MESSAGE = b"provision: test signature after load"
HASH = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


class FakeSlot:
    """C_GetMechanismList / C_GetMechanismInfo of a token: {mechanism: flags}."""

    def __init__(self, offered: dict[int, int] | None) -> None:
        self.offered = offered

    def get_mechanisms(self) -> set[Any]:
        if self.offered is None:
            raise pkcs11.FunctionNotSupported()
        return {M(code) for code in self.offered}

    def get_mechanism_info(self, mechanism: Any) -> Any:
        assert self.offered is not None
        return SimpleNamespace(flags=self.offered[int(mechanism)], min_key_length=0, max_key_length=0)


class FakeKey:
    """A private key object whose C_Sign does what a token does for the mechanisms it accepts."""

    def __init__(self, private: Any, accepts: set[int]) -> None:
        self.private, self.accepts = private, accepts
        self.tried: list[str] = []

    def sign(self, data: bytes, *, mechanism: Any, mechanism_param: Any = None, pin: Any = None) -> bytes:
        name = M(mechanism).name
        self.tried.append(name)
        if int(mechanism) not in self.accepts:
            raise pkcs11.MechanismInvalid()
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            if name == "ECDSA":
                der = self.private.sign(data, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            else:
                der = self.private.sign(data, ec.ECDSA(HASH[name.removeprefix("ECDSA_")]()))
            r, s = utils.decode_dss_signature(der)
            size = (self.private.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if name == "RSA_PKCS":
            assert data.startswith(DIGEST_INFO_SHA256)
            return bytes(self.private.sign(data[len(DIGEST_INFO_SHA256):], padding.PKCS1v15(),
                                           utils.Prehashed(hashes.SHA256())))  # fmt: skip
        hash_name, _, scheme = name.partition("_RSA_")
        if scheme == "PKCS":
            return bytes(self.private.sign(data, padding.PKCS1v15(), HASH[hash_name]()))
        assert mechanism_param is not None
        hash_mech, _mgf, salt = mechanism_param
        algorithm = HASH[M(hash_mech).name.replace("SHA_1", "SHA1")]()
        pss = padding.PSS(padding.MGF1(algorithm), salt)
        if name == "RSA_PKCS_PSS":
            return bytes(self.private.sign(data, pss, utils.Prehashed(algorithm)))
        return bytes(self.private.sign(data, pss, HASH[hash_name]()))


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def check(slot: FakeSlot, key: FakeKey, public: Any) -> str:
    return mechanisms.check_key(slot, key, public, MESSAGE, label="e-Cert20250101", pin=None)


HASHED_ECDSA = [M.ECDSA_SHA1, M.ECDSA_SHA256, M.ECDSA_SHA384, M.ECDSA_SHA512]


def test_a_token_offering_only_hashed_ecdsa_verifies_an_ec_key(p256: Any) -> None:
    """The vendor's middleware of issue 21: hashed ECDSA only, raw CKM_ECDSA not even listed."""
    slot = FakeSlot({int(m): CKF_SIGN | CKF_VERIFY for m in HASHED_ECDSA})
    key = FakeKey(p256, {int(m) for m in HASHED_ECDSA})
    assert check(slot, key, p256.public_key()) == "CKM_ECDSA_SHA256"
    assert key.tried == ["ECDSA_SHA256"]


@pytest.mark.parametrize("only", HASHED_ECDSA, ids=lambda m: m.name)
def test_each_hashed_ecdsa_mechanism_alone_is_used_and_verified(p256: Any, only: Any) -> None:
    slot = FakeSlot({int(only): CKF_SIGN})
    key = FakeKey(p256, {int(only)})
    assert check(slot, key, p256.public_key()) == f"CKM_{only.name}"


def test_raw_ecdsa_listed_without_ckf_sign_is_not_used(p256: Any) -> None:
    slot = FakeSlot({int(M.ECDSA): CKF_VERIFY, int(M.ECDSA_SHA384): CKF_SIGN})
    key = FakeKey(p256, {int(M.ECDSA), int(M.ECDSA_SHA384)})
    assert check(slot, key, p256.public_key()) == "CKM_ECDSA_SHA384"
    assert key.tried == ["ECDSA_SHA384"]


def test_raw_ecdsa_is_signed_over_our_own_sha256(p256: Any) -> None:
    slot = FakeSlot({int(M.ECDSA): CKF_SIGN})
    assert check(slot, FakeKey(p256, {int(M.ECDSA)}), p256.public_key()) == "CKM_ECDSA"


@pytest.mark.parametrize("only", [M.SHA256_RSA_PKCS, M.RSA_PKCS, M.SHA256_RSA_PKCS_PSS, M.RSA_PKCS_PSS,
                                  M.SHA384_RSA_PKCS, M.SHA512_RSA_PKCS_PSS, M.SHA1_RSA_PKCS], ids=lambda m: m.name)  # fmt: skip
def test_each_rsa_mechanism_alone_is_used_and_verified(rsa2048: Any, only: Any) -> None:
    slot = FakeSlot({int(only): CKF_SIGN})
    assert check(slot, FakeKey(rsa2048, {int(only)}), rsa2048.public_key()) == f"CKM_{only.name}"


def test_the_standard_order_prefers_sha256_and_the_token_hashing() -> None:
    ec_names = [m.name for m in mechanisms.EC_ORDER]
    assert ec_names == ["CKM_ECDSA_SHA256", "CKM_ECDSA", "CKM_ECDSA_SHA384", "CKM_ECDSA_SHA512", "CKM_ECDSA_SHA1"]
    rsa_names = [m.name for m in mechanisms.RSA_ORDER]
    assert rsa_names[:4] == ["CKM_SHA256_RSA_PKCS", "CKM_RSA_PKCS", "CKM_SHA256_RSA_PKCS_PSS", "CKM_RSA_PKCS_PSS"]
    assert rsa_names[-1] == "CKM_SHA1_RSA_PKCS"
    for m in (*mechanisms.EC_ORDER, *mechanisms.RSA_ORDER):  # our codes are the specification's
        assert int(getattr(M, m.name.removeprefix("CKM_"))) == m.code


def test_a_mechanism_refused_by_c_sign_moves_to_the_next(p256: Any) -> None:
    slot = FakeSlot({int(M.ECDSA_SHA256): CKF_SIGN, int(M.ECDSA): CKF_SIGN})
    key = FakeKey(p256, {int(M.ECDSA)})  # lists SHA-256 but refuses it for this key
    assert check(slot, key, p256.public_key()) == "CKM_ECDSA"
    assert key.tried == ["ECDSA_SHA256", "ECDSA"]


def test_without_a_mechanism_list_the_candidates_are_tried_in_order(p256: Any) -> None:
    key = FakeKey(p256, {int(M.ECDSA_SHA512)})
    assert check(FakeSlot(None), key, p256.public_key()) == "CKM_ECDSA_SHA512"
    assert key.tried == ["ECDSA_SHA256", "ECDSA", "ECDSA_SHA384", "ECDSA_SHA512"]


def test_no_usable_mechanism_fails_naming_what_the_token_offers(p256: Any) -> None:
    slot = FakeSlot({int(M.ECDSA): CKF_VERIFY, int(M.SHA256_RSA_PKCS): CKF_SIGN, int(M.EDDSA): CKF_SIGN})
    key = FakeKey(p256, {int(M.ECDSA)})
    with pytest.raises(CardError) as raised:
        check(slot, key, p256.public_key())
    text = str(raised.value)
    assert "the token offers no signing mechanism provision can check for this key (offered: " in text
    assert text.split("(offered: ")[1].split(")")[0] == "CKM_SHA256_RSA_PKCS, CKM_EDDSA"  # CKF_SIGN ones only
    assert key.tried == []


def test_a_signature_of_another_key_fails(p256: Any) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    slot = FakeSlot({int(M.ECDSA_SHA256): CKF_SIGN})
    with pytest.raises(CardError, match=r"CKM_ECDSA_SHA256.*does not verify"):
        check(slot, FakeKey(other, {int(M.ECDSA_SHA256)}), p256.public_key())


def test_an_rsa_key_is_never_checked_with_ecdsa(rsa2048: Any) -> None:
    slot = FakeSlot({int(M.ECDSA): CKF_SIGN})
    with pytest.raises(CardError, match="offers no signing mechanism"):
        check(slot, FakeKey(rsa2048, {int(M.ECDSA)}), rsa2048.public_key())


# The opencryptoki 3.8 software token's signing list: RSA and MACs, no ECDSA at all, although it
# stores EC key objects (C_CreateObject succeeds)
RSA_ONLY_TOKEN = {int(m): CKF_SIGN for m in (M.RSA_PKCS, M.SHA1_RSA_PKCS, M.RSA_PKCS_PSS, M.SHA256_RSA_PKCS_PSS,
                                             M.SHA256_HMAC)}  # fmt: skip


def test_a_key_the_token_has_no_mechanism_for_is_refused_before_anything_is_written(p256: Any, rsa2048: Any) -> None:
    why = mechanisms.cannot_check(FakeSlot(RSA_ONLY_TOKEN), p256.public_key())
    assert why is not None
    assert why.startswith("the token offers no signing mechanism provision can check for this key (offered: CKM_RSA_PKCS, ")
    assert "nothing was written and no PIN was sent" in why and "CKM_ECDSA_SHA256, CKM_ECDSA" in why
    assert mechanisms.cannot_check(FakeSlot(RSA_ONLY_TOKEN), rsa2048.public_key()) is None  # raw PKCS#1 will do


def test_the_mechanism_list_alone_refuses_nothing_it_cannot_judge(p256: Any) -> None:
    assert mechanisms.cannot_check(FakeSlot(None), p256.public_key()) is None  # no list: C_Sign decides later
    assert mechanisms.cannot_check(FakeSlot({int(M.ECDSA_SHA1): CKF_SIGN}), p256.public_key()) is None
    # listed without CKF_SIGN is not offered for signing
    assert mechanisms.cannot_check(FakeSlot({int(M.ECDSA): CKF_VERIFY}), p256.public_key()) is not None


def test_mechanism_names_include_vendor_codes() -> None:
    assert mechanisms.mechanism_name(0x1044) == "CKM_ECDSA_SHA256"
    assert mechanisms.mechanism_name(0x80000123) == "CKM_0x80000123"


class BrokenInfoSlot(FakeSlot):
    def get_mechanism_info(self, mechanism: Any) -> Any:
        if int(mechanism) == int(M.ECDSA_SHA256):
            raise pkcs11.GeneralError()
        return super().get_mechanism_info(mechanism)


def test_a_mechanism_the_token_cannot_describe_is_passed_over(p256: Any) -> None:
    slot = BrokenInfoSlot({int(M.ECDSA_SHA256): CKF_SIGN, int(M.ECDSA_SHA384): CKF_SIGN})
    key = FakeKey(p256, {int(M.ECDSA_SHA256), int(M.ECDSA_SHA384)})
    assert check(slot, key, p256.public_key()) == "CKM_ECDSA_SHA384"


# --- PIN flags ---

NONE = pins.PinFlags.of(0)


def test_pin_flags_give_only_lower_bounds() -> None:
    assert pins.PinFlags.of(pins.CKF_USER_PIN_LOCKED | 0x400).tries_left == 0
    assert pins.PinFlags.of(pins.CKF_USER_PIN_FINAL_TRY).tries_left == 1
    assert pins.PinFlags.of(pins.CKF_USER_PIN_COUNT_LOW).tries_left is None
    assert NONE.tries_left is None and not NONE.any


def test_before_login_a_token_without_flags_is_said_to_give_no_count() -> None:
    assert pins.refusal_before_login(NONE, 2) is None
    note = pins.note_before_login(NONE)
    assert note is not None and "the token does not report PIN tries left" in note and "once" in note
    assert pins.refusal_before_login(pins.PinFlags.of(pins.CKF_USER_PIN_FINAL_TRY), 2) is not None
    assert pins.refusal_before_login(pins.PinFlags.of(pins.CKF_USER_PIN_FINAL_TRY), 1) is None
    assert pins.refusal_before_login(pins.PinFlags.of(pins.CKF_USER_PIN_LOCKED), 0) is not None


def test_an_incorrect_pin_on_a_token_without_flags_may_be_a_blocked_pin() -> None:
    message, left = pins.refusal_after_login("PinIncorrect", NONE, "libvendor.so")
    assert left is None
    assert "CKR_PIN_INCORRECT" in message and "the token does not report PIN tries left" in message
    assert "may already be blocked" in message and "not tried again" in message
    assert "pkcs11-tool --module libvendor.so --list-token-slots" in message


def test_a_locked_pin_is_a_blocked_pin() -> None:
    message, left = pins.refusal_after_login("PinLocked", NONE, "m.so")
    assert left == 0 and "blocked (CKR_PIN_LOCKED)" in message
    message, left = pins.refusal_after_login("PinIncorrect", pins.PinFlags.of(pins.CKF_USER_PIN_LOCKED), "m.so")
    assert left == 0 and "blocked" in message
    message, left = pins.refusal_after_login("PinIncorrect", pins.PinFlags.of(pins.CKF_USER_PIN_FINAL_TRY), "m.so")
    assert left == 1 and "one try is left" in message


def test_a_token_without_a_user_pin_is_told_apart_from_a_wrong_pin() -> None:
    """CKR_USER_PIN_NOT_INITIALIZED (a token initialised, its user PIN never set: opencryptoki after
    C_InitToken): nothing was checked, no try spent, and the fix is the SO's, not the holder's."""
    message, left = pins.refusal_after_login("UserPinNotInitialized", NONE, "libvendor.so")
    assert left is None
    assert "the token has no user PIN (CKR_USER_PIN_NOT_INITIALIZED)" in message and "no try was spent" in message
    assert "pkcs11-tool --module libvendor.so --init-pin --login --login-type so" in message
    assert "wrong" not in message and "blocked" not in message
