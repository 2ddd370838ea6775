"""The persistent memory of a simulated PIV card: what a real card keeps in EEPROM.

PIN, PUK, management key, retry counters, private keys (PKCS#8 DER) and data objects, as one JSON
document. ``save_state`` replaces the file atomically (temporary file, fsync, rename, fsync of the
directory), so a process killed at any instant leaves either the old or the new state, never a mix:
killing the simulator is pulling the card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import UsageError
from provision.fsutil import write_atomically
from provision.i18n import msg

FORMAT_VERSION = 1

DEFAULT_PIN = b"123456"
DEFAULT_PUK = b"12345678"
DEFAULT_MGMT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")

MGMT_TDES = 0x03
MGMT_AES128 = 0x08
MGMT_AES192 = 0x0A
MGMT_AES256 = 0x0C


def pad_pin(value: bytes) -> bytes:
    """A PIN or PUK as the card stores and compares it: padded with FF to 8 bytes."""
    return value.ljust(8, b"\xff")


@dataclass
class KeyRecord:
    """A private key in a slot, with its resolved policies (never 'default')."""

    algorithm: int
    pin_policy: int  # 1 never, 2 once, 3 always
    touch_policy: int  # 1 never, 2 always, 3 cached
    origin: int  # 1 generated on the card, 2 imported
    private_der: bytes  # PKCS#8 DER

    def to_json(self) -> dict[str, object]:
        return {
            "algorithm": self.algorithm,
            "pin_policy": self.pin_policy,
            "touch_policy": self.touch_policy,
            "origin": self.origin,
            "private_der": self.private_der.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> KeyRecord:
        return cls(
            algorithm=_int(data["algorithm"]),
            pin_policy=_int(data["pin_policy"]),
            touch_policy=_int(data["touch_policy"]),
            origin=_int(data["origin"]),
            private_der=bytes.fromhex(str(data["private_der"])),
        )


@dataclass
class CardState:
    serial: int
    firmware: tuple[int, int, int]
    profile: str
    pin: bytes  # padded to 8 bytes
    puk: bytes  # padded to 8 bytes
    pin_tries_max: int
    pin_tries_left: int
    puk_tries_max: int
    puk_tries_left: int
    mgmt_algorithm: int
    mgmt_key: bytes
    mgmt_touch: bool = False
    keys: dict[int, KeyRecord] = field(default_factory=dict)  # slot → key
    objects: dict[int, bytes] = field(default_factory=dict)  # object id → content of tag 53

    @property
    def pin_is_default(self) -> bool:
        return self.pin == pad_pin(DEFAULT_PIN)

    @property
    def puk_is_default(self) -> bool:
        return self.puk == pad_pin(DEFAULT_PUK)

    @property
    def mgmt_is_default(self) -> bool:
        return self.mgmt_key == DEFAULT_MGMT_KEY

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "serial": self.serial,
            "firmware": list(self.firmware),
            "profile": self.profile,
            "pin": self.pin.hex(),
            "puk": self.puk.hex(),
            "pin_tries_max": self.pin_tries_max,
            "pin_tries_left": self.pin_tries_left,
            "puk_tries_max": self.puk_tries_max,
            "puk_tries_left": self.puk_tries_left,
            "mgmt_algorithm": self.mgmt_algorithm,
            "mgmt_key": self.mgmt_key.hex(),
            "mgmt_touch": self.mgmt_touch,
            "keys": {f"{slot:02x}": rec.to_json() for slot, rec in sorted(self.keys.items())},
            "objects": {f"{oid:06x}": value.hex() for oid, value in sorted(self.objects.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CardState:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported simulated-card state format {data.get('format')!r}")
        fw = data["firmware"]
        if not isinstance(fw, list) or len(fw) != 3:
            raise ValueError("state: firmware must be a list of 3 integers")
        keys = data.get("keys", {})
        objects = data.get("objects", {})
        if not isinstance(keys, dict) or not isinstance(objects, dict):
            raise ValueError("state: keys and objects must be mappings")
        return cls(
            serial=_int(data["serial"]),
            firmware=(_int(fw[0]), _int(fw[1]), _int(fw[2])),
            profile=str(data["profile"]),
            pin=bytes.fromhex(str(data["pin"])),
            puk=bytes.fromhex(str(data["puk"])),
            pin_tries_max=_int(data["pin_tries_max"]),
            pin_tries_left=_int(data["pin_tries_left"]),
            puk_tries_max=_int(data["puk_tries_max"]),
            puk_tries_left=_int(data["puk_tries_left"]),
            mgmt_algorithm=_int(data["mgmt_algorithm"]),
            mgmt_key=bytes.fromhex(str(data["mgmt_key"])),
            mgmt_touch=bool(data.get("mgmt_touch", False)),
            keys={int(k, 16): KeyRecord.from_json(v) for k, v in keys.items()},
            objects={int(k, 16): bytes.fromhex(str(v)) for k, v in objects.items()},
        )


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"state: expected an integer, found {value!r}")
    return value


def load_state(path: Path) -> CardState | None:
    """The state saved at ``path``, or None when there is no file yet."""
    if path.is_dir():
        raise UsageError(msg('the card state {path} is a directory; name a file (it is made on first use)', path=path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(msg('the card state {path} cannot be read ({strerror}); name a file this user can read', path=path, strerror=exc.strerror)) from None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a simulated-card state file")
    return CardState.from_json(data)


def save_state(path: Path, state: CardState) -> None:
    """Replace ``path`` with ``state`` atomically and durably."""
    payload = json.dumps(state.to_json(), indent=1, sort_keys=True).encode("utf-8")
    write_atomically(path, payload, 0o600)  # the state holds the card's PIN and keys
