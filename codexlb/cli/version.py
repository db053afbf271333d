"""`codexlb version`."""

from __future__ import annotations

import argparse
import platform
import sys

import aiohttp

from codexlb import __version__
from codexlb.cli.common import HelpFormatter


def run(args: argparse.Namespace) -> int:
    print(f"codexlb {__version__}")
    if args.verbose:
        frozen = "frozen binary" if getattr(sys, "frozen", False) else "python package"
        print(f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, {frozen}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "version", help="print the version", description="Print the codexlb version.",
        epilog="examples:\n  codexlb version\n  codexlb version --verbose\n",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the runtime versions")
    parser.set_defaults(run=run)
