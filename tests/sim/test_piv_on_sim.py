"""PivSession against the simulated card: ApduChannel → SimTransport → SimCard, in process.

The client (provision/piv) and the simulator (provision/sim) were written independently from the
spec; this tier is where they first meet. Every load path of a real batch is driven end to end,
over an extended-length reader and over one that only takes short APDUs (command chaining and
61xx GET RESPONSE), on a YubiKey 5.7, a YubiKey 5.2.7 and a PivApplet-like card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from provision.card.apdu import ApduChannel, TraceRecord
from provision.errors import (
    CardNotSupportedError,
    CardProtocolError,
    CardRemovedError,
    CardStatusError,
    ManagementKeyError,
    PinError,
    PinFormatError,
)
from provision.fixtures import Issuer, KeyType, generate_key, make_ca, make_leaf
from provision.piv.session import (
    SLOT_NAMES_OBJECT_ID,
    PivSession,
    SlotNameResult,
)
from provision.secrets import Secret
from provision.sim.card import SimCard, SimOptions
from provision.sim.inprocess import SimTransport

PIN = Secret("123456")
DEFAULT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
FW_57 = (5, 7, 1)
FW_527 = (5, 2, 7)
SLOTS = (0x9A, 0x9C, 0x9D, 0x9E, 0x82, 0x95)
BASE_KEYS: tuple[KeyType, ...] = ("rsa1024", "rsa2048", "p256", "p384")
FW57_KEYS: tuple[KeyType, ...] = ("rsa3072", "rsa4096", "ed25519")
SLOT_NAME = "e-Cert20060729"


class ShortApduTransport(SimTransport):
    """A reader without extended length: long commands are chained, long answers come as 61xx."""

    @property
    def supports_extended(self) -> bool:
        return False


TRANSPORTS: dict[str, type[SimTransport]] = {"extended": SimTransport, "short": ShortApduTransport}


@dataclass
class Rig:
    card: SimCard
    transport: SimTransport
    session: PivSession
    trace: list[TraceRecord]

    def ins_sent(self) -> list[int]:
        return [record.header[1] for record in self.trace]


def make_rig(options: SimOptions | None = None, transport: str = "extended") -> Rig:
    card = SimCard(options or SimOptions())
    raw = TRANSPORTS[transport](card)
    trace: list[TraceRecord] = []
    session = PivSession(ApduChannel(raw, trace=trace.append))
    return Rig(card, raw, session, trace)


# --- fixtures: keys are made once, RSA is slow ---------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> Issuer:
    return make_ca("Provision Sim Test CA")


@pytest.fixture(scope="session")
def keys() -> dict[str, PrivateKeyTypes]:
    return {kt: generate_key(kt) for kt in (*BASE_KEYS, *FW57_KEYS, "x25519")}


@pytest.fixture(scope="session")
def certs(ca: Issuer, keys: dict[str, PrivateKeyTypes]) -> dict[str, x509.Certificate]:
    return {kt: make_leaf(ca, f"Holder {kt}", key=key)[1] for kt, key in keys.items()}


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(public_key: object) -> bytes:
    assert hasattr(public_key, "public_bytes")
    return public_key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_cases() -> Iterator[object]:
    for transport in TRANSPORTS:
        for slot in SLOTS:
            for kt in BASE_KEYS:
                for fw in (FW_57, FW_527):
                    yield pytest.param(
                        kt, slot, fw, transport, id=f"{kt}-{slot:02x}-{'.'.join(map(str, fw))}-{transport}"
                    )
            for kt in FW57_KEYS:
                yield pytest.param(kt, slot, FW_57, transport, id=f"{kt}-{slot:02x}-5.7.1-{transport}")


# --- the whole load, as a batch does it -----------------------------------------------------------


@pytest.mark.parametrize(("key_type", "slot", "firmware", "transport"), list(load_cases()))
def test_load_read_back_and_prove(
    keys: dict[str, PrivateKeyTypes],
    certs: dict[str, x509.Certificate],
    key_type: str,
    slot: int,
    firmware: tuple[int, int, int],
    transport: str,
) -> None:
    rig = make_rig(SimOptions(firmware=firmware), transport)
    s = rig.session
    key, cert = keys[key_type], certs[key_type]

    s.select()
    assert s.version() == firmware
    assert s.pin_tries() == 3
    s.verify_pin(PIN)
    assert s.pin_tries() is None  # verified: the status answers 9000

    s.authenticate(DEFAULT_KEY)
    mgmt_alg = next(r.header[2] for r in rig.trace if r.header[1] == 0x87 and r.header[3] == 0x9B)
    assert mgmt_alg == (0x0A if firmware >= (5, 7, 0) else 0x03)  # AES-192 from 5.7, 3DES before

    alg = s.import_key(slot, key)  # type: ignore[arg-type]
    for compress in (True, False):
        s.write_certificate(slot, der(cert), compress=compress)
        assert s.read_certificate(slot) == der(cert)

    if firmware >= (5, 3, 0):
        meta = s.get_metadata(slot)
        assert meta is not None and meta.algorithm == alg.code
        assert meta.origin == 2  # imported
        assert meta.public_key is not None and spki(meta.public_key) == spki(cert.public_key())
        assert meta.pin_policy == {0x9C: 3, 0x9E: 1}.get(slot, 2)  # always / never / once
    else:
        with pytest.raises(CardNotSupportedError):
            s.get_metadata(slot)

    # 9C has PIN policy "always": its VERIFY must come right before the signature.
    s.verify_pin(PIN)
    s.test_signature(slot, cert)

    assert s.write_slot_name(slot, SLOT_NAME) == SlotNameResult(stored=True)
    assert s.read_slot_names() == {slot: SLOT_NAME}

    if transport == "short":
        assert all(r.body_length <= 257 for r in rig.trace)  # Lc, at most 255 bytes, Le
        assert any(r.header[0] & 0x10 for r in rig.trace), "a long write should have been chained"


def test_x25519_key_agreement_on_57(
    keys: dict[str, PrivateKeyTypes], certs: dict[str, x509.Certificate]
) -> None:
    s = make_rig().session
    s.select()
    s.authenticate(DEFAULT_KEY)
    s.import_key(0x9D, keys["x25519"])  # type: ignore[arg-type]
    s.write_certificate(0x9D, der(certs["x25519"]))
    s.verify_pin(PIN)
    s.test_signature(0x9D, certs["x25519"])


def test_pin_policy_always_needs_its_own_verify(
    keys: dict[str, PrivateKeyTypes], certs: dict[str, x509.Certificate]
) -> None:
    s = make_rig().session
    s.select()
    s.verify_pin(PIN)
    s.authenticate(DEFAULT_KEY)
    s.import_key(0x9C, keys["p256"])  # type: ignore[arg-type]
    with pytest.raises(CardStatusError) as refused:
        s.test_signature(0x9C, certs["p256"])  # the PIN was verified, but not right before
    assert refused.value.sw == 0x6982
    s.verify_pin(PIN)
    s.test_signature(0x9C, certs["p256"])


def test_slot_names_are_kept_per_slot() -> None:
    rig = make_rig()
    s = rig.session
    s.select()
    assert s.read_slot_names() == {}
    s.authenticate(DEFAULT_KEY)
    s.write_slot_name(0x9C, SLOT_NAME)
    s.write_slot_name(0x82, "陳大文 2006")
    assert s.read_slot_names() == {0x9C: SLOT_NAME, 0x82: "陳大文 2006"}
    s.write_slot_name(0x9C, None)
    assert s.read_slot_names() == {0x82: "陳大文 2006"}
    s.write_slot_name(0x82, None)
    assert s.read_slot_names() == {}
    assert SLOT_NAMES_OBJECT_ID not in rig.card.state.objects  # the last name removed, the object goes


# --- PIN ----------------------------------------------------------------------------------------


def test_wrong_pin_decrements_and_is_never_retried() -> None:
    rig = make_rig()
    s = rig.session
    s.select()
    for left in (2, 1):
        before = len(rig.trace)
        with pytest.raises(PinError) as wrong:
            s.verify_pin(Secret("654321"))
        assert wrong.value.tries_left == left
        assert rig.ins_sent()[before:] == [0x20]  # one VERIFY, no retry
        assert s.pin_tries() == left
    s.verify_pin(PIN)  # a good PIN resets the counter
    s.select()
    assert s.pin_tries() == 3


def test_blocked_pin() -> None:
    s = make_rig().session
    s.select()
    for _ in range(2):
        with pytest.raises(PinError):
            s.verify_pin(Secret("000000"))
    with pytest.raises(PinError, match="blocked") as last:
        s.verify_pin(Secret("000000"))
    assert last.value.tries_left == 0
    assert s.pin_tries() == 0
    with pytest.raises(PinError, match="blocked") as blocked:
        s.verify_pin(PIN)  # even the right PIN
    assert blocked.value.tries_left == 0


def test_reading_pin_tries_costs_no_try() -> None:
    rig = make_rig()
    s = rig.session
    s.select()
    for _ in range(10):
        assert s.pin_tries() == 3
    assert rig.card.state.pin_tries_left == 3
    assert rig.card.write_apdu_count == 0


def test_a_pin_of_the_wrong_length_is_not_sent() -> None:
    rig = make_rig()
    rig.session.select()
    with pytest.raises(PinFormatError):
        rig.session.verify_pin(Secret("12345"))
    assert 0x20 not in rig.ins_sent()
    assert rig.card.state.pin_tries_left == 3


# --- management key -------------------------------------------------------------------------------


@pytest.mark.parametrize("firmware", [FW_57, FW_527], ids=["5.7.1", "5.2.7"])
def test_wrong_management_key_is_refused_and_never_retried(firmware: tuple[int, int, int]) -> None:
    rig = make_rig(SimOptions(firmware=firmware))
    s = rig.session
    s.select()
    before = len(rig.trace)
    with pytest.raises(ManagementKeyError):
        s.authenticate(bytes(24))
    auth = [r for r in rig.trace[before:] if r.header[1] == 0x87]
    assert len(auth) == 2  # witness request, one answer: no second attempt
    with pytest.raises(CardStatusError) as no_auth:
        s.put_object(0x5FC102, b"\x00")
    assert no_auth.value.sw == 0x6982


def test_management_key_of_the_wrong_length_is_not_sent() -> None:
    rig = make_rig()
    rig.session.select()
    with pytest.raises(ManagementKeyError, match="nothing was sent"):
        rig.session.authenticate(bytes(16))  # the card's key is AES-192
    assert 0x87 not in rig.ins_sent()


def test_default_key_on_527_is_3des_without_metadata() -> None:
    rig = make_rig(SimOptions(firmware=FW_527))
    rig.session.select()
    rig.session.authenticate(DEFAULT_KEY)
    assert [r.header[2] for r in rig.trace if r.header[1] == 0x87] == [0x03, 0x03]


# --- a PivApplet-like card ------------------------------------------------------------------------


def test_pivapplet_profile(keys: dict[str, PrivateKeyTypes], certs: dict[str, x509.Certificate]) -> None:
    rig = make_rig(SimOptions(profile="pivapplet", serial=0x9234_5678))
    s = rig.session
    s.select()
    assert s.serial() == 0x9234_5678  # top bit set: read unsigned
    assert s.pin_tries() == 5
    with pytest.raises(PinError) as wrong:
        s.verify_pin(Secret("999999"))
    assert wrong.value.tries_left == 4
    s.verify_pin(PIN)
    s.authenticate(DEFAULT_KEY)
    s.import_key(0x8C, keys["p256"])  # type: ignore[arg-type]
    s.write_certificate(0x8C, der(certs["p256"]))
    assert s.read_certificate(0x8C) == der(certs["p256"])
    s.verify_pin(PIN)
    s.test_signature(0x8C, certs["p256"])

    result = s.write_slot_name(0x8C, SLOT_NAME)
    assert not result.stored and result.sw in (0x6A82, 0x6A86, 0x6A81)
    assert "vendor objects" in result.reason
    assert not s.read_slot_names()  # nothing there (6A82) or refused (None)

    with pytest.raises(CardStatusError) as retired:
        s.import_key(0x8D, keys["p256"])  # type: ignore[arg-type]
    assert retired.value.sw == 0x6A86
    assert 0x8D not in rig.card.state.keys


# --- transports, removal, failures ----------------------------------------------------------------


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_large_certificate_object_over_both_transports(transport: str) -> None:
    rig = make_rig(transport=transport)
    s = rig.session
    s.select()
    s.authenticate(DEFAULT_KEY)
    blob = bytes(range(256)) * 11  # 2816 bytes, under the object limit: plain, then gzip
    for compress in (False, True):
        s.write_certificate(0x9A, blob, compress=compress)
        assert s.read_certificate(0x9A) == blob
    reads = [r for r in rig.trace if r.header[1] in (0xCB, 0xC0)]
    if transport == "short":
        assert any(r.header[1] == 0xC0 for r in reads), "short reads continue with GET RESPONSE"
        assert all(r.body_length <= 257 for r in rig.trace)
    else:
        assert not any(r.header[1] == 0xC0 for r in reads)
        assert not any(r.header[0] & 0x10 for r in rig.trace)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_card_vanishing_mid_write(transport: str, certs: dict[str, x509.Certificate]) -> None:
    rig = make_rig(transport=transport)
    s = rig.session
    s.select()
    s.authenticate(DEFAULT_KEY)
    # The card goes after one more APDU: the first block of a chain, or the single extended APDU.
    vanish_at = rig.card.apdu_count + (1 if transport == "short" else 0)
    rig.card.options = dataclasses.replace(rig.card.options, vanish_after=vanish_at)
    with pytest.raises(CardRemovedError):
        s.write_certificate(0x9A, der(certs["rsa4096"]))
    assert 0x5FC105 not in rig.card.state.objects
    with pytest.raises(CardRemovedError):
        s.select()


def test_fail_after_gives_6f00() -> None:
    rig = make_rig()
    s = rig.session
    s.select()
    rig.card.options = dataclasses.replace(rig.card.options, fail_after=rig.card.apdu_count)
    with pytest.raises(CardStatusError) as failed:
        s.read_certificate(0x9A)
    assert failed.value.sw == 0x6F00
    with pytest.raises(CardStatusError) as also:
        s.verify_pin(PIN)
    assert also.value.sw == 0x6F00


def test_garbage_certificate_object_is_a_protocol_error() -> None:
    rig = make_rig()
    s = rig.session
    s.select()
    s.authenticate(DEFAULT_KEY)
    s.put_object(0x5FC105, bytes.fromhex("70 05 01 02"))  # 70 claims 5 bytes, 2 follow
    with pytest.raises(CardProtocolError):
        s.read_certificate(0x9A)
    s.put_object(0x5FC105, bytes.fromhex("70 04 01020304 71 01 01 FE 00"))  # "gzip" that is not
    with pytest.raises(CardProtocolError):
        s.read_certificate(0x9A)


# --- read-only operations write nothing -----------------------------------------------------------


ReadOp = Callable[[PivSession], object]
READ_ONLY: dict[str, ReadOp] = {
    "select": lambda s: s.select(),
    "version": lambda s: s.version(),
    "serial": lambda s: s.serial(),
    "pin_tries": lambda s: s.pin_tries(),
    "chuid": lambda s: s.read_chuid(),
    "metadata": lambda s: [s.get_metadata(ref) for ref in (0x80, 0x81, 0x9B, 0x9A, 0x9C)],
    "certificates": lambda s: [s.read_certificate(ref) for ref in SLOTS],
    "slot_names": lambda s: s.read_slot_names(),
}


@pytest.mark.parametrize("profile", ["yubikey", "pivapplet"])
@pytest.mark.parametrize("name", list(READ_ONLY))
def test_read_only_operations_write_nothing(
    name: str, profile: str, keys: dict[str, PrivateKeyTypes], certs: dict[str, x509.Certificate]
) -> None:
    rig = make_rig(SimOptions(profile=profile))  # type: ignore[arg-type]
    s = rig.session
    s.select()
    s.authenticate(DEFAULT_KEY)
    s.import_key(0x9C, keys["p256"])  # type: ignore[arg-type]
    s.write_certificate(0x9C, der(certs["p256"]), compress=True)
    s.write_slot_name(0x9C, SLOT_NAME)
    s.select()
    writes, attempts = rig.card.write_apdu_count, rig.card.write_attempt_count
    READ_ONLY[name](s)
    assert (rig.card.write_apdu_count, rig.card.write_attempt_count) == (writes, attempts)


def test_a_fresh_card_read_from_start_writes_nothing() -> None:
    rig = make_rig()
    for op in READ_ONLY.values():
        op(rig.session)
    assert rig.card.write_apdu_count == 0
    assert rig.card.write_attempt_count == 0
