"""Where a management command does its work: a running server's admin API, or the data dir.

A running server holds accounts and keys in memory, so a change made behind its back would not reach it
until a restart. The server that holds the data dir says where it listens (`server_record`): commands go
through its admin API, and refuse to touch a data dir held by one that does not answer. With no server,
they open the data dir themselves, and a command that fails takes back the files it made there.
"""

from __future__ import annotations

import argparse
import asyncio
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import aiohttp
import orjson

from codexlb import log, server_record
from codexlb.admin_auth import TOKEN_FILE
from codexlb.cli.common import CliError, load_settings
from codexlb.config import Settings
from codexlb.dir_changes import DirChanges
from codexlb.services import ensure_data_dir
from codexlb.store import DB_FILE_NAME, DatabaseError, SecretKeyError, Store


# A live server answers /health/live at once; one stopped or wedged must not hold the command for long.
PROBE_S = 3.0


class Closable(Protocol):
    async def close(self) -> None: ...


T = TypeVar("T", bound=Closable)
W = TypeVar("W", bound=Callable[..., Awaitable[int]])


class AdminClient:
    """The running server's admin API; its error messages become the command's."""

    def __init__(self, http: aiohttp.ClientSession, server: server_record.Holder, token: str | None = None) -> None:
        assert server.url is not None
        self.http, self.server, self.base = http, server, server.url
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
    """The server holding the data dir, or None when none does; one that does not answer is an error."""
    try:
        server = await asyncio.to_thread(server_record.holder, settings.data_dir)
    except OSError as exc:
        raise CliError(f"cannot check data dir {settings.data_dir}: {exc.strerror or exc}", exit_code=1) from None
    if server is None:
        return None
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, sock_connect=1))
    live = False
    if server.url is not None:
        try:
            async with http.get(f"{server.url}/health/live", timeout=aiohttp.ClientTimeout(total=PROBE_S)) as resp:
                live = resp.status == 200 and (await resp.json(content_type=None)).get("status") == "live"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
    if not live:
        await http.close()
        raise CliError(f"data dir {settings.data_dir} is held by a codexlb server ({server.describe()}) that does "
                       "not answer; changes made behind its back would be lost: wait until it answers, or stop it",
                       exit_code=1)
    try:
        token: str | None = (settings.data_dir / TOKEN_FILE).read_text().strip()
    except OSError:
        token = None  # another user's server, or an older one: loopback rules apply
    return AdminClient(http, server, token)


# What the command found in the data dir before opening it itself: taken back if the command fails (or
# only read: a list on a data dir that does not exist yet must not make one).
_local_changes: ContextVar[DirChanges | None] = ContextVar("local_changes", default=None)


async def open_store(settings: Settings) -> Store:
    # With PostgreSQL the database outlives the command (its key check names the key made here), so a
    # failed command must keep the key it made.
    if not settings.database_url:
        _local_changes.set(await asyncio.to_thread(DirChanges, settings.data_dir, DB_FILE_NAME))
    ensure_data_dir(settings)
    try:
        return await Store.open_for(settings)
    except (SecretKeyError, DatabaseError) as exc:
        raise CliError(str(exc), exit_code=1) from None


def reads_only(work: W) -> W:
    """Marks a command's work as reading only: what opening the data dir made for it is taken back."""
    setattr(work, "reads_only", True)
    return work


def with_target(open_target: Callable[[Settings], Awaitable[T]],
                work: Callable[[T, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """A command's `run`: settings from its flags, the target opened, `work` done, the target closed."""

    def run(args: argparse.Namespace) -> int:
        settings = load_settings(args).settings
        # A one-shot command's output is its answer; only problems belong on stderr.
        log.configure("warning", settings.log_format)

        async def go() -> int:
            done = 1
            try:
                target = await open_target(settings)
                try:
                    done = await work(target, args)
                finally:
                    await target.close()
            finally:
                changes = _local_changes.get()
                if changes is not None and (done != 0 or getattr(work, "reads_only", False)):
                    await asyncio.to_thread(changes.undo)
            return done

        return asyncio.run(go())

    return run
