"""Several replicas on one database: in-process apps, each with its own store, pool and refresher."""

from __future__ import annotations

import base64
import dataclasses
import os

import pytest

from codexlb.pool.roster import Roster
from codexlb.store import Store
from tests.accounts.conftest import login_of
from tests.proxy.conftest import Proxy, sim_one, start_proxy

__all__ = ["sim_one"]  # the fixture, for the fleet's tests too

# Every replica of a fleet seals tokens with one key.
SECRET_KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_database(request) -> str:
    """One database the fleet shares: the SQLite file of one data dir, or a fresh PostgreSQL database."""
    return request.getfixturevalue("pg_database") if request.param == "postgres" else ""


async def import_accounts(settings, sim) -> None:
    """The sim's accounts into the database `settings` name, once, as an operator would before starting."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await Store.open_for(settings)
    try:
        roster = await Roster.load(store)
        for sim_account in sim.backend.accounts:
            await roster.add_login(login_of(sim_account))
    finally:
        await store.close()


async def start_fleet(aiohttp_server, settings, sim, database_url: str, replicas: int = 3,
                      **overrides) -> list[Proxy]:
    """`replicas` codexlb apps on one database (one data dir, so one SQLite file when that is the engine)."""
    settings = dataclasses.replace(settings, database_url=database_url, secret_key=SECRET_KEY)
    await import_accounts(settings, sim)
    return [await start_proxy(aiohttp_server, settings, sim, accounts=0, **overrides) for _ in range(replicas)]
