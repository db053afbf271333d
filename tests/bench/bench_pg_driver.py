"""asyncpg against psycopg 3 (AsyncConnectionPool) on a real PostgreSQL, from one asyncio process.

Run on demand (needs asyncpg, psycopg[binary], psycopg_pool in the venv):
    .venv/bin/python tests/bench/bench_pg_driver.py [ops-per-case]
Prints µs of wall time and of process CPU per operation, for codexlb's kinds of query, at concurrency 1 and 16.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import psycopg
import psycopg_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.pgserver import PgServer, find_bindir  # noqa: E402

ACCOUNT_COLS = [f"c{i}" for i in range(16)]
SCHEMA = f"""
CREATE TABLE accounts (id text PRIMARY KEY, access bytea, refresh bytea, id_token bytea,
    {", ".join(f"{c} text" for c in ACCOUNT_COLS)}, lease_until double precision NOT NULL DEFAULT 0);
CREATE TABLE usage (id bigserial PRIMARY KEY, ts double precision, account text, key_id text, model text,
    input_tokens int, cached_tokens int, output_tokens int, reasoning_tokens int, status int, latency_ms int,
    ttfb_ms int, transport text, error text);
"""
UPSERT = ("INSERT INTO accounts (id, access, refresh, id_token, {cols}) VALUES ($1, $2, $3, $4, {ph}) "
          "ON CONFLICT (id) DO UPDATE SET access = EXCLUDED.access, refresh = EXCLUDED.refresh, "
          "id_token = EXCLUDED.id_token, {sets}").format(
    cols=", ".join(ACCOUNT_COLS), ph=", ".join(f"${i + 5}" for i in range(len(ACCOUNT_COLS))),
    sets=", ".join(f"{c} = EXCLUDED.{c}" for c in ACCOUNT_COLS))
SELECT = "SELECT * FROM accounts WHERE id = $1"
USAGE = ("INSERT INTO usage (ts, account, key_id, model, input_tokens, cached_tokens, output_tokens, "
         "reasoning_tokens, status, latency_ms, ttfb_ms, transport, error) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
CLAIM = "UPDATE accounts SET lease_until = $1 WHERE id = $2 AND lease_until < $3"
ACCOUNTS = 64
TOKEN = os.urandom(1200)


def pct(sql: str) -> str:
    """asyncpg's $n placeholders as psycopg's %s (the statements have no literal % or $ otherwise)."""
    out = sql
    for i in range(40, 0, -1):
        out = out.replace(f"${i}", "%s")
    return out


def account_row(i: int) -> tuple:
    return (f"acct-{i}", TOKEN, TOKEN[:600], TOKEN[:900], *[f"value-{i}-{c}" for c in ACCOUNT_COLS])


def usage_rows(n: int) -> list[tuple]:
    return [(time.time(), f"acct-{i % ACCOUNTS}", "key-1", "gpt-5-codex", 1000 + i, 500, 200, 50, 200, 1234, 321,
             "http", None) for i in range(n)]


class AsyncpgDriver:
    name = "asyncpg"

    async def open(self, url: str, size: int) -> None:
        self.url = url
        self.pool = await asyncpg.create_pool(url, min_size=size, max_size=size)

    async def close(self) -> None:
        await self.pool.close()

    async def execute(self, sql: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(sql)

    async def upsert(self, i: int) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(UPSERT, *account_row(i % ACCOUNTS))

    async def select(self, i: int) -> None:
        async with self.pool.acquire() as conn:
            assert await conn.fetchrow(SELECT, f"acct-{i % ACCOUNTS}") is not None

    async def usage_batch(self, _i: int) -> None:
        async with self.pool.acquire() as conn:
            await conn.executemany(USAGE, usage_rows(100))

    async def claim(self, i: int) -> None:
        now = time.time()
        async with self.pool.acquire() as conn:
            status = await conn.execute(CLAIM, now + 0.000001, f"acct-{i % ACCOUNTS}", now + 1)
            assert int(status.split()[-1]) == 1

    async def listener(self):
        conn = await asyncpg.connect(self.url)
        queue: asyncio.Queue = asyncio.Queue()
        await conn.add_listener("changes", lambda *args: queue.put_nowait(args[-1]))
        return conn, queue, conn.close

    async def notify(self, payload: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_notify('changes', $1)", payload)


class PsycopgDriver:
    name = "psycopg"

    async def open(self, url: str, size: int) -> None:
        self.url = url
        self.pool = psycopg_pool.AsyncConnectionPool(url, min_size=size, max_size=size, open=False)
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    async def execute(self, sql: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(sql)

    async def upsert(self, i: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(pct(UPSERT), account_row(i % ACCOUNTS))

    async def select(self, i: int) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(pct(SELECT), (f"acct-{i % ACCOUNTS}",))
            assert await cur.fetchone() is not None

    async def usage_batch(self, _i: int) -> None:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(pct(USAGE), usage_rows(100))

    async def claim(self, i: int) -> None:
        now = time.time()
        async with self.pool.connection() as conn:
            cur = await conn.execute(pct(CLAIM), (now + 0.000001, f"acct-{i % ACCOUNTS}", now + 1))
            assert cur.rowcount == 1

    async def listener(self):
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await conn.execute("LISTEN changes")
        queue: asyncio.Queue = asyncio.Queue()

        async def pump():
            async for note in conn.notifies():
                queue.put_nowait(note.payload)

        task = asyncio.create_task(pump())

        async def close():
            task.cancel()
            await conn.close()

        return conn, queue, close

    async def notify(self, payload: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT pg_notify('changes', %s)", (payload,))


async def timed(op, ops: int, concurrency: int) -> tuple[float, float]:
    """µs wall and µs process CPU per op, `ops` ops spread over `concurrency` tasks."""
    per_task = ops // concurrency

    async def worker(w: int) -> None:
        for i in range(per_task):
            await op(w * per_task + i)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    done = per_task * concurrency
    return (time.perf_counter() - wall) / done * 1e6, (time.process_time() - cpu) / done * 1e6


async def notify_roundtrip(driver, ops: int, concurrency: int) -> tuple[float, float]:
    _conn, queue, close = await driver.listener()
    try:
        async def one(i: int) -> None:
            await driver.notify(str(i))
            await asyncio.wait_for(queue.get(), 10)

        # Round trips in flight at once share the queue: each waits for some notification, total count is exact.
        return await timed(one, ops, concurrency)
    finally:
        await close()


async def bench(driver, url: str, ops: int) -> dict:
    results = {}
    for concurrency in (1, 16):
        await driver.open(url, concurrency)
        try:
            for case, op, n in (("upsert account", driver.upsert, ops), ("select by pk", driver.select, ops),
                                ("usage batch x100", driver.usage_batch, max(ops // 20, 16)),
                                ("lease claim UPDATE", driver.claim, ops)):
                await timed(op, min(n, 64), concurrency)  # warm-up: prepared statements, pages in cache
                results[(case, concurrency)] = await timed(op, n, concurrency)
            results[("LISTEN/NOTIFY rtt", concurrency)] = await notify_roundtrip(driver, ops, concurrency)
        finally:
            await driver.close()
    return results


async def main(ops: int) -> None:
    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL binaries not found")
    server = PgServer(bindir)
    try:
        await asyncio.to_thread(server.init)
        table = {}
        for driver in (AsyncpgDriver(), PsycopgDriver()):
            url = server.url(await server.acreate_database())
            await server.asql(SCHEMA, dbname=url.rsplit("/", 1)[1])
            table[driver.name] = await bench(driver, url, ops)
    finally:
        await asyncio.to_thread(server.destroy)
    print(f"PostgreSQL {bindir}, {ops} ops per case, µs per op (wall / process CPU)")
    print(f"{'query':<20} {'conc':>4} | {'asyncpg wall':>12} {'cpu':>7} | {'psycopg wall':>12} {'cpu':>7} | cpu ratio")
    for key in table["asyncpg"]:
        a, p = table["asyncpg"][key], table["psycopg"][key]
        print(f"{key[0]:<20} {key[1]:>4} | {a[0]:>12.0f} {a[1]:>7.0f} | {p[0]:>12.0f} {p[1]:>7.0f} | "
              f"{p[1] / a[1]:>6.2f}x")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
