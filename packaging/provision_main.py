"""Entry point of the one-file build (PyInstaller runs a script, not a console-script entry)."""

from provision.cli import entry

if __name__ == "__main__":
    entry()
