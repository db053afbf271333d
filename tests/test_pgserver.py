"""The session's real PostgreSQL server (tests/pgserver.py): it runs, gives fresh databases, survives restarts."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests.pgserver import PASSWORD, missing


def _psql_tcp(url: str) -> subprocess.CompletedProcess:
    # Over TCP with the URL a driver would get, so the listen address, port and pg_hba are what is tested.
    return subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT current_database(), current_user", url],
                          capture_output=True, text=True, timeout=30)


def test_fresh_database_is_reachable_over_tcp(pg_server):
    name = pg_server.create_database()
    done = _psql_tcp(pg_server.url(name))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{name}|postgres"


async def test_databases_are_distinct_and_empty(pg_server):
    first, second = await asyncio.gather(pg_server.acreate_database(), pg_server.acreate_database())
    assert first != second
    await pg_server.asql("CREATE TABLE t (x int)", dbname=first)
    assert await pg_server.asql("SELECT count(*) FROM pg_tables WHERE tablename = 't'", dbname=second) == "0"


def test_password_user_needs_its_password(pg_server):
    good = _psql_tcp(pg_server.url("postgres", password=True))
    assert good.returncode == 0, good.stderr
    bad = _psql_tcp(pg_server.url("postgres", password=True).replace(PASSWORD, "wrong"))
    assert bad.returncode != 0
    assert "password authentication failed" in bad.stderr


async def _held_session(url: str) -> asyncio.subprocess.Process:
    """A psql session that has run one query and stays open."""
    held = await asyncio.create_subprocess_exec("psql", "-X", "-q", url, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    held.stdin.write(b"SELECT 1;\n")
    await held.stdin.drain()
    assert (await asyncio.wait_for(held.stdout.readline(), 30)).strip() == b"?column?"
    return held


async def _next_query_error(held: asyncio.subprocess.Process) -> bytes:
    held.stdin.write(b"SELECT 2;\n\\q\n")
    await held.stdin.drain()
    _out, err = await asyncio.wait_for(held.communicate(), 30)
    return err


async def test_restart_cuts_connections_and_comes_back(pg_server):
    name = await pg_server.acreate_database()
    held = await _held_session(pg_server.url(name))
    await pg_server.arestart()
    err = await _next_query_error(held)
    assert b"terminat" in err or b"connection" in err, err
    assert (await pg_server.asql("SELECT 42", dbname=name)) == "42"


async def test_kill_connections(pg_server):
    name = await pg_server.acreate_database()
    held = await _held_session(pg_server.url(name))
    assert await pg_server.akill_connections(name) == 1
    assert b"terminat" in await _next_query_error(held)


async def test_a_failed_statement_raises_and_the_session_goes_on(pg_server):
    try:
        await pg_server.asql("SELECT no_such_column")
        raise AssertionError("no error raised")
    except RuntimeError as error:
        assert "no_such_column" in str(error)
    assert await pg_server.asql("SELECT 7") == "7"


async def test_pg_database_fixture_gives_a_url_to_a_fresh_database(pg_database):
    done = await asyncio.to_thread(_psql_tcp, pg_database)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{pg_database.rsplit('/', 1)[1]}|postgres"


def test_missing_component_skips_or_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        missing("PostgreSQL")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is not installed"):
        missing("PostgreSQL")
