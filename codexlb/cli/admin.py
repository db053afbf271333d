"""`codexlb admin set-password`: the password the dashboard and remote admin calls log in with.

Through the server running on the data dir (its sessions end at once), else into the data dir.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from codexlb.admin_auth import hash_password
from codexlb.cli.common import CliError, HelpFormatter, add_server_flags
from codexlb.cli.target import AdminClient, open_store, running_server, with_target
from codexlb.config import Settings
from codexlb.handlers.api.session import MIN_PASSWORD
from codexlb.store import Store

_EPILOG = """\
examples:
  codexlb admin set-password                      # asks twice, without echo
  printf '%s\\n' "$PW" | codexlb admin set-password --password-stdin
"""


async def _target(settings: Settings) -> AdminClient | Store:
    return await running_server(settings) or await open_store(settings)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New admin password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ")
    if len(password) < MIN_PASSWORD:
        raise CliError(f"an admin password needs at least {MIN_PASSWORD} characters")
    return password


async def _set_password(target: AdminClient | Store, args: argparse.Namespace) -> int:
    password = _read_password(args)
    if isinstance(target, AdminClient):
        await target.call("POST", "/api/admin/password", {"password": password})
        where = f"the running server at {target.base} (its sessions ended)"
    else:
        await target.set_admin_password(hash_password(password))
        where = "the data dir (the server reads it when it starts)"
    print(f"Admin password set in {where}. Log in to the dashboard or POST /api/login with it.")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "admin", help="the admin password (dashboard and remote admin API)",
        description="Manage how operators log in to the dashboard and the admin API.", epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    p = actions.add_parser("set-password", help="set or change the admin password",
                           description="Set or change the admin password (at least "
                           f"{MIN_PASSWORD} characters; kept as a scrypt hash). Until one is set, the admin "
                           "API and dashboard answer this machine only.", epilog=_EPILOG,
                           formatter_class=HelpFormatter)
    add_server_flags(p)
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(run=with_target(_target, _set_password))
