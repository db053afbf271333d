"""The PostgreSQL engine's own behaviour: start-up errors in one line, migrations once under a lock when
replicas start together, one sealing key for the fleet."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import subprocess
import sys
import time

import asyncpg
import pytest

from codexlb.store import DatabaseError, DatabaseUnreachable, SecretKeyError, Store, schema
from codexlb.store.postgres import PostgresEngine
from tests.pgserver import PASSWORD
from tests.serving import child_env

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_start_error(tmp_path, url: str) -> str:
    env = child_env()
    env.pop("CODEXLB_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(tmp_path / "d"),
                           "--database-url", url], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_a_malformed_database_url_is_one_line(tmp_path):
    assert "database_url" in serve_start_error(tmp_path, "mysql://db.example/x")


def test_an_unreachable_database_is_one_line(tmp_path):
    err = serve_start_error(tmp_path, f"postgresql://codexlb:secret@127.0.0.1:{closed_port()}/codexlb")
    assert "cannot reach PostgreSQL at postgresql://127.0.0.1:" in err and "secret" not in err


def test_a_missing_database_is_one_line(tmp_path, pg_database):
    err = serve_start_error(tmp_path, pg_database.rsplit("/", 1)[0] + "/no_such_db")
    assert "no_such_db" in err and "createdb" in err


async def test_replicas_starting_together_migrate_once(tmp_path, pg_database):
    stores = await asyncio.gather(*(Store.open(tmp_path / f"r{i}", database_url=pg_database, secret_key=KEY_A)
                                    for i in range(6)))
    try:
        assert len({s.replica for s in stores}) == 6
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    conn = await asyncpg.connect(pg_database)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
    finally:
        await conn.close()
    assert versions == list(range(1, schema.SCHEMA_VERSION + 1))


async def test_a_replica_with_another_key_refuses_in_one_line(tmp_path, pg_database):
    await (await Store.open(tmp_path / "a", database_url=pg_database, secret_key=KEY_A)).close()
    with pytest.raises(SecretKeyError, match="every replica needs the same key") as caught:
        await Store.open(tmp_path / "b", database_url=pg_database, secret_key=KEY_B)
    assert "\n" not in str(caught.value) and KEY_B not in str(caught.value)


async def test_a_newer_schema_is_refused(tmp_path, pg_database):
    await (await Store.open(tmp_path / "a", database_url=pg_database, secret_key=KEY_A)).close()
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    finally:
        await conn.close()
    with pytest.raises(DatabaseError, match="schema version 99, newer than this codexlb"):
        await Store.open(tmp_path / "a", database_url=pg_database, secret_key=KEY_A)


def test_the_key_can_come_from_the_environment(tmp_path, pg_database):
    env = {**child_env(), "CODEXLB_DATABASE_URL": pg_database, "CODEXLB_SECRET_KEY": KEY_A}
    run = [sys.executable, "-m", "codexlb", "keys", "create", "--data-dir", str(tmp_path / "d")]
    assert subprocess.run(run, env=env, capture_output=True, timeout=60).returncode == 0
    assert not (tmp_path / "d" / "secret.key").exists()
    other = subprocess.run(run, env={**env, "CODEXLB_SECRET_KEY": KEY_B}, capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "CODEXLB_SECRET_KEY is not the one" in other.stderr
    assert KEY_B not in other.stderr and os.environ.get("CODEXLB_SECRET_KEY") is None


def test_wrong_credentials_are_one_line(tmp_path, pg_server):
    wrong = pg_server.url("postgres", password=True).replace(PASSWORD, "not-the-password")
    err = serve_start_error(tmp_path, wrong)
    assert "refused the credentials" in err and "not-the-password" not in err


async def cancelled_at_every_step(start, finished: asyncio.Event, limit: int = 5000) -> int:
    """Start `start()` and cancel it after 0, 1, 2... turns of the loop, until it gets to `finished` first;
    returns how many cancellations were tried. Every point a cancellation can land on is hit once."""
    for turns in range(limit):
        task = asyncio.create_task(start())
        for _ in range(turns):
            await asyncio.sleep(0)
        reached = finished.is_set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if reached:
            return turns
    raise AssertionError(f"not finished after {limit} turns")


async def test_cancelling_a_connect_at_any_point_leaves_no_stray_error(tmp_path, pg_server, pg_database):
    # Seen in CI: asyncio logged "Future exception was never retrieved ... unexpected connection_lost() call"
    # from asyncpg's SSLRequest exchange cut short (a connect, or the CancelRequest of a cancelled query whose
    # connection then closed), and "Task exception was never retrieved" from a pool release that failed after
    # its caller was cancelled (the server had cut the connection).
    stray: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: stray.append(context))
    try:
        await cancel_connects_everywhere(tmp_path, pg_server, pg_database)
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert [c["message"] for c in stray] == [], stray


async def cancel_connects_everywhere(tmp_path, pg_server, pg_database) -> None:
    store = await Store.open(tmp_path / "d", database_url=pg_database, secret_key=KEY_A)
    try:
        listening = asyncio.Event()

        async def heard(*_args) -> None:
            listening.set()

        # The change feed's own connection...
        assert await cancelled_at_every_step(lambda: store.follow_changes(heard, heard), listening) > 0

        # ...and the pool's, when its connections were cut (a restarted server) and a read needs a new one.
        fetched = asyncio.Event()

        async def fetch_once() -> None:
            await pg_server.akill_connections(pg_database.rsplit("/", 1)[1])
            await store.db.fetch("SELECT 1")
            fetched.set()

        assert await cancelled_at_every_step(fetch_once, fetched) > 0
    finally:
        await store.close()


async def test_a_quick_write_refused_while_the_server_is_away_lands_when_it_is_back(pg_server, pg_database):
    """At once, not after the engine's 5 s bound; kept in order, unlike a write given up on for time; and one
    that fails once the server is back is logged, not left as an exception nobody retrieves."""
    stray: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: stray.append(context))
    engine = await PostgresEngine.open(pg_database)
    try:
        await pg_server.astop()
        try:
            started = time.monotonic()
            with pytest.raises(DatabaseUnreachable):
                await engine.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("kept", b"1"), quick=True)
            with pytest.raises(DatabaseUnreachable):
                await engine.execute("INSERT INTO no_such_table VALUES (1)", quick=True)
            with pytest.raises(DatabaseUnreachable):
                await engine.fetch("SELECT 1", quick=True)
            took = time.monotonic() - started
            print(f"\nthree quick calls refused in {took * 1000:.0f} ms")
            assert took < 1.0
        finally:
            await pg_server.astart()
        assert await engine.fetch("SELECT value FROM meta WHERE key = ?", ("kept",)) == [(b"1",)]
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        await engine.close()
        loop.set_exception_handler(None)
    assert [c["message"] for c in stray] == [], stray
