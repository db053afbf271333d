"""The `codexlb` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from codexlb import __version__
from codexlb.cli import accounts, admin, config_cmd, demo, keys, reload, serve, sim_cmd, upgrade, usage, version
from codexlb.cli.common import CliError, HelpFormatter, Parser

_EPILOG = """\
examples:
  codexlb demo                          try it on simulated accounts, no ChatGPT account needed
  codexlb serve                         run the proxy on 127.0.0.1:2455
  codexlb serve --port 8080 --log-format json
  codexlb upgrade                       hand the running server to a new binary, no downtime
  codexlb reload                        apply a changed config.toml in place (limits, log level, ...)
  codexlb accounts import ~/.codex/auth.json
  codexlb accounts list
  codexlb keys create --name laptop     an API key for clients (printed once)
  codexlb keys update laptop --rpm 60   limits for a key: per minute, tokens, models, expiry
  codexlb usage --since 7d              tokens, savings and recoveries per key and conversation
  codexlb admin set-password            the password for the dashboard and remote admin calls
  codexlb sim --port 2456               run the simulated ChatGPT backend
  codexlb config show                   print the effective settings and where each came from
  codexlb version

Every setting can come from <data-dir>/config.toml, an environment variable
CODEXLB_<NAME>, or a flag --<name>; flags win over the environment, which wins
over the file. Run `codexlb <command> --help` for a command's options;
`codexlb serve --help` lists every setting.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="codexlb",
        description="Load balancer and proxy that pools ChatGPT (Codex) accounts behind one "
        "OpenAI-compatible endpoint.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"codexlb {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for module in (demo, serve, upgrade, reload, accounts, keys, usage, admin, sim_cmd, config_cmd, version):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CliError as exc:
        print(f"codexlb: error: {exc}", file=sys.stderr)
        return exc.exit_code
