from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from codexlb.app import create_app
from codexlb.config import Settings
from tests.serving import TEST_DRAIN_TIMEOUT_S


# The engine the suite runs on: "sqlite" (the default) or "postgres" (a fresh database per test).
ENGINE = os.environ.get("CODEXLB_TEST_ENGINE", "sqlite")


def pytest_collection_modifyitems(items):
    if ENGINE == "postgres":
        sqlite_only = pytest.mark.skip(reason="checks what SQLite keeps in the data dir")
        one_pass = pytest.mark.skip(reason="brings its own PostgreSQL database: run in the default pass")
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(sqlite_only)
            elif item.get_closest_marker("one_pass"):
                item.add_marker(one_pass)


MIGRATED = "codexlb_migrated"


@pytest.fixture(scope="session")
def migrated_template(request) -> str:
    """A template database holding the current schema (and nothing else), made once per session: each
    test's database is cloned from it instead of being migrated."""
    import asyncio

    from codexlb.store.postgres import PostgresEngine

    server = request.getfixturevalue("pg_server")
    server.create_database(MIGRATED)

    async def migrate() -> None:
        await (await PostgresEngine.open(server.url(MIGRATED))).close()

    asyncio.run(migrate())
    return MIGRATED


@pytest.fixture(autouse=True)
def database_url(request, monkeypatch):
    """Empty on SQLite; on PostgreSQL a fresh database for this test, also in CODEXLB_DATABASE_URL so that a
    `codexlb` the test starts uses it too."""
    if ENGINE != "postgres":
        yield ""
        return
    server = request.getfixturevalue("pg_server")
    name = server.create_database(template=request.getfixturevalue("migrated_template"))
    monkeypatch.setenv("CODEXLB_DATABASE_URL", server.url(name))
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Nothing in a test may reach the real ChatGPT backend: port 9 (discard) refuses at once.
    return dataclasses.replace(Settings(), data_dir=tmp_path / "data", port=0, upstream_base_url="http://127.0.0.1:9",
                               auth_base_url="http://127.0.0.1:9", usage_poll_interval_s=0,
                               database_url=database_url, drain_timeout_s=TEST_DRAIN_TIMEOUT_S)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No CODEXLB_* from the developer's shell, and a home with no ~/.codexlb."""
    for name in list(os.environ):
        if name.startswith("CODEXLB_") and name != "CODEXLB_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
async def sim():
    """The simulated upstream on a real loopback port, fresh for each test."""
    from codexlb.sim.backend import SimConfig
    from codexlb.sim.running import running_sim

    async with running_sim(SimConfig(accounts=3)) as running:
        yield running


@pytest.fixture
async def http():
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def store(tmp_path, database_url):
    """A real Store (the test's engine, and a key) in a fresh data dir."""
    from codexlb.store import Store

    data = tmp_path / "store-data"
    data.mkdir(mode=0o700)
    opened = await Store.open(data, database_url=database_url)
    yield opened
    await opened.close()


# Real PostgreSQL for the test session (tests/pgserver.py): `pg_server`, and `pg_database` for a fresh database.
from tests.pgserver import pg_database, pg_server  # noqa: E402,F401
