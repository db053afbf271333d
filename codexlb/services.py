"""Everything the app starts and must stop: the store, the API keys, the roster and pool, the upstream
session, and the background refresh and usage loops (one aiohttp cleanup context, in start order)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from codexlb.admission.gates import Gates
from codexlb.auth.refresh import Refresher
from codexlb.config import Settings
from codexlb.keys import KeyRing
from codexlb.loopback import is_loopback_host
from codexlb.pool.pool import Pool
from codexlb.pool.roster import Roster
from codexlb.pool.usage_poller import UsagePoller
from codexlb.store import Store
from codexlb.upstream.session import make_session

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ROSTER = web.AppKey("roster", Roster)
POOL = web.AppKey("pool", Pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
REFRESHER = web.AppKey("refresher", Refresher)
USAGE = web.AppKey("usage_poller", UsagePoller)
KEYS = web.AppKey("keys", KeyRing)
GATES = web.AppKey("gates", Gates)


class StartupError(Exception):
    """The server could not start; the message is meant for the operator as it is (`server.StartupError`)."""


def check_exposure(settings: Settings, keys: KeyRing) -> None:
    """Refuse to listen beyond this machine with nothing to tell clients apart, unless told to."""
    if keys.has_keys or settings.allow_unauthenticated or is_loopback_host(settings.host):
        return
    raise StartupError(
        f"refusing to listen on {settings.host} with no API key: create one with `codexlb keys create`, "
        "or pass --allow-unauthenticated to serve every client that can reach it"
    )


def ensure_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.data_dir.stat().st_mode & 0o077:
        settings.data_dir.chmod(0o700)


async def services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    ensure_data_dir(settings)
    store = await Store.open(settings.data_dir, settings.secret_key_file)
    http = make_session()
    try:
        keys = await KeyRing.load(store)
        check_exposure(settings, keys)
        app[KEYS] = keys
        roster = await Roster.load(store)
        gates = app[GATES] = Gates(settings)
        refresher = Refresher(roster, http, settings.auth_base_url, margin_s=settings.refresh_margin_s,
                              gate=gates.refreshes)
        poller = UsagePoller(roster, refresher, http, settings.upstream_base_url)
        app[STORE], app[ROSTER], app[HTTP], app[REFRESHER], app[USAGE] = store, roster, http, refresher, poller
        app[POOL] = Pool(roster, strategy=settings.strategy, sticky_ttl_s=settings.sticky_ttl_s, gates=gates)
        loops = [asyncio.create_task(refresher.run(), name="codexlb-refresh"),
                 asyncio.create_task(roster.run_flusher(), name="codexlb-account-flush")]
        if settings.usage_poll_interval_s > 0:
            loops.append(asyncio.create_task(poller.run(settings.usage_poll_interval_s), name="codexlb-usage"))
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            roster.flush_dirty()
            await refresher.close()
    finally:
        await http.close()
        if KEYS in app:
            app[KEYS].flush_last_used()
        await store.close()
