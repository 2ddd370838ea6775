"""Secrets: redacted everywhere, obtained only from their source, never through a shell."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

from provision.errors import SecretError
from provision.secrets import Secret, SecretSource, obtain


def test_secret_is_redacted() -> None:
    s = Secret("482913")
    assert repr(s) == str(s) == "Secret('***')"
    assert "482913" not in f"{s} {s!r} {[s]} {dict(a=s)}"
    assert s.reveal() == b"482913"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_wipe_zeroes_our_copy() -> None:
    s = Secret("482913")
    s.wipe()
    assert s.reveal() == b"" and len(s) == 0


def test_value_source_repr_is_redacted() -> None:
    assert "482913" not in repr(SecretSource("value", "482913"))


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_PIN", "123456\n")
    assert obtain(SecretSource("env", "X_PIN"), unattended=True).reveal() == b"123456"
    monkeypatch.delenv("X_PIN")
    with pytest.raises(SecretError, match="X_PIN is not set"):
        obtain(SecretSource("env", "X_PIN"), unattended=True)


def test_file_first_line_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    path.write_text("654321\nsecond line\n")
    os.chmod(path, 0o640)
    with pytest.raises(SecretError, match="can be read by others") as info:
        obtain(SecretSource("file", "pin", tmp_path), unattended=True)
    assert "654321" not in str(info.value)
    os.chmod(path, 0o600)
    assert obtain(SecretSource("file", "pin", tmp_path), unattended=True).reveal() == b"654321"
    os.chmod(path, 0o400)
    assert obtain(SecretSource("file", str(path)), unattended=True).reveal() == b"654321"


def test_command_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    argv = (sys.executable, "-c", "import sys; print(sys.argv[1])", f"abc; touch {marker}")
    value = obtain(SecretSource("command", argv), unattended=True)
    assert value.reveal() == f"abc; touch {marker}".encode()
    assert not marker.exists()


def test_command_failure_does_not_echo_its_output() -> None:
    argv = (sys.executable, "-c", "print('777111'); raise SystemExit(3)")
    with pytest.raises(SecretError, match="exited with status 3") as info:
        obtain(SecretSource("command", argv), unattended=True)
    assert "777111" not in str(info.value)


def test_empty_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_EMPTY", "")
    with pytest.raises(SecretError, match="empty"):
        obtain(SecretSource("env", "X_EMPTY"), unattended=True)


def test_prompt_is_refused_unattended_and_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SecretError, match="unattended"):
        obtain(SecretSource("prompt", "Card PIN"), unattended=True)
    assert obtain(SecretSource("prompt", "Card PIN"), unattended=False, prompt=lambda _: "9999").reveal() == b"9999"
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    with pytest.raises(SecretError, match="no terminal"):
        obtain(SecretSource("prompt", "Card PIN"), unattended=False)


def test_the_canary_check_finds_a_keys_bytes_but_not_a_pins_chance_bytes(canaries) -> None:  # type: ignore[no-untyped-def]
    """The fixture that checks every run's files looks for a hex key's raw bytes too; an 8-digit
    PIN or PUK is not a key, and its digits read as hex (4 bytes) turn up by chance in binary files
    (a CI run once failed so). The PIN itself, its hex and its base64 are still found."""
    import base64

    key = bytes.fromhex(canaries.management_key)
    assert canaries.leaks_in(b"\x00" + key + b"\x00") == ["management key"]
    assert canaries.leaks_in(b"\x00" + bytes.fromhex(canaries.puk) + b"\x00") == []
    assert canaries.leaks_in(b"x" + canaries.pin.encode() + b"x") == ["PIN"]
    assert canaries.leaks_in(base64.b64encode(canaries.puk.encode())) == ["PUK"]
    assert canaries.leaks_in(canaries.pkcs12_password.encode().hex().encode()) == ["PKCS#12 password"]
