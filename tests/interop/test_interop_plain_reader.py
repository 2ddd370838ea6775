"""`provision sim serve` on a plain vpcd reader, as anyone gets it: every peer must use the card.

The reader is named "Virtual PCD 00 00", not like a YubiKey's. ykman decides USB or NFC from the
ATR (yubikit ``ScardSmartCardConnection``: T0 with high nibble F is USB) and needs a USB product id
for USB, which only a reader named "Yubico YubiKey ..." yields. `sim serve` therefore answers by
default with the ATR of a YubiKey 5 NFC in a contactless reader; ``--atr usb`` brings back the
USB ATR, and then ykman refuses the plain reader, as it refuses a real YubiKey's USB ATR there.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.helpers.interop_peers import (
    DEFAULT_PIN,
    PLAIN_READER,
    InteropPcscd,
    Material,
    Peers,
    der,
    opensc_key_id,
    parse_ykman_info,
    ykman_slot_header,
)
from tests.helpers.pcsc_harness import Cards, card_present, wait_for
from tests.helpers.product import product_env, provision_cmd

pytestmark = pytest.mark.interop

NFC_ATR = "3B8D80018073C021C057597562694B6579F9"
USB_ATR = "3BFD1300008131FE158073C021C057597562694B657940"


def _serve(pcscd: InteropPcscd, tmp_path: Path, *extra: str) -> Iterator[Peers]:
    reader = pcscd.reader_name(PLAIN_READER)
    assert pcscd.is_plain(PLAIN_READER) and "yubikey" not in reader.lower()
    server = subprocess.Popen(
        [*provision_cmd(), "sim", "serve", "--port", str(pcscd.port(PLAIN_READER)), "--serial", "7654321",
         "--state", str(tmp_path / "card.json"), *extra],
        env=product_env(pcscd.env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: card_present(reader), 15, f"the served card in {reader}")
        yield Peers(pcscd, reader, None, tmp_path, opensc_reader=reader)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        wait_for(lambda: not card_present(reader), 10, f"{reader} empty")
    assert server.returncode == 0


@pytest.fixture
def served(pcscd: InteropPcscd, cards: Cards, tmp_path: Path) -> Iterator[Peers]:
    yield from _serve(pcscd, tmp_path)


@pytest.fixture
def served_usb_atr(pcscd: InteropPcscd, cards: Cards, tmp_path: Path) -> Iterator[Peers]:
    yield from _serve(pcscd, tmp_path, "--atr", "usb")


def _atr(peers: Peers) -> str:
    from provision.card.transport import list_readers

    return next(r.atr for r in list_readers() if r.name == peers.reader).hex().upper()


def test_ykman_uses_sim_serve_on_a_plain_reader(served: Peers) -> None:
    assert _atr(served) == NFC_ATR
    info = served.ykman("piv info (plain reader)", "piv", "info").check()
    assert "PIV version:              5.7.1" in info.stdout, info.stdout
    assert "PIN tries remaining:      3/3" in info.stdout
    assert "Management key algorithm: AES192" in info.stdout


def test_yubico_piv_tool_and_opensc_use_sim_serve_on_a_plain_reader(served: Peers) -> None:
    status = served.piv_tool("status (plain reader)", "-a", "status").check()
    assert "Version:\t5.7.1" in status.stdout and "Serial Number:\t7654321" in status.stdout, status.stdout
    verified = served.piv_tool("verify-pin (plain reader)", "-a", "verify-pin", "-P", DEFAULT_PIN).check()
    assert "Successfully verified PIN" in verified.stdout + verified.stderr
    dump = served.pkcs15_tool("dump (plain reader)", "--dump").check()
    assert "PIV" in dump.stdout, dump.stdout
    slots = served.pkcs11_tool("list-slots (plain reader)", "--list-slots").check()
    assert served.reader in slots.stdout, slots.stdout


def test_the_usb_atr_on_a_plain_reader_is_what_ykman_refuses(served_usb_atr: Peers) -> None:
    """The reason for the default: a USB YubiKey's ATR in a reader that is not a YubiKey's."""
    assert _atr(served_usb_atr) == USB_ATR
    refused = served_usb_atr.ykman("piv info (USB ATR, plain reader)", "piv", "info")
    assert refused.returncode != 0
    assert "Failed to connect" in refused.stdout + refused.stderr


def test_every_peer_reads_what_provision_run_loaded_on_a_plain_reader(served: Peers, material: Material) -> None:
    """The whole way a user takes: `sim serve` on a plain reader, `provision run` loads it, and
    ykman, yubico-piv-tool and OpenSC each read the certificate the product wrote."""
    cert = material.cert("p256", 0x9A, "plain-reader")
    served.load(0x9A, material.key("p256"), cert, serial=7654321)
    info = served.ykman("piv info (plain reader, loaded)", "piv", "info").check()
    entry = parse_ykman_info(info.stdout).get(ykman_slot_header(0x9A))
    assert entry is not None, info.stdout
    assert entry["Fingerprint"] == cert.fingerprint(hashes.SHA256()).hex()
    out = served.workdir / "read.der"
    served.piv_tool("read-certificate (plain reader)", "-a", "read-certificate", "-s", "9a", "-K", "DER",
                    "-o", str(out)).check()  # fmt: skip
    assert out.read_bytes() == der(cert)
    read = served.pkcs15_tool("read-certificate (plain reader)", "--read-certificate", opensc_key_id(0x9A)).check()
    assert x509.load_pem_x509_certificate(read.stdout.encode()) == cert
