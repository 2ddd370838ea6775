"""PKCS#11 modules, each loaded and initialised once per process.

A module is a shared library with process-wide state: a second ``C_Initialize`` fails, so every
user of a module goes through ``open_module``. ``C_Initialize`` is called without locking
callbacks, which tells the module that the application serialises its calls: ``Module.lock`` does
that (one token job at a time per module; loads take milliseconds to seconds).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import CardError, CardRemovedError, EnvironmentProblem
from provision.i18n import msg


@dataclass
class Module:
    path: Path
    lib: Any  # pkcs11.lib
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def description(self) -> str:
        return f"{self.lib.manufacturer_id} {self.lib.library_description}".strip()


_modules: dict[Path, Module] = {}
_guard = threading.Lock()


def open_module(path: Path) -> Module:
    """The module at ``path``, loaded and initialised (once per process)."""
    import pkcs11

    key = path.resolve()
    with _guard:
        module = _modules.get(key)
        if module is not None:
            if not module.lib.initialized:
                with module.lock, p11_errors(msg('initialising {path}', path=path)):
                    module.lib.initialize()
            return module
        try:
            lib = pkcs11.lib(str(key))
        except (pkcs11.PKCS11Error, OSError) as exc:
            raise EnvironmentProblem(
                msg("the PKCS#11 module {path} could not be loaded ({exc}); check that it is the card's middleware for this machine (64-bit, installed with its dependencies)", path=path, exc=exc)
            ) from None
        module = Module(key, lib)
        _modules[key] = module
        return module


def finalize_modules() -> None:
    """``C_Finalize`` every module (tests: SoftHSM2 reads SOFTHSM2_CONF again at the next open).

    The libraries stay loaded: unloading a module that links OpenSSL is not safe in every build."""
    import pkcs11

    with _guard:
        for module in _modules.values():
            with module.lock:
                try:
                    module.lib.finalize()
                except pkcs11.PKCS11Error:
                    pass


REMOVED = ("TokenNotPresent", "DeviceRemoved", "SessionHandleInvalid", "SessionClosed", "SlotIDInvalid",
            "TokenNotRecognised")  # fmt: skip


@contextmanager
def p11_errors(doing: str) -> Iterator[None]:
    """PKCS#11 failures as the project's errors: a pulled token is ``CardRemovedError`` (the job stays
    in doubt and resumes), anything else a ``CardError`` naming the PKCS#11 return value."""
    import pkcs11

    try:
        yield
    except pkcs11.PKCS11Error as exc:
        name = type(exc).__name__
        if name in REMOVED:
            raise CardRemovedError(msg('the token went away while {doing} ({name}); put it back to finish', doing=doing, name=name)) from None
        detail = f": {exc}" if str(exc) else ""
        raise CardError(msg('the PKCS#11 module refused {doing} ({name}{detail})', doing=doing, name=name, detail=detail)) from None
