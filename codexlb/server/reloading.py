"""SIGHUP (`codexlb reload`, `systemctl kill -s HUP codexlb`): read the settings again, from the same layers
(the flags given at start keep winning over the file and environment), and apply in place those that can
change so (`config.RELOADABLE`). A changed setting that cannot (the port, the database, ...) is named in one
log line as needing `codexlb upgrade`; a config file that does not parse or validate changes nothing, and the
log says why. Each outcome is recorded in the server record for `codexlb reload` to print.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from codexlb import config, log, server_record

_log = log.get("codexlb.server")

Apply = Callable[[config.Settings], Awaitable[None]]


class Reloader:
    """The running settings of one process, and how a reload reaches what uses them (`apply`: the app's part,
    `reconfigure.apply`; none in the parent of `--workers N`, whose workers reload themselves)."""

    def __init__(self, loaded: config.Loaded, apply: Apply | None = None) -> None:
        self._loaded, self._apply = loaded, apply
        self.settings = loaded.settings
        self._lock = asyncio.Lock()  # one reload at a time, in the order the signals came
        self._running: set[asyncio.Task[dict]] = set()

    def request(self, hold: server_record.Hold | None) -> None:
        """The signal handler: reload soon, on the loop (recorded in `hold`'s record when there is one)."""
        task = asyncio.ensure_future(self.reload(hold))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def reload(self, hold: server_record.Hold | None = None) -> dict:
        """Read and apply; what came of it: the settings applied and those needing an upgrade, or the error."""
        async with self._lock:
            outcome = await self._reload()
            if hold is not None:
                await asyncio.to_thread(hold.reloaded, outcome)
            return outcome

    async def _reload(self) -> dict:
        try:
            read = await asyncio.to_thread(self._loaded.again)
        except config.ConfigError as exc:
            _log.error("reload failed; the settings stay as they were", error=str(exc))
            return {"error": str(exc)}
        plan = config.plan_reload(self.settings, read.settings)
        if {"log_level", "log_format"} & set(plan.applied):
            log.reconfigure(plan.settings.log_level, plan.settings.log_format)
        if self._apply is not None:
            await self._apply(plan.settings)
        self.settings = plan.settings
        _log.info("settings reloaded", applied=list(plan.applied))
        if plan.need_upgrade:
            _log.warning("settings changed that only a new process applies: run `codexlb upgrade` (or restart)",
                         settings=list(plan.need_upgrade))
        return {"applied": list(plan.applied), "need_upgrade": list(plan.need_upgrade)}
