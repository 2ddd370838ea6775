"""provision: load certificates and keys onto smart cards from declarative job files."""

# The one place the version is written: pyproject.toml makes the wheel's metadata from it.
__version__ = "0.1.0"


def installed_version() -> str:
    """The version in the installed distribution's metadata (what pip, pipx and the audit log see).

    Falls back to ``__version__`` only when no metadata can be found (a source tree on PYTHONPATH)."""
    from importlib import metadata

    try:
        return metadata.version("provision")
    except metadata.PackageNotFoundError:
        return __version__
