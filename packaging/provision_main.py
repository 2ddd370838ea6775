"""Entry point of the one-file build (PyInstaller runs a script, not a console-script entry)."""

import sys

from provision.cli import main

if __name__ == "__main__":
    sys.exit(main())
