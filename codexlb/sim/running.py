"""Running the sim on a loopback port, in-process: for tests, benchmarks and `codexlb demo`."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

from codexlb.sim.app import create_sim_app
from codexlb.sim.backend import Backend, SimConfig


@dataclass(frozen=True, slots=True)
class RunningSim:
    url: str
    backend: Backend

    @property
    def upstream_base_url(self) -> str:
        """What codexlb's `upstream_base_url` points at."""
        return f"{self.url}/backend-api"

    @property
    def codex_base_url(self) -> str:
        """A Codex CLI provider's `base_url` for talking to the sim directly."""
        return f"{self.url}/backend-api/codex"


@asynccontextmanager
async def running_sim(config: SimConfig | None = None, host: str = "127.0.0.1",
                      port: int = 0) -> AsyncIterator[RunningSim]:
    backend = Backend(config)
    runner = web.AppRunner(create_sim_app(backend), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield RunningSim(f"http://{bound_host}:{bound_port}", backend)
    finally:
        await runner.cleanup()
