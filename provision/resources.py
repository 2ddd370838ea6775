"""The files the program reads at run time. All of them live inside the package, under
``provision/data/``, and are read through ``importlib.resources``: that works the same from a wheel,
a zip, an editable checkout and the PyInstaller one-file build, where no path next to the sources
exists. ``DATA_FILES`` is the complete list; the installed-artifact tier checks the wheel carries
each of them and that the published ``schemas/job.schema.json`` is byte-identical to the package's.
"""

from __future__ import annotations

from functools import cache

JOB_SCHEMA = "job.schema.json"
DATA_FILES: tuple[str, ...] = (JOB_SCHEMA,)
# The compiled translations (provision/i18n.py reads them through the package's loader, pkgutil.get_data).
CATALOG_FILES: tuple[str, ...] = ("locale/zh_Hant/LC_MESSAGES/provision.mo",)


@cache
def read_bytes(name: str) -> bytes:
    """One data file's bytes (cached: they cannot change while the program runs)."""
    from importlib import resources

    if name not in DATA_FILES:
        raise KeyError(f"{name} is not one of the package's data files")
    return resources.files("provision").joinpath("data", name).read_bytes()


def job_schema_bytes() -> bytes:
    return read_bytes(JOB_SCHEMA)
