"""`codexlb reload`: have the running server read its settings again and apply what can change in place."""

from __future__ import annotations

import argparse
import signal

from codexlb import config
from codexlb.cli.common import CliError, HelpFormatter, add_setting_flags, records, setting_flags, signal_server

WAIT_S = 30.0

_EPILOG = """\
examples:
  codexlb reload
  codexlb reload --data-dir /var/lib/codexlb

The running server (the one holding the data dir) reads its config file again
(flags it was started with keep winning), applies the settings that can
change in place (log level and format, admission limits, per-account streams,
timeouts, strategy, sticky TTL, body limits, the metrics token) and reads
accounts and API keys again from the store. A changed setting that cannot
change in place (the port, the database, ...) is named: `codexlb upgrade`
applies it. A config file that does not parse changes nothing; this command
then prints why and exits 1. Under systemd: `systemctl kill -s HUP codexlb`
(`systemctl reload codexlb` is the upgrade, which reads the config too).
"""


def run(args: argparse.Namespace) -> int:
    # Not the whole settings: the config file may be what is broken, and the server is to say so.
    try:
        data_dir = config.data_dir_of(setting_flags(args))
    except config.ConfigError as exc:
        raise CliError(str(exc)) from None
    pid, sent_at = signal_server(data_dir, signal.SIGHUP)
    for now in records(data_dir, WAIT_S):
        if now is not None and now.reload is not None and (now.reloaded_at or 0) >= sent_at:
            return _report(pid, now.reload)
    raise CliError(f"the server (pid {pid}) did not say it reloaded within {WAIT_S:g} s; see its log", 1)


def _report(pid: int, outcome: dict) -> int:
    if outcome.get("error"):
        raise CliError(f"reload failed; pid {pid} goes on with its settings as they were: {outcome['error']}", 1)
    applied = ", ".join(outcome["applied"]) or "no setting changed"
    print(f"reloaded pid {pid}: {applied}; accounts and API keys read again from the store")
    if outcome["need_upgrade"]:
        print(f"not applied, needs `codexlb upgrade` (or a restart): {', '.join(outcome['need_upgrade'])}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reload",
        help="have the running server read its settings again, in place",
        description="Have the running server read its config file again and apply the settings that can "
        "change in place, without a new process (SIGHUP).",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_setting_flags(parser, ("data_dir",), title="data dir", about="The data dir of the server to reload.")
    parser.set_defaults(run=run)
