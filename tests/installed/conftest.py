"""The installed-artifact tier: the wheel a user installs, run from a directory outside the checkout.

``make test-installed`` builds and installs the artifact once and runs this tier together with the
CLI-level tests of the other tiers, with ``PROVISION_CLI`` pointing at the installed command. Run
alone (``pytest tests/installed``), the fixture builds and installs it itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.artifact import Artifact, build_and_install


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Artifact]:
    chosen = os.environ.get("PROVISION_CLI")
    if chosen:
        # make test-installed: PROVISION_CLI is DIR/venv/bin/provision of tests.helpers.artifact
        yield Artifact(Path(chosen).resolve().parent.parent.parent)
        return
    built = build_and_install(tmp_path_factory.mktemp("artifact"))
    os.environ["PROVISION_CLI"] = str(built.cli)  # the cli fixture and provision_cmd() now run it
    try:
        yield built
    finally:
        del os.environ["PROVISION_CLI"]


@pytest.fixture(autouse=True)
def _installed(artifact: Artifact) -> None:
    """Every test of this tier runs the installed command."""
