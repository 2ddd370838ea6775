"""provision: load certificates and keys onto smart cards from declarative job files."""

__version__ = "0.1.0"
