from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from codexlb.app import create_app
from codexlb.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Nothing in a test may reach the real ChatGPT backend: port 9 (discard) refuses at once.
    return dataclasses.replace(Settings(), data_dir=tmp_path / "data", port=0, upstream_base_url="http://127.0.0.1:9",
                               auth_base_url="http://127.0.0.1:9", usage_poll_interval_s=0)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No CODEXLB_* from the developer's shell, and a home with no ~/.codexlb."""
    import os

    for name in list(os.environ):
        if name.startswith("CODEXLB_"):
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
async def store(tmp_path):
    """A real Store (SQLite and key) in a fresh data dir."""
    from codexlb.store import Store

    data = tmp_path / "store-data"
    data.mkdir(mode=0o700)
    opened = await Store.open(data)
    yield opened
    await opened.close()


# Real PostgreSQL for the test session (tests/pgserver.py): `pg_server`, and `pg_database` for a fresh database.
from tests.pgserver import pg_database, pg_server  # noqa: E402,F401
