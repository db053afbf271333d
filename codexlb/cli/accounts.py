"""`codexlb accounts`: import, log in, list, pause, resume and remove upstream accounts.

When a codexlb server is running on the data dir, the command goes through
its admin API, so the running pool sees the change at once; otherwise it works
on the data dir directly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson

from codexlb.auth import authjson, oauth
from codexlb.auth.authjson import AuthFileError, Login
from codexlb.cli.common import (
    CliError,
    HelpFormatter,
    add_server_flags,
    ago,
    load_settings,
)
from codexlb.cli.target import AdminClient, open_store, reads_only, running_server, with_target
from codexlb.config import Settings
from codexlb.handlers.api.accounts import account_view
from codexlb.pool.roster import Roster, RosterError
from codexlb.store import Store
from codexlb.upstream.session import make_session, upstream_via

_EPILOG = """\
examples:
  codexlb accounts import ~/.codex/auth.json
  codexlb accounts login                 # browser sign-in (prints the URL on headless machines)
  codexlb accounts login --device        # sign in with a code on another device
  codexlb accounts list
  codexlb accounts pause alice           # by alias, account id or list position
  codexlb accounts resume alice
  codexlb accounts remove alice
"""


class Target:
    """Where account operations go: the running server's admin API, or the data dir."""

    async def list(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def add(self, login: Login, alias: str | None) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    async def act(self, action: str, key: str) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class LocalTarget(Target):
    def __init__(self, store: Store, roster: Roster) -> None:
        self.store, self.roster = store, roster

    @classmethod
    async def open(cls, settings: Settings) -> "LocalTarget":
        store = await open_store(settings)
        return cls(store, await Roster.load(store))

    async def list(self) -> list[dict[str, Any]]:
        return [account_view(a) for a in self.roster.all()]

    async def add(self, login: Login, alias: str | None) -> tuple[str, dict[str, Any]]:
        try:
            account, outcome = await self.roster.add_login(login, alias)
        except RosterError as exc:
            raise CliError(str(exc), exit_code=1) from None
        return outcome, account_view(account)

    async def act(self, action: str, key: str) -> dict[str, Any]:
        try:
            return account_view(await getattr(self.roster, action)(key))
        except RosterError as exc:
            raise CliError(str(exc), exit_code=1) from None

    async def close(self) -> None:
        await self.store.close()


class RemoteTarget(Target):
    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin

    async def list(self) -> list[dict[str, Any]]:
        return (await self.admin.call("GET", "/api/accounts"))["accounts"]

    async def add(self, login: Login, alias: str | None) -> tuple[str, dict[str, Any]]:
        payload = await self.admin.call("POST", "/api/accounts", {**authjson.to_json(login), "alias": alias})
        return payload["outcome"], payload["account"]

    async def act(self, action: str, key: str) -> dict[str, Any]:
        method, path = ("DELETE", f"/api/accounts/{key}") if action == "remove" else (
            "POST", f"/api/accounts/{key}/{action}")
        return (await self.admin.call(method, path))["account"]

    async def close(self) -> None:
        await self.admin.close()


async def open_target(settings: Settings) -> Target:
    """The server running on the data dir, else the data dir itself."""
    admin = await running_server(settings)
    return RemoteTarget(admin) if admin is not None else await LocalTarget.open(settings)


def _with_target(work: Callable[[Target, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    return with_target(open_target, work)


def _percent(window: dict[str, Any] | None) -> str:
    return "-" if window is None else f"{window['used_percent']:.0f}%"


def _resets(view: dict[str, Any], now: float) -> str:
    times = [view["status_until"]] if view["status_until"] else [
        w["reset_at"] for w in (view["primary"], view["secondary"]) if w]
    return ago(min(times), now) if times else "-"


def render_table(views: list[dict[str, Any]], now: float) -> str:
    header = ("ALIAS", "EMAIL", "PLAN", "STATUS", "5H", "WEEKLY", "RESETS", "LAST REFRESH")
    rows = [header] + [
        (v["alias"], v["email"] or "-", v["plan"] or "-", v["status"], _percent(v["primary"]),
         _percent(v["secondary"]), _resets(v, now), ago(v["last_refresh"], now))
        for v in views
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@reads_only
async def _list(target: Target, args: argparse.Namespace) -> int:
    views = await target.list()
    if args.json:
        sys.stdout.write(orjson.dumps({"accounts": views}, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not views:
        print("No accounts yet. Add one with `codexlb accounts import PATH` or `codexlb accounts login`.")
    else:
        print(render_table(views, time.time()))
    return 0


async def _import(target: Target, args: argparse.Namespace) -> int:
    if args.alias and len(args.paths) > 1:
        raise CliError("--alias names one account; import one file at a time with it")
    logins: list[Login] = []
    for path in args.paths:
        try:
            logins.append(authjson.read(Path(path).expanduser()))
        except AuthFileError as exc:
            # Nothing is imported unless every file is sound.
            raise CliError(str(exc), exit_code=1) from None
    for login in logins:
        outcome, view = await target.add(login, args.alias)
        note = {"added": "added", "updated": "updated (fresher tokens)",
                "kept": "already present with fresher tokens; kept them"}[outcome]
        print(f"{view['alias']} ({view['email'] or view['id']}): {note}")
    return 0


def _stdin_lines() -> AsyncIterator[str]:
    """Lines typed or pasted on stdin. A daemon thread reads them, so a read still waiting
    when the browser callback wins cannot hold the process open."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="codexlb-stdin", daemon=True).start()

    async def lines() -> AsyncIterator[str]:
        while (line := await queue.get()) is not None:
            yield line

    return lines()


async def _login(target: Target, args: argparse.Namespace) -> int:
    settings = load_settings(args).settings
    try:
        via = upstream_via(settings)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    async with make_session(via, settings.upstream_connect_timeout_s) as http:
        try:
            if args.device:
                tokens = await oauth.login_device(
                    http, settings.auth_base_url, timeout=args.timeout,
                    on_code=lambda url, code: print(f"Open {url} on any device and enter the code {code}",
                                                    flush=True),
                )
            else:
                def show(url: str) -> None:
                    print(f"Sign in to ChatGPT at:\n\n  {url}\n\nOn a machine without a browser, open it "
                          "elsewhere and paste here the address you land on (http://localhost:…/auth/callback?…):",
                          flush=True)

                tokens = await oauth.login_pkce(
                    http, settings.auth_base_url, port=args.callback_port, on_url=show,
                    open_browser=None if args.no_browser else webbrowser.open, pasted=_stdin_lines(),
                    on_bad_paste=lambda message: print(message, flush=True), timeout=args.timeout,
                )
        except oauth.LoginError as exc:
            raise CliError(str(exc), exit_code=1) from None
    try:
        login = authjson.from_tokens(tokens.access_token, tokens.refresh_token, tokens.id_token,
                                     issued_at=time.time(), origin="sign-in")
    except AuthFileError as exc:
        raise CliError(str(exc), exit_code=1) from None
    outcome, view = await target.add(login, args.alias)
    print(f"{view['alias']} ({view['email'] or view['id']}): {'added' if outcome == 'added' else 'signed in again'}")
    return 0


def _action(action: str) -> Callable[[Target, argparse.Namespace], Awaitable[int]]:
    async def act(target: Target, args: argparse.Namespace) -> int:
        view = await target.act(action, args.account)
        print(f"{view['alias']}: {'removed' if action == 'remove' else view['status']}")
        return 0

    return act


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "accounts", help="add and manage upstream ChatGPT accounts",
        description="Add and manage the ChatGPT accounts in the pool.", epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)

    def sub(name: str, help: str, run: Callable[[argparse.Namespace], int],
            settings: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=_EPILOG,
                               formatter_class=HelpFormatter)
        add_server_flags(p, *settings)
        p.set_defaults(run=run)
        return p

    p = sub("import", "import Codex CLI auth.json files (de-duplicated by account)", _with_target(_import))
    p.add_argument("paths", nargs="+", metavar="PATH", help="auth.json files (e.g. ~/.codex/auth.json)")
    p.add_argument("--alias", help="name for the account (default: from its email)")
    p = sub("login", "sign in to a ChatGPT account and add it", _with_target(_login),
            ("auth_base_url", "upstream_proxy", "upstream_connect_timeout_s"))
    p.add_argument("--device", action="store_true",
                   help="sign in with a code on another device instead of a browser redirect")
    p.add_argument("--no-browser", action="store_true", help="only print the sign-in URL; do not open a browser")
    p.add_argument("--callback-port", type=int, default=oauth.DEFAULT_PORT, metavar="PORT",
                   help="local port of the browser redirect (the real sign-in server accepts 1455 and 1457)")
    p.add_argument("--alias", help="name for the account (default: from its email)")
    p.add_argument("--timeout", type=float, default=900, metavar="SECONDS", help="how long to wait for the sign-in")
    p = sub("list", "list accounts with status and usage", _with_target(_list))
    p.add_argument("--json", action="store_true", help="print JSON")
    for name, help in (("pause", "take an account out of rotation"), ("resume", "put a paused account back"),
                       ("remove", "forget an account and its tokens")):
        p = sub(name, help, _with_target(_action(name)))
        p.add_argument("account", metavar="ACCOUNT", help="alias, account id, or position in `accounts list`")
