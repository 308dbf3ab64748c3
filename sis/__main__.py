"""``python -m sis``: the command line (sis.cli)."""
import sys

from sis.cli import main

if __name__ == "__main__":
    sys.exit(main())
