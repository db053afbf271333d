"""`codexlb serve`: run the proxy."""

from __future__ import annotations

import argparse

from codexlb import log, server
from codexlb.cli.common import CliError, HelpFormatter, add_setting_flags, load_settings

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
    try:
        return server.run_until_stopped(server.serve(settings))
    except server.StartupError as exc:
        raise CliError(str(exc), exit_code=1) from None


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
