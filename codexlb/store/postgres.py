"""The PostgreSQL engine (asyncpg): a bounded pool, migrations under an advisory lock, ordered writes that
outlive a lost connection.

Writes go through one writer task in the order they were issued; when the server is unreachable the writer
keeps them (up to `max_queued`, the oldest queued-only writes dropped past it, counted) and retries with
backoff, so a restart of PostgreSQL loses nothing that was only queued. A caller that awaits a write or a
read waits at most `wait_s`, then gets DatabaseUnavailable; a `quick` caller gets DatabaseUnreachable as soon
as the writer finds the server unreachable and a connection of the caller's own fails too (so a writer that
has not noticed the server is back yet does not turn it away). asyncpg was chosen by measurement (see
tests/bench/bench_pg_driver.py and the commit that added it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, AsyncIterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import asyncpg.connect_utils

from codexlb import log
from codexlb.store import schema
from codexlb.store.engine import (
    DatabaseError,
    DatabaseUnavailable,
    DatabaseUnreachable,
    OnChanges,
    OnResync,
    Params,
    Statement,
)

_log = log.get("codexlb.store")
# pg_advisory_lock key for migrations: "codexlb" in ASCII, so it is recognisable in pg_locks.
MIGRATION_LOCK = 0x636F6465786C62
_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
CHANNEL = "codexlb"
# The change feed's connection is checked after this long without a notification, and must answer within
# PING_WAIT_S: a connection that died without a word (a network cut) is found and replaced within their sum.
# The wait is generous: a busy machine must not take a slow answer for a lost connection.
PING_S = 1.0
PING_WAIT_S = 5.0


@lru_cache(maxsize=512)
def adapt(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...` (no statement of ours has a `?` inside a string)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def public_url(url: str) -> str:
    """The URL without its credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth a retry), as against an error in the statement itself."""
    # InternalClientError: a pooled connection cut under a statement (the server restarted) is left mid-protocol.
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        asyncpg.exceptions.InternalClientError)):
        return True
    # Class 08: connection exception; 57: operator intervention (shutdown, restart).
    return isinstance(exc, asyncpg.PostgresError) and str(getattr(exc, "sqlstate", "")).startswith(("08", "57"))


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _start_error(where: str, exc: BaseException) -> DatabaseError:
    """One line naming the problem with the database at start."""
    if isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        return DatabaseError(f"PostgreSQL at {where} refused the credentials: {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseError(f"PostgreSQL at {where}: {exc}; create it first (createdb)")
    if isinstance(exc, asyncio.TimeoutError):
        return DatabaseError(f"PostgreSQL at {where} did not answer in time")
    if isinstance(exc, OSError):
        return DatabaseError(f"cannot reach PostgreSQL at {where}: {exc.strerror or exc}")
    if isinstance(exc, (ValueError, asyncpg.ClientConfigurationError)):
        return DatabaseError(f"database_url is not usable: {exc}")
    return DatabaseError(f"PostgreSQL at {where}: {exc}")


async def _migrate(conn: asyncpg.Connection, where: str) -> None:
    # Replicas starting together: one migrates under the lock, the others then find the schema current.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if current > schema.SCHEMA_VERSION:
            raise DatabaseError(f"PostgreSQL at {where} has schema version {current}, newer than this codexlb "
                                f"({schema.SCHEMA_VERSION}); upgrade codexlb")
        for version in range(current + 1, schema.SCHEMA_VERSION + 1):
            async with conn.transaction():
                for statement in schema.render(schema.MIGRATIONS[version - 1], "postgres"):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            if current:
                _log.info("database migrated", from_version=version - 1, to_version=version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


def _read_outcome(done: asyncio.Future[Any]) -> None:
    """Marks a finished future's outcome as read, so asyncio does not log an error nobody was left to take."""
    if not done.cancelled():
        done.exception()


class _SSLRequestProto(asyncpg.connect_utils.TLSUpgradeProto):
    """asyncpg's SSLRequest exchange (sslmode=prefer, the default) with its answer marked as read. Cut short as
    its TCP connection opens (a connect or a query's CancelRequest, cancelled by a closing connection), asyncpg
    drops the answer's future with the connection's loss set in it, which asyncio logs as an error nobody
    retrieved (asyncpg issues #1211, #1310; still so in 0.32). Whoever awaits the answer still gets it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_data.add_done_callback(_read_outcome)


asyncpg.connect_utils.TLSUpgradeProto = _SSLRequestProto  # type: ignore[misc]

@contextlib.asynccontextmanager
async def _pooled(pool: asyncpg.Pool, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
    """`pool.acquire()`, whose release outlives a cancelled caller with its outcome read. asyncpg shields the
    release from the caller's cancellation but leaves a failed one (the server cut the connection) as an error
    asyncio logs, nobody having retrieved it."""
    conn = await pool.acquire(timeout=timeout)
    try:
        yield conn
    finally:
        releasing = asyncio.ensure_future(pool.release(conn))
        releasing.add_done_callback(_read_outcome)
        await asyncio.shield(releasing)


def _log_failure(result: asyncio.Future[list[int]]) -> None:
    if not result.cancelled() and result.exception() is not None:
        _log.error("queued database write failed", error=str(result.exception()))


@dataclass(slots=True, eq=False)
class _Write:
    statements: Sequence[Statement] | None  # one transaction of single statements...
    many: tuple[str, Sequence[Params]] | None  # ...or one statement over many rows
    seq: int
    result: asyncio.Future[list[int]] | None = field(default=None)


class PostgresEngine:
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, url: str, *, wait_s: float, max_queued: int) -> None:
        self._url = url
        self.where = public_url(url)
        self._pool = pool
        self._wait_s = wait_s
        self._max_queued = max_queued
        self._queue: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._issued = 0
        self._landed = 0
        self._progress = asyncio.Condition()
        self.dropped = 0  # queued-only writes dropped while the server was away: for /metrics
        self.unreachable = False  # a connection to the server failed, and none has worked since
        self._retry_now = asyncio.Event()  # the server answered a probe: the writer stops waiting out its backoff
        self._writer = asyncio.create_task(self._write_forever(), name="codexlb-db-writer")

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 4, connect_timeout_s: float = 10.0, wait_s: float = 5.0,
                   max_queued: int = 100_000) -> "PostgresEngine":
        where = public_url(url)
        try:
            pool = await asyncpg.create_pool(dsn=url, min_size=1, max_size=pool_size, timeout=connect_timeout_s,
                                             command_timeout=60)
        except Exception as exc:
            raise _start_error(where, exc) from None
        try:
            async with _pooled(pool) as conn:
                await _migrate(conn, where)
        except DatabaseError:
            await pool.close()
            raise
        except Exception as exc:
            pool.terminate()
            raise _start_error(where, exc) from None
        return cls(pool, url, wait_s=wait_s, max_queued=max_queued)

    async def fetch(self, sql: str, params: Params = (), *, quick: bool = False) -> list[tuple[Any, ...]]:
        await self._wait_landed(self._issued, quick)
        rows = await self._retrying(lambda conn: conn.fetch(adapt(sql), *params), quick)
        return [tuple(row) for row in rows]

    async def execute(self, sql: str, params: Params = (), *, quick: bool = False) -> int:
        return (await self.transaction([(sql, params)], quick=quick))[0]

    async def transaction(self, statements: Sequence[Statement], *, quick: bool = False) -> list[int]:
        write = self._enqueue(statements, None, asyncio.get_running_loop().create_future())
        assert write.result is not None
        try:
            await self._wait_landed(write.seq, quick)
        except DatabaseUnreachable:
            # Kept: it lands, in order, once the server is back; nobody awaits it now, so a failure is logged.
            write.result.add_done_callback(_log_failure)
            raise
        except DatabaseUnavailable:
            write.result.cancel()  # the writer skips it: a caller told "unavailable" must not see it land later
            raise
        return write.result.result()

    async def write_returning(self, sql: str, params: Params, also: Sequence[Statement]) -> list[tuple[Any, ...]]:
        async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            async with conn.transaction():
                rows = await conn.fetch(adapt(sql), *params)
                for statement, values in also:
                    await conn.execute(adapt(statement), *values)
                return rows

        # Beside the write queue, as `fetch` is, after every write issued before it.
        await self._wait_landed(self._issued)
        return [tuple(row) for row in await self._retrying(work)]

    def submit(self, sql: str, params: Params = ()) -> None:
        self._enqueue([(sql, params)], None, None)

    def submit_all(self, statements: Sequence[Statement]) -> None:
        self._enqueue(statements, None, None)

    def submit_many(self, sql: str, rows: Sequence[Params]) -> None:
        self._enqueue(None, (sql, rows), None)

    def change(self, origin: str, kind: str, ref: str) -> Statement:
        # NOTIFY is transactional: delivered when the write commits, in commit order, never if it rolls back.
        return ("SELECT pg_notify(?, ?)", (CHANNEL, f"{origin}\t{kind}\t{ref}"))

    async def follow(self, origin: str, on_changes: OnChanges, on_resync: OnResync) -> None:
        attempt, first = 0, True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url, timeout=10)
                heard: asyncio.Queue[str] = asyncio.Queue()
                await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: heard.put_nowait(payload))
                # Notifications sent while this replica was not listening (before it first listened too, since
                # it loaded its state) are lost: read everything again now that it listens.
                await on_resync()
                if not first:
                    _log.info("change feed back; state read again", retries=attempt)
                first, attempt = False, 0
                while True:
                    try:
                        async with asyncio.timeout(PING_S):
                            payloads = [await heard.get()]
                    except TimeoutError:
                        async with asyncio.timeout(PING_WAIT_S):
                            await conn.fetchval("SELECT 1")
                        continue
                    while not heard.empty():
                        payloads.append(heard.get_nowait())
                    theirs = [(kind, ref) for who, kind, ref in (p.split("\t", 2) for p in payloads) if who != origin]
                    if theirs:
                        await on_changes(theirs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not transient(exc) and not isinstance(exc, DatabaseError):
                    raise
                if attempt == 0:
                    _log.warning("change feed lost; reconnecting", error=str(exc) or type(exc).__name__)
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1

    async def barrier(self) -> None:
        await self._wait_landed(self._issued)

    def _enqueue(self, statements: Sequence[Statement] | None, many: tuple[str, Sequence[Params]] | None,
                 result: asyncio.Future[list[int]] | None) -> _Write:
        self._issued += 1
        write = _Write(statements, many, self._issued, result)
        self._queue.append(write)
        if len(self._queue) > self._max_queued:
            self._drop_oldest_queued()
        self._wake.set()
        return write

    def _drop_oldest_queued(self) -> None:
        for i, queued in enumerate(self._queue):
            if queued.result is None:
                del self._queue[i]
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    _log.warning("database away: queued writes dropped", dropped=self.dropped)
                return

    async def _wait_landed(self, seq: int, quick: bool = False) -> None:
        deadline = asyncio.get_running_loop().time() + self._wait_s
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that comes as it ends.
            try:
                async with asyncio.timeout_at(deadline), self._progress:
                    await self._progress.wait_for(lambda: self._landed >= seq or (quick and self.unreachable))
            except TimeoutError:
                raise DatabaseUnavailable(
                    f"PostgreSQL at {self.where} did not answer within {self._wait_s:g} s") from None
            if self._landed >= seq:
                return
            await self._probe(deadline)

    async def _probe(self, deadline: float) -> None:
        """Raises DatabaseUnreachable unless a connection of our own reaches the server; when one does, the
        writer retries at once."""
        await self._retrying(lambda conn: conn.fetchval("SELECT 1"), True, deadline)
        self._retry_now.set()

    async def _retrying(self, work: Any, quick: bool = False, deadline: float | None = None) -> Any:
        """`work` on a pooled connection, retried with backoff until the deadline; a quick caller gives up at
        the second connection that fails (the first may be a pooled one the server cut before it came back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s if deadline is None else deadline
        for attempt in itertools.count():
            try:
                async with _pooled(self._pool, max(0.01, deadline - loop.time())) as conn:
                    result = await work(conn)
            except Exception as exc:
                if not transient(exc):
                    raise DatabaseError(f"PostgreSQL at {self.where}: {exc}") from exc
                if not isinstance(exc, asyncio.TimeoutError):  # no connection free in time says nothing of the server
                    await self._found_unreachable()
                    if quick and attempt:
                        raise DatabaseUnreachable(f"PostgreSQL at {self.where} is unreachable: {exc}") from None
                pause = 0.0 if quick and not attempt else _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                if loop.time() + pause >= deadline:
                    raise DatabaseUnavailable(f"PostgreSQL at {self.where} is unreachable: {exc}") from None
                await asyncio.sleep(pause)
            else:
                self.unreachable = False
                return result

    async def _found_unreachable(self) -> None:
        if not self.unreachable:
            self.unreachable = True
            async with self._progress:
                self._progress.notify_all()  # wakes the quick callers waiting for their writes

    async def _write_forever(self) -> None:
        attempt = 0
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            write = self._queue[0]
            if write.result is not None and write.result.done():
                self._queue.popleft()
                await self._landed_up_to(write.seq)
                continue
            try:
                async with _pooled(self._pool) as conn:
                    counts = await self._apply(conn, write)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if transient(exc):
                    if attempt == 0:
                        _log.warning("database unreachable; writes are kept and retried", error=str(exc))
                    await self._found_unreachable()
                    self._retry_now.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]):
                            await self._retry_now.wait()
                    attempt += 1
                    continue
                self._queue.popleft()
                error = DatabaseError(f"PostgreSQL at {self.where}: {exc}")
                if write.result is None:
                    _log.error("queued database write failed", error=str(exc))
                elif not write.result.done():
                    write.result.set_exception(error)
            else:
                if attempt:
                    _log.info("database reachable again", retries=attempt)
                attempt, self.unreachable = 0, False
                self._queue.popleft()
                if write.result is not None and not write.result.done():
                    write.result.set_result(counts)
            await self._landed_up_to(write.seq)

    @staticmethod
    async def _apply(conn: asyncpg.Connection, write: _Write) -> list[int]:
        async with conn.transaction():
            if write.many is not None:
                sql, rows = write.many
                await conn.executemany(adapt(sql), rows)
                return [len(rows)]
            assert write.statements is not None
            return [_rowcount(await conn.execute(adapt(sql), *params)) for sql, params in write.statements]

    async def _landed_up_to(self, seq: int) -> None:
        async with self._progress:
            self._landed = seq
            self._progress.notify_all()

    async def close(self) -> None:
        """Land what is queued (bounded by `wait_s`), then close the pool."""
        try:
            await self._wait_landed(self._issued)
        except DatabaseUnavailable:
            _log.error("database away at shutdown: queued writes lost", queued=len(self._queue))
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass
        try:
            async with asyncio.timeout(self._wait_s):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()
