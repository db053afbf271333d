"""A reload applied to a running app (SIGHUP, `codexlb reload`): the settings that can change in place
(`config.RELOADABLE`) take effect from the next request, and accounts and API keys are read again from the
store (a change made elsewhere shows at once, however far behind the change feed is).

Where each reloadable setting lands: the request path reads `SETTINGS` and `Upstream.settings` per request
(timeouts, failover bounds, body limits, the metrics token); the gates are resized in place (no held slot is
taken back); the pool gets its strategy and sticky TTL. Logging is the process's, not the app's: the caller
sets it (`log.reconfigure`).
"""

from __future__ import annotations

import warnings

from aiohttp import web

from codexlb import log
from codexlb.config import Settings
from codexlb.pool.pool import Pool
from codexlb.pool.selection import make_strategy
from codexlb.pool.sticky_share import StickyShare
from codexlb.services import FEED, GATES, POOL, SETTINGS, STORE
from codexlb.store import DatabaseError
from codexlb.upstream.state import UPSTREAM

_log = log.get("codexlb.reconfigure")


async def apply(app: web.Application, settings: Settings) -> None:
    """Run `app` on `settings` from now on (only reloadable settings may differ from what it started with),
    and read accounts and API keys again."""
    old = app[SETTINGS]
    with warnings.catch_warnings():
        # aiohttp deprecates changing a started app's state; swapping this one value is what a reload is.
        warnings.simplefilter("ignore", DeprecationWarning)
        app[SETTINGS] = settings
    app[UPSTREAM].settings = settings
    app[GATES].resize(settings)
    _pool(app[POOL], app, old, settings)
    try:
        await app[FEED].resync()
    except DatabaseError as exc:
        _log.warning("reload: accounts and API keys not read again", error=str(exc))


def _pool(pool: Pool, app: web.Application, old: Settings, new: Settings) -> None:
    if new.strategy != old.strategy:
        pool.strategy = make_strategy(new.strategy)
    pool.sticky.ttl_s = new.sticky_ttl_s
    # As a pool started with it: stickiness off shares nothing; turned on, it is shared again.
    if new.sticky_ttl_s <= 0 and pool.share is not None:
        pool.share.flush()
        pool.share = None
    elif new.sticky_ttl_s > 0 and pool.share is None:
        pool.share = StickyShare(app[STORE].db, pool.sticky)
