"""Everything the app starts and must stop: the store, the API keys, the roster and pool, the upstream
session, and the background loops: the fleet's run-once jobs under the leader lease (`leader`), this replica's
account flusher (one aiohttp cleanup context, in start order)."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from codexlb import log
from codexlb.admin_auth import AdminAuth
from codexlb.admission.gates import Gates
from codexlb.auth.refresh import Refresher
from codexlb.change_feed import ChangeFeed
from codexlb.config import Settings
from codexlb.key_limits.enforce import LIMITS_KEY, KeyLimits
from codexlb.keys import KeyRing
from codexlb.leader import Job, Leader
from codexlb.loopback import is_loopback_host
from codexlb.pool.pool import Pool
from codexlb.pool.roster import Roster
from codexlb.store import DatabaseError, Store, key_spend
from codexlb.upstream.session import make_session, upstream_via
from codexlb.upstream.usage_poller import UsagePoller

_log = log.get("codexlb.services")
HAND_OFF_S = 5.0  # writing the shared state at an upgrade, before the new process serves
TAKE_OVER_MAX = 100_000  # sticky entries a new process reads at an upgrade: the pool's default table size
SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ROSTER = web.AppKey("roster", Roster)
POOL = web.AppKey("pool", Pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
REFRESHER = web.AppKey("refresher", Refresher)
USAGE = web.AppKey("usage_poller", UsagePoller)
KEYS = web.AppKey("keys", KeyRing)
GATES = web.AppKey("gates", Gates)
ADMIN = web.AppKey("admin_auth", AdminAuth)
LEADER = web.AppKey("leader", Leader)
FEED = web.AppKey("change_feed", ChangeFeed)


async def hand_off(app: web.Application) -> None:
    """Before a new process takes over (an upgrade): what this one shares through the database (the sticky map,
    account figures) written and landed, so the new one reads it whole. Bounded; a failure is logged."""
    try:
        async with asyncio.timeout(HAND_OFF_S):
            if app[POOL].share is not None:
                app[POOL].share.flush()
            app[ROSTER].flush_dirty()
            await app[STORE].db.barrier()
    except (TimeoutError, DatabaseError) as exc:
        _log.warning("upgrade: shared state not all written before the new process serves", error=str(exc))


async def take_over(app: web.Application) -> None:
    """In an upgrade's new process, once the old one has written what it shares and before this one serves: the
    sticky map's recent entries read into memory, so conversations stay on their accounts. Bounded; a failure
    is logged (requests then look their conversation up one by one)."""
    pool = app[POOL]
    if pool.share is None:
        return
    try:
        async with asyncio.timeout(HAND_OFF_S):
            taken = await pool.share.take_over(time.time(), TAKE_OVER_MAX)
        _log.info("upgrade: sticky map taken over", conversations=taken)
    except (TimeoutError, DatabaseError) as exc:
        _log.warning("upgrade: sticky map not taken over; conversations are looked up as they come",
                     error=str(exc)[:200] or "timeout")


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


RETENTION_INTERVAL_S = 3600.0
KEY_SPEND_KEEP_S = 8 * 86400.0  # the longest limit's window is a week


def retention_limits(settings: Settings, now: float) -> tuple[float | None, int | None]:
    """(drop rows older than, keep at most rows); a setting of 0 means no such limit."""
    days, rows = settings.request_log_days, settings.request_log_max_rows
    return (now - days * 86400 if days else None), (rows or None)


async def keep_request_log(store: Store, settings: Settings, pool: Pool | None = None,
                           interval_s: float = RETENTION_INTERVAL_S) -> None:
    """Hold the request log to `request_log_days` and `request_log_max_rows`, the shared sticky map to
    `sticky_ttl_s`, and the keys' spend to the windows that can still count, now and every interval."""
    while True:
        try:
            deleted = await store.prune_usage(*retention_limits(settings, time.time()))
            forgotten = await pool.share.prune(time.time()) if pool is not None and pool.share is not None else 0
            await key_spend.prune(store.db, time.time() - KEY_SPEND_KEEP_S)
        except DatabaseError as exc:
            _log.error("request log retention failed", error=str(exc))
        else:
            if deleted or forgotten:
                _log.info("request log pruned", rows=deleted, conversations=forgotten)
        await asyncio.sleep(interval_s)


async def services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    ensure_data_dir(settings)
    try:
        via = upstream_via(settings)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if via.ignored:
        _log.warning("proxy from the environment not used; upstream calls go direct", reason=via.ignored)
    if via.proxy is not None:
        _log.info("upstream calls go through a proxy", proxy=str(via.proxy), source=via.source)
    store = await Store.open_for(settings)
    http = make_session(via, settings.upstream_connect_timeout_s)
    try:
        keys = await KeyRing.load(store)
        check_exposure(settings, keys)
        app[KEYS] = keys
        limits = app[LIMITS_KEY] = KeyLimits(store.db)
        app[ADMIN] = AdminAuth.local(settings.data_dir, await store.admin_password())
        roster = await Roster.load(store)
        gates = app[GATES] = Gates(settings)
        refresher = Refresher(roster, http, settings.auth_base_url, margin_s=settings.refresh_margin_s,
                              gate=gates.refreshes)
        poller = UsagePoller(roster, refresher, http, settings.upstream_base_url)
        app[STORE], app[ROSTER], app[HTTP], app[REFRESHER], app[USAGE] = store, roster, http, refresher, poller
        app[POOL] = Pool(roster, strategy=settings.strategy, sticky_ttl_s=settings.sticky_ttl_s, gates=gates,
                         shared=store.db)
        # Jobs the fleet runs once, on whichever replica holds the leader lease.
        jobs: dict[str, Job] = {"refresh": refresher.run, "retention": lambda: keep_request_log(store, settings, app[POOL])}
        if settings.usage_poll_interval_s > 0:
            jobs["usage"] = lambda: poller.run(settings.usage_poll_interval_s)
        leader = app[LEADER] = Leader(store.leases, jobs)
        feed = app[FEED] = ChangeFeed(store, roster, keys, app[ADMIN])
        await feed.load_sessions()  # a login from before a restart, or made on another replica, holds here
        loops = [asyncio.create_task(leader.run(), name="codexlb-leader"),
                 asyncio.create_task(roster.run_flusher(), name="codexlb-account-flush"),
                 asyncio.create_task(feed.run(), name="codexlb-change-feed"),
                 asyncio.create_task(limits.run(), name="codexlb-key-spend-sync")]
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if app[POOL].share is not None:
                app[POOL].share.flush()
            roster.flush_dirty()
            await limits.flush()
            await refresher.close()
    finally:
        await http.close()
        if ADMIN in app:
            app[ADMIN].close()
        if KEYS in app:
            app[KEYS].flush_last_used()
        await store.close()
