"""Where a management command does its work: a running server's admin API, or the data dir.

A running server holds accounts and keys in memory, so a change made behind its back would not reach it
until a restart. When one answers on the configured host and port, commands go through its admin API;
otherwise they open the data dir themselves.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import aiohttp
import orjson

from codexlb import log
from codexlb.admin_auth import TOKEN_FILE
from codexlb.cli.common import CliError, load_settings
from codexlb.config import Settings
from codexlb.services import ensure_data_dir
from codexlb.store import DatabaseError, SecretKeyError, Store


class Closable(Protocol):
    async def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class AdminClient:
    """The running server's admin API; its error messages become the command's."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str | None = None) -> None:
        self.http, self.base = http, base
        # The server's local admin token (`codexlb.admin_auth`): this machine's operator, password or not.
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else orjson.dumps(body)
        async with self.http.request(method, self.base + path, data=data, headers=self.headers) as resp:
            payload = await resp.json(content_type=None)
        if resp.status >= 400:
            raise CliError(payload.get("error", {}).get("message", f"server answered {resp.status}"), exit_code=1)
        return payload

    async def close(self) -> None:
        await self.http.close()


async def running_server(settings: Settings) -> AdminClient | None:
    """The server on host:port if one answers, else None."""
    # A server listening on every address is reachable, and admin-allowed, on loopback.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, sock_connect=1))
    try:
        async with http.get(f"{base}/health/live") as resp:
            live = resp.status == 200 and (await resp.json(content_type=None)).get("status") == "live"
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        live = False
    if live:
        try:
            token: str | None = (settings.data_dir / TOKEN_FILE).read_text().strip()
        except OSError:
            token = None  # another user's server, or an older one: loopback rules apply
        return AdminClient(http, base, token)
    await http.close()
    return None


async def open_store(settings: Settings) -> Store:
    ensure_data_dir(settings)
    try:
        return await Store.open(settings.data_dir, settings.secret_key_file)
    except (SecretKeyError, DatabaseError) as exc:
        raise CliError(str(exc), exit_code=1) from None


def with_target(open_target: Callable[[Settings], Awaitable[T]],
                work: Callable[[T, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """A command's `run`: settings from its flags, the target opened, `work` done, the target closed."""

    def run(args: argparse.Namespace) -> int:
        settings = load_settings(args).settings
        # A one-shot command's output is its answer; only problems belong on stderr.
        log.configure("warning", settings.log_format)

        async def go() -> int:
            target = await open_target(settings)
            try:
                return await work(target, args)
            finally:
                await target.close()

        return asyncio.run(go())

    return run
