"""provision.card.transport without PC/SC: error mapping, ATR parsing, and a mocked pyscard."""

from __future__ import annotations

from typing import Any

import pytest

from provision.card import transport
from provision.card.transport import (
    PCSC_CODES,
    atr_offers_t1,
    atr_supports_extended,
    code_name,
    error_for,
    historical_bytes,
    resolve_reader,
)
from provision.errors import (
    CardError,
    CardRemovedError,
    EnvironmentProblem,
    ReaderGoneError,
    ServiceDownError,
    TransientCardError,
)
from tests.helpers.tiers import require

YUBIKEY_5 = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
YUBIKEY_NEO = bytes.fromhex("3BFC1300008131FE15597562696B65794E454F7233E1")  # no card capabilities
PIVAPPLET_JCOP = bytes.fromhex("3BF81300008131FE454A434F5076323431B7")  # category 4A: not COMPACT-TLV


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("SCARD_W_REMOVED_CARD", CardRemovedError),
        ("SCARD_E_NO_SMARTCARD", CardRemovedError),
        ("SCARD_W_UNRESPONSIVE_CARD", CardRemovedError),
        ("SCARD_W_UNPOWERED_CARD", CardRemovedError),
        ("SCARD_E_READER_UNAVAILABLE", ReaderGoneError),
        ("SCARD_E_UNKNOWN_READER", ReaderGoneError),
        ("SCARD_E_NO_SERVICE", ServiceDownError),
        ("SCARD_E_SERVICE_STOPPED", ServiceDownError),
        ("SCARD_F_COMM_ERROR", ServiceDownError),
        ("SCARD_E_NO_READERS_AVAILABLE", EnvironmentProblem),
        ("SCARD_E_SHARING_VIOLATION", TransientCardError),
        ("SCARD_W_RESET_CARD", TransientCardError),
        ("SCARD_E_NOT_TRANSACTED", TransientCardError),
    ],
)
def test_error_mapping(name: str, kind: type[Exception]) -> None:
    code = next(c for c, n in PCSC_CODES.items() if n == name)
    error = error_for(code, "doing it", "Reader 00 00")
    assert type(error) is kind
    assert name in str(error)
    assert str(error).startswith("doing it")


def test_reader_gone_and_service_down_are_environment_problems_exit_3() -> None:
    assert error_for(0x80100017, "x").exit_code == 3
    assert error_for(0x8010001D, "x").exit_code == 3
    assert error_for(0x80100069, "x").exit_code == 1


def test_signed_windows_codes_are_mapped_like_unsigned_ones() -> None:
    signed = 0x80100069 - (1 << 32)
    assert isinstance(error_for(signed, "x"), CardRemovedError)
    assert code_name(signed) == "SCARD_W_REMOVED_CARD"


def test_unknown_code_is_a_card_error_with_its_number() -> None:
    error = error_for(0x80109999, "x")
    assert type(error) is CardError
    assert "0x80109999" in str(error)


def test_code_table_matches_pyscard() -> None:
    try:
        from smartcard import scard
    except ImportError as exc:  # pyscard is built by make setup
        require(f"pyscard is missing: {exc}", "pyscard code table check")
    for code, name in PCSC_CODES.items():
        # pcsc-lite defines SCARD_E_UNSUPPORTED_FEATURE as 0x8010001F (= SCARD_E_UNEXPECTED), not
        # Windows' 0x80100022; both numbers end as a CardError.
        if hasattr(scard, name) and name != "SCARD_E_UNSUPPORTED_FEATURE":
            assert getattr(scard, name) & 0xFFFFFFFF == code, name


@pytest.mark.parametrize(
    ("atr", "historical", "extended"),
    [
        (YUBIKEY_5, bytes.fromhex("8073C021C057597562694B6579"), True),
        (YUBIKEY_NEO, b"YubikeyNEOr3", False),
        (PIVAPPLET_JCOP, b"JCOPv241", False),
        # category 00: COMPACT-TLV followed by three status bytes; card capabilities 73 00 00 40
        (bytes.fromhex("3B888001" "0073000040009000" "00"), bytes.fromhex("0073000040009000"), True),
        # third software function byte without b7 (chaining only)
        (bytes.fromhex("3B858001" "8073000080" "00"), bytes.fromhex("8073000080"), False),
    ],
)
def test_atr_historical_bytes_and_extended_length(atr: bytes, historical: bytes, extended: bool) -> None:
    assert historical_bytes(atr) == historical
    assert atr_supports_extended(atr) is extended


@pytest.mark.parametrize("atr", [b"", b"\x3b", bytes.fromhex("3BFD13"), bytes.fromhex("3B8280017303")])
def test_malformed_atr_is_not_extended(atr: bytes) -> None:
    assert atr_supports_extended(atr) is False


def test_resolve_reader() -> None:
    names = ["Yubico YubiKey OTP+FIDO+CCID 00 00", "Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert resolve_reader("Virtual PCD 00 01", names) == "Virtual PCD 00 01"
    assert resolve_reader("yubikey", names) == names[0]
    with pytest.raises(EnvironmentProblem, match="several"):
        resolve_reader("Virtual", names)
    with pytest.raises(ReaderGoneError):
        resolve_reader("Gemalto", names)


# --- a mocked pyscard ---------------------------------------------------------------------------


class FakeScard:
    SCARD_SCOPE_USER = 0
    SCARD_SHARE_SHARED = 2
    SCARD_PROTOCOL_T0 = 1
    SCARD_PROTOCOL_T1 = 2
    SCARD_LEAVE_CARD = 0

    def __init__(self, **codes: int) -> None:
        self.codes = codes
        self.calls: list[str] = []
        self.connects = 0

    def _next(self, name: str) -> int:
        """The next code of ``name``_sequence if the test gave one, else the fixed code of ``name``."""
        sequence = self.codes.get(f"{name}_sequence")
        if isinstance(sequence, list) and sequence:
            return int(sequence.pop(0))
        return self.codes.get(name, 0)

    def SCardEstablishContext(self, scope: int) -> tuple[int, int]:
        return self._next("establish"), 7

    def SCardReleaseContext(self, ctx: int) -> int:
        self.calls.append("release")
        return 0

    def SCardListReaders(self, ctx: int, groups: list[str]) -> tuple[int, list[str]]:
        return self._next("list"), ["Reader A 00 00"]

    def SCardGetStatusChange(self, ctx: int, timeout: int, states: list[Any]) -> tuple[int, list[Any]]:
        return self._next("status_change"), [(n, 0x20, list(YUBIKEY_5)) for n, _ in states]

    def SCardConnect(self, ctx: int, reader: str, share: int, protocols: int) -> tuple[int, int, int]:
        self.connects += 1
        codes = self.codes.get("connect_sequence")
        code = codes.pop(0) if isinstance(codes, list) and codes else 0
        return code, 99, self.codes.get("protocol", 2)

    def SCardStatus(self, handle: int) -> tuple[int, str, int, int, list[int]]:
        return self.codes.get("status", 0), "Reader A 00 00", 0x34, 2, list(YUBIKEY_5)

    def SCardTransmit(self, handle: int, protocol: int, apdu: list[int]) -> tuple[int, list[int]]:
        return self.codes.get("transmit", 0), [0x90, 0x00]

    def SCardDisconnect(self, handle: int, disposition: int) -> int:
        self.calls.append(f"disconnect:{disposition}")
        return 0

    def SCardBeginTransaction(self, handle: int) -> int:
        return 0

    def SCardEndTransaction(self, handle: int, disposition: int) -> int:
        return 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeScard:
    scard = FakeScard()
    monkeypatch.setattr(transport, "_scard", lambda: scard)
    monkeypatch.setattr(transport, "_REINSERT_GRACE_S", 0.01)
    monkeypatch.setattr(transport, "_SERVICE_PROBE_S", 0.2)
    return scard


def test_connect_transmit_close(fake: FakeScard) -> None:
    card = transport.connect("reader a")
    assert card.atr == YUBIKEY_5 and card.supports_extended
    assert card.transmit(b"\x00\xa4\x04\x00") == b"\x90\x00"
    assert card.apdu_count == 1
    card.close()
    card.close()
    assert fake.calls == ["disconnect:0", "release"]  # SCARD_LEAVE_CARD, once


def test_a_t0_connection_takes_no_extended_apdus_whatever_the_atr_says(fake: FakeScard) -> None:
    """T=0 cannot carry extended Lc/Le (ISO/IEC 7816-3 12.2; OpenSC's sc_get_max_send_size stays at 255
    under T=0): a dual-protocol card that PC/SC runs with T=0 gets chains and 61xx pieces."""
    fake.codes["protocol"] = 1  # SCARD_PROTOCOL_T0
    card = transport.connect("Reader A 00 00")
    assert card.protocol == "T=0" and atr_supports_extended(card.atr) and not card.supports_extended
    card.close()


@pytest.mark.parametrize(
    ("atr", "t1"),
    [
        (YUBIKEY_5, True),
        (PIVAPPLET_JCOP, True),
        (bytes.fromhex("3B8D80018073C021C057597562694B6579F9"), True),  # YubiKey 5 NFC: T=0, then T=1
        (bytes.fromhex("3B0214 50"), False),  # no TD1: T=0 only
        (bytes.fromhex("3BDB960080 1F 030031C064B0F310000790 00 80"), False),  # T=0, then T=15 (global bytes)
        (bytes.fromhex("3B6800000073C84013009000"), False),  # TB1, TC1, no TD1
        (bytes.fromhex("3B80"), False),  # TD1 announced, missing
    ],
)
def test_atr_offers_t1(atr: bytes, t1: bool) -> None:
    assert atr_offers_t1(atr) is t1


def test_connect_retries_once_after_a_reinsertion_miss(fake: FakeScard) -> None:
    fake.codes["connect_sequence"] = [0x8010000C, 0]  # type: ignore[assignment]
    transport.connect("Reader A 00 00").close()
    assert fake.connects == 2


def test_connect_gives_up_after_the_second_miss(fake: FakeScard) -> None:
    fake.codes["connect_sequence"] = [0x8010000C, 0x80100069]  # type: ignore[assignment]
    with pytest.raises(CardRemovedError):
        transport.connect("Reader A 00 00")
    assert fake.connects == 2
    assert fake.calls == ["release"]


def test_transmit_error_is_typed(fake: FakeScard) -> None:
    card = transport.connect("Reader A 00 00")
    fake.codes["transmit"] = 0x80100069
    fake.codes["status"] = 0x80100069
    with pytest.raises(CardRemovedError):
        card.transmit(b"\x00\xa4\x04\x00")
    fake.codes["transmit"] = 0x8010001D
    with pytest.raises(ServiceDownError):
        card.transmit(b"\x00\xa4\x04\x00")


def test_service_down_at_context(fake: FakeScard) -> None:
    fake.codes["establish"] = 0x8010001D
    with pytest.raises(ServiceDownError):
        transport.list_readers()


def test_list_readers(fake: FakeScard) -> None:
    assert transport.list_readers() == [transport.ReaderState("Reader A 00 00", True, YUBIKEY_5)]
    fake.codes["list"] = 0x8010002E
    assert transport.list_readers() == []


def test_missing_pyscard_is_an_environment_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_smartcard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("smartcard"):
            raise ImportError("No module named 'smartcard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_smartcard)
    with pytest.raises(EnvironmentProblem) as caught:
        transport.list_readers()
    assert caught.value.exit_code == 3
    assert "pyscard" in str(caught.value)


def test_importing_transport_does_not_import_pyscard() -> None:
    import subprocess
    import sys

    code = "import sys, provision.card.transport; print('smartcard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"




# --- a dying service answers odd codes: a fresh context tells whether it is gone ---------------

SECURITY_VIOLATION, NO_SERVICE = 0x8010006A, 0x8010001D


def test_an_odd_code_from_a_dying_service_is_service_down_once_a_fresh_context_finds_none(fake: FakeScard) -> None:
    fake.codes["list_sequence"] = [SECURITY_VIOLATION, NO_SERVICE]  # type: ignore[assignment]
    with pytest.raises(ServiceDownError) as caught:
        transport.list_readers()
    assert "SCARD_W_SECURITY_VIOLATION, then SCARD_E_NO_SERVICE" in caught.value.message
    assert caught.value.exit_code == 3


def test_the_probe_also_recognises_a_service_that_refuses_new_contexts(fake: FakeScard) -> None:
    fake.codes["list_sequence"] = [SECURITY_VIOLATION]  # type: ignore[assignment]
    fake.codes["establish_sequence"] = [0, SECURITY_VIOLATION, 0x80100013]  # type: ignore[assignment]
    with pytest.raises(ServiceDownError):
        transport.list_readers()


def test_an_odd_code_from_a_live_service_keeps_its_meaning(fake: FakeScard) -> None:
    fake.codes["list_sequence"] = [SECURITY_VIOLATION]  # type: ignore[assignment]  # then the probe lists fine
    with pytest.raises(CardError) as caught:
        transport.list_readers()
    assert not isinstance(caught.value, EnvironmentProblem)
    assert "SCARD_W_SECURITY_VIOLATION" in caught.value.message


def test_a_service_that_keeps_answering_odd_codes_is_not_called_gone_and_the_probe_ends(fake: FakeScard) -> None:
    import time

    fake.codes["list"] = SECURITY_VIOLATION
    start = time.monotonic()
    with pytest.raises(CardError) as caught:
        transport.list_readers()
    assert not isinstance(caught.value, ServiceDownError)
    assert time.monotonic() - start < 2.0  # bounded by _SERVICE_PROBE_S (0.2 s here)


def test_the_watch_ends_with_service_down_when_the_service_dies_during_a_wait(fake: FakeScard) -> None:
    known = transport.list_readers()
    fake.codes["status_change_sequence"] = [SECURITY_VIOLATION]  # type: ignore[assignment]
    fake.codes["list_sequence"] = [NO_SERVICE]  # type: ignore[assignment]  # the probe's fresh context
    with pytest.raises(ServiceDownError):
        list(transport.watch(known, timeout=5))


def test_every_code_of_the_classification_table_is_a_pcsc_code() -> None:
    names = set(PCSC_CODES.values())
    for kind, codes in transport.CODE_KINDS.items():
        assert set(codes) <= names, kind


def test_watch_leaves_out_pnp_when_every_reader_slot_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """pcsc-lite waits on at most 16 states: 16 readers and the PnP pseudo-reader were refused
    (SCARD_E_INVALID_PARAMETER, the run ended). With 16 readers the wait leaves PnP out."""
    names = [f"Reader {i:02d} 00 00" for i in range(16)]
    asked: list[int] = []

    class Sixteen(FakeScard):
        def SCardListReaders(self, ctx: int, groups: list[str]) -> tuple[int, list[str]]:
            return 0, names

        def SCardGetStatusChange(self, ctx: int, timeout: int, states: list[Any]) -> tuple[int, list[Any]]:
            if len(states) > 16:
                return 0x80100004, []  # SCARD_E_INVALID_PARAMETER, as pcsc-lite answers
            asked.append(len(states))
            if timeout == 0:  # the initial status read
                return 0, [(n, 0x10, []) for n, _ in states]  # empty
            return 0, [(n, 0x20 | 0x2 if n == names[3] else 0x10, list(YUBIKEY_5)) for n, _ in states]

    monkeypatch.setattr(transport, "_scard", lambda: Sixteen())
    event = next(iter(transport.watch(timeout=5)))
    assert (event.kind, event.reader) == ("inserted", names[3])
    assert max(asked) == 16
