"""What is on a PIV card, read without changing anything: ``provision card info``.

``read_card_info(session)`` sends only reading commands (SELECT is the caller's; then GET VERSION,
GET SERIAL, the PIN-status VERIFY without data, GET METADATA, GET DATA): no PIN, no management key,
no write, no try spent. It has to describe cards we did not make, so every answer a real card may
give is expected: a missing object (``6A82``), a command the card does not have (``6D00`` and
friends), a retired slot the card does not have (``6A86`` beyond 8C on some applets), and garbage.
A failure in one field or one slot is recorded as text for that field or slot and the rest is still
read; only a card that leaves the reader (``CardRemovedError``) ends the reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from provision.bundle import CertInfo, cert_info
from provision.display import at_column
from provision.errors import CardNotSupportedError, CardProtocolError, CardStatusError
from provision.i18n import N_, localize
from provision.i18n import gettext as _
from provision.piv import tlv
from provision.piv.profiles import SLOT_REFUSED_SW
from provision.piv.session import (
    KEY_REF_MANAGEMENT,
    KEY_REF_PUK,
    MANAGEMENT_KEY_ALGORITHMS,
    PIN_POLICIES,
    SLOT_NAMES_OBJECT_ID,
    TOUCH_POLICIES,
    PivSession,
    PublicKey,
    SlotMetadata,
    parse_certificate_object,
)
from provision.piv.slots import SLOTS, Slot

T = TypeVar("T")

_PIN_POLICY_NAMES = {v: k for k, v in PIN_POLICIES.items()}
_TOUCH_POLICY_NAMES = {v: k for k, v in TOUCH_POLICIES.items()}
_MGMT_KEY_TYPE_NAMES = {v: k for k, v in MANAGEMENT_KEY_ALGORITHMS.items()}
_MGMT_KEY_TITLES = {"3des": "3DES", "aes128": "AES-128", "aes192": "AES-192", "aes256": "AES-256"}
_ORIGIN_NAMES = {1: "generated", 2: "imported"}

# "stored": the project's slot-name object is on the card; "none": the card has no such object
# (on cards that answer 6A82 for every vendor object this cannot be told from "refused" without a
# write, so it is reported as none); "refused": the card refuses vendor objects (6A86/6A81/6A84);
# "unreadable": the object is there but could not be read or parsed (see ``errors``).
SlotNamesState = Literal["stored", "none", "refused", "unreadable"]


def _version_text(version: tuple[int, int, int] | None) -> str | None:
    return None if version is None else ".".join(str(v) for v in version)


def _spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class KeyInfo:
    """A private key's description from GET METADATA (YubiKey 5.3+)."""

    algorithm: str  # "RSA2048", "ECCP256", "ED25519" ..., or "0xNN" for codes we do not know
    algorithm_code: int
    pin_policy: str | None  # "never", "once", "always" (or "0xNN"); None: not reported
    touch_policy: str | None  # "never", "always", "cached" (or "0xNN")
    origin: str | None  # "generated" (on the card), "imported" (or "0xNN")

    @classmethod
    def from_metadata(cls, meta: SlotMetadata) -> KeyInfo:
        info = meta.algorithm_info

        def named(names: dict[int, str], value: int | None) -> str | None:
            return None if value is None else names.get(value, f"0x{value:02X}")

        return cls(
            algorithm=info.name if info is not None else f"0x{meta.algorithm:02X}",
            algorithm_code=meta.algorithm,
            pin_policy=named(_PIN_POLICY_NAMES, meta.pin_policy),
            touch_policy=named(_TOUCH_POLICY_NAMES, meta.touch_policy),
            origin=named(_ORIGIN_NAMES, meta.origin),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "algorithm": self.algorithm,
            "pin_policy": self.pin_policy,
            "touch_policy": self.touch_policy,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class SlotInfo:
    """One PIV key slot as the card describes it."""

    slot: Slot
    supported: bool = True  # False: the card has no such slot (refused with 6A86/6A81)
    certificate: CertInfo | None = None
    compressed: bool | None = None  # the certificate is stored gzip (CertInfo 01); None: no certificate
    key: KeyInfo | None = None  # None: empty slot, or the card has no GET METADATA
    key_matches_certificate: bool | None = None  # None: not both known
    public_key_sha256: str | None = None  # SHA-256 of the key's SubjectPublicKeyInfo (F7); None: not known
    slot_name: str | None = None  # from the project's slot-name object
    error: str | None = None  # what could not be read, in words
    certificate_unreadable: bool = False  # the certificate object is there but could not be read

    @property
    def key_ref(self) -> int:
        return self.slot.key_ref

    @property
    def occupied(self) -> bool:
        """Worth showing to a person: something is in it, or something is wrong with it."""
        return any(value is not None for value in (self.certificate, self.key, self.slot_name, self.error))

    def to_json(self) -> dict[str, object]:
        return {
            "slot": self.slot.hex,
            "name": self.slot.name,
            "title": self.slot.title,
            "supported": self.supported,
            "certificate": self.certificate.to_json() if self.certificate is not None else None,
            "compressed": self.compressed,
            "key": self.key.to_json() if self.key is not None else None,
            "key_matches_certificate": self.key_matches_certificate,
            "slot_name": self.slot_name,
            "error": self.error,
        }


@dataclass(frozen=True)
class CardInfo:
    """Everything ``card info`` shows. Fields a card cannot tell are None."""

    serial: int | None  # unsigned (GET SERIAL); None on cards without it
    version: tuple[int, int, int] | None  # GET VERSION; None on cards without it
    chuid_guid: str | None  # lowercase hex
    pin_verified: bool  # the PIN is already verified in this session
    pin_tries_left: int | None  # None: already verified, or unreadable (see ``errors``)
    pin_tries_total: int | None  # from GET METADATA 80
    pin_is_default: bool | None
    puk_tries_left: int | None  # from GET METADATA 81
    puk_tries_total: int | None
    puk_is_default: bool | None
    management_key_type: str | None  # "3des", "aes128", "aes192", "aes256" (GET METADATA 9B)
    management_key_is_default: bool | None
    metadata_supported: bool  # the card answers GET METADATA (YubiKey 5.3+)
    slot_names: SlotNamesState
    slots: tuple[SlotInfo, ...]  # every PIV key slot, 9A 9C 9D 9E 82 … 95, in that order
    errors: tuple[str, ...] = ()  # card-level fields that could not be read

    def slot(self, key_ref: int) -> SlotInfo:
        for info in self.slots:
            if info.key_ref == key_ref:
                return info
        raise KeyError(f"{key_ref:02x} is not a PIV key slot")

    def to_json(self) -> dict[str, object]:
        """The document of ``provision card info --json``."""
        return {
            "serial": self.serial,
            "version": _version_text(self.version),
            "chuid_guid": self.chuid_guid,
            "pin": {
                "verified": self.pin_verified,
                "tries_left": self.pin_tries_left,
                "tries_total": self.pin_tries_total,
                "is_default": self.pin_is_default,
            },
            "puk": {
                "tries_left": self.puk_tries_left,
                "tries_total": self.puk_tries_total,
                "is_default": self.puk_is_default,
            },
            "management_key": {
                "type": self.management_key_type,
                "is_default": self.management_key_is_default,
            },
            "metadata_supported": self.metadata_supported,
            "slot_names": self.slot_names,
            "slot_names_object": f"{SLOT_NAMES_OBJECT_ID:06X}",
            "slots": [s.to_json() for s in self.slots],
            "errors": list(self.errors),
        }

    def info_lines(self) -> list[str]:
        """The same, for people: one fact per line, slots that hold nothing left out, in the chosen
        language (``--json`` keeps the neutral values)."""
        none = _("none")
        lines = [
            _label(
                _("Serial:"),
                str(self.serial) if self.serial is not None else _("not available (no GET SERIAL)"),
            ),
            _label(_("Firmware:"), _version_text(self.version) or _("not available (no GET VERSION)")),
            _label(_("CHUID GUID:"), self.chuid_guid or none),
            _label(_("PIN:"), self._pin_text()),
        ]
        if self.puk_tries_left is not None:
            lines.append(
                _label(
                    _("PUK:"),
                    self._tries_text(self.puk_tries_left, self.puk_tries_total, self.puk_is_default),
                )
            )
        if self.management_key_type is not None:
            mgmt = _MGMT_KEY_TITLES.get(self.management_key_type, self.management_key_type)
            if self.management_key_is_default:
                mgmt += _(", factory default (change it before the card leaves)")
            lines.append(_label(_("Management key:"), mgmt))
        lines.append(_label(_("Slot names:"), self._slot_names_text()))
        if not self.metadata_supported:
            lines.append(
                _label(
                    _("Key metadata:"), _("not available on this card (no GET METADATA): keys are not listed")
                )
            )

        empty: list[str] = []
        unsupported: list[str] = []
        for info in self.slots:
            if not info.supported:
                unsupported.append(info.slot.hex.upper())
            elif info.occupied:
                lines.extend(_slot_lines(info, self.metadata_supported))
            else:
                empty.append(info.slot.hex.upper())
        if empty:
            lines.append(_label(_("Empty slots:"), " ".join(empty)))
        if unsupported:
            lines.append(_label(_("Not on this card:"), " ".join(unsupported)))
        lines.extend(_label(_("Could not read:"), localize(error)) for error in self.errors)
        return lines

    @staticmethod
    def _tries_text(left: int, total: int | None, default: bool | None) -> str:
        if total is not None:
            text = _("{left} tries left of {total}").format(left=left, total=total)
        else:
            text = _("{left} tries left").format(left=left)
        if left == 0:
            text += _(" (blocked)")
        if default:
            text += _(", factory default")
        return text

    def _pin_text(self) -> str:
        if self.pin_verified:
            return _("verified in this session (tries left not shown)")
        if self.pin_tries_left is None:
            return _("tries left unknown")
        return self._tries_text(self.pin_tries_left, self.pin_tries_total, self.pin_is_default)

    def _slot_names_text(self) -> str:
        where = f"{SLOT_NAMES_OBJECT_ID:06X}"
        if self.slot_names == "stored":
            return _("on the card (object {object})").format(object=where)
        if self.slot_names == "refused":
            return _(
                "not on the card: it refuses vendor objects (object {object}); they live in the journal"
            ).format(object=where)
        if self.slot_names == "unreadable":
            return _("object {object} could not be read").format(object=where)
        return _("not on the card (no object {object})").format(object=where)


# The operator's names of the slots (piv/slots.py keeps the English ones), for the catalog.
_SLOT_TITLES = (
    N_("PIV Authentication"),
    N_("Digital Signature"),
    N_("Key Management"),
    N_("Card Authentication"),
)
_KEY_ORIGINS = (N_("generated"), N_("imported"))
_LABEL_CELLS = 17  # "Management key:  " — the values' column in English


def _label(label: str, value: str, *, cells: int = _LABEL_CELLS) -> str:
    return at_column(label, value, cells)


def _slot_title(slot: Slot) -> str:
    if slot.is_retired:
        return _("Retired Key Management {n}").format(n=slot.key_ref - 0x81)
    return _(slot.title)


def _slot_lines(info: SlotInfo, metadata_supported: bool) -> list[str]:
    title = _("Slot {slot} ({title})").format(slot=info.slot.hex.upper(), title=_slot_title(info.slot))
    if info.slot_name is not None:
        lines = [_('{title}: "{name}"').format(title=title, name=info.slot_name)]
    else:
        lines = [_("{title}:").format(title=title)]

    def line(label: str, value: str) -> None:
        lines.append("  " + _label(label, value, cells=_LABEL_CELLS - 2))

    cert = info.certificate
    if cert is not None:
        line(_("Certificate:"), cert.subject)
        line(_("Issuer:"), cert.issuer)
        line(_("Serial:"), str(cert.serial))
        line(_("Valid:"), _("{start} to {end} UTC").format(
            start=f"{cert.not_before:%Y-%m-%d %H:%M}", end=f"{cert.not_after:%Y-%m-%d %H:%M}"))  # fmt: skip
        line("SHA-256:", cert.sha256)
        if info.compressed:
            line(_("Stored:"), _("gzip-compressed"))
    elif info.key is not None or info.certificate_unreadable:
        # An object that could not be read (the error says why) is not an absent certificate.
        line(_("Certificate:"), _("unknown") if info.certificate_unreadable else _("none"))
    key = info.key
    if key is not None:
        parts = [key.algorithm]
        if key.origin is not None:
            parts.append(_(key.origin) if key.origin in _KEY_ORIGINS else key.origin)
        if key.pin_policy is not None:
            parts.append(_("PIN {policy}").format(policy=key.pin_policy))
        if key.touch_policy is not None:
            parts.append(_("touch {policy}").format(policy=key.touch_policy))
        line(_("Key:"), ", ".join(parts))
    elif cert is not None and metadata_supported:
        # An unreadable key (the error says why) is not an absent one.
        line(_("Key:"), _("none") if info.error is None else _("unknown"))
    if info.key_matches_certificate is False:
        line(_("WARNING:"), _("the key in the slot does not match the certificate"))
    if info.error is not None:
        line(_("Could not read:"), localize(info.error))
    return lines


# --- reading ---------------------------------------------------------------------------------


class _Reader:
    """One pass over a card; collects card-level errors instead of raising them."""

    def __init__(self, session: PivSession) -> None:
        self.session = session
        self.errors: list[str] = []

    def attempt(self, what: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except (CardStatusError, CardProtocolError) as exc:
            self.errors.append(f"{what}: {exc}")
            return None

    def metadata(self, ref: int, what: str) -> tuple[SlotMetadata | None, bool]:
        """(metadata or None, whether the card has GET METADATA at all)."""
        try:
            return self.session.get_metadata(ref), True
        except CardNotSupportedError:
            return None, False
        except (CardStatusError, CardProtocolError) as exc:
            self.errors.append(f"{what}: {exc}")
            return None, True


def read_card_info(session: PivSession) -> CardInfo:
    """Describe the card behind ``session`` (already SELECTed) without changing anything on it.

    Raises only what ends the conversation with the card (``CardRemovedError``, a reader or
    service failure); everything else becomes text in ``CardInfo.errors`` or ``SlotInfo.error``.
    """
    reader = _Reader(session)
    version = reader.attempt("firmware version", session.version)
    serial = reader.attempt("serial", session.serial)
    guid = reader.attempt("CHUID", session.read_chuid)
    # The status form of VERIFY: costs no try (PIV.md), and tells "already verified" apart.
    pin_status: int | None = None
    pin_verified = False
    try:
        pin_status = session.pin_tries()
        pin_verified = pin_status is None
    except (CardStatusError, CardProtocolError) as exc:
        reader.errors.append(f"PIN status: {exc}")

    mgmt, metadata_supported = reader.metadata(KEY_REF_MANAGEMENT, "management key metadata")
    pin_meta = puk_meta = None
    if metadata_supported:
        pin_meta, _ = reader.metadata(0x80, "PIN metadata")
        puk_meta, _ = reader.metadata(KEY_REF_PUK, "PUK metadata")

    names, slot_names = _read_slot_names(reader)
    slots = _read_slots(reader, metadata_supported, names)

    return CardInfo(
        serial=serial,
        version=version,
        chuid_guid=guid,
        pin_verified=pin_verified,
        pin_tries_left=pin_status,
        pin_tries_total=pin_meta.retries_total if pin_meta is not None else None,
        pin_is_default=pin_meta.is_default if pin_meta is not None else None,
        puk_tries_left=puk_meta.retries_left if puk_meta is not None else None,
        puk_tries_total=puk_meta.retries_total if puk_meta is not None else None,
        puk_is_default=puk_meta.is_default if puk_meta is not None else None,
        management_key_type=(
            _MGMT_KEY_TYPE_NAMES.get(mgmt.algorithm, f"0x{mgmt.algorithm:02X}") if mgmt is not None else None
        ),
        management_key_is_default=mgmt.is_default if mgmt is not None else None,
        metadata_supported=metadata_supported,
        slot_names=slot_names,
        slots=slots,
        errors=tuple(reader.errors),
    )


def _read_slot_names(reader: _Reader) -> tuple[dict[int, str], SlotNamesState]:
    before = len(reader.errors)
    names = reader.attempt(f"slot-name object {SLOT_NAMES_OBJECT_ID:06X}", reader.session.read_slot_names)
    if len(reader.errors) > before:
        return {}, "unreadable"
    if names is None:
        return {}, "refused"
    return names, "stored" if names else "none"


def _read_slots(reader: _Reader, metadata_supported: bool, names: dict[int, str]) -> tuple[SlotInfo, ...]:
    out: list[SlotInfo] = []
    retired_refused = False
    for slot in SLOTS:
        if retired_refused and slot.is_retired:
            # The card said it has no retired slot this high: it has none beyond either.
            out.append(SlotInfo(slot, supported=False, slot_name=names.get(slot.key_ref)))
            continue
        info = _read_slot(reader.session, slot, metadata_supported, names.get(slot.key_ref))
        if not info.supported and slot.is_retired:
            retired_refused = True
        out.append(info)
    return tuple(out)


def _read_slot(session: PivSession, slot: Slot, metadata_supported: bool, name: str | None) -> SlotInfo:
    errors: list[str] = []
    key: KeyInfo | None = None
    public_key: PublicKey | None = None
    if metadata_supported:
        meta: SlotMetadata | None = None
        try:
            meta = session.get_metadata(slot.key_ref)
        except CardNotSupportedError:
            # 6A81 and its like for this slot only (the card answered F7 9B): a retired slot the
            # card does not have; for the four standard slots, only no metadata for this one.
            if slot.is_retired:
                return SlotInfo(slot, supported=False, slot_name=name)
        except CardStatusError as exc:
            if exc.sw in SLOT_REFUSED_SW and slot.is_retired:
                return SlotInfo(slot, supported=False, slot_name=name)
            errors.append(f"key metadata: {exc}")
        except CardProtocolError as exc:
            errors.append(f"key metadata: {exc}")
        if meta is not None:
            key = KeyInfo.from_metadata(meta)
            public_key = meta.public_key

    certificate: CertInfo | None = None
    compressed: bool | None = None
    matches: bool | None = None
    unreadable = False
    try:
        body = session.get_object(slot.object_id)
        der = parse_certificate_object(body) if body is not None else None
        if der is not None and body is not None:
            # parse_certificate_object inflates gzip: a stored value unlike the DER was compressed.
            compressed = tlv.parse_dict(body)[0x70] != der
            cert = x509.load_der_x509_certificate(der)
            certificate = cert_info(cert)
            cert_spki = _spki_of(cert)
            if public_key is not None and cert_spki is not None:
                matches = _spki(public_key) == cert_spki
    except CardStatusError as exc:
        if exc.sw in SLOT_REFUSED_SW and slot.is_retired and key is None:
            return SlotInfo(slot, supported=False, slot_name=name)
        errors.append(f"certificate: {exc}")
        unreadable = True
    except CardProtocolError as exc:
        errors.append(f"certificate: {exc}")
        unreadable = True
    except ValueError as exc:
        errors.append(f"certificate: the object holds no valid X.509 certificate ({exc})")
        unreadable = True
    return SlotInfo(
        slot,
        certificate=certificate,
        compressed=compressed,
        key=key,
        key_matches_certificate=matches,
        public_key_sha256=hashlib.sha256(_spki(public_key)).hexdigest() if public_key is not None else None,
        slot_name=name,
        error="; ".join(errors) if errors else None,
        certificate_unreadable=unreadable,
    )


def _spki_of(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm):  # a key cryptography cannot load: nothing to compare
        return None
