"""The read-only commands that say which PIV card is in a reader: SELECT, GET SERIAL, GET DATA of
the CHUID, as the exact APDUs sent through a channel.

One definition for both users: ``PivSession`` (which parses the answers) and the early read at
start-up (``provision.early``), which sends them before the rest of the program is imported and so
must not pull in cryptography on its way to the first APDU.
"""

from __future__ import annotations

from provision.card.apdu import ApduChannel
from provision.piv import tlv

PIV_AID = bytes.fromhex("A000000308000010000100")

INS_SELECT = 0xA4
INS_GET_DATA = 0xCB
INS_GET_SERIAL = 0xF8

OBJECT_ID_CHUID = 0x5FC102


def object_id_tlv(object_id: int) -> bytes:
    return tlv.encode(0x5C, tlv.tag_bytes(object_id))


def send_select(channel: ApduChannel) -> tuple[bytes, int]:
    """SELECT the PIV application by its full AID: (answer, SW)."""
    return channel.send_raw_sw(INS_SELECT, 0x04, 0x00, PIV_AID, le=0)


def send_get_serial(channel: ApduChannel) -> tuple[bytes, int]:
    """YubiKey 5 GET SERIAL: (answer, SW)."""
    return channel.send_raw_sw(INS_GET_SERIAL, 0, 0, le=0)


def send_get_object(channel: ApduChannel, object_id: int) -> tuple[bytes, int]:
    """GET DATA ``00 CB 3F FF 5C <id>``: (answer, SW)."""
    return channel.send_raw_sw(INS_GET_DATA, 0x3F, 0xFF, object_id_tlv(object_id), le=0)


def send_identity_reads(channel: ApduChannel) -> None:
    """The APDUs ``PivSession`` sends to identify a card (select, serial, CHUID), in its order, with
    nothing parsed: the early read records the answers for the session to parse (backend.PivCard).
    A card that refuses SELECT is asked nothing more: the session stops there too."""
    if send_select(channel)[1] != 0x9000:
        return
    send_get_serial(channel)
    send_get_object(channel, OBJECT_ID_CHUID)
