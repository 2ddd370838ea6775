"""How the tests start the product.

By default a test runs the checkout's code as ``python -m provision`` (the editable install). The
installed-artifact tier (``make test-installed``, .ci/installed-tier) sets ``PROVISION_CLI`` to the
``provision`` console script of a wheel installed into a fresh virtual environment outside the
checkout; then every CLI-level test runs that executable, as a pipx user would, and a file missing
from the wheel fails the test that needs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def installed_cli() -> str | None:
    """The installed ``provision`` under test, or None when the checkout's code is tested."""
    chosen = os.environ.get("PROVISION_CLI")
    if not chosen:
        return None
    path = Path(chosen).resolve()
    if not path.is_file():
        raise RuntimeError(f"PROVISION_CLI={chosen} is not a file")
    if path.is_relative_to(REPO):
        raise RuntimeError(f"PROVISION_CLI={chosen} lies inside the checkout: that is not what users install")
    return str(path)


def provision_cmd() -> list[str]:
    """The command line that starts ``provision`` (arguments follow)."""
    installed = installed_cli()
    return [installed] if installed else [sys.executable, "-m", "provision"]


def checkout_pythonpath() -> dict[str, str]:
    """``PYTHONPATH`` that lets ``python -m provision`` find the checkout, and nothing for the
    installed artifact: a checkout on its path would shadow the installed package."""
    return {} if installed_cli() else {"PYTHONPATH": str(REPO)}


def product_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child ``provision``: without ``PYTHONPATH`` when the installed artifact runs."""
    if installed_cli():
        return {k: v for k, v in env.items() if k != "PYTHONPATH"}
    return env
