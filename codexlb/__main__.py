"""`python -m codexlb` and the frozen binary's entry point."""

import sys

from codexlb.cli import main

if __name__ == "__main__":
    sys.exit(main())
