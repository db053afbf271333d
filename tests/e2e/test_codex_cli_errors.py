"""The real Codex CLI stops at once on what retrying cannot heal, and the message says what to do."""

from __future__ import annotations

import time

import pytest

from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.services import KEYS, ROSTER
from tests.e2e.test_codex_cli_sim import CodexHome
from tests.keys.test_limits import T0
from tests.proxy.conftest import Proxy, start_proxy


async def assert_stops_at_once(codex_bin, tmp_path, sim, proxy: Proxy, websockets: bool, advice: str,
                               *options: str) -> None:
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=websockets, base_url=proxy.codex_base_url,
                      api_key="sk-anything")
    started = time.monotonic()
    run = await codex.run(*options, "exec", "--skip-git-repo-check", "hello")
    took = time.monotonic() - started
    assert run.rc == 1 and advice in run.stderr, run.describe()
    assert "Reconnecting" not in run.stderr and took < 2.0, (took, run.describe())


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
async def test_no_accounts_stops_the_cli_at_once(codex_bin, tmp_path, aiohttp_server, settings, sim, websockets):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=0)
    await assert_stops_at_once(codex_bin, tmp_path, sim, proxy, websockets, "codexlb accounts login")


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
async def test_every_account_needing_a_new_login_stops_the_cli_at_once(codex_bin, tmp_path, aiohttp_server,
                                                                       settings, sim, websockets):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=2)
    for account in proxy.app[ROSTER].all():
        proxy.app[ROSTER].mark_reauth_required(account, "refresh refused: test")
    await assert_stops_at_once(codex_bin, tmp_path, sim, proxy, websockets, "codexlb accounts login")


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
async def test_a_wrong_or_revoked_key_stops_the_cli_at_once(codex_bin, tmp_path, aiohttp_server, settings, sim,
                                                            websockets):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=1)
    _key, record = await proxy.app[KEYS].create("laptop")
    await proxy.app[KEYS].revoke(record.id)
    await proxy.app[KEYS].create("another")  # keys exist, and the one the CLI sends is not among them
    await assert_stops_at_once(codex_bin, tmp_path, sim, proxy, websockets, "codexlb keys create")


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
async def test_a_model_upstream_does_not_serve_stops_the_cli_at_once(codex_bin, tmp_path, aiohttp_server, settings,
                                                                     sim, websockets):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=1)
    await assert_stops_at_once(codex_bin, tmp_path, sim, proxy, websockets, "model is not supported",
                               "-c", 'model="gpt-nope"')


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
async def test_a_key_over_its_token_budget_stops_the_cli_at_once(codex_bin, tmp_path, aiohttp_server, settings, sim,
                                                                 http, websockets):
    """A budget resets in hours: the CLI must show it once, not wait out Retry-After five times over."""
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=1)
    # Mid-day, whatever the clock says: a day that turns within the CLI's retry would let its retry through (a
    # reset within a minute is a wait the CLI is told to retry after).
    proxy.app[LIMITS_KEY].clock = lambda: T0
    key, _ = await proxy.app[KEYS].create("laptop", {"tokens_day": 1})
    async with http.post(f"{proxy.url}/v1/responses", json={"model": "gpt-5.5", "input": "spend it"},
                         headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
    sent = len(sim.backend.records)
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=websockets, base_url=proxy.codex_base_url, api_key=key)
    started = time.monotonic()
    run = await codex.run("exec", "--skip-git-repo-check", "hello")
    took = time.monotonic() - started
    # The CLI words it itself, with the reset it read from the error: "You've hit your usage limit. Try again at …"
    assert run.rc == 1 and "usage limit. Try again at" in run.stderr, run.describe()
    assert "Reconnecting" not in run.stderr and took < 5.0, (took, run.describe())
    assert len(sim.backend.records) == sent  # nothing reached upstream
