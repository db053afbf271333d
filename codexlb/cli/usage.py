"""`codexlb usage`: what each API key and each conversation used over a time range (tokens, requests, the bytes
anchoring saved, recoveries), or one conversation request by request; a table or JSON.

It reads the running server's admin API (`/api/usage`, `/api/conversations`), else the data dir's request log.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from codexlb.cli.common import CliError, HelpFormatter, add_server_flags, ago
from codexlb.cli.target import AdminClient, open_store, reads_only, running_server, with_target
from codexlb.config import Settings
from codexlb.store import Store, ledger

_EPILOG = """\
examples:
  codexlb usage                              # the last 24 hours: per key, per account, per conversation
  codexlb usage --since 7d                   # the last week
  codexlb usage --since 2026-12-01 --until 2026-12-02T12:00:00+01:00
  codexlb usage --key laptop                 # one key's conversations (by name or id)
  codexlb usage --conversation 019a…         # one conversation, request by request
  codexlb usage --json | jq '.keys'

Times are ISO-8601 (without a zone: UTC) or relative to now: 90s, 30m, 24h, 7d, 2w.
SAVED is what clients did not send thanks to anchoring: what resending each
request's whole history would have cost, less what they sent. RECOV counts the
recoveries (reconnect, rebuild from the transcript, whole-input send, move to
another account) and what they added upstream.
"""
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float) -> float:
    """An ISO-8601 time (UTC without a zone) or a span back from `now` (`24h`, `7d`), as epoch seconds."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - float(relative[1]) * _UNIT_S[relative[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"{text!r} is neither an ISO-8601 time nor a span like 24h or 7d", exit_code=2) from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


class LocalUsage:
    """The data dir's request log, read as the admin API reads it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    async def open(cls, settings: Settings) -> "LocalUsage":
        return cls(await open_store(settings))

    async def usage(self, since: float, until: float) -> dict[str, Any]:
        return await ledger.usage(self.store.db, since, until)

    async def conversations(self, since: float, until: float, key: str | None, limit: int) -> list[dict[str, Any]]:
        key_ids = await ledger.key_ids(self.store.db, key) if key else None
        if key and not key_ids:
            raise CliError(f"no API key {key!r} (see `codexlb keys list`)", exit_code=1)
        return await ledger.conversations(self.store.db, since, until, key_ids=key_ids, limit=limit)

    async def conversation(self, conversation: str) -> dict[str, Any]:
        found = await ledger.conversation(self.store.db, conversation)
        if found is None:
            raise CliError(f"no request of conversation {conversation!r} is in the log", exit_code=1)
        return {"conversation": found[0], "requests": found[1]}

    async def close(self) -> None:
        await self.store.close()


class RemoteUsage:
    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin

    async def usage(self, since: float, until: float) -> dict[str, Any]:
        return await self.admin.call("GET", "/api/usage?" + urlencode({"since": since, "until": until}))

    async def conversations(self, since: float, until: float, key: str | None, limit: int) -> list[dict[str, Any]]:
        query = {"since": since, "until": until, "limit": limit, **({"key": key} if key else {})}
        return (await self.admin.call("GET", "/api/conversations?" + urlencode(query)))["conversations"]

    async def conversation(self, conversation: str) -> dict[str, Any]:
        return await self.admin.call("GET", f"/api/conversations/{quote(conversation, safe='')}")

    async def close(self) -> None:
        await self.admin.close()


async def open_target(settings: Settings) -> LocalUsage | RemoteUsage:
    admin = await running_server(settings)
    return RemoteUsage(admin) if admin is not None else await LocalUsage.open(settings)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, step in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= step:
            return f"{n / step:.1f}{unit}"
    return str(n)


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    shown = [header] + [tuple("-" if c is None else str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown)


def _tokens(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]


def _recoveries(row: dict[str, Any]) -> str:
    return f"{row['recoveries']} (+{_size(row['recovery_bytes'])})" if row["recoveries"] else "0"


_TOKEN_HEADER = ("INPUT", "CACHED", "OUTPUT", "REASONING")


def render_summary(view: dict[str, Any], conversations: list[dict[str, Any]], now: float) -> str:
    parts = []
    for title, rows, name, ident in (("KEY", view["keys"], "api_key_name", "api_key_id"),
                                     ("ACCOUNT", view["accounts"], "account_alias", "account_id")):
        parts.append(table((title, "REQUESTS", *_TOKEN_HEADER, "SAVED", "RECOV"), [
            (r[name] or r[ident] or "(none)", r["requests"], *_tokens(r), _size(r["saved_bytes"]), _recoveries(r))
            for r in rows]))
    parts.append(table(("CONVERSATION", "KEY", "ACCOUNT", "TURNS", "REQUESTS", *_TOKEN_HEADER, "SENT", "UPSTREAM",
                        "SAVED", "RECOV", "LAST SEEN"), [
        (c["conversation"], c["api_key_name"] or c["api_key_id"], c["account_alias"] or c["account_id"], c["turns"],
         c["requests"], *_tokens(c), _size(c["client_bytes"]), _size(c["upstream_bytes"]), _size(c["saved_bytes"]),
         _recoveries(c), ago(c["last_seen"], now)) for c in conversations]))
    return "\n\n".join(parts)


def render_conversation(view: dict[str, Any], now: float) -> str:
    c = view["conversation"]
    head = (f"conversation {c['conversation']}: {c['turns']} turns, {c['requests']} requests, "
            f"key {c['api_key_name'] or c['api_key_id'] or '-'}, account {c['account_alias'] or c['account_id']}, "
            f"saved {_size(c['saved_bytes'])}, {c['recoveries']} recoveries (+{_size(c['recovery_bytes'])}), "
            f"last seen {ago(c['last_seen'], now)}")
    return head + "\n\n" + table(
        ("TIME", "TURN", "VIA", "STATUS", *_TOKEN_HEADER, "SENT", "UPSTREAM", "SAVED", "RECOVERIES"), [
            (datetime.fromtimestamp(r["ts"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), r["turn_id"],
             r["transport"], r["status"], *_tokens(r), _size(r["client_bytes"]), _size(r["upstream_bytes"]),
             _size(r["saved_bytes"]),
             f"{r['recovery_kinds']} (+{_size(r['recovery_bytes'])})" if r["recoveries"] else "")
            for r in view["requests"]])


def _json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


@reads_only
async def _usage(target: LocalUsage | RemoteUsage, args: argparse.Namespace) -> int:
    now = time.time()
    if args.conversation is not None:
        view = await target.conversation(args.conversation)
        if args.json:
            _json(view)
        else:
            print(render_conversation(view, now))
        return 0
    until = parse_time(args.until, now) if args.until else now + 1
    since = parse_time(args.since, now)
    if since > until:
        raise CliError("--since is after --until", exit_code=2)
    totals = await target.usage(since, until)
    conversations = await target.conversations(since, until, args.key, args.limit)
    if args.key:  # that key's totals only
        totals["keys"] = [k for k in totals["keys"] if args.key in (k["api_key_id"], k["api_key_name"])]
    if args.json:
        _json({**totals, "conversations": conversations})
    else:
        print(render_summary(totals, conversations, now))
    return 0


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 500")
    return int(text)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "usage", help="tokens, savings and recoveries per key and per conversation",
        description="What each API key, account and conversation used over a time range: requests, tokens as "
        "upstream reported them, the bytes anchoring saved, and the recoveries with what they cost; or one "
        "conversation request by request (--conversation).", epilog=_EPILOG, formatter_class=HelpFormatter)
    add_server_flags(parser)
    parser.add_argument("--since", default="24h", metavar="TIME", help="start of the range (ISO-8601 or 24h, 7d...)")
    parser.add_argument("--until", metavar="TIME", help="end of the range (default: now)")
    parser.add_argument("--key", metavar="KEY", help="only this API key's conversations (name or id)")
    parser.add_argument("--conversation", metavar="ID",
                        help="one conversation's requests (its session id, as the list shows it)")
    parser.add_argument("--limit", type=_limit, default=100, metavar="N", help="conversations listed, latest first")
    parser.add_argument("--json", action="store_true", help="print JSON (the admin API's answers)")
    parser.set_defaults(run=with_target(open_target, _usage))
