"""`codexlb keys`: create, list, update and revoke the API keys clients use to reach the proxy, with their limits.

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
from codexlb.key_limits.enforce import KeyLimits
from codexlb.key_limits.policy import FIELDS, LIMITS
from codexlb.keys import KeyRing, KeyRingError
from codexlb.store import Store

_EPILOG = """\
examples:
  codexlb keys create --name laptop       # prints the key once: copy it then
  codexlb keys create --name ci --max-concurrency 4 --rpm 60 --tokens-day 2000000
  codexlb keys update ci --models 'gpt-5*,o4-mini' --expires 2027-03-31T18:00:00Z --note "CI runners"
  codexlb keys update ci --tokens-day none     # none clears a limit
  codexlb keys list
  codexlb keys revoke laptop              # by name or id

limits (all optional, per key, across every replica sharing the database):
  --rpm N                 model requests per minute (the minute on the clock)
  --tokens-5h/-day/-week  input + output tokens, as upstream reports them, per 5-hour block (from
                          00:00, 05:00, 10:00, 15:00, 20:00 UTC), per UTC day, per week from Monday
A request over a limit gets 429 (`key_rate_limited`, `key_budget_exhausted`) with Retry-After; a model not
allowed 403 `model_not_allowed`; an expired key 401 `api_key_expired` (400 on the Codex CLI's route).
Nothing reaches upstream. A fleet can go over a limit by at most (replicas - 1) x a tenth of it.
"""


class KeysTarget:
    """Where key operations go: the running server's admin API, or the data dir."""

    async def list(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def create(self, name: str | None, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    async def update(self, ref: str, fields: dict[str, Any]) -> dict[str, Any]:
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
        self.limits = KeyLimits(store.db)

    @classmethod
    async def open(cls, settings: Settings) -> "LocalKeys":
        store = await open_store(settings)
        return cls(store, await KeyRing.load(store), settings)

    def client_url(self) -> str:
        return _client_url(self.settings.host, self.settings.port)

    async def list(self) -> list[dict[str, Any]]:
        records = await self.ring.list()
        use = await self.limits.use([r for r in records if r.revoked_at is None])
        return [key_view(r, use.get(r.id)) for r in records]

    async def create(self, name: str | None, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            key, record = await self.ring.create(name, fields)
        except KeyRingError as exc:
            raise CliError(str(exc), exit_code=1) from None
        return key, key_view(record)

    async def update(self, ref: str, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            record = await self.ring.update(ref, fields)
        except KeyRingError as exc:
            raise CliError(str(exc), exit_code=1) from None
        return key_view(record, (await self.limits.use([record])).get(record.id))

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

    async def create(self, name: str | None, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        payload = await self.admin.call("POST", "/api/keys", {"name": name, **fields})
        return payload["key"], payload["api_key"]

    async def update(self, ref: str, fields: dict[str, Any]) -> dict[str, Any]:
        return (await self.admin.call("PATCH", f"/api/keys/{quote(ref, safe='')}", fields))["api_key"]

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


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, as the admin API takes them (checked there, in one place)."""
    return {field: getattr(args, field) for field in FIELDS if hasattr(args, field)}


async def _create(target: KeysTarget, args: argparse.Namespace) -> int:
    key, view = await target.create(args.name, _fields(args))
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


def _use(view: dict[str, Any], kind: str) -> str:
    limit = view.get(kind)
    if limit is None:
        return "-"
    used = (view.get("use") or {}).get(kind, {}).get("used")
    return f"{_count(limit)}" if used is None else f"{_count(used)}/{_count(limit)}"


def _count(n: int) -> str:
    for size, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _expiry(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    return "expired" if at <= now else time.strftime("%Y-%m-%d %H:%M", time.gmtime(at)) + "Z"


def render_table(views: list[dict[str, Any]], now: float) -> str:
    header = ("ID", "NAME", "PREFIX", "CREATED", "LAST USED", "MAX CONC", "RPM", "TOKENS 5H", "TOKENS DAY",
              "TOKENS WEEK", "MODELS", "EXPIRES", "STATUS")
    rows = [header] + [
        (v["id"], v["name"], v["prefix"] + "…", ago(v["created_at"], now), ago(v["last_used_at"], now),
         v["max_concurrency"] or "-", *(_use(v, kind) for kind in LIMITS), ",".join(v.get("models") or ()) or "-",
         _expiry(v.get("expires_at"), now),
         v["status"] if v["revoked_at"] is None else f"revoked {ago(v['revoked_at'], now)}")
        for v in views
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    table = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    notes = [f"{v['name']}: {v['note']}" for v in views if v.get("note")]
    return table + ("\n\nnotes:\n  " + "\n  ".join(notes) if notes else "")


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


async def _update(target: KeysTarget, args: argparse.Namespace) -> int:
    fields = _fields(args)
    if not fields:
        raise CliError("nothing to change: give at least one of --max-concurrency, --rpm, --tokens-5h, "
                       "--tokens-day, --tokens-week, --models, --expires, --note", exit_code=2)
    view = await target.update(args.key, fields)
    if args.json:
        sys.stdout.write(orjson.dumps({"api_key": view}, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"Updated API key {view['name']!r} ({view['id']}):\n" + render_table([view], time.time()))
    return 0


async def _revoke(target: KeysTarget, args: argparse.Namespace) -> int:
    view = await target.revoke(args.key)
    print(f"Revoked API key {view['name']!r} ({view['id']}).")
    return 0


def _limit(text: str) -> int | None | str:
    """A whole number, `none` to clear, or the text as given (the policy check says what is wrong with it)."""
    if text.strip().lower() in ("none", "off", "unlimited"):
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _cleared(text: str) -> str | None:
    return None if text.strip().lower() == "none" else text


def _models(text: str) -> list[str] | None:
    return None if text.strip().lower() in ("none", "any", "*") else [m.strip() for m in text.split(",")]


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The flags `create` and `update` share; each may be `none` to clear it. One not given is left out of the
    namespace (SUPPRESS), as against `none`, which clears."""
    p.add_argument("--max-concurrency", default=argparse.SUPPRESS, type=_limit, metavar="N",
                   help="requests this key may have in flight at once (an open WebSocket counts as one)")
    p.add_argument("--rpm", default=argparse.SUPPRESS, type=_limit, metavar="N", help="model requests per minute")
    p.add_argument("--tokens-5h", default=argparse.SUPPRESS, type=_limit, metavar="N", help="tokens (input + output) per 5-hour block")
    p.add_argument("--tokens-day", default=argparse.SUPPRESS, type=_limit, metavar="N", help="tokens per UTC day")
    p.add_argument("--tokens-week", default=argparse.SUPPRESS, type=_limit, metavar="N", help="tokens per week (from Monday 00:00 UTC)")
    p.add_argument("--models", default=argparse.SUPPRESS, type=_models, metavar="GLOB[,GLOB...]",
                   help="the models the key may use, by name or glob (e.g. 'gpt-5*,o4-mini'); none: any")
    p.add_argument("--expires", default=argparse.SUPPRESS, dest="expires_at", type=_cleared, metavar="ISO-8601",
                   help="when the key stops working, e.g. 2027-03-31T18:00:00Z (no zone: UTC); none: never")
    p.add_argument("--note", default=argparse.SUPPRESS, type=_cleared, metavar="TEXT", help="a note for operators (who, what for)")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "keys", help="create, limit and revoke the API keys clients use",
        description="Create, list, update and revoke client API keys, each with optional limits (requests per "
        "minute, tokens per 5 hours / day / week, models, expiry). With no key, only clients on this machine are "
        "served.", epilog=_EPILOG, formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)

    def sub(name: str, help: str, work: Callable[[KeysTarget, argparse.Namespace], Awaitable[int]]
            ) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=_EPILOG,
                               formatter_class=HelpFormatter)
        add_server_flags(p)
        p.set_defaults(run=with_target(open_target, work))
        return p

    p = sub("create", "create a key and print it (once); limits are optional (default: none)", _create)
    p.add_argument("--name", help="a name to tell the key by (default: key-N)")
    _add_settings(p)
    p.add_argument("--json", action="store_true", help="print JSON (the key and its record)")
    p = sub("update", "change a key's limits, models, expiry or note; `none` clears one", _update)
    p.add_argument("key", metavar="KEY", help="the key's name or id (see `codexlb keys list`)")
    _add_settings(p)
    p.add_argument("--json", action="store_true", help="print JSON (the key's record)")
    p = sub("list", "list keys with their limits and this window's use (never the keys themselves)", _list)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub("revoke", "revoke a key; clients using it are refused from the next request", _revoke)
    p.add_argument("key", metavar="KEY", help="the key's name or id (see `codexlb keys list`)")
