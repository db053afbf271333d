"""Adding an account from the dashboard by device-code sign-in, against the sim's OAuth server."""

from __future__ import annotations

import asyncio

from tests.proxy.conftest import start_proxy


async def test_device_sign_in_adds_the_account(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=0)
    async with http.post(f"{proxy.url}/api/accounts/device") as resp:
        assert resp.status == 201
        started = await resp.json()
    assert started["verification_url"].endswith("/codex/device") and started["user_code"]
    status_url = f"{proxy.url}/api/accounts/device/{started['id']}"
    assert (await (await http.get(status_url)).json())["status"] == "pending"
    async with http.post(f"{sim.url}/__sim/device/approve", json={"user_code": started["user_code"],
                                                                  "account": "2"}) as resp:
        assert resp.status == 200
    async with asyncio.timeout(30):
        while (answer := await (await http.get(status_url)).json())["status"] == "pending":
            await asyncio.sleep(0.05)
    assert answer["status"] == "added" and answer["account"]["id"] == "acct-sim-02"
    assert [a.id for a in proxy.roster.all()] == ["acct-sim-02"]


async def test_unknown_sign_in_is_404(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=0)
    async with http.get(f"{proxy.url}/api/accounts/device/dev_nope") as resp:
        assert resp.status == 404
