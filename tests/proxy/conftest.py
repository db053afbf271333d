from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from aiohttp import web

from codexlb.app import create_app
from codexlb.services import POOL, ROSTER
from codexlb.sim.backend import SimConfig
from codexlb.sim.running import RunningSim, running_sim
from tests.accounts.conftest import login_of


@dataclass
class Proxy:
    url: str
    app: web.Application
    sim: RunningSim

    @property
    def codex_base_url(self) -> str:
        return f"{self.url}/backend-api/codex"

    @property
    def roster(self):
        return self.app[ROSTER]

    @property
    def pool(self):
        return self.app[POOL]


async def start_proxy(aiohttp_server, settings, sim: RunningSim, accounts: int | None = None, **overrides) -> Proxy:
    settings = dataclasses.replace(settings, **{"upstream_base_url": sim.upstream_base_url, "auth_base_url": sim.url,
                                                **overrides})
    app = create_app(settings)
    # The test server cancels the handler of a client that hangs up, as `serve` does.
    server = await aiohttp_server(app)
    for sim_account in sim.backend.accounts[:accounts]:
        await app[ROSTER].add_login(login_of(sim_account))
    return Proxy(str(server.make_url("")).rstrip("/"), app, sim)


@pytest.fixture
async def proxy(aiohttp_server, settings, sim):
    """codexlb in front of the sim, with the sim's three accounts imported, on real loopback ports."""
    return await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10, keepalive_s=5)


@pytest.fixture
async def sim_one():
    async with running_sim(SimConfig(accounts=1)) as running:
        yield running
