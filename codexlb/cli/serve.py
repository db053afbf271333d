"""`codexlb serve`: run the proxy."""

from __future__ import annotations

import argparse

from codexlb import log, server
from codexlb.cli.common import HelpFormatter, add_setting_flags, load_settings, run_server

_EPILOG = """\
examples:
  codexlb serve
  codexlb serve --host 0.0.0.0 --port 8080
  CODEXLB_LOG_FORMAT=json codexlb serve --data-dir /var/lib/codexlb

SIGTERM or SIGINT stops accepting connections and gives in-flight requests
--drain-timeout-s seconds to finish; a second signal stops at once.
"""


def run(args: argparse.Namespace) -> int:
    loaded = load_settings(args)
    settings = loaded.settings
    log.configure(settings.log_level, settings.log_format)
    return run_server(server.serve(settings))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the codexlb proxy in the foreground until SIGTERM or SIGINT.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_setting_flags(parser)
    parser.set_defaults(run=run)
