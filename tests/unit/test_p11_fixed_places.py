"""Tokens whose objects are fixed places (Yubico's ykcs11: CKA_ID 01 = 9A, 02 = 9C …, labels of its
own, objects created only by the SO): the minimal private-key template, how objects found in a
fixed place are judged, and the job-file rule that an SO PIN names the place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provision.errors import JobFileError
from provision.jobfile import load_jobfile
from provision.p11 import objects
from provision.p11.loader import Found

pkcs11 = pytest.importorskip("pkcs11")
A = pkcs11.Attribute

# What ykcs11 2.2.0 accepts in C_CreateObject (ykcs11/objects.c: check_create_ec_key,
# check_create_rsa_key); any other attribute is CKR_ATTRIBUTE_TYPE_INVALID.
YKCS11_EC = {A.CLASS, A.KEY_TYPE, A.ID, A.VALUE, A.EC_PARAMS, A.TOKEN, A.LABEL, A.SUBJECT, A.SENSITIVE, A.DERIVE}
YKCS11_RSA = {A.CLASS, A.ID, A.KEY_TYPE, A.PUBLIC_EXPONENT, A.PRIME_1, A.PRIME_2, A.EXPONENT_1, A.EXPONENT_2,
              A.COEFFICIENT, A.TOKEN, A.LABEL, A.SUBJECT, A.SENSITIVE, A.DERIVE}  # fmt: skip


@pytest.mark.parametrize("kind", ["rsa2048", "p256"])
def test_the_minimal_private_key_template_is_what_ykcs11_accepts_and_the_full_one_is_not(kind: str) -> None:
    key: Any = rsa.generate_private_key(65537, 2048) if kind == "rsa2048" else ec.generate_private_key(ec.SECP256R1())
    accepted = YKCS11_RSA if kind == "rsa2048" else YKCS11_EC
    full = objects.private_key_template(key, "e-Cert", b"\x02", b"")
    minimal = objects.private_key_template(key, "e-Cert", b"\x02", b"", minimal=True)
    assert set(full) - accepted  # why provision retries: the full template is refused there
    assert set(minimal) <= accepted
    if kind == "rsa2048":
        numbers = key.private_numbers()
        assert len(minimal[A.PRIME_1]) == 128 and minimal[A.PUBLIC_EXPONENT] == b"\x01\x00\x01"  # ykcs11 checks both
        assert int.from_bytes(minimal[A.PRIME_1], "big") * int.from_bytes(minimal[A.PRIME_2], "big") == numbers.public_numbers.n
    else:
        assert len(minimal[A.VALUE]) == 32 and minimal[A.EC_PARAMS] == objects.EC_PARAMS["secp256r1"]


def test_in_a_fixed_place_the_id_says_where_not_which_key() -> None:
    ours, old = b"new certificate", b"old certificate"
    found = Found(certificates=[("cert", old, b"\x02")], public_keys=[("pub", b"\x02")],
                  private_keys=[("key", b"\x02")], private_seen=True, fixed_place=True)  # fmt: skip
    assert found.ours(ours, b"\x02") == (False, False, False)  # the old key is there, not ours
    assert [kind for kind, _, _ in found.replaced(ours, b"\x02")] == ["certificate"]  # archived first
    written = Found(certificates=[("cert", ours, b"\x02")], private_keys=[("key", b"\x02")], fixed_place=True)
    assert written.ours(ours, b"\x02") == (True, False, True)
    by_label = Found(certificates=[("cert", old, b"\x02")], private_keys=[("key", b"\x02")])
    assert by_label.ours(ours, b"\x02") == (False, False, True)  # a key-derived id names the key itself


def job_file(tmp_path: Path, canaries: Any, pkcs11_fields: str) -> Path:
    canaries.write_secret_file(tmp_path / "p.pass", canaries.pkcs12_password)
    canaries.write_secret_file(tmp_path / "mgmt.key", canaries.management_key)
    (tmp_path / "a.p12").write_bytes(b"0")
    module = tmp_path / "libykcs11.so"
    module.write_bytes(b"")
    path = tmp_path / "j.yaml"
    path.write_text("version: 1\nbatch: b\ncards:\n  - id: A\n    holder: A\n"
                    f"    card: {{pkcs11: {{module: {module}, token_serial: '23456789'{pkcs11_fields}}}}}\n"
                    "    pkcs12: {path: a.p12, password: {file: p.pass}}\n    slot: 9c\n"
                    "    slot_name: x\n    pin: {file: p.pass}\n")  # fmt: skip
    return path


def test_an_so_pin_needs_the_place_it_writes(tmp_path: Path, canaries: Any) -> None:
    with pytest.raises(JobFileError) as raised:
        load_jobfile(job_file(tmp_path, canaries, ", so_pin: {file: mgmt.key}"), unattended=True, check_files=False)
    assert any("so_pin needs object_id" in p.message for p in raised.value.problems), raised.value.problems
    with pytest.raises(JobFileError):
        load_jobfile(job_file(tmp_path, canaries, ", object_id: '2'"), unattended=True, check_files=False)
    job = load_jobfile(job_file(tmp_path, canaries, ", object_id: '02', so_pin: {file: mgmt.key}"),
                       unattended=True, check_files=False).jobs[0]  # fmt: skip
    assert job.card.pkcs11 is not None and job.card.pkcs11.object_id == b"\x02"
    assert job.card.pkcs11.so_pin is not None and job.card.pkcs11.so_pin.kind == "file"
    assert canaries.management_key not in repr(job)


class _Key:
    """A created private key object as python-pkcs11 gives it: attributes read by item."""

    def __init__(self, attributes: dict[Any, bool], destroyable: bool = True) -> None:
        self.attributes = attributes
        self.destroyable = destroyable
        self.destroyed = False

    def __getitem__(self, attribute: Any) -> bool:
        import pkcs11

        if attribute not in self.attributes:
            raise pkcs11.AttributeTypeInvalid()
        return self.attributes[attribute]

    def destroy(self) -> None:
        import pkcs11

        if not self.destroyable:
            raise pkcs11.FunctionNotSupported()
        self.destroyed = True


def test_a_key_made_from_the_minimal_template_must_still_be_unable_to_leave_the_token() -> None:
    """The minimal template leaves CKA_PRIVATE and CKA_EXTRACTABLE to the module's defaults: a key
    the module made extractable (or not private, not sensitive) is destroyed and the job fails."""
    from types import SimpleNamespace

    from pkcs11 import Attribute

    from provision.errors import CardError
    from provision.p11.loader import Pkcs11Loader

    check = Pkcs11Loader._keep_only_a_protected_key  # noqa: SLF001 - the check alone, without a token
    loader: Any = SimpleNamespace(token=SimpleNamespace(calls=0), label="e-Cert20261129")
    good = _Key({Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    check(loader, good)
    assert not good.destroyed
    silent = _Key({})  # a module that reports none of them: its own rule stands (a card's key)
    check(loader, silent)
    assert not silent.destroyed
    for attributes in ({Attribute.EXTRACTABLE: True}, {Attribute.PRIVATE: False}, {Attribute.SENSITIVE: False}):
        key = _Key({Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, **attributes})
        with pytest.raises(CardError, match="destroyed again"):
            check(loader, key)
        assert key.destroyed
    stuck = _Key({Attribute.EXTRACTABLE: True}, destroyable=False)
    with pytest.raises(CardError, match="remove the key labelled 'e-Cert20261129'"):
        check(loader, stuck)
