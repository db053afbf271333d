"""`codexlb upgrade`: hand the running server over to a new process (a new binary at its path), no downtime."""

from __future__ import annotations

import argparse
import signal

from codexlb.cli.common import CliError, HelpFormatter, add_setting_flags, load_settings, records, signal_server
from codexlb.server import handover

POLL_S = 0.1
# The new process gets `handover.READY_WAIT_S` to be ready; the old one then records the outcome.
WAIT_S = handover.READY_WAIT_S + 10.0

_EPILOG = """\
examples:
  install -m 0755 codexlb-new /usr/local/bin/codexlb && codexlb upgrade
  codexlb upgrade --data-dir /var/lib/codexlb

The running server (the one holding the data dir) starts the program at its
path again and hands it the listening socket; no connection is refused. Once
the new process is ready the old one stops accepting and drains its in-flight
requests. If the new one cannot start (a bad config, a newer schema), the old
one goes on serving and this command prints why and exits 1. Under systemd,
`systemctl reload codexlb` does the same (the unit sends SIGUSR2).
"""


def run(args: argparse.Namespace) -> int:
    data_dir = load_settings(args).settings.data_dir
    pid, sent_at = signal_server(data_dir, signal.SIGUSR2)
    for now in records(data_dir, WAIT_S, POLL_S):
        if now is not None and now.pid != pid and now.url is not None:
            print(f"upgraded: pid {pid} handed over to pid {now.pid}, serving at {now.url}; "
                  f"pid {pid} drains its in-flight requests")
            return 0
        if now is not None and now.upgrade_failed_at is not None and now.upgrade_failed_at >= sent_at:
            raise CliError(f"upgrade failed; pid {pid} goes on serving: {now.upgrade_error}", 1)
    raise CliError(f"the server (pid {pid}) did not hand over within {WAIT_S:g} s; see its log", 1)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "upgrade",
        help="hand the running server over to a new process, no downtime",
        description="Hand the running server over to a new process started from the program at its path "
        "(upgrade the binary, or apply settings that need a restart), without refusing a connection.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_setting_flags(parser, ("data_dir",), title="data dir", about="The data dir of the server to upgrade.")
    parser.set_defaults(run=run)
