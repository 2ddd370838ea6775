"""PIV key slots, their certificate objects and the key algorithms (SP 800-73-4, SP 800-78-4).

Pure data and parsing; no card access. Job files name slots as hex (``9c``, ``82``) or by name
(``signature``, ``retired1``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    key_ref: int  # the key reference in APDUs: 0x9A, 0x9C, 0x82 ...
    name: str  # the name a job file may use
    title: str  # what an operator reads
    object_id: int  # the certificate data object: 0x5FC105 ...

    @property
    def hex(self) -> str:
        return f"{self.key_ref:02x}"

    @property
    def is_retired(self) -> bool:
        return 0x82 <= self.key_ref <= 0x95


def _build_slots() -> tuple[Slot, ...]:
    slots = [
        Slot(0x9A, "authentication", "PIV Authentication", 0x5FC105),
        Slot(0x9C, "signature", "Digital Signature", 0x5FC10A),
        Slot(0x9D, "key-management", "Key Management", 0x5FC10B),
        Slot(0x9E, "card-authentication", "Card Authentication", 0x5FC101),
    ]
    for n in range(1, 21):
        slots.append(
            Slot(0x81 + n, f"retired{n}", f"Retired Key Management {n}", 0x5FC10C + n)
        )
    return tuple(slots)


SLOTS: tuple[Slot, ...] = _build_slots()
_BY_NAME: dict[str, Slot] = {s.name: s for s in SLOTS} | {s.hex: s for s in SLOTS}
_BY_REF: dict[int, Slot] = {s.key_ref: s for s in SLOTS}

SLOT_HELP = "9a, 9c, 9d, 9e, 82-95, or authentication, signature, key-management, card-authentication, retired1-retired20"


def parse_slot(text: str) -> Slot | None:
    """``'9c'``, ``'9C'``, ``'0x9c'``, ``'signature'`` → the slot; anything else → None."""
    key = text.strip().lower()
    if key.startswith("0x"):
        key = key[2:]
    return _BY_NAME.get(key)


def slot_by_ref(key_ref: int) -> Slot:
    return _BY_REF[key_ref]


# Key algorithm identifiers in PIV APDUs (SP 800-78-4 table 6-2, YubiKey 5.7 additions).
@dataclass(frozen=True)
class Algorithm:
    code: int
    name: str  # Yubico's name, as printed by ykman and yubico-piv-tool
    key_type: str  # RSA, EC, Ed25519, X25519
    bits: int  # RSA modulus bits or curve size
    standard: bool  # in SP 800-78-4 (every PIV card); False: YubiKey 5.7 extension


ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm(0x06, "RSA1024", "RSA", 1024, True),
    Algorithm(0x07, "RSA2048", "RSA", 2048, True),
    Algorithm(0x05, "RSA3072", "RSA", 3072, False),
    Algorithm(0x16, "RSA4096", "RSA", 4096, False),
    Algorithm(0x11, "ECCP256", "EC", 256, True),
    Algorithm(0x14, "ECCP384", "EC", 384, True),
    Algorithm(0xE0, "ED25519", "Ed25519", 255, False),
    Algorithm(0xE1, "X25519", "X25519", 255, False),
)
ALGORITHM_BY_CODE: dict[int, Algorithm] = {a.code: a for a in ALGORITHMS}
ALGORITHM_BY_NAME: dict[str, Algorithm] = {a.name: a for a in ALGORITHMS}

# Targets an operator can judge a key against: the PIV standard, or a YubiKey 5.7.
TARGETS = ("sp800-78-4", "yubikey-5.7")


def find_algorithm(key_type: str, bits: int, target: str = "sp800-78-4") -> Algorithm | None:
    for alg in ALGORITHMS:
        if alg.key_type == key_type and alg.bits == bits and (alg.standard or target != "sp800-78-4"):
            return alg
    return None
