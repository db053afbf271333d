"""`codexlb keys`: create, list and revoke the API keys clients use to reach the proxy.

Like `codexlb accounts`, it goes through the admin API of the server running on the data dir (a new or
revoked key takes effect at once), else it works on the data dir.
A key is printed once, when it is created; codexlb keeps only its hash.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import orjson

from codexlb.cli.common import (
    CliError,
    HelpFormatter,
    add_server_flags,
    ago,
)
from codexlb.cli.target import AdminClient, open_store, reads_only, running_server, with_target
from codexlb.config import Settings
from codexlb.handlers.api.keys import key_view
from codexlb.keys import KeyRing, KeyRingError
from codexlb.store import Store

_EPILOG = """\
examples:
  codexlb keys create --name laptop       # prints the key once: copy it then
  codexlb keys create --name ci --max-concurrency 4
  codexlb keys list
  codexlb keys revoke laptop              # by name or id
"""


class KeysTarget:
    """Where key operations go: the running server's admin API, or the data dir."""

    async def list(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def create(self, name: str | None, max_concurrency: int | None) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    async def revoke(self, ref: str) -> dict[str, Any]:
        raise NotImplementedError

    def client_url(self) -> str:
        """Where clients send requests with a key: the running server's address, else the configured one."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class LocalKeys(KeysTarget):
    def __init__(self, store: Store, ring: KeyRing, settings: Settings) -> None:
        self.store, self.ring, self.settings = store, ring, settings

    @classmethod
    async def open(cls, settings: Settings) -> "LocalKeys":
        store = await open_store(settings)
        return cls(store, await KeyRing.load(store), settings)

    def client_url(self) -> str:
        return _client_url(self.settings.host, self.settings.port)

    async def list(self) -> list[dict[str, Any]]:
        return [key_view(r) for r in await self.ring.list()]

    async def create(self, name: str | None, max_concurrency: int | None) -> tuple[str, dict[str, Any]]:
        try:
            key, record = await self.ring.create(name, max_concurrency)
        except KeyRingError as exc:
            raise CliError(str(exc), exit_code=1) from None
        return key, key_view(record)

    async def revoke(self, ref: str) -> dict[str, Any]:
        try:
            return key_view(await self.ring.revoke(ref))
        except KeyRingError as exc:
            raise CliError(str(exc), exit_code=1) from None

    async def close(self) -> None:
        await self.store.close()


class RemoteKeys(KeysTarget):
    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin

    async def list(self) -> list[dict[str, Any]]:
        return (await self.admin.call("GET", "/api/keys"))["keys"]

    async def create(self, name: str | None, max_concurrency: int | None) -> tuple[str, dict[str, Any]]:
        payload = await self.admin.call("POST", "/api/keys", {"name": name, "max_concurrency": max_concurrency})
        return payload["key"], payload["api_key"]

    async def revoke(self, ref: str) -> dict[str, Any]:
        return (await self.admin.call("DELETE", f"/api/keys/{quote(ref, safe='')}"))["api_key"]

    def client_url(self) -> str:
        server = self.admin.server
        assert server.host is not None and server.port is not None
        return _client_url(server.host, server.port)

    async def close(self) -> None:
        await self.admin.close()


async def open_target(settings: Settings) -> KeysTarget:
    admin = await running_server(settings)
    return RemoteKeys(admin) if admin is not None else await LocalKeys.open(settings)


def _client_url(host: str, port: int) -> str:
    # Listening on every address, the right host depends on where the client is.
    host = "<this-machine>" if host in ("0.0.0.0", "", "::") else f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/v1"


async def _create(target: KeysTarget, args: argparse.Namespace) -> int:
    key, view = await target.create(args.name, args.max_concurrency)
    if args.json:
        sys.stdout.write(orjson.dumps({"key": key, "api_key": view}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    url = target.client_url()
    print(f"Created API key {view['name']!r} ({view['id']}). Copy it now; it cannot be shown again:\n\n"
          f"  {key}\n\n"
          f"Clients send it as `Authorization: Bearer <key>` (or the `x-api-key` header), e.g.\n"
          f"  OPENAI_API_KEY=<key> OPENAI_BASE_URL={url}\n"
          f"Revoke it with `codexlb keys revoke {view['name']}`.")
    return 0


def render_table(views: list[dict[str, Any]], now: float) -> str:
    header = ("ID", "NAME", "PREFIX", "CREATED", "LAST USED", "MAX CONCURRENCY", "STATUS")
    rows = [header] + [
        (v["id"], v["name"], v["prefix"] + "…", ago(v["created_at"], now), ago(v["last_used_at"], now),
         v["max_concurrency"] or "-",
         v["status"] if v["revoked_at"] is None else f"revoked {ago(v['revoked_at'], now)}")
        for v in views
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@reads_only
async def _list(target: KeysTarget, args: argparse.Namespace) -> int:
    views = await target.list()
    if args.json:
        sys.stdout.write(orjson.dumps({"keys": views}, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not views:
        print("No API keys yet: only clients on this machine are served. Create one with `codexlb keys create`.")
    else:
        print(render_table(views, time.time()))
    return 0


async def _revoke(target: KeysTarget, args: argparse.Namespace) -> int:
    view = await target.revoke(args.key)
    print(f"Revoked API key {view['name']!r} ({view['id']}).")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "keys", help="create and revoke the API keys clients use",
        description="Create, list and revoke client API keys. With no key, only clients on this machine "
        "are served.", epilog=_EPILOG, formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)

    def sub(name: str, help: str, work: Callable[[KeysTarget, argparse.Namespace], Awaitable[int]]
            ) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=_EPILOG,
                               formatter_class=HelpFormatter)
        add_server_flags(p)
        p.set_defaults(run=with_target(open_target, work))
        return p

    p = sub("create", "create a key and print it (once)", _create)
    p.add_argument("--name", help="a name to tell the key by (default: key-N)")
    p.add_argument("--max-concurrency", type=_positive, metavar="N",
                   help="requests this key may have in flight at once (default: no limit)")
    p.add_argument("--json", action="store_true", help="print JSON (the key and its record)")
    p = sub("list", "list keys (never the keys themselves)", _list)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub("revoke", "revoke a key; clients using it are refused from the next request", _revoke)
    p.add_argument("key", metavar="KEY", help="the key's name or id (see `codexlb keys list`)")
