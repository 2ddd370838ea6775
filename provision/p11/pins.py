"""What a PKCS#11 token says about its user PIN, and the sentences provision says about it.

PKCS#11 has no PIN counter, only three flags in ``CK_TOKEN_INFO``: ``CKF_USER_PIN_COUNT_LOW`` (a
wrong PIN since the last good one), ``CKF_USER_PIN_FINAL_TRY`` and ``CKF_USER_PIN_LOCKED``. They
are lower bounds at best, and some middleware never set them (and answer a blocked PIN with
``CKR_PIN_INCORRECT``). So the tries left are known only as 0 (locked) or 1 (final try); otherwise
they are unknown, and unknown never counts as "enough to try again": a job sends at most one PIN.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from provision.i18n import msg

CKF_USER_PIN_COUNT_LOW = 0x00010000
CKF_USER_PIN_FINAL_TRY = 0x00020000
CKF_USER_PIN_LOCKED = 0x00040000

NOT_REPORTED = msg("the token does not report PIN tries left")

# python-pkcs11's exception classes → the PKCS#11 return values they stand for
_CKR = {"PinIncorrect": "CKR_PIN_INCORRECT", "PinLocked": "CKR_PIN_LOCKED", "PinInvalid": "CKR_PIN_INVALID",
        "PinLenRange": "CKR_PIN_LEN_RANGE", "PinExpired": "CKR_PIN_EXPIRED",
        "UserPinNotInitialized": "CKR_USER_PIN_NOT_INITIALIZED"}  # fmt: skip


def ckr_name(error: str) -> str:
    """The PKCS#11 return value a python-pkcs11 exception class (by name) stands for."""
    return _CKR.get(error, error)


@dataclass(frozen=True)
class PinFlags:
    count_low: bool
    final_try: bool
    locked: bool

    @classmethod
    def of(cls, token_flags: int) -> PinFlags:
        flags = int(token_flags)
        return cls(bool(flags & CKF_USER_PIN_COUNT_LOW), bool(flags & CKF_USER_PIN_FINAL_TRY),
                   bool(flags & CKF_USER_PIN_LOCKED))  # fmt: skip

    @property
    def tries_left(self) -> int | None:
        """What the flags prove: 0, 1, or None (the token does not say)."""
        return 0 if self.locked else (1 if self.final_try else None)

    @property
    def any(self) -> bool:
        return self.count_low or self.final_try or self.locked


def refusal_before_login(flags: PinFlags, min_pin_retries: int) -> str | None:
    """Why no PIN may be sent to this token (None: one C_Login may be made)."""
    if flags.locked:
        return (msg("the token reports its user PIN blocked (CKF_USER_PIN_LOCKED); no PIN was tried. Unblock it with the SO PIN or the issuer's tool first"))  # fmt: skip
    if flags.final_try and min_pin_retries >= 2:
        return (msg('the token reports one PIN try left (CKF_USER_PIN_FINAL_TRY), fewer than min_pin_retries ({min_pin_retries}); no PIN was tried. The last try belongs to the holder', min_pin_retries=min_pin_retries))  # fmt: skip
    return None


def note_before_login(flags: PinFlags) -> str | None:
    if flags.count_low and flags.tries_left is None:
        return msg('the token reports wrong PINs since the last good one (CKF_USER_PIN_COUNT_LOW) but not how many tries are left')
    if flags.tries_left is None:
        return msg('{not_reported} (no CKF_USER_PIN_* flag); the PIN was tried once', not_reported=NOT_REPORTED)
    return None


def refusal_after_login(error: str, after: PinFlags, module: str) -> tuple[str, int | None]:
    """The sentence and the tries left after ``C_Login`` failed with python-pkcs11's ``error``
    (its class name), given the flags the token reports afterwards. No PIN is ever in it."""
    ckr = _CKR.get(error, error)
    if error == "PinLocked" or after.locked:
        how = "(CKR_PIN_LOCKED)" if error == "PinLocked" else msg('({ckr}; the token now reports CKF_USER_PIN_LOCKED)', ckr=ckr)
        return (msg("the token's user PIN is blocked {how}; it was not tried again. Unblock it with the SO PIN or the issuer's tool before another run", how=how), 0)  # fmt: skip
    if error == "UserPinNotInitialized":
        return (msg("the token has no user PIN ({ckr}): it was initialised but its user PIN was never set, so no PIN could be checked and no try was spent. Set the user PIN with the SO PIN first (the issuer's tool, or `pkcs11-tool --module {module} --init-pin --login --login-type so`), then run again", ckr=ckr, module=module), None)  # fmt: skip
    if error in ("PinInvalid", "PinLenRange"):
        return (msg('the token refused the PIN ({ckr}): it does not have the form this token accepts (length or characters). It was not tried again; check the PIN the job gives', ckr=ckr), after.tries_left)  # fmt: skip
    if after.final_try:
        return msg('the token refused the PIN ({ckr}); one try is left (CKF_USER_PIN_FINAL_TRY). It was not tried again', ckr=ckr), 1
    if after.count_low:
        return (msg('the token refused the PIN ({ckr}) and reports wrong PINs since the last good one (CKF_USER_PIN_COUNT_LOW) but not how many tries are left. It was not tried again', ckr=ckr), None)  # fmt: skip
    return (msg("the token refused the PIN ({ckr}); {not_reported}, so the PIN may be wrong, or it may already be blocked (some middleware answer a blocked PIN this way). It was not tried again. Before another run, check the PIN's state with the issuer's tool or `pkcs11-tool --module {module} --list-token-slots` (it shows 'user PIN locked' where the token says so), and check the PIN the job gives: every run with a wrong PIN costs a try", ckr=ckr, not_reported=NOT_REPORTED, module=module), None)  # fmt: skip


def hold_id(token_serial: str | None, token_label: str | None) -> str:
    """The 32 hex digits a token's PIN hold is kept under: the journal's PIN holds and ``provision
    card clear-pin-hold`` know a card by its serial or its 32-hex CHUID GUID, a token by this (its
    serial and label, whichever module reaches it)."""
    return hashlib.sha256(f"pkcs11 token\0{token_serial or ''}\0{token_label or ''}".encode()).hexdigest()[:32]
