"""`drain_pause_s`: after SIGTERM a replica's readiness fails at once, and its port goes on accepting (and serving)
for that long before the drain, so a front door's health check takes it out before a connection is refused."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.fleet.replicas import Replica

PAUSE_S = 3.0


async def test_readiness_fails_while_the_port_still_serves(pg_database, sim, tmp_path):
    replica = Replica(tmp_path / "r", pg_database, sim, env={"CODEXLB_DRAIN_PAUSE_S": str(PAUSE_S)})
    await replica.start()
    try:
        async with aiohttp.ClientSession() as http:
            # Serving: its signal handlers are in place (a SIGTERM in the instant before, as it logs "listening",
            # ends it without a drain).
            async with http.get(f"{replica.url}/health/ready") as resp:
                assert resp.status == 200
            replica.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(PAUSE_S - 1):  # well within the pause
                while True:  # until the signal is handled
                    async with http.get(f"{replica.url}/health/ready") as resp:
                        if resp.status == 503:
                            break
                    await asyncio.sleep(0.05)
                # A new connection is still accepted and served, and told to close.
                async with http.get(f"{replica.url}/health/live") as resp:
                    assert resp.status == 200 and resp.headers["Connection"] == "close"
        assert replica.proc.returncode is None
        assert await asyncio.wait_for(replica.proc.wait(), PAUSE_S + 10) == 0
    finally:
        await replica.stop()
